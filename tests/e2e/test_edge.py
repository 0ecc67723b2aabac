"""The gateway's production edge over a real server: probes, request limits with clear refusals on
each protocol, the overload bound, and the drain on SIGTERM (a request in flight completes)."""

import asyncio
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import websockets
from clip_client import Client
from docarray import Document, DocumentArray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers import flow_yaml, free_port, http_ready, start_server

PROTOCOLS = ['grpc', 'http', 'websocket']
LIMITS = {
    'max_request_bytes': 2**20,
    'max_docs_per_request': 16,
    'max_pending_per_replica': 2,
    'max_pending_bytes': 800_000,
    'drain_seconds': 20,
}


def edge_flow(tiny_weights, ports: list[int], protocols: list[str], load_seconds: float = 0) -> str:
    """The tiny encoder, then an executor that holds a request for its `delay` parameter."""
    yaml_text = flow_yaml(
        ports, protocol=protocols, with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])}
    )
    yaml_text += f"""  - name: hold
    uses:
      jtype: Echo
      with: {{load_seconds: {load_seconds}}}
      metas:
        py_modules:
          - {Path(__file__).with_name('echo_executor.py')}
gateway:
  uses_with: {LIMITS}
"""
    return yaml_text


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = edge_flow(tiny_weights, ports, PROTOCOLS)
    running = start_server(
        tmp_path_factory.mktemp('edge'), yaml_text, ports[0], is_ready=lambda _: http_ready(ports[1])
    )
    running.ports = dict(zip(PROTOCOLS, ports, strict=True))
    yield running
    running.stop()


def url(server, path: str = '') -> str:
    return f'http://127.0.0.1:{server.ports["http"]}{path}'


def post(server, docs: list[dict], timeout: float = 60, **parameters) -> requests.Response:
    payload = {'execEndpoint': '/', 'data': docs, 'parameters': parameters}
    return requests.post(url(server, '/post'), json=payload, timeout=timeout)


def grpc_health(port: int) -> int:
    with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=''), timeout=5).status


def still_serves(server) -> None:
    assert Client(f'grpc://127.0.0.1:{server.ports["grpc"]}').encode(['still serving']).shape == (1, 32)


def test_probes_say_live_and_ready(server):
    assert requests.get(url(server, '/health/live'), timeout=10).json() == {'live': True}
    ready = requests.get(url(server, '/health/ready'), timeout=10)
    assert ready.status_code == 200 and ready.json() == {'ready': True}
    assert grpc_health(server.ports['grpc']) == health_pb2.HealthCheckResponse.SERVING


def test_http_body_over_max_request_bytes_is_413_naming_the_limit(server):
    refused = post(server, [{'text': 'x' * (2**20 + 10)}])
    assert refused.status_code == 413
    assert 'over max_request_bytes (1,048,576)' in refused.json()['detail']

    def chunks():  # no Content-Length: the cap holds while the body streams in
        yield b'{"data": [{"text": "'
        for _ in range(20):
            yield b'y' * 2**16
        yield b'"}]}'

    streamed = requests.post(url(server, '/post'), data=chunks(), timeout=60)
    assert streamed.status_code == 413 and 'max_request_bytes' in streamed.text
    assert post(server, [{'text': 'small'}]).status_code == 200


def test_grpc_message_over_max_request_bytes_is_resource_exhausted(server):
    big = Document(id='big', blob=bytes(2**20 + 10))
    with pytest.raises(Exception, match='RESOURCE_EXHAUSTED|larger than max'):
        Client(f'grpc://127.0.0.1:{server.ports["grpc"]}')._client.post('/', DocumentArray([big]))
    still_serves(server)


def test_websocket_frame_over_max_request_bytes_closes_the_connection(server):
    async def send_big() -> int:
        async with websockets.connect(f'ws://127.0.0.1:{server.ports["websocket"]}/', open_timeout=10) as ws:
            await ws.send(bytes(2**20 + 10))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 30)
            return closed.value.rcvd.code

    assert asyncio.run(send_big()) == 1009  # "message too big"
    still_serves(server)


def test_more_documents_than_max_docs_per_request_are_refused_on_each_protocol(server):
    refused = post(server, [{'text': f'text {i}'} for i in range(17)])
    assert refused.status_code == 413
    assert 'the request has 17 documents (chunks and matches included), over max_docs_per_request (16)' in refused.text
    for protocol in PROTOCOLS:
        client = Client(f'{protocol}://127.0.0.1:{server.ports[protocol]}')
        with pytest.raises(Exception, match='max_docs_per_request'):
            client.encode([f'text {i}' for i in range(17)], batch_size=17)
        assert client.encode([f'text {i}' for i in range(16)], batch_size=16).shape == (16, 32)


