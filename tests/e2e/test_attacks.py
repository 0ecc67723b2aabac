"""The edge under attack: requests, documents and images sent as an attacker would, over gRPC,
HTTP, WebSocket and the OpenAI API, against one server served as the bundled Flows are (the
encoder batching across requests itself) with auth on and an index. Each bad case is answered
with a client error (never a 500, never a traceback), and a good request right after it
succeeds; cost cases keep the server's memory bounded."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import socket
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
import websockets
from docarray import Document, DocumentArray
from jina import Client as JinaClient
from jina.proto import jina_pb2, jina_pb2_grpc
from jina.types.request.data import DataRequest, SingleDocumentRequest
from search_servers import indexer_executor

from helpers import encoded, flow_yaml, free_port, sample_image, start_server

PROTOCOLS = ['grpc', 'http', 'websocket']
TOKEN = 'attack-test-token'
AUTH = {'Authorization': TOKEN}
MAX_DOCS = 64  # the gateway's max_docs_per_request here, small so that the limits are cheap to pass
MAX_PENDING = 8  # per replica: a leak of a few requests would already wedge the server
TRACEBACK_MARKS = ('Traceback', 'File "', '.py", line')


@pytest.fixture(scope='module')
def server(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp('attacks')
    ports = [free_port() for _ in PROTOCOLS]
    yaml_text = flow_yaml(
        ports,
        protocol=PROTOCOLS,
        with_params={'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])},
    )
    yaml_text += (
        indexer_executor(folder / 'index')
        + f"""gateway:
  uses_with:
    auth_tokens: [{TOKEN}]
    max_docs_per_request: {MAX_DOCS}
    max_pending_per_replica: {MAX_PENDING}
    request_body_seconds: 2
    drain_seconds: 20
