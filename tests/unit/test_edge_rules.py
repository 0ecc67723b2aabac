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

from clip_server.gateway import _ClipEdge, edge
from clip_server.gateway.edge import DRAINING, Edge, EdgeSettings
from clip_server.gateway.errors import Refusal
from clip_server.gateway.http_hooks import _body_within
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


def test_documents_are_counted_with_matches_and_chunks_at_every_depth():
    query = Document(text='q', matches=[Document(text='a'), Document(text='b')], chunks=[Document(text='c')])
    deep = Document(chunks=[Document(chunks=[Document(text=str(i)) for i in range(5)])])
    assert edge._document_count(request_with(DocumentArray([query, Document(text='d'), deep]))) == 12


def nested(depth: int) -> Document:
    doc = Document(text='leaf')
    for _ in range(depth):
        doc = Document(chunks=[doc])
    return doc


def held_by_executors(sent: list):
    """A stand-in for jina's request handler: each request's response waits until the test sets it."""

    def to_executors(request, return_type):
        future = asyncio.get_running_loop().create_future()
        sent.append((request, future))
        return future, None

    return to_executors


async def admit(guard: Edge, request, sent: list):
    """Hand `request` to the edge; a response the executors would give is answered at once."""
    answer, _ = guard.admitting(held_by_executors(sent))(request, DocumentArray)
    await asyncio.sleep(0)
    if sent and not sent[-1][1].done():
        sent[-1][1].set_result(request)
    return await answer


@pytest.mark.parametrize(
    ('docs', 'parameters', 'target', 'status', 'message'),
    [
        ([Document(text=str(i)) for i in range(4)], {}, '', 'RequestLimitError', 'the request has 4 documents'),
        ([Document(chunks=[Document(text=str(i)) for i in range(3)])], {}, '', 'RequestLimitError', '4 documents'),
        ([nested(edge.MAX_NESTING + 1)], {}, '', 'InvalidInputError', 'more than 4 levels deep'),
        ([Document(text='a')], {}, 'index', 'InvalidInputError', "targetExecutor \\('index'\\) is not accepted"),
        ([Document(text='a')], {'limit': 10**9}, '', 'RequestLimitError', 'over max_search_limit \\(1,000\\)'),
        ([Document(text='a')], {'limit': 0}, '', 'InvalidInputError', 'limit must be a positive integer, got 0'),
        ([Document(text='a')], {'limit': 'ten'}, '', 'InvalidInputError', "got 'ten'"),
        ([Document(text='a')], {'access_paths': 5}, '', 'InvalidInputError', 'access_paths must be a docarray path'),
        ([Document(text='a')], {'traversal_paths': ['@r']}, '', 'InvalidInputError', 'traversal_paths must be'),
    ],
    ids=[
        'top-level',
        'chunks',
        'too-deep',
        'target-executor',
        'limit-huge',
        'limit-zero',
        'limit-text',
        'paths-int',
        'paths-list',
    ],
)
def test_a_request_that_breaks_a_rule_is_answered_at_the_door(docs, parameters, target, status, message):
    async def run():
        guard, sent = make_edge(max_docs_per_request=3), []
        request = request_with(DocumentArray(docs))
        request.parameters = parameters
        request.header.target_executor = target
        response = await admit(guard, DataRequest(request.proto.SerializeToString()), sent)
        assert sent == [] and guard.refused_here(response) and len(response.docs) == 0
        assert response.header.status.exception.name == status
        assert re.search(message, response.header.status.description)
        assert guard.pending == 0

    asyncio.run(run())


def test_a_request_without_documents_is_answered_empty_at_the_door():
    """jina never answers one: the edge does, so it never counts as pending."""

    async def run():
        guard, sent = make_edge(), []
        response = await admit(guard, request_with(DocumentArray()), sent)
        assert sent == [] and guard.refused_here(response)
        assert response.header.status.code == response.header.status.SUCCESS and len(response.docs) == 0
        assert guard.pending == 0

    asyncio.run(run())


def test_pending_counts_a_request_until_its_call_ends_however_it_ends():
    async def run():
        guard, sent = make_edge(), []
        handle = guard.admitting(held_by_executors(sent))
        answered, _ = handle(request_with(DocumentArray([Document(text='ok')])), DocumentArray)
        abandoned, _ = handle(request_with(DocumentArray([Document(text='gone')])), DocumentArray)
        await asyncio.sleep(0)
        assert guard.pending == 2
        sent[0][1].set_result(sent[0][0])
        response = await answered
        assert not guard.refused_here(response) or not response.routes  # a plain response, passed on
        abandoned.cancel()  # the client went away; jina's own future never resolves
        await asyncio.gather(abandoned, return_exceptions=True)
        assert guard.pending == 0
        never_started, _ = handle(request_with(DocumentArray([Document(text='at once')])), DocumentArray)
        assert guard.pending == 1  # counted at once: a request in the same turn of the loop sees it
        never_started.cancel()  # before its first step: its release still runs
        await asyncio.gather(never_started, return_exceptions=True)
        assert guard.pending == 0 and guard.pending_bytes == 0

    asyncio.run(run())


