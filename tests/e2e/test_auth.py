"""Token auth at the gateway: clip_client with the token is served over gRPC and HTTP, without it
refused (UNAUTHENTICATED, 401), WebSocket needs the header or `?token=`; probes stay open."""

import asyncio

import pytest
import requests
import websockets
from clip_client import Client

from helpers import flow_yaml, free_port, start_server

PROTOCOLS = ['grpc', 'http', 'websocket']
TOKENS = 'first-secret,second-secret'


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = flow_yaml(
        ports, protocol=PROTOCOLS, with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])}
    )
    yaml_text += 'gateway:\n  uses_with:\n    auth_tokens_env: CLIP_TEST_TOKENS\n'
    running = start_server(tmp_path_factory.mktemp('auth'), yaml_text, ports[0], env={'CLIP_TEST_TOKENS': TOKENS})
    running.ports = dict(zip(PROTOCOLS, ports, strict=True))
    yield running
    running.stop()


def address(server, protocol: str) -> str:
    return f'{protocol}://127.0.0.1:{server.ports[protocol]}'


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
@pytest.mark.parametrize('token', ['first-secret', 'second-secret', 'Bearer second-secret'])
def test_clip_client_with_a_token_is_served(server, protocol, token):
    client = Client(address(server, protocol), credential={'Authorization': token})
    assert client.encode(['a cat']).shape == (1, 32)


@pytest.mark.parametrize('protocol', ['grpc', 'http'])
@pytest.mark.parametrize('credential', [{}, {'Authorization': 'wrong'}, {'Authorization': 'first-secre'}])
def test_clip_client_without_the_token_is_refused(server, protocol, credential):
    with pytest.raises(Exception, match='UNAUTHENTICATED|401|Unauthorized|missing or wrong authorization token'):
        Client(address(server, protocol), credential=credential).encode(['a cat'])


def test_http_refusal_says_nothing_about_the_token_and_probes_stay_open(server):
    base = f'http://127.0.0.1:{server.ports["http"]}'
    refused = requests.post(f'{base}/post', json={'execEndpoint': '/', 'data': [{'text': 'x'}]}, timeout=30)
    assert refused.status_code == 401 and 'secret' not in refused.text
    assert requests.get(f'{base}/', timeout=30).status_code == 200  # the health probe


def test_websocket_needs_the_header_or_a_token_parameter(server):
    url = f'ws://127.0.0.1:{server.ports["websocket"]}/'

    async def opens(**options) -> bool:
        try:
            async with websockets.connect(url + options.pop('query', ''), open_timeout=10, **options) as ws:
                await ws.ping()
                return True
        except (websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed):
            return False

    assert not asyncio.run(opens())
    assert asyncio.run(opens(additional_headers={'Authorization': 'first-secret'}))
    assert asyncio.run(opens(query='?token=second-secret'))
    with pytest.raises(Exception, match='403'):  # clip_client sends no token over WebSocket
        Client(address(server, 'websocket'), credential={'Authorization': 'first-secret'}).encode(['x'])
