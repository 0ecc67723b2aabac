"""OpenAI's embeddings API on a real server, through the real `openai` SDK and raw HTTP: texts and
images mixed in one call, both encodings, embeddings equal to clip_client's and the model's own,
errors in OpenAI's shape naming the item, token auth, and the README's example as written."""

import base64
import re
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
from clip_client import Client
from docarray import Document, DocumentArray

from helpers import (
    encoded,
    flow_yaml,
    free_port,
    reference_image_embeddings,
    reference_text_embeddings,
    sample_image,
    start_server,
)

TOKEN = 'openai-test-token'
README = Path(__file__).parents[2] / 'README.md'


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port(), free_port()]
    yaml_text = flow_yaml(
        ports,
        protocol=['grpc', 'http'],
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    )
    yaml_text += f'gateway:\n  uses_with:\n    auth_tokens: [{TOKEN}]\n    max_docs_per_request: 16\n'
    yaml_text += '    max_request_bytes: 2097152\n'
    running = start_server(tmp_path_factory.mktemp('openai'), yaml_text, ports[0])
    running.ports = {'grpc': ports[0], 'http': ports[1]}
    yield running
    running.stop()


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f'http://127.0.0.1:{server.ports["http"]}/v1', api_key=TOKEN, max_retries=0)


def data_uri(image) -> str:
    return 'data:image/png;base64,' + base64.b64encode(encoded(image)).decode()


def served_by_clip_client(server, docs: DocumentArray) -> np.ndarray:
    client = Client(f'grpc://127.0.0.1:{server.ports["grpc"]}', credential={'Authorization': TOKEN})
    return np.stack(client.encode(docs).embeddings)


def test_models_lists_the_served_model(sdk):
    assert [model.id for model in sdk.models.list()] == ['tiny-vit']


def vectors(answer) -> np.ndarray:
    """The answer's embeddings in input order (the SDK hands base64 back as is when asked for it)."""
    rows = [item.embedding for item in sorted(answer.data, key=lambda item: item.index)]
    return np.stack([np.frombuffer(base64.b64decode(row), '<f4') if isinstance(row, str) else row for row in rows])


@pytest.mark.parametrize(
    'encoding_format', [openai.NOT_GIVEN, 'base64', 'float'], ids=['sdk-default', 'base64', 'float']
)
def test_texts_equal_clip_client_and_the_model(server, sdk, reference, encoding_format):
    texts = ['a photo of a cat', 'a dog', 'two birds on a wire']
    answer = sdk.embeddings.create(model='tiny-vit', input=texts, encoding_format=encoding_format)
    got = vectors(answer)
    assert got.shape == (3, 32)
    by_clip_client = served_by_clip_client(server, DocumentArray([Document(text=text) for text in texts]))
    np.testing.assert_allclose(got, by_clip_client, atol=1e-5)
    np.testing.assert_allclose(got, reference_text_embeddings(reference('tiny-vit'), texts), atol=1e-4)
    _, _, tokenizer = reference('tiny-vit')
    assert answer.usage.prompt_tokens == int((tokenizer(texts) != 0).sum()) == answer.usage.total_tokens
    assert answer.model == 'tiny-vit'


def test_texts_and_images_mixed_in_one_call(server, sdk, reference):
    cat, dog = sample_image(1), sample_image(2)
    items = ['a cat', data_uri(cat), {'image': base64.b64encode(encoded(dog)).decode()}, {'text': 'a dog'}]
    answer = sdk.embeddings.create(model='tiny-vit', input=items)
    assert [item.index for item in answer.data] == [0, 1, 2, 3]
    got = vectors(answer)
    docs = DocumentArray(
        [Document(text='a cat'), Document(blob=encoded(cat)), Document(blob=encoded(dog)), Document(text='a dog')]
    )
    np.testing.assert_allclose(got, served_by_clip_client(server, docs), atol=1e-5)
    np.testing.assert_allclose(got[1:3], reference_image_embeddings(reference('tiny-vit'), [cat, dog]), atol=1e-4)
    assert answer.usage.prompt_tokens > 0  # the two texts; images count none


@pytest.mark.parametrize(
    ('items', 'status', 'says'),
    [
        (['fine', 'data:image/png;base64,AAAA'], 400, 'input[1]'),
        (['fine', ''], 400, 'input[1]: is an empty string'),
        (['fine', 5], 400, 'input[1]: must be a string'),
        ([[101, 2023, 102]], 400, 'check_embedding_ctx_length=False'),
        (['https://images.example/cat.jpg'], 400, 'does not fetch image URLs'),
        ([{'image': 'data:text/plain,hello'}], 400, 'must start with data:image/'),
        ([f'text {i}' for i in range(17)], 413, 'over max_docs_per_request (16)'),
        (['x' * (3 * 2**20)], 413, 'over max_request_bytes'),
    ],
    ids=[
        'undecodable-image',
        'empty-string',
        'wrong-type',
        'token-ids',
        'remote-url',
        'not-an-image-uri',
        'too-many',
        'too-large',
    ],
)
def test_bad_items_get_openais_error_shape_naming_the_item(server, sdk, items, status, says):
    response = requests.post(
        f'http://127.0.0.1:{server.ports["http"]}/v1/embeddings',
        json={'model': 'tiny-vit', 'input': items},
        headers={'Authorization': f'Bearer {TOKEN}'},
        timeout=60,
    )
    assert response.status_code == status, response.text[:500]
    error = response.json()['error']
    assert says in error['message'] and error['type'] == 'invalid_request_error'
    assert not re.search(r'Traceback|File "|site-packages', response.text)
    assert len(sdk.embeddings.create(model='tiny-vit', input='still serving').data) == 1


def test_another_model_is_404_model_not_found_and_dimensions_must_match(sdk):
    with pytest.raises(openai.NotFoundError, match='this server serves tiny-vit') as missing:
        sdk.embeddings.create(model='text-embedding-3-small', input='x')
    assert missing.value.code == 'model_not_found'
    with pytest.raises(openai.BadRequestError, match='dimensions must be 32'):
        sdk.embeddings.create(model='tiny-vit', input='x', dimensions=16)
    assert len(sdk.embeddings.create(model='tiny-vit', input='x', dimensions=32).data[0].embedding) == 32


def test_the_token_is_required(server):
    stranger = openai.OpenAI(base_url=f'http://127.0.0.1:{server.ports["http"]}/v1', api_key='wrong', max_retries=0)
    with pytest.raises(openai.AuthenticationError, match='missing or wrong authorization token'):
        stranger.embeddings.create(model='tiny-vit', input='x')


def test_the_readme_example_works_as_written(server):
    """The README's Python example, with its port swapped for this server's and its token set."""
    example = README.read_text().split('<!-- openai-example -->')[1].split('```python')[1].split('```')[0]
    example = example.replace('51001', str(server.ports['http'])).replace('ViT-B-32::openai', 'tiny-vit')
    example = example.replace("api_key='unused'", f"api_key='{TOKEN}'")
    namespace: dict = {}
    exec(compile(example, 'README example', 'exec'), namespace)  # noqa: S102 - the repository's own README
    assert np.asarray(namespace['vectors']).shape == (2, 32)
