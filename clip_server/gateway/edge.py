"""The gateway's production edge, shared by its gRPC, HTTP and WebSocket servers.

- Limits: bytes per request (gRPC's receive limit, an HTTP body cap, WebSocket's frame cap) and
  documents per request; each refusal names the limit and the value.
- Overload: at most `max_pending_per_replica` x replicas requests in the Flow at once, and at most
  `max_pending_bytes` of them as they arrived (what the gateway and the executors hold while they
  wait); past either, new requests are refused at once (gRPC RESOURCE_EXHAUSTED or the request's
  error, HTTP 429) instead of queueing.
- Probes: HTTP `/health/live` and `/health/ready`, and the gRPC health service's overall status,
  say ready only when one replica of every executor answers (an executor serves once its model
  has loaded and encoded a warm-up batch), and not while draining.
- Drain: on shutdown, readiness turns off, new calls are refused (HTTP 503, gRPC UNAVAILABLE,
  WebSocket handshakes), and the calls already open finish, up to `drain_seconds`.
- HTTP status codes: 400 for a request that failed on its documents, 500 for other executor
  errors, 413, 429 and 503 for the refusals above (jina answers 200 with the error inside).

This module is the policy; `grpc_hooks` and `http_hooks` apply it to each protocol's calls, and
`errors` says what each refusal becomes on each transport. `clip_server.gateway` wires one `Edge`
into each gateway; this module knows nothing of its classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from docarray import DocumentArray
from grpc_health.v1 import health_pb2
from jina.excepts import InternalNetworkError
from jina.helper import GATEWAY_NAME
from jina.serve.executors import __dry_run_endpoint__
from jina.serve.networking.utils import send_health_check_async

from clip_server.gateway.errors import ErrorKind, Refusal
from clip_server.types import ClipServerError, ConfigurationError, InvalidInputError, RequestLimitError, ServerBusyError

MiB = 2**20
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
# The most levels of chunks and matches under a top-level document that a request may carry: the
# encoder reaches two (`access_paths: '@cc'`, a query's matches), and deeper nesting only costs.
MAX_NESTING = 4

# The bytes a request arrived in, for `max_pending_bytes`: gRPC notes them on each message as it is
# deserialized (`grpc_hooks`); HTTP and WebSocket in this context variable as a body or a message is
# read (`http_hooks`), the context that jina's streamer runs its request handler in.
arrived_bytes: contextvars.ContextVar[int] = contextvars.ContextVar('clip_arrived_bytes', default=0)
_WIRE_BYTES = 'clip_wire_bytes'


def note_wire_bytes(request, size: int) -> None:
    setattr(request, _WIRE_BYTES, size)


def wire_bytes(request) -> int:
    return getattr(request, _WIRE_BYTES, None) or arrived_bytes.get()


@dataclass(frozen=True)
class EdgeSettings:
    """The gateway's limits, from `gateway: uses_with:` in the Flow YAML."""

    max_request_bytes: int = 100 * MiB
    max_docs_per_request: int = 2048
    max_pending_per_replica: int = 256
    max_pending_bytes: int = 1024 * MiB
    drain_seconds: float = 30.0
    max_search_limit: int = 1000
    request_body_seconds: float = 30.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f'gateway option {name} must be a positive number, got {value!r}')


DRAINING = Refusal(ErrorKind.SHUTTING_DOWN, 'the server is shutting down: send the request elsewhere')