def test_past_max_pending_bytes_a_request_is_turned_away_until_the_bytes_are_released():
    """Requests count the bytes they arrived in (noted per gRPC message, or the HTTP body in the
    context) while pending; one that would pass the limit is answered busy at the door."""

    async def run():
        guard, sent = make_edge(max_pending_bytes=1000), []
        handle = guard.admitting(held_by_executors(sent))
        big, second = (
            request_with(DocumentArray([Document(text='a')])),
            request_with(DocumentArray([Document(text='b')])),
        )
        edge.note_wire_bytes(big, 1500)  # over the limit alone: admitted, as nothing else is pending
        held, _ = handle(big, DocumentArray)
        assert (guard.pending, guard.pending_bytes) == (1, 1500)
        token = edge.arrived_bytes.set(1)  # as the HTTP hook sets it for a body of one byte
        try:
            refused = await handle(second, DocumentArray)[0]
        finally:
            edge.arrived_bytes.reset(token)
        assert guard.refused_here(refused) and refused.header.status.exception.name == 'ServerBusyError'
        assert refused.header.status.description == (
            'the server is busy: 1,500 bytes of requests pending and this one of 1, '
            'the limit is 1,000 (max_pending_bytes); retry later'
        )
        sent[0][1].set_result(sent[0][0])
        await held
        assert (guard.pending, guard.pending_bytes) == (0, 0)
        third = request_with(DocumentArray([Document(text='c')]))
        edge.note_wire_bytes(third, 999)
        await admit(guard, third, sent)
        assert [request for request, _ in sent] == [big, third] and guard.pending_bytes == 0

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
    body = asyncio.run(_body_within(body_receiver(chunks), {'headers': headers}, limit=10))
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
        'max_pending_bytes',
        'drain_seconds',
        'max_search_limit',
        'request_body_seconds',
    }
    assert {name: float(value) for name, value in documented.items()} == code


def test_a_replica_that_stops_answering_is_logged_and_liveness_follows_the_last_one(monkeypatch, caplog):
    """Replicas answer by address: both, then one (ERROR logged, still live and ready), then none
    (not live: the supervisor should restart the server), then one again (live)."""
    guard = make_edge(replicas=2)
    answering: set[str] = set()

    async def serving(address: str) -> bool:
        return address in answering

    monkeypatch.setattr(edge, '_serving', serving)
    everyone = {'127.0.0.1:0', '127.0.0.1:1', '127.0.0.1:9'}
    steps = [
        (everyone, (True, ''), 200),
        (everyone - {'127.0.0.1:0'}, (True, ''), 200),
        ({'127.0.0.1:9'}, (False, 'executor clip does not answer yet'), 503),
        (everyone - {'127.0.0.1:0'}, (True, ''), 200),
    ]
    with caplog.at_level(logging.INFO, logger='test'):
        for addresses, readiness, live in steps:
            answering.clear()
            answering.update(addresses)
            assert asyncio.run(guard._executors_answer()) == readiness
            assert guard.liveness()[0] == live
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert errors == [
        'executor clip: the replica at 127.0.0.1:0 stopped answering',
        'executor clip: the replica at 127.0.0.1:1 stopped answering',
    ]
    assert guard.liveness() == (200, {'live': True})


def test_a_replica_answering_late_for_the_first_time_is_not_said_to_answer_again(monkeypatch, caplog):
    guard = make_edge(replicas=2)
    answering = {'127.0.0.1:0', '127.0.0.1:9'}  # replica 1 is still loading when the Flow is ready

    async def serving(address: str) -> bool:
        return address in answering

    monkeypatch.setattr(edge, '_serving', serving)
    with caplog.at_level(logging.INFO, logger='test'):
        asyncio.run(guard._executors_answer())
        answering.add('127.0.0.1:1')
        asyncio.run(guard._executors_answer())
        answering.discard('127.0.0.1:1')
        asyncio.run(guard._executors_answer())
        answering.add('127.0.0.1:1')
        asyncio.run(guard._executors_answer())
    about_1 = [record.getMessage() for record in caplog.records if '127.0.0.1:1' in record.getMessage()]
    assert about_1 == [
        'executor clip: the replica at 127.0.0.1:1 answers',
        'executor clip: the replica at 127.0.0.1:1 stopped answering',
        'executor clip: the replica at 127.0.0.1:1 answers again',
    ]


def test_liveness_holds_while_starting():
    """An executor that never answered yet is starting, not dead."""
    guard = make_edge()
    asyncio.run(guard._executors_answer())
    assert guard.liveness() == (200, {'live': True})