"""
    )
    running = start_server(folder, yaml_text, ports[0], env={'CLIP_TEST_UNUSED': '1'}, is_ready=_ready_on(ports[1]))
    running.ports = dict(zip(PROTOCOLS, ports, strict=True))
    running.tree = psutil.Process(running.process.pid)
    post(running, '/index', [{'id': 'dog', 'text': 'a dog on a beach'}, {'id': 'cat', 'text': 'a cat on a sofa'}])
    yield running
    started = time.monotonic()
    assert running.stop() == 0
    assert time.monotonic() - started < 15, 'the drain waited on requests that leaked'


def _ready_on(http_port: int):
    def ready(_server) -> bool:
        try:
            return requests.get(f'http://127.0.0.1:{http_port}/health/ready', timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    return ready


def url(server, path: str) -> str:
    return f'http://127.0.0.1:{server.ports["http"]}{path}'


def post(server, endpoint: str, data, parameters: dict | None = None) -> requests.Response:
    body = {'execEndpoint': endpoint, 'data': data, 'parameters': parameters or {}}
    answer = requests.post(url(server, '/post'), json=body, headers=AUTH, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    return answer


def memory(server) -> int:
    """Resident bytes of the server and every process of its Flow."""
    processes = [server.tree, *server.tree.children(recursive=True)]
    return sum(process.memory_info().rss for process in processes if process.is_running())


def assert_still_serving(server) -> None:
    """A good request right after a bad one: answered, with an embedding, on the HTTP gateway."""
    answer = post(server, '/', [{'text': 'still serving'}])
    assert len(answer.json()['data'][0]['embedding']) == 32


def assert_no_traceback(text: str) -> None:
    assert not any(mark in text for mark in TRACEBACK_MARKS), text[:500]


def png(size: tuple[int, int], mode: str = 'RGB') -> str:
    return base64.b64encode(encoded(sample_image(1, size=size, mode=mode))).decode()


def nested(depth: int, leaf: dict | None = None) -> dict:
    doc = leaf or {'text': 'leaf'}
    for _ in range(depth):
        doc = {'chunks': [doc]}
    return doc


def many(count: int) -> list[dict]:
    return [{'text': f'text {i}'} for i in range(count)]


def strip_tensor(height: int, width: int) -> dict:
    return {'tensor': np.full((height, width, 3), 128, dtype=np.uint8).tolist()}


# --- HTTP /post: (name, JSON body or raw bytes, the status it must get, text the answer must hold) ---

STRIP = {'text': None}  # marks the cases about cost: the server's memory is checked around them
HTTP_CASES = [
    ('empty-data', {'execEndpoint': '/', 'data': []}, 200, '"data":[]'),
    ('null-data', {'execEndpoint': '/', 'data': None}, 200, ''),
    ('no-data', {'execEndpoint': '/'}, 200, ''),
    ('empty-data-rank', {'execEndpoint': '/rank', 'data': []}, 200, ''),
    ('empty-data-search', {'execEndpoint': '/search', 'data': []}, 200, ''),
    ('empty-data-index', {'execEndpoint': '/index', 'data': []}, 200, ''),
    ('data-is-number', {'execEndpoint': '/', 'data': 5}, 422, ''),
    ('data-is-string', {'execEndpoint': '/', 'data': 'abc'}, 422, ''),
    ('doc-is-number', {'execEndpoint': '/', 'data': [5]}, 422, ''),
    ('doc-is-null', {'execEndpoint': '/', 'data': [None]}, 422, ''),
    ('doc-is-list', {'execEndpoint': '/', 'data': [[]]}, (200, 422), ''),
    ('doc-empty', {'execEndpoint': '/', 'data': [{}]}, 200, ''),
    ('lone-surrogate', {'execEndpoint': '/', 'data': [{'text': '\ud800'}]}, 400, ''),
    ('text-1mb', {'execEndpoint': '/', 'data': [{'text': 'a' * 1_000_000}]}, 400, 'max_text_chars'),
    ('text-is-number', {'execEndpoint': '/', 'data': [{'text': 5}]}, 200, ''),
    ('text-is-list', {'execEndpoint': '/', 'data': [{'text': ['a']}]}, 422, ''),
    ('blob-bad-base64', {'execEndpoint': '/', 'data': [{'blob': '!!!not base64!!!'}]}, 400, ''),
    ('blob-garbage', {'execEndpoint': '/', 'data': [{'blob': base64.b64encode(b'garbage').decode()}]}, 400, 'decode'),
    ('blob-is-number', {'execEndpoint': '/', 'data': [{'blob': 5}]}, 400, ''),
    ('tensor-nan', {'execEndpoint': '/', 'data': [{'tensor': [[float('nan')]]}]}, 400, ''),
    ('tensor-inf', {'execEndpoint': '/', 'data': [{'tensor': [[float('inf')] * 3]}]}, 400, ''),
    ('tensor-float', {'execEndpoint': '/', 'data': [{'tensor': [[[0.5, 0.5, 0.5]]]}]}, 400, 'uint8'),
    ('tensor-negative', {'execEndpoint': '/', 'data': [{'tensor': [[[-1, 0, 0]]]}]}, 400, ''),
    ('tensor-4d', {'execEndpoint': '/', 'data': [{'tensor': [[[[1, 2, 3]]]]}]}, 400, 'shape'),
    ('tensor-empty', {'execEndpoint': '/', 'data': [{'tensor': []}]}, 400, ''),
    ('tensor-ragged', {'execEndpoint': '/', 'data': [{'tensor': [[1, 2], [3]]}]}, (400, 422), ''),
    ('tensor-strip-wide', {'execEndpoint': '/', 'data': [strip_tensor(1, 20_000)]}, (200, 400), STRIP),
    ('tensor-strip-tall', {'execEndpoint': '/', 'data': [strip_tensor(20_000, 1)]}, (200, 400), STRIP),
    ('png-strip-grey', {'execEndpoint': '/', 'data': [{'blob': png((100_000, 1), 'L')}]}, (200, 400), STRIP),
    ('png-strips-rgb', {'execEndpoint': '/', 'data': [{'blob': png((1, 10_000))}] * 3}, (200, 400), STRIP),
    ('png-strip-rgb-long', {'execEndpoint': '/', 'data': [{'blob': png((1, 60_000))}]}, (200, 400), STRIP),
    ('png-huge-claimed', {'execEndpoint': '/', 'data': [{'blob': png((1, 1))[:8] + 'A' * 40}]}, 400, ''),
    ('uri-file', {'execEndpoint': '/', 'data': [{'uri': 'file:///etc/passwd'}]}, 400, 'does not read files'),
    ('uri-path', {'execEndpoint': '/', 'data': [{'uri': '/etc/passwd'}]}, 400, 'does not read files'),
    ('uri-http', {'execEndpoint': '/', 'data': [{'uri': 'http://169.254.169.254/'}]}, 400, 'fetch'),
    ('uri-data-bad', {'execEndpoint': '/', 'data': [{'uri': 'data:image/png;base64,!!!'}]}, 400, ''),
    ('uri-data-text-huge', {'execEndpoint': '/', 'data': [{'uri': 'data:text/plain,' + 'a' * 200_000}]}, 400, ''),
    ('nested-5', {'execEndpoint': '/', 'data': [nested(5)]}, 400, 'levels deep'),
    ('nested-100', {'execEndpoint': '/', 'data': [nested(100)]}, 400, ''),
    ('nested-matches', {'execEndpoint': '/rank', 'data': [{'matches': [{'matches': [nested(4)]}]}]}, 400, ''),
    ('too-many-top', {'execEndpoint': '/', 'data': many(MAX_DOCS + 1)}, 413, 'max_docs_per_request'),
    ('too-many-chunks', {'execEndpoint': '/', 'data': [{'chunks': many(MAX_DOCS)}]}, 413, 'max_docs_per_request'),
    (
        'too-many-cc',
        {'execEndpoint': '/', 'data': [{'chunks': [{'chunks': many(40)}] * 2}], 'parameters': {'access_paths': '@cc'}},
        413,
        'max_docs_per_request',
    ),
    (
        'rank-deep-matches',
        {'execEndpoint': '/rank', 'data': [{'text': 'q', 'matches': [{'text': 'm', 'matches': many(MAX_DOCS)}]}]},
        413,
        'max_docs_per_request',
    ),
    ('limit-huge', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': 10**9}}, 413, ''),
    ('limit-zero', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': 0}}, 400, 'limit'),
    ('limit-text', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': 'all'}}, 400, ''),
    ('limit-null', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': None}}, 400, ''),
    ('limit-list', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': [1]}}, 400, ''),
    ('paths-number', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'access_paths': 5}}, 400, ''),
    ('paths-list', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'access_paths': ['@r']}}, 400, ''),
    ('paths-dict', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'traversal_paths': {}}}, 400, ''),
    ('paths-bogus', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'access_paths': '@zz'}}, 400, ''),
    (
        'paths-huge',
        {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'access_paths': '@' + 'c' * 999}},
        400,
        '',
    ),
    ('target-index', {'execEndpoint': '/index', 'data': [{'text': 'a'}], 'targetExecutor': 'index'}, 400, 'target'),
    ('target-encoder', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'targetExecutor': 'clip'}, 400, 'target'),
    ('target-regex', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'targetExecutor': '.*'}, 400, 'target'),
    ('target-errors', {'execEndpoint': '/', 'data': [{'blob': 'AAAA'}], 'targetExecutor': 'clip'}, 400, 'target'),
    ('delete-ids-number', {'execEndpoint': '/delete', 'data': [], 'parameters': {'ids': 5}}, 200, ''),
    ('delete-ids-number-doc', {'execEndpoint': '/delete', 'data': [{'id': 'x'}], 'parameters': {'ids': 5}}, 400, 'ids'),
    ('delete-ids-null', {'execEndpoint': '/delete', 'data': [{'id': 'x'}], 'parameters': {'ids': None}}, 400, 'ids'),
    ('delete-ids-nested', {'execEndpoint': '/delete', 'data': [{'id': 'x'}], 'parameters': {'ids': [[1]]}}, 400, ''),
    (
        'index-nan-embedding',
        {'execEndpoint': '/index', 'data': [{'embedding': [float('nan')] * 32}]},
        400,
        'cannot be read',
    ),
    (
        'index-inf-embedding',
        {'execEndpoint': '/index', 'data': [{'embedding': [float('inf')] * 32}]},
        400,
        'cannot be read',
    ),
    ('index-zero-embedding', {'execEndpoint': '/index', 'data': [{'embedding': [0.0] * 32}]}, 400, 'zeros'),
    ('index-wrong-dim', {'execEndpoint': '/index', 'data': [{'embedding': [1.0] * 7}]}, 400, '-d'),
    ('index-no-content', {'execEndpoint': '/index', 'data': [{'id': 'nothing'}]}, 400, 'no embedding'),
    (
        'search-nan-query',
        {'execEndpoint': '/search', 'data': [{'embedding': [float('nan')] * 32}]},
        400,
        'cannot be read',
    ),
    ('unknown-endpoint', {'execEndpoint': '/nope', 'data': [{'text': 'a'}]}, 200, ''),
    ('endpoint-is-number', {'execEndpoint': 5, 'data': [{'text': 'a'}]}, (200, 422), ''),
    ('parameters-is-list', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': [1]}, 422, ''),
    ('mime-lies', {'execEndpoint': '/', 'data': [{'blob': png((9, 9)), 'mime_type': 'text/plain'}]}, 200, ''),
    ('json-malformed', b'{"execEndpoint": "/", "data": [', 422, ''),
    ('json-not-object', b'[1, 2, 3]', 422, ''),
    ('json-deep', b'[' * 100_000 + b']' * 100_000, (400, 422), ''),
    ('json-nan-top', b'NaN', 422, ''),
    ('json-invalid-utf8', b'{"execEndpoint": "/", "data": [{"text": "\xff\xfe"}]}', (400, 422), ''),
    ('json-empty-body', b'', 422, ''),
]


@pytest.mark.parametrize(('body', 'status', 'holds'), [case[1:] for case in HTTP_CASES], ids=[c[0] for c in HTTP_CASES])
def test_http_abuse_gets_a_client_error_and_the_server_goes_on(server, body, status, holds):
    before = memory(server)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**AUTH, 'Content-Type': 'application/json'}
    answer = requests.post(url(server, '/post'), data=raw, headers=headers, timeout=60)
    assert answer.status_code in (status if isinstance(status, tuple) else (status,)), answer.text[:400]
    assert_no_traceback(answer.text)
    if holds is STRIP:  # the resize of a strip must not cost gigabytes (it was 5.5 GB for 100000x1)
        assert memory(server) - before < 400 * 2**20
    elif holds:
        assert holds in answer.text, answer.text[:400]
    assert_still_serving(server)


# --- the critical leak: requests without documents never released the overload bound ---


@pytest.mark.parametrize('data', [[], None], ids=['empty', 'null'])
def test_requests_without_documents_never_wedge_the_server(server, data):
    """Ten times the pending bound of empty requests on each protocol, then everything still works."""
    for _ in range(10 * MAX_PENDING):
        answer = requests.post(url(server, '/post'), json={'execEndpoint': '/', 'data': data}, headers=AUTH, timeout=10)
        assert answer.status_code == 200
    empty = DataRequest()
    empty.header.exec_endpoint = '/'
    with grpc.insecure_channel(f'127.0.0.1:{server.ports["grpc"]}') as channel:
        call = jina_pb2_grpc.JinaSingleDataRequestRPCStub(channel).process_single_data
        for _ in range(10 * MAX_PENDING):
            assert len(call(empty, metadata=(('authorization', TOKEN),), timeout=10).docs) == 0
    asyncio.run(_websocket_empties(server, 10 * MAX_PENDING))
    assert requests.get(url(server, '/health/ready'), timeout=5).status_code == 200
    assert_still_serving(server)
    embeddings = JinaClient(host='127.0.0.1', port=server.ports['grpc']).post(
        '/', DocumentArray([Document(text='after the flood')]), metadata=(('authorization', TOKEN),)
    )
    assert embeddings[0].embedding.shape == (32,)


async def _websocket_empties(server, count: int) -> None:
    async with websockets.connect(f'ws://127.0.0.1:{server.ports["websocket"]}/?token={TOKEN}') as ws:
        for _ in range(count):
            await ws.send(json.dumps({'execEndpoint': '/', 'data': []}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert answer['header']['status'] in (None, {}) or answer['header']['status'].get('code', 0) == 0


# --- WebSocket: the same bad documents as JSON messages ---

WS_CASES = [
    ('target', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'targetExecutor': 'clip'}, 'targetExecutor'),
    ('nested', {'execEndpoint': '/', 'data': [nested(6)]}, 'levels deep'),
    ('too-many', {'execEndpoint': '/', 'data': many(MAX_DOCS + 1)}, 'max_docs_per_request'),
    ('limit', {'execEndpoint': '/search', 'data': [{'text': 'a'}], 'parameters': {'limit': 10**9}}, 'max_search_limit'),
    ('paths', {'execEndpoint': '/', 'data': [{'text': 'a'}], 'parameters': {'access_paths': 5}}, 'access_paths'),
    ('blob', {'execEndpoint': '/', 'data': [{'blob': base64.b64encode(b'junk').decode()}]}, 'decode'),
    ('tensor', {'execEndpoint': '/', 'data': [{'tensor': [[[0.5, 0.5, 0.5]]]}]}, 'uint8'),
    ('uri', {'execEndpoint': '/', 'data': [{'uri': 'file:///etc/passwd'}]}, 'does not read files'),
    ('nan-index', {'execEndpoint': '/index', 'data': [{'embedding': [float('nan')] * 32}]}, 'NaN'),
    ('delete-ids', {'execEndpoint': '/delete', 'data': [{'id': 'x'}], 'parameters': {'ids': 5}}, 'ids'),
]


@pytest.mark.parametrize(('message', 'expected'), [c[1:] for c in WS_CASES], ids=[c[0] for c in WS_CASES])
def test_websocket_abuse_is_the_requests_error_and_the_server_goes_on(server, message, expected):
    async def exchange() -> str:
        async with websockets.connect(f'ws://127.0.0.1:{server.ports["websocket"]}/?token={TOKEN}') as ws:
            await ws.send(json.dumps(message))
            return await asyncio.wait_for(ws.recv(), 30)

    answer = asyncio.run(exchange())
    assert expected in answer and json.loads(answer)['header']['status']['code'] == 1  # ERROR
    assert_no_traceback(answer)
    assert_still_serving(server)


# --- gRPC: raw messages, as a client of its own would send them ---


def grpc_request(docs: DocumentArray, endpoint: str = '/', parameters: dict | None = None, target: str = ''):
    request = DataRequest()
    request.data.docs = docs
    request.header.exec_endpoint = endpoint
    request.header.target_executor = target
    request.parameters = parameters or {}
    return request


def deep_doc(depth: int) -> Document:
    doc = Document(text='leaf')
    for _ in range(depth):
        doc = Document(chunks=[doc])
    return doc


GRPC_CASES = [
    ('target', grpc_request(DocumentArray([Document(text='a')]), target='index'), 'targetExecutor'),
    ('nested', grpc_request(DocumentArray([deep_doc(6)])), 'levels deep'),
    ('too-many', grpc_request(DocumentArray([Document(text=str(i)) for i in range(MAX_DOCS + 1)])), 'max_docs'),
    (
        'too-many-matches',
        grpc_request(
            DocumentArray([Document(text='q', matches=[Document(text=str(i)) for i in range(MAX_DOCS)])]), '/rank'
        ),
        'max_docs_per_request',
    ),
    ('limit', grpc_request(DocumentArray([Document(text='a')]), '/search', {'limit': 10**9}), 'max_search_limit'),
    ('paths', grpc_request(DocumentArray([Document(text='a')]), parameters={'access_paths': 5}), 'access_paths'),
    ('blob', grpc_request(DocumentArray([Document(blob=b'junk')])), 'decode'),
    ('tensor-nan', grpc_request(DocumentArray([Document(tensor=np.full((4, 4, 3), np.nan))])), 'uint8'),
    ('strip', grpc_request(DocumentArray([Document(tensor=np.zeros((1, 30_000, 3), np.uint8))])), None),
    ('uri', grpc_request(DocumentArray([Document(uri='file:///etc/passwd')])), 'does not read files'),
    ('nan-index', grpc_request(DocumentArray([Document(embedding=np.full(32, np.nan))]), '/index'), 'NaN'),
    ('delete-ids', grpc_request(DocumentArray([Document()]), '/delete', {'ids': 5}), 'ids'),
    ('nan-query', grpc_request(DocumentArray([Document(embedding=np.full(32, np.nan))]), '/search'), 'NaN'),
    ('zero-index', grpc_request(DocumentArray([Document(embedding=np.zeros(32))]), '/index'), 'zeros'),
    ('dim-index', grpc_request(DocumentArray([Document(embedding=np.ones(5))]), '/index'), '-d'),
    ('empty-text', grpc_request(DocumentArray([Document(text='')]), '/rank'), 'has no text'),
]


@pytest.mark.parametrize(('request_proto', 'expected'), [c[1:] for c in GRPC_CASES], ids=[c[0] for c in GRPC_CASES])
def test_grpc_abuse_is_the_requests_error_and_the_server_goes_on(server, request_proto, expected):
    before = memory(server)
    with grpc.insecure_channel(f'127.0.0.1:{server.ports["grpc"]}') as channel:
        call = jina_pb2_grpc.JinaSingleDataRequestRPCStub(channel).process_single_data
        response = call(request_proto, metadata=(('authorization', TOKEN),), timeout=60)
    status = response.header.status
    if expected is None:  # a cost case: either served or refused, but cheaply
        assert memory(server) - before < 400 * 2**20
    else:
        assert status.code == status.ERROR and expected in status.description, status.description
        assert not status.exception.stacks
    assert_still_serving(server)


@pytest.mark.parametrize(
    ('metadata', 'code'),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        ((('authorization', 'wrong'),), grpc.StatusCode.UNAUTHENTICATED),
        ((('authorization', TOKEN), ('authorization', 'wrong')), grpc.StatusCode.UNAUTHENTICATED),
        ((('authorization', 'wrong'), ('authorization', TOKEN)), grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=['none', 'wrong', 'right-then-wrong', 'wrong-then-right'],
)
def test_grpc_needs_exactly_one_right_token(server, metadata, code):
    with grpc.insecure_channel(f'127.0.0.1:{server.ports["grpc"]}') as channel:
        call = jina_pb2_grpc.JinaSingleDataRequestRPCStub(channel).process_single_data
        with pytest.raises(grpc.RpcError) as refused:
            call(grpc_request(DocumentArray([Document(text='a')])), metadata=metadata, timeout=10)
    assert refused.value.code() == code


def test_grpc_status_and_discovery(server):
    """`_status` needs the token and then says nothing; discovery works with the token; the
    single-document streaming RPC, which would skip the edge, is not served."""
    with grpc.insecure_channel(f'127.0.0.1:{server.ports["grpc"]}') as channel:
        status = jina_pb2_grpc.JinaInfoRPCStub(channel)._status
        with pytest.raises(grpc.RpcError) as refused:
            status(jina_pb2.google_dot_protobuf_dot_empty__pb2.Empty(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = status(jina_pb2.google_dot_protobuf_dot_empty__pb2.Empty(), metadata=(('authorization', TOKEN),))
        assert not info.jina and not info.envs
        discover = jina_pb2_grpc.JinaDiscoverEndpointsRPCStub(channel).endpoint_discovery
        endpoints = discover(jina_pb2.google_dot_protobuf_dot_empty__pb2.Empty(), metadata=(('authorization', TOKEN),))
        assert '/rank' in endpoints.endpoints
        stream = jina_pb2_grpc.JinaSingleDocumentRequestRPCStub(channel).stream_doc
        with pytest.raises(grpc.RpcError) as unserved:
            list(stream(SingleDocumentRequest(), metadata=(('authorization', TOKEN),), timeout=10))
        assert unserved.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- around the gateway: the executors' own ports ---


def executor_ports(server) -> dict[int, str]:
    """Each port that a process of the Flow (other than the gateway's) listens on, with its address."""
    gateway = set(server.ports.values())
    found = {}
    for process in server.tree.children(recursive=True):
        for connection in process.net_connections(kind='tcp'):
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port not in gateway:
                found[connection.laddr.port] = connection.laddr.ip
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (ip.ipv4_mapped or ip).is_loopback  # gRPC reports 127.0.0.1 as ::ffff:127.0.0.1


def test_executors_listen_on_loopback_and_refuse_callers_without_the_internal_token(server):
    ports = executor_ports(server)
    assert len(ports) >= 2  # the encoder and the index
    assert all(_loopback(address) for address in ports.values()), ports
    for port in ports:
        with grpc.insecure_channel(f'127.0.0.1:{port}') as channel:
            call = jina_pb2_grpc.JinaSingleDataRequestRPCStub(channel).process_single_data
            for metadata in [(), (('authorization', TOKEN),)]:  # the clients' token is not the internal one
                with pytest.raises(grpc.RpcError) as refused:
                    call(grpc_request(DocumentArray([Document(text='a')]), '/count'), metadata=metadata, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_still_serving(server)


@pytest.mark.parametrize('holder', ['clip/rep-0', 'gateway/rep-0'])
def test_a_port_held_by_another_process_is_not_shared(tiny_weights, tmp_path, holder):
    """gRPC lets a second server of the same user bind a port already taken (SO_REUSEPORT), and the
    kernel then splits connections between the two: clients or another server's gateway would reach
    the wrong process. The stand-in for that other server binds the port without listening, so
    jina's own check (a connect) finds it free; the executor and the gateway still refuse to share."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(('127.0.0.1', 0))
    taken = other.getsockname()[1]
    port = taken if holder == 'gateway/rep-0' else free_port()
    executor_port = f'\n    port: {taken}' if holder == 'clip/rep-0' else ''
    with_params = {'name': 'tiny-vit', 'model_path': str(tiny_weights['tiny-vit'])}
    yaml_text = flow_yaml(port, with_params=with_params, executor_extra=executor_port)
    try:
        with pytest.raises(RuntimeError, match=rf'{holder}: RuntimeError: Failed to bind to address [0-9.]+:{taken}'):
            start_server(tmp_path, yaml_text, port)
    finally:
        other.close()


# --- HTTP around the token and the body ---


def test_http_status_says_nothing_and_needs_the_token(server):
    assert requests.get(url(server, '/status'), timeout=5).status_code == 401
    answer = requests.get(url(server, '/status'), headers=AUTH, timeout=5)
    assert answer.status_code == 200 and answer.json() == {'jina': {}, 'envs': {}}


@pytest.mark.parametrize(
    ('target', 'headers', 'status'),
    [
        ('/post', {}, 401),
        (f'/post?token={TOKEN}', {}, 401),  # tokens in URLs end up in access logs: WebSocket only
        ('/post', {'Authorization': f'Bearer {TOKEN}'}, 200),
    ],
    ids=['none', 'query-token', 'bearer'],
)
def test_http_token_only_in_one_header(server, target, headers, status):
    body = {'execEndpoint': '/', 'data': [{'text': 'a'}]}
    assert requests.post(url(server, target), json=body, headers=headers, timeout=30).status_code == status


def test_two_authorization_headers_are_refused(server):
    """Proxies and servers disagree on which of two counts: neither does."""
    request = (
        f'POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\nAuthorization: wrong\r\n'
        'Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'
    )
    assert _raw_http(server, request.encode()).startswith(b'HTTP/1.1 401')


def test_a_body_shorter_than_its_content_length_is_cut_off(server):
    started = time.monotonic()
    request = (
        f'POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {TOKEN}\r\n'
        'Content-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{"data": ['
    )
    answer = _raw_http(server, request.encode())
    assert answer.startswith(b'HTTP/1.1 408') and b'request_body_seconds' in answer
    assert time.monotonic() - started < 10


def _raw_http(server, request: bytes) -> bytes:
    with socket.create_connection(('127.0.0.1', server.ports['http']), timeout=20) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b''.join(chunks)


def test_a_browser_preflight_passes_and_refusals_carry_no_frames(server):
    preflight = requests.options(
        url(server, '/post'),
        headers={'Origin': 'http://example.test', 'Access-Control-Request-Method': 'POST'},
        timeout=5,
    )
    assert preflight.status_code != 401


# --- the index cannot be poisoned ---


def test_the_index_is_never_poisoned_by_non_finite_vectors(server):
    for attempt in (
        {'execEndpoint': '/index', 'data': [{'id': 'poison', 'embedding': [float('nan')] * 32}]},
        {'execEndpoint': '/index', 'data': [{'id': 'poison', 'embedding': [1.0] * 32}], 'targetExecutor': 'index'},
    ):
        raw = json.dumps(attempt).encode()  # NaN as JSON's NaN literal, which the gateway parses
        headers = {**AUTH, 'Content-Type': 'application/json'}
        assert requests.post(url(server, '/post'), data=raw, headers=headers, timeout=30).status_code == 400
    found = post(server, '/search', [{'text': 'a dog on a beach'}], {'limit': 5}).json()['data'][0]['matches']
    assert [match['id'] for match in found][0] == 'dog' and 'poison' not in {match['id'] for match in found}


# --- the OpenAI API ---

OPENAI_CASES = [
    ('input-empty-list', {'input': []}, 400),
    ('input-null', {'input': None}, 400),
    ('input-missing', {}, 400),
    ('input-number', {'input': 5}, 400),
    ('input-number-list', {'input': [5]}, 400),
    ('input-token-ids', {'input': [[1, 2, 3]]}, 400),
    ('input-dict-wrong', {'input': [{'text': 5}]}, 400),
    ('input-dict-extra', {'input': [{'text': 'a', 'image': 'b'}]}, 400),
    ('input-surrogate', {'input': ['\ud800']}, 400),
    ('input-huge-text', {'input': ['a' * 1_000_000]}, 400),
    ('input-too-many', {'input': ['a'] * (MAX_DOCS + 1)}, (400, 413)),
    ('image-bad-base64', {'input': [{'image': 'data:image/png;base64,!!!'}]}, 400),
    ('image-garbage', {'input': [{'image': 'data:image/png;base64,' + base64.b64encode(b'x').decode()}]}, 400),
    ('image-url-off', {'input': [{'image': 'http://127.0.0.1/a.png'}]}, 400),
    ('image-file-url', {'input': [{'image': 'file:///etc/passwd'}]}, 400),
    ('image-strip', {'input': [{'image': 'data:image/png;base64,' + png((1, 50_000))}]}, (200, 400)),
    ('model-unknown', {'input': ['a'], 'model': 'gpt-9'}, (400, 404)),
    ('model-number', {'input': ['a'], 'model': 5}, 400),
    ('dimensions-wrong', {'input': ['a'], 'dimensions': 7}, 400),
    ('dimensions-text', {'input': ['a'], 'dimensions': 'x'}, 400),
    ('encoding-unknown', {'input': ['a'], 'encoding_format': 'hex'}, 400),
    ('body-list', [1, 2], 400),
    ('body-string', 'hello', 400),
    ('body-deep', None, 400),  # JSON nested 100k deep, written below
    ('body-malformed', b'{"input": [', 400),
    ('body-not-utf8', b'{"input": ["\xff"]}', 400),
]


@pytest.mark.parametrize(('body', 'status'), [c[1:] for c in OPENAI_CASES], ids=[c[0] for c in OPENAI_CASES])
def test_openai_abuse_gets_an_openai_error_and_the_server_goes_on(server, body, status):
    if body is None:
        raw = b'{"input": ' + b'[' * 100_000 + b']' * 100_000 + b'}'
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = json.dumps(body).encode()
    headers = {**AUTH, 'Content-Type': 'application/json'}
    answer = requests.post(url(server, '/v1/embeddings'), data=raw, headers=headers, timeout=60)
    assert answer.status_code in (status if isinstance(status, tuple) else (status,)), answer.text[:400]
    assert_no_traceback(answer.text)
    if answer.status_code >= 400:
        assert answer.json()['error']['message']
    assert_still_serving(server)