class Edge:
    """The state that the servers of one gateway share: readiness, open calls, pending requests."""

    def __init__(self, settings: EdgeSettings, deployments: dict[str, list[str]], logger):
        self.settings = settings
        self.logger = logger
        self._deployments = deployments
        replicas = max((len(addresses) for addresses in deployments.values()), default=1)
        self.max_pending = settings.max_pending_per_replica * replicas
        self.pending = 0  # requests sent on to the executors and not answered yet
        self.pending_bytes = 0  # the bytes those requests arrived in
        self.open_calls = 0  # HTTP requests, WebSocket connections and gRPC data calls in progress
        self.draining = False
        self.ready, self.reason = False, 'starting: the executors have not answered yet'
        self.live, self.dead_reason = True, ''  # not live: every replica of a serving executor is gone
        self._answering: set[str] = set()  # executor addresses whose last health check said SERVING
        self._answered: set[str] = set()  # executor addresses that have said SERVING at least once
        self._served = False  # whether every executor has answered once

    def export_pending_gauge(self, registry, runtime_name: str) -> None:
        """Publish `pending` as the Prometheus gauge `clip_server_pending_requests` in the gateway's
        registry (None unless `monitoring: true`), the queue depth an autoscaler divides by the
        encoder's replicas, and `pending_bytes` as `clip_server_pending_bytes`. Not jina's
        `jina_number_of_pending_requests`: jina 3.27.0 decrements that in its result handler or on an
        `Exception`, which a call cancelled with its client never reaches, so each such call stays
        counted there; `pending` is released however the call ends."""
        if registry is None:
            return
        from prometheus_client import Gauge

        gauges: list[tuple[str, str, Callable[[], int]]] = [
            ('clip_server_pending_requests', 'Requests the executors hold, not answered yet', lambda: self.pending),
            ('clip_server_pending_bytes', 'The bytes those requests arrived in', lambda: self.pending_bytes),
        ]
        for name, about, value in gauges:
            Gauge(name, about, labelnames=('runtime_name',), registry=registry).labels(runtime_name).set_function(value)

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Count one open call for the drain to wait on."""
        self.open_calls += 1
        try:
            yield
        finally:
            self.open_calls -= 1

    def refusal(self, carries_documents: bool = True) -> Refusal | None:
        """Why a new call may not start now, if it may not: draining, or too many requests pending."""
        if self.draining:
            return DRAINING
        if carries_documents and self.pending >= self.max_pending:
            return Refusal(
                ErrorKind.BUSY,
                f'the server is busy: {self.pending} requests pending, the limit is {self.max_pending} '
                f'(max_pending_per_replica); retry later',
            )
        return None

    # --- requests, as jina's streamer hands them to the executors ---

    def admitting(self, handle_request: Callable) -> Callable:
        """jina's streamer request handler, answering at the door a request that breaks a rule
        (`problem`) or carries no documents (jina would never answer it), and counting the others
        while the executors have them."""

        def handle(request, return_type):
            if request.header.exec_endpoint == __dry_run_endpoint__:  # a probe, not a client's request
                return handle_request(request=request, return_type=return_type)
            refused = self.problem(request)
            if refused is not None:
                return _answered_now(_at_the_door(_failed(request, refused))), None
            if not _top_level(request):
                return _answered_now(_at_the_door(request)), None  # an empty result, as the executors would give
            size = wire_bytes(request)
            busy = self._over_pending_bytes(size)
            if busy is not None:
                return _answered_now(_at_the_door(_failed(request, busy))), None
            responses, floating = handle_request(request=request, return_type=return_type)
            return self._pending_while(responses, size), floating

        return handle

    def _pending_while(self, responses: asyncio.Future, size: int) -> asyncio.Future:
        """The executors' response, counted as pending (with the `size` bytes it arrived in) from now
        until the call ends however it ends (answered, failed, cancelled with its client, even
        before it started): the next request, in this same turn of the loop, already sees it."""
        self.pending += 1
        self.pending_bytes += size
        answer = asyncio.ensure_future(_without_network_traceback(responses))

        def release(_: asyncio.Future) -> None:
            self.pending -= 1
            self.pending_bytes -= size

        answer.add_done_callback(release)
        return answer

    def _over_pending_bytes(self, size: int) -> ServerBusyError | None:
        """Why a request of `size` bytes may not join those pending: together they would pass
        `max_pending_bytes` (a request alone always may: `max_request_bytes` bounds it)."""
        limit = self.settings.max_pending_bytes
        if not self.pending_bytes or self.pending_bytes + size <= limit:
            return None
        return ServerBusyError(
            f'the server is busy: {self.pending_bytes:,} bytes of requests pending and this one of {size:,}, '
            f'the limit is {limit:,} (max_pending_bytes); retry later'
        )

    def problem(self, request) -> ClipServerError | None:
        """Why `request` may not reach the executors, checked on the request as it came: a target
        executor, documents past the limits (at every depth), parameters of the wrong kind."""
        if request.header.target_executor:
            return InvalidInputError(
                f'targetExecutor ({request.header.target_executor[:64]!r}) is not accepted: '
                'every request goes through the whole Flow'
            )
        try:
            documents = _document_count(request)
            parameters = request.parameters
        except _TooDeep:
            return InvalidInputError(f'documents nest chunks or matches more than {MAX_NESTING} levels deep')
        except Exception as error:  # an undecodable message is the client's, not the server's
            return InvalidInputError(f'the request cannot be read: {type(error).__name__}')
        if documents > self.settings.max_docs_per_request:
            return RequestLimitError(
                f'the request has {documents:,} documents (chunks and matches included), over '
                f'max_docs_per_request ({self.settings.max_docs_per_request:,}): send them in smaller requests'
            )
        return self._parameters_problem(parameters)

    def _parameters_problem(self, parameters: dict) -> ClipServerError | None:
        for name in ('access_paths', 'traversal_paths'):
            value = parameters.get(name)
            if value is not None and not (isinstance(value, str) and len(value) <= 64):
                return InvalidInputError(f'parameter {name} must be a docarray path such as "@r,c", got {value!r:.64}')
        if 'limit' in parameters:
            limit, most = parameters['limit'], self.settings.max_search_limit
            if isinstance(limit, float) and limit.is_integer():
                limit = int(limit)  # JSON and protobuf's Struct carry every number as a float
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                return InvalidInputError(f'parameter limit must be a positive integer, got {limit!r:.64}')
            if limit > most:
                return RequestLimitError(f'parameter limit is {limit:,}, over max_search_limit ({most:,})')
        return None

    @staticmethod
    def refused_here(response) -> bool:
        """Whether `admitting` answered this request itself (jina's metrics never saw it start):
        jina routes every request it handles through a route named after the gateway."""
        return not any(route.executor == GATEWAY_NAME for route in response.routes)

    # --- readiness and drain ---

    async def watch_readiness(self, servicers: list, interval: float = 1.0) -> None:
        """Keep `ready` and the gRPC health service's overall status up to date until cancelled
        (checked every `interval` seconds once ready, four times as often until then)."""
        while not self.draining:
            ready, reason = await self._executors_answer()
            if (ready, reason) != (self.ready, self.reason):
                # while starting, an executor that does not answer yet is expected: not worth a line
                log = self.logger.debug if not (ready or self.ready) else self.logger.info
                log('ready: every executor answers' if ready else f'not ready: {reason}')
            if not self.draining:
                self.ready, self.reason = ready, reason
                for servicer in servicers:
                    await servicer.set('', SERVING if ready else NOT_SERVING)
            await asyncio.sleep(interval if self.ready else interval / 4)

    async def _executors_answer(self) -> tuple[bool, str]:
        """Whether one replica of each executor reports SERVING (jina serves one only once it loaded);
        a replica that answered and stops is logged at ERROR, and liveness turns off while an
        executor that was serving has no replica answering at all."""
        reason, lost = '', []
        for name, addresses in self._deployments.items():
            answers = await asyncio.gather(*(_serving(address) for address in addresses))
            for address, answer in zip(addresses, answers, strict=True):
                if address in self._answering and not answer:
                    self.logger.error(f'executor {name}: the replica at {address} stopped answering')
                elif answer and address not in self._answering and self._served:
                    again = ' again' if address in self._answered else ''  # else a late first start
                    self.logger.info(f'executor {name}: the replica at {address} answers{again}')
                (self._answering.add if answer else self._answering.discard)(address)
                if answer:
                    self._answered.add(address)
            if not any(answers):
                reason = reason or f'executor {name} does not answer yet'
                lost.append(name)
        self._served = self._served or not reason
        self.live, self.dead_reason = True, ''
        if self._served and lost:
            self.live, self.dead_reason = False, f'no replica of executor {", ".join(lost)} answers'
        return not reason, reason

    async def drain(self, servicers: list) -> None:
        """Turn readiness off, refuse new calls, and wait for the open ones (up to drain_seconds)."""
        self.draining = True
        self.ready, self.reason = False, 'draining: the server is shutting down'
        for servicer in servicers:
            await servicer.enter_graceful_shutdown()
        deadline = time.monotonic() + self.settings.drain_seconds
        if self.open_calls or self.pending:
            self.logger.info(f'draining: waiting for {self.open_calls} open call(s), {self.pending} request(s)')
        while (self.open_calls or self.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.open_calls or self.pending:
            self.logger.warning(
                f'drain_seconds ({self.settings.drain_seconds}) passed with {self.open_calls} call(s) still open'
            )

    def liveness(self) -> tuple[int, dict]:
        """The HTTP liveness probe's status code and body: a Flow whose executor lost every
        replica cannot serve again by itself, and its supervisor should restart it."""
        if self.live:
            return 200, {'live': True}
        return 503, {'live': False, 'reason': self.dead_reason}

    def readiness(self) -> tuple[int, dict]:
        """The HTTP readiness probe's status code and body."""
        if self.ready:
            return 200, {'ready': True}
        return 503, {'ready': False, 'reason': self.reason}


async def _serving(address: str) -> bool:
    with contextlib.suppress(Exception):  # unreachable, refusing or slow all mean "not serving"
        answer = await send_health_check_async(address.split('://')[-1], timeout=1.0)
        return answer.status == SERVING
    return False


def _answered_now(response) -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(response)
    return future


async def _without_network_traceback(responses: asyncio.Future):
    """The executors' response; a network error loses the frames that jina's HTTP app would send."""
    try:
        return await responses
    except InternalNetworkError as error:
        error.og_exception.__traceback__ = None
        raise


def _failed(request, error: ClipServerError):
    """`request`, emptied, as an error response: the client gets the error's name and message."""
    request.data.docs = DocumentArray()
    status = request.header.status
    status.code = status.ERROR
    status.description = str(error)
    status.exception.name = type(error).__name__
    status.exception.args.append(str(error))
    return request


def _at_the_door(request):
    """`request` as its own answer, without the routes a client may have sent (`refused_here`)."""
    del request.routes[:]
    return request


class _TooDeep(Exception):
    """Documents nested past MAX_NESTING."""


def _top_level(request) -> list:
    """The request's top-level documents, from whichever of jina's two encodings it carries."""
    data = request.proto_with_data.data
    return list(request.docs) if data.WhichOneof('documents') == 'docs_bytes' else list(data.docs.docs)


def _document_count(request) -> int:
    """Documents in a request at every depth (the executors' access paths may reach any of them),
    counted without recursion; `_TooDeep` past MAX_NESTING levels."""
    count, level = 0, _top_level(request)
    for _depth in range(MAX_NESTING + 1):
        count += len(level)
        level = [child for doc in level for child in (*doc.chunks, *doc.matches)]
        if not level:
            return count
    raise _TooDeep
