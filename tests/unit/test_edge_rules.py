"""The gateway edge's rules without a server: settings, refusals, the body cap, readiness, and the
documented option table against the code."""

import asyncio
import inspect
import logging
import re
from pathlib import Path

import grpc
import pytest
from docarray import Document, DocumentArray
from jina.types.request.data import DataRequest

from clip_server import edge
from clip_server.edge import DRAINING, Edge, EdgeSettings, Refusal
from clip_server.gateway import _ClipEdge
from clip_server.types import ConfigurationError

DOCS = Path(__file__).parents[2] / 'docs'


def make_edge(replicas: int = 1, **settings) -> Edge:
    deployments = {'clip': [f'127.0.0.1:{port}' for port in range(replicas)], 'input_errors': ['127.0.0.1:9']}
    return Edge(EdgeSettings(**settings), deployments, logging.getLogger('test'))


def request_with(docs: DocumentArray) -> DataRequest:
    request = DataRequest()
    request.data.docs = docs
    request.header.exec_endpoint = '/'
    return DataRequest(request.SerializeToString())  # as the gateway receives it: bytes, parsed lazily


@pytest.mark.parametrize('bad', [0, -1, 'ten', True])
def test_settings_must_be_positive_numbers(bad):
    with pytest.raises(ConfigurationError, match='max_docs_per_request must be a positive number'):
        EdgeSettings(max_docs_per_request=bad)


def test_the_pending_bound_scales_with_the_largest_executors_replicas():
    assert make_edge(replicas=3, max_pending_per_replica=5).max_pending == 15


def test_new_calls_are_refused_while_draining_or_over_the_bound():
    guard = make_edge(max_pending_per_replica=2)
    assert guard.refusal() is None
    guard.pending = 2
    busy = guard.refusal()
    assert busy.http_status == 429 and busy.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 'the limit is 2 (max_pending_per_replica)' in busy.message
    assert guard.refusal(carries_documents=False) is None  # probes and discovery are never "busy"
    guard.draining = True
    assert guard.refusal(carries_documents=False) is DRAINING


def test_documents_are_counted_with_matches_and_chunks():
    query = Document(text='q', matches=[Document(text='a'), Document(text='b')], chunks=[Document(text='c')])
    assert edge._document_count(request_with(DocumentArray([query, Document(text='d')]))) == 5


def test_a_request_over_max_docs_is_answered_with_an_error_naming_the_limit():
    async def run():
        guard = make_edge(max_docs_per_request=3)
        sent = []

        def to_executors(request, return_type):
            sent.append(request)
            future = asyncio.get_running_loop().create_future()
            future.set_result(request)
            return future, None

        handle = guard.admitting(to_executors)
        refused, _ = handle(request_with(DocumentArray([Document(text=str(i)) for i in range(4)])), DocumentArray)
        response = await refused
        assert sent == [] and guard.refused_here(response) and len(response.docs) == 0
        assert 'the request has 4 documents, over max_docs_per_request (3)' in response.header.status.description
        admitted, _ = handle(request_with(DocumentArray([Document(text='ok')])), DocumentArray)
        assert guard.pending == 1
        await admitted
        await asyncio.sleep(0)  # the done-callback runs
        assert len(sent) == 1 and guard.pending == 0

    asyncio.run(run())


def body_receiver(chunks: list[bytes]):
    messages = [
        {'type': 'http.request', 'body': chunk, 'more_body': i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0)

    return receive


@pytest.mark.parametrize(
    ('headers', 'chunks', 'expected'),
    [
        ([(b'content-length', b'11')], [b'x' * 11], 'the request body is 11 bytes, over max_request_bytes (10)'),
        ([], [b'x' * 6, b'y' * 6], 'the request body is at least 12 bytes, over max_request_bytes (10)'),
        ([], [b'x' * 4, b'y' * 6], b'xxxxyyyyyy'),
    ],
    ids=['declared', 'streamed', 'within'],
)
def test_the_body_cap(headers, chunks, expected):
    body = asyncio.run(edge._body_within(body_receiver(chunks), {'headers': headers}, limit=10))
    if isinstance(expected, bytes):
        assert body == expected
    else:
        assert isinstance(body, Refusal) and body.http_status == 413 and body.message == expected


def test_readiness_reports_its_reason():
    guard = make_edge()
    assert guard.readiness() == (503, {'ready': False, 'reason': 'starting: the executors have not answered yet'})
    guard.ready = True
    assert guard.readiness() == (200, {'ready': True})


def test_readiness_needs_every_executor_to_answer():
    """Nothing listens on these addresses: not ready, naming the first executor."""
    assert asyncio.run(make_edge()._executors_answer()) == (False, 'executor clip does not answer yet')


def test_the_documented_gateway_options_match_the_code():
    text = (DOCS / 'yaml.md').read_text()
    section = text.split('### Limits, overload, probes and drain')[1].split('```yaml')[0]
    documented = dict(re.findall(r'^\| `(\w+)` \| `([\d.]+)`', section, flags=re.MULTILINE))
    parameters = inspect.signature(_ClipEdge.__init__).parameters
    code = {name: parameters[name].default for name in documented}
    assert documented.keys() == {
        'max_request_bytes',
        'max_docs_per_request',
        'max_pending_per_replica',
        'drain_seconds',
    }
    assert {name: float(value) for name, value in documented.items()} == code
