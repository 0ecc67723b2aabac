"""Gateway options of the Flow's `with:` beyond protocols and ports (test_serving covers those):
`cors: true` lets browsers call the HTTP gateway; `prefetch` bounds in-flight requests per client."""

import numpy as np
import pytest
import requests
from clip_client import Client

from helpers import flow_yaml, free_port, reference_text_embeddings, start_server

ORIGIN = 'https://app.example.org'
TOLERANCE = 1e-4


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = {'http': free_port(), 'websocket': free_port()}
    yaml_text = flow_yaml(
        list(ports.values()),
        protocol=list(ports),
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    ).replace('  host: 127.0.0.1\n', '  host: 127.0.0.1\n  cors: true\n  prefetch: 2\n', 1)
    running = start_server(tmp_path_factory.mktemp('gateway'), yaml_text, ports['http'], protocol='http')
    running.ports = ports
    yield running
    running.stop()


def test_cors_preflight_is_allowed(server):
    response = requests.options(
        f'http://127.0.0.1:{server.ports["http"]}/post',
        headers={
            'Origin': ORIGIN,
            'Access-Control-Request-Method': 'POST',
            'Access-Control-Request-Headers': 'content-type',
        },
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers['access-control-allow-origin'] in ('*', ORIGIN)
    assert 'POST' in response.headers['access-control-allow-methods']


def test_cross_origin_post_gets_embeddings_and_the_cors_header(server, reference):
    response = requests.post(
        f'http://127.0.0.1:{server.ports["http"]}/post',
        headers={'Origin': ORIGIN},
        json={'execEndpoint': '/encode', 'data': [{'text': 'from a browser'}]},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers['access-control-allow-origin'] in ('*', ORIGIN)
    expected = reference_text_embeddings(reference('tiny-vit'), ['from a browser'])[0]
    np.testing.assert_allclose(response.json()['data'][0]['embedding'], expected, atol=TOLERANCE)


@pytest.mark.parametrize('protocol', ['websocket', 'http'])
def test_a_stream_longer_than_prefetch_is_served_whole_and_in_order(server, reference, protocol):
    texts = [f'sentence number {i}' for i in range(12)]  # 12 requests of one document, prefetch 2
    client = Client(f'{protocol}://127.0.0.1:{server.ports[protocol]}')
    embeddings = client.encode(texts, batch_size=1)
    np.testing.assert_allclose(embeddings, reference_text_embeddings(reference('tiny-vit'), texts), atol=TOLERANCE)
