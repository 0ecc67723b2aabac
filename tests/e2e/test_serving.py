"""A real `python -m clip_server` serving tiny weights; the real clip_client and raw HTTP talk to it.

Correctness means the served embeddings equal open_clip's in-process output for the same weights.
"""

import base64

import numpy as np
import pytest
import requests
from clip_client import Client
from docarray import Document, DocumentArray
from PIL import Image

from helpers import (
    check_rank,
    encoded,
    flow_yaml,
    free_port,
    reference_image_embeddings,
    reference_text_embeddings,
    sample_image,
    start_server,
)

PROTOCOLS = ['grpc', 'websocket', 'http']
TEXTS = ['a photo of a dog', 'ein Foto einer Katze', 'word ' * 200]
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port() for _ in PROTOCOLS]
    monitoring_port = free_port()
    yaml_text = flow_yaml(
        ports,
        protocol=PROTOCOLS,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit']), 'minibatch_size': 2},
        executor_extra=f'\n    monitoring: true\n    port_monitoring: {monitoring_port}',
    )
    running = start_server(tmp_path_factory.mktemp('serving'), yaml_text, ports[0])
    running.ports = dict(zip(PROTOCOLS, ports, strict=True))
    running.monitoring_port = monitoring_port
    yield running
    running.stop()


@pytest.fixture(scope='module')
def model(reference):
    return reference('tiny-vit')


def client(server, protocol: str) -> Client:
    return Client(f'{protocol}://127.0.0.1:{server.ports[protocol]}')


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_text_embeddings_equal_open_clip(server, model, protocol):
    embeddings = client(server, protocol).encode(TEXTS)
    assert embeddings.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(embeddings, reference_text_embeddings(model, TEXTS), atol=TOLERANCE)


@pytest.mark.parametrize('protocol', PROTOCOLS)
def test_image_embeddings_equal_open_clip(server, model, protocol, tmp_path):
    png, jpeg, array = sample_image(1), sample_image(2), sample_image(3, size=(50, 80))
    jpeg_path = tmp_path / 'photo.jpg'
    jpeg.save(jpeg_path, quality=90)
    docs = DocumentArray(
        [
            Document(id='png', blob=encoded(png), mime_type='image/png'),
            Document(id='jpeg', uri=str(jpeg_path)),  # the client reads the file and sends its bytes
            Document(id='tensor', tensor=np.asarray(array)),
        ]
    )
    result = client(server, protocol).encode(docs)
    assert [d.id for d in result] == ['png', 'jpeg', 'tensor']
    expected = reference_image_embeddings(model, [png, Image.open(jpeg_path), array])
    np.testing.assert_allclose(np.stack(result.embeddings), expected, atol=TOLERANCE)


@pytest.mark.parametrize('protocol', ['grpc', 'websocket'])
def test_mixed_list_of_strings_and_generator(server, model, protocol, tmp_path):
    path = tmp_path / 'picture.png'
    sample_image(7).save(path)
    c = client(server, protocol)
    mixed = c.encode(['a caption', str(path)])
    np.testing.assert_allclose(mixed[0], reference_text_embeddings(model, ['a caption'])[0], atol=TOLERANCE)
    np.testing.assert_allclose(mixed[1], reference_image_embeddings(model, [Image.open(path)])[0], atol=TOLERANCE)
    streamed = c.encode(text for text in TEXTS)
    np.testing.assert_allclose(np.stack(streamed.embeddings), reference_text_embeddings(model, TEXTS), atol=TOLERANCE)


@pytest.mark.parametrize('protocol', ['grpc', 'websocket'])
def test_rank(server, protocol):
    ranked = check_rank(client(server, protocol))
    assert all(m.scores['clip_score'].op_name == 'softmax' for m in ranked)


@pytest.mark.parametrize('protocol', ['grpc', 'websocket'])
def test_index_and_search_encode_on_their_way_to_an_indexer(server, model, protocol):
    c = client(server, protocol)
    indexed = c.index(DocumentArray([Document(text=t) for t in TEXTS]))
    np.testing.assert_allclose(np.stack(indexed.embeddings), reference_text_embeddings(model, TEXTS), atol=TOLERANCE)
    found = c.search(['a photo of a dog'], limit=3)
    assert len(found) == 1 and len(found[0].matches) == 0  # no indexer behind the encoder


def test_profile(server):
    timings = client(server, 'grpc').profile()
    assert timings['Roundtrip'] > 0 and 'Server' in timings


def test_raw_http_json(server, model):
    png, uri_image = sample_image(8), sample_image(9)
    payload = {
        'execEndpoint': '/encode',
        'data': [
            {'id': 'text', 'text': TEXTS[0]},
            {'id': 'blob', 'blob': base64.b64encode(encoded(png)).decode()},
            {'id': 'uri', 'uri': 'data:image/png;base64,' + base64.b64encode(encoded(uri_image)).decode()},
        ],
    }
    response = requests.post(f'http://127.0.0.1:{server.ports["http"]}/post', json=payload, timeout=60)
    assert response.status_code == 200
    docs = {doc['id']: doc for doc in response.json()['data']}
    np.testing.assert_allclose(
        docs['text']['embedding'], reference_text_embeddings(model, TEXTS[:1])[0], atol=TOLERANCE
    )
    expected = reference_image_embeddings(model, [png, uri_image])
    np.testing.assert_allclose([docs['blob']['embedding'], docs['uri']['embedding']], expected, atol=TOLERANCE)
    assert docs['blob']['blob']  # content is returned unless drop_image_content is asked for


# jina's websocket client sometimes reports a failed request as one without embeddings,
# which clip_client words as 'Empty embedding returned'; over gRPC the server's reason arrives.
@pytest.mark.parametrize('protocol, reason', [('grpc', 'cannot decode image'), ('websocket', None)])
def test_bad_image_fails_that_request_and_the_next_is_served(server, protocol, reason):
    c = client(server, protocol)
    with pytest.raises(Exception, match=reason):
        c.encode(DocumentArray([Document(text='fine'), Document(blob=b'\x89PNG\r\n\x1a\n broken')]))
    assert c.encode(['still serving']).shape == (1, 32)


def test_raw_http_error_names_the_document(server):
    payload = {'execEndpoint': '/', 'data': [{'id': 'broken', 'blob': base64.b64encode(b'junk').decode()}]}
    body = requests.post(f'http://127.0.0.1:{server.ports["http"]}/post', json=payload, timeout=60).json()
    assert (
        'document broken: cannot decode image (4 bytes): not one of the accepted formats'
        in body['header']['status']['description']
    )


def test_executor_exports_its_timings(server):
    client(server, 'grpc').encode(['counted text'])
    client(server, 'grpc').encode(DocumentArray([Document(tensor=np.asarray(sample_image(11)))]))
    scrape = requests.get(f'http://127.0.0.1:{server.monitoring_port}/', timeout=10).text
    for metric in (
        'preprocess_texts_seconds',
        'preprocess_images_seconds',
        'encode_texts_seconds',
        'encode_images_seconds',
    ):
        counts = [line for line in scrape.splitlines() if line.startswith(f'jina_{metric}_count')]
        assert counts and float(counts[0].rsplit(' ', 1)[1]) >= 1, f'{metric} missing from:\n{scrape[:2000]}'
