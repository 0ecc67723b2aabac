"""The gateway's production edge, shared by its gRPC, HTTP and WebSocket servers.

- Limits: bytes per request (gRPC's receive limit, an HTTP body cap, WebSocket's frame cap) and
  documents per request; each refusal names the limit and the value.
- Overload: at most `max_pending_per_replica` x replicas requests in the Flow at once; past that,
  new requests are refused at once (gRPC RESOURCE_EXHAUSTED, HTTP 429) instead of queueing.
- Probes: HTTP `/health/live` and `/health/ready`, and the gRPC health service's overall status,
  say ready only when one replica of every executor answers (an executor serves once its model
  has loaded and encoded a warm-up batch), and not while draining.
- Drain: on shutdown, readiness turns off, new calls are refused (HTTP 503, gRPC UNAVAILABLE,
  WebSocket handshakes), and the calls already open finish, up to `drain_seconds`.
- HTTP status codes: 400 for a request that failed on its documents, 500 for other executor
  errors, 413, 429 and 503 for the refusals above (jina answers 200 with the error inside).

`clip_server.gateway` wires one `Edge` into each gateway; this module knows nothing of its classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from docarray import DocumentArray
from grpc_health.v1 import health_pb2
from jina.excepts import InternalNetworkError
from jina.helper import GATEWAY_NAME
from jina.proto import jina_pb2
from jina.serve.executors import __dry_run_endpoint__
from jina.serve.networking.utils import send_health_check_async

from clip_server.internal_auth import aborting, behavior_of, with_behavior
from clip_server.types import ClipServerError, ConfigurationError, InvalidInputError, RequestLimitError

MiB = 2**20
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
PROBE_PATHS = ('/health/live', '/health/ready')
# jina's `/status` lists versions and the environment: this server answers it with nothing of them.
STATUS_PATH, STATUS_BODY = '/status', {'jina': {}, 'envs': {}}
# Endpoint discovery carries no documents but tells a client what the Flow serves: guarded like them.
_DISCOVERY = '/jina.JinaDiscoverEndpointsRPC/'
# gRPC services that carry documents; health, dry-run and reflection stay open for probes.
DATA_RPC_PREFIXES = (
    '/jina.JinaRPC/',
    '/jina.JinaSingleDataRequestRPC/',
    '/jina.JinaDataRequestRPC/',
    _DISCOVERY,
)
# jina's single-document streaming RPC goes straight to the first executor, past the request and
# result handlers that the edge wraps (limits, InputErrors, tracebacks): no executor here streams.
UNSERVED_RPC_PREFIXES = ('/jina.JinaSingleDocumentRequestRPC/',)
# jina's `_status`: its versions and environment are no anonymous caller's business (`status_of`).
STATUS_RPC = '/jina.JinaInfoRPC/_status'
# The most levels of chunks and matches under a top-level document that a request may carry: the
# encoder reaches two (`access_paths: '@cc'`, a query's matches), and deeper nesting only costs.
MAX_NESTING = 4
# What a malformed request body makes jina's HTTP app raise while reading it (`EdgeMiddleware`).
_MALFORMED = (ValueError, TypeError, KeyError, RecursionError)
# The HTTP status of a request that failed with one of these errors; any other error is a 500.
ERROR_STATUS = {InvalidInputError.__name__: 400, RequestLimitError.__name__: 413}


@dataclass(frozen=True)
class EdgeSettings:
    """The gateway's limits, from `gateway: uses_with:` in the Flow YAML."""

    max_request_bytes: int = 100 * MiB
    max_docs_per_request: int = 2048
    max_pending_per_replica: int = 256
    drain_seconds: float = 30.0
    max_search_limit: int = 1000
    request_body_seconds: float = 30.0

    def __post_init__(self):
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f'gateway option {name} must be a positive number, got {value!r}')


@dataclass(frozen=True)
class Refusal:
    """A call turned away at the door, as each protocol says it."""

    http_status: int
    grpc_code: grpc.StatusCode
    message: str


DRAINING = Refusal(503, grpc.StatusCode.UNAVAILABLE, 'the server is shutting down: send the request elsewhere')

# The HTTP status that a request's outcome asks for; set by whatever handles the request in the
# HTTP app's own context (the streamer runs its handlers there), read by `EdgeMiddleware`.
_http_status: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar('clip_http_status', default=None)


def _ask_http_status(status: int) -> None:
    asked = _http_status.get()
    if asked is not None:
        asked.append(status)