def test_past_the_pending_bound_requests_are_refused_at_once(server):
    """Two requests pending fill max_pending_per_replica (2, one replica): the rest are refused fast."""
    results: list[requests.Response] = []

    def long_request():
        results.append(post(server, [{'text': 'hold'}], delay=3))

    holders = [threading.Thread(target=long_request) for _ in range(2)]
    for thread in holders:
        thread.start()
    time.sleep(1)  # both are held by the executor now
    started = time.monotonic()
    refused = post(server, [{'text': 'one more'}])
    assert time.monotonic() - started < 2  # refused, not queued behind the held ones
    assert refused.status_code == 429
    assert 'the limit is 2 (max_pending_per_replica)' in refused.json()['detail']
    with pytest.raises(Exception, match='RESOURCE_EXHAUSTED|max_pending_per_replica'):
        Client(f'grpc://127.0.0.1:{server.ports["grpc"]}').encode(['one more'])
    for thread in holders:
        thread.join()
    assert [response.status_code for response in results] == [200, 200]
    still_serves(server)


def test_past_max_pending_bytes_requests_are_refused_on_each_protocol(server):
    """One held request of ~450 kB leaves room under max_pending_bytes (800 kB) for a small request,
    not for a second one of its size, on any protocol; once it is answered, that one is served."""
    texts = ['x' * 90_000 for _ in range(5)]
    held: list[requests.Response] = []
    holder = threading.Thread(target=lambda: held.append(post(server, [{'text': t} for t in texts], delay=6)))
    holder.start()
    time.sleep(1)  # held by the executor now
    refused = post(server, [{'text': t} for t in texts])
    assert refused.status_code == 429
    detail = refused.json()['header']['status']['description']  # a failed request, in jina's shape
    assert re.search(r'bytes of requests pending and this one of [\d,]+, the limit is 800,000', detail), detail
    for protocol in PROTOCOLS:
        client = Client(f'{protocol}://127.0.0.1:{server.ports[protocol]}')
        with pytest.raises(Exception, match='max_pending_bytes'):
            print(protocol, 'served while the held request was pending:', client.encode(texts, batch_size=5).shape)
    assert not held  # all refused while it was pending
    small = Client(f'grpc://127.0.0.1:{server.ports["grpc"]}').encode(['small'] * 4)  # admitted; waits its turn
    assert small.shape == (4, 32)
    holder.join()
    assert [response.status_code for response in held] == [200]
    assert Client(f'grpc://127.0.0.1:{server.ports["grpc"]}').encode(texts, batch_size=5).shape == (5, 32)


def test_readiness_waits_for_the_executors_and_drain_completes_a_request_in_flight(tiny_weights, tmp_path):
    """Not ready while an executor loads; on SIGTERM, not ready and refusing new requests, while
    the request in flight completes with its embeddings; then the server exits cleanly."""
    ports = [free_port(), free_port()]
    seen_while_starting: list[int] = []
    yaml_text = edge_flow(tiny_weights, ports, ['grpc', 'http'], load_seconds=5)
    running = start_server(tmp_path, yaml_text, ports[0], is_ready=lambda _: http_ready(ports[1], seen_while_starting))
    try:
        assert 503 in seen_while_starting  # the gateway answered before the slow executor had loaded
        texts = [f'caption {i}' for i in range(8)]
        reference = Client(f'grpc://127.0.0.1:{ports[0]}').encode(texts)
        outcome: dict = {}

        def long_request():
            outcome['embeddings'] = Client(f'grpc://127.0.0.1:{ports[0]}').encode(texts, parameters={'delay': 4})

        in_flight = threading.Thread(target=long_request)
        in_flight.start()
        time.sleep(1.5)
        running.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        draining = requests.get(f'http://127.0.0.1:{ports[1]}/health/ready', timeout=5)
        assert draining.status_code == 503 and 'draining' in draining.json()['reason']
        assert (
            requests.post(f'http://127.0.0.1:{ports[1]}/post', json={'data': [{'text': 'x'}]}, timeout=5).status_code
            == 503
        )
        in_flight.join(30)
        np.testing.assert_allclose(outcome['embeddings'], reference, rtol=1e-5, atol=1e-6)
        assert running.process.wait(60) == 0
    finally:
        running.stop()