class Edge:
    """The state that the servers of one gateway share: readiness, open calls, pending requests."""

    def __init__(self, settings: EdgeSettings, deployments: dict[str, list[str]], logger):
        self.settings = settings
        self.logger = logger
        self._deployments = deployments
        replicas = max((len(addresses) for addresses in deployments.values()), default=1)
        self.max_pending = settings.max_pending_per_replica * replicas
        self.pending = 0  # requests sent on to the executors and not answered yet
        self.open_calls = 0  # HTTP requests, WebSocket connections and gRPC data calls in progress
        self.draining = False
        self.ready, self.reason = False, 'starting: the executors have not answered yet'
        self.live, self.dead_reason = True, ''  # not live: every replica of a serving executor is gone
        self._answering: set[str] = set()  # executor addresses whose last health check said SERVING
        self._served = False  # whether every executor has answered once

    def export_pending_gauge(self, registry, runtime_name: str) -> None:
        """Publish `pending` as the Prometheus gauge `clip_server_pending_requests` in the gateway's
        registry (None unless `monitoring: true`), the queue depth an autoscaler divides by the
        encoder's replicas. Not jina's `jina_number_of_pending_requests`: jina 3.27.0 decrements that
        in its result handler or on an `Exception`, which a call cancelled with its client never
        reaches, so each such call stays counted there; `pending` is decremented in a `finally`."""
        if registry is None:
            return
        from prometheus_client import Gauge

        gauge = Gauge(
            'clip_server_pending_requests',
            'Requests sent on to the executors and not answered yet',
            labelnames=('runtime_name',),
            registry=registry,
        )
        gauge.labels(runtime_name).set_function(lambda: self.pending)

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
                429,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
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
            responses, floating = handle_request(request=request, return_type=return_type)
            return asyncio.ensure_future(self._pending_while(responses)), floating

        return handle

    async def _pending_while(self, responses: asyncio.Future):
        """The executors' response, counted as pending until the call ends however it ends
        (answered, failed, cancelled with its client); a network error loses the frames that
        jina's HTTP app would send."""
        self.pending += 1
        try:
            return await responses
        except InternalNetworkError as error:
            error.og_exception.__traceback__ = None
            raise
        finally:
            self.pending -= 1

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

    def on_result(self, response) -> None:
        """Ask HTTP for the status that fits a failed request (`ERROR_STATUS`)."""
        status = response.header.status
        if status.code == status.ERROR:
            _ask_http_status(ERROR_STATUS.get(status.exception.name, 500))

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
                    self.logger.info(f'executor {name}: the replica at {address} answers again')
                (self._answering.add if answer else self._answering.discard)(address)
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


# --- gRPC ---


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Counts the document-carrying calls for the drain, and refuses new ones while draining."""

    def __init__(self, edge: Edge):
        self._edge = edge

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(UNSERVED_RPC_PREFIXES):
            return aborting(handler, grpc.StatusCode.UNIMPLEMENTED, 'single-document streaming is not served here')
        if details.method == STATUS_RPC:
            return with_behavior(handler, _anonymous_status)
        if not details.method.startswith(DATA_RPC_PREFIXES):
            return handler
        refusal = self._edge.refusal(carries_documents=not details.method.startswith(_DISCOVERY))
        if refusal is not None:
            return aborting(handler, refusal.grpc_code, refusal.message)
        return with_behavior(handler, self._counted(handler))

    def _counted(self, handler: grpc.RpcMethodHandler) -> Callable:
        behavior = behavior_of(handler)
        edge = self._edge
        if inspect.isasyncgenfunction(behavior):

            async def streamed(request, context):
                with edge.call():
                    async for response in behavior(request, context):
                        yield response

            return streamed

        async def answered(request, context):
            with edge.call():
                return await behavior(request, context)

        return answered


async def _anonymous_status(request, context) -> jina_pb2.JinaInfoProto:
    """jina's `_status` without its versions, environment and addresses (`STATUS_BODY`)."""
    return jina_pb2.JinaInfoProto()


# --- HTTP and WebSocket (ASGI) ---


class EdgeMiddleware:
    """ASGI middleware for jina's HTTP and WebSocket apps: probes, body cap, drain, status codes."""

    def __init__(self, app, edge: Edge):
        self.app, self._edge = app, edge

    async def __call__(self, scope, receive, send):
        kind = scope['type']
        if kind == 'http' and scope['path'] in PROBE_PATHS:
            return await self._probe(scope['path'], send)
        if kind == 'http' and scope['path'] == STATUS_PATH:
            return await send_json(send, 200, STATUS_BODY)
        if kind not in ('http', 'websocket'):
            return await self.app(scope, receive, send)
        refusal = self._edge.refusal(carries_documents=kind == 'websocket' or scope['method'] != 'GET')
        if refusal is not None:
            return await _refuse(scope, send, refusal)
        with self._edge.call():
            if kind == 'websocket':
                return await self.app(scope, receive, send)
            settings = self._edge.settings
            body = await _body_within(receive, scope, settings.max_request_bytes, settings.request_body_seconds)
            if isinstance(body, Refusal):
                return await _refuse(scope, send, body)
            if body is not None:  # else the client went away while sending it
                await self._answer(scope, _replay(body, receive), send)

    async def _answer(self, scope, receive, send):
        """Run the app, replacing the 200 that jina answers an executor's error with the status that
        the request's outcome asked for."""
        asked: list[int] = []
        started = False
        token = _http_status.set(asked)
        try:

            async def send_with_status(message):
                nonlocal started
                if message['type'] == 'http.response.start':
                    started = True
                    if asked and message['status'] == 200:
                        message = {**message, 'status': asked[-1]}
                await send(message)

            await self.app(scope, receive, send_with_status)
        except Exception as error:
            if started:  # too late for a status: the connection just ends
                raise
            await self._unreadable(scope, send, error)
        finally:
            _http_status.reset(token)

    async def _unreadable(self, scope, send, error: Exception) -> None:
        """jina's HTTP app raises while it turns a malformed body into documents (a NaN pixel
        array, invalid base64, a lone surrogate): Starlette would answer a bare 500. It is the
        request's fault: 400, naming the error's kind; the traceback stays in the server's log."""
        status = 400 if isinstance(error, _MALFORMED) else 500
        self._edge.logger.warning(f'{scope["method"]} {scope["path"]}: {status}, {error!r}', exc_info=error)
        reason = (str(error).strip().splitlines() or [''])[0][:160]  # parsers' words: what, not where
        message = f'the request cannot be read: {type(error).__name__}: {reason}' if status == 400 else 'internal error'
        await send_json(send, status, error_body(scope['path'], status, message))

    async def _probe(self, path: str, send) -> None:
        status, body = self._edge.liveness() if path == '/health/live' else self._edge.readiness()
        await send_json(send, status, body)


async def _body_within(receive, scope, limit: int, seconds: float = 30.0) -> bytes | Refusal | None:
    """The whole request body; a 413 refusal as soon as it is known to pass `limit` bytes, a 408 one
    when it takes longer than `seconds` to arrive (a `Content-Length` larger than what is sent)."""
    declared = dict(scope.get('headers', [])).get(b'content-length')
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _too_large(int(declared), limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message['type'] != 'http.request':
                    return None
                chunks.append(message.get('body', b''))
                size += len(chunks[-1])
                if size > limit:
                    return _too_large(size, limit, at_least=True)
                if not message.get('more_body', False):
                    return b''.join(chunks)
    except TimeoutError:
        return Refusal(
            408,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f'the request body did not arrive within request_body_seconds ({seconds:g}): {size:,} bytes came',
        )


def _too_large(size: int, limit: int, at_least: bool = False) -> Refusal:
    amount = f'at least {size:,}' if at_least else f'{size:,}'
    return Refusal(
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f'the request body is {amount} bytes, over max_request_bytes ({limit:,})',
    )


def _replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI `receive` that hands the app the body read already, then the connection's own
    messages (a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {'type': 'http.request', 'body': body, 'more_body': False}
        return await receive()

    return replay


async def _refuse(scope, send, refusal: Refusal) -> None:
    if scope['type'] == 'websocket':  # closed before the handshake: the client sees HTTP 403
        return await send({'type': 'websocket.close', 'code': 1013, 'reason': refusal.message[:120]})
    await send_json(send, refusal.http_status, error_body(scope['path'], refusal.http_status, refusal.message))


# OpenAI's error type for each status, for the OpenAI API's paths.
_OPENAI_ERROR_TYPES = {401: 'authentication_error', 429: 'rate_limit_error'}
OPENAI_PATHS = '/v1/'


def error_body(path: str, status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """An error's JSON body: OpenAI's shape on the OpenAI API's paths, `{"detail": ...}` elsewhere."""
    if not path.startswith(OPENAI_PATHS):
        return {'detail': message}
    kind = _OPENAI_ERROR_TYPES.get(status, 'server_error' if status >= 500 else 'invalid_request_error')
    return {'error': {'message': message, 'type': kind, 'param': param, 'code': code}}


async def send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    payload = json.dumps(body).encode()
    headers = [(b'content-type', b'application/json'), (b'content-length', str(len(payload)).encode()), *headers]
    await send({'type': 'http.response.start', 'status': status, 'headers': headers})
    await send({'type': 'http.response.body', 'body': payload})
