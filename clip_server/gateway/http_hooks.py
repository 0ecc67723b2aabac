"""The edge on HTTP and WebSocket: ASGI middleware for jina's apps (probes, body cap and deadline,
drain, the status codes of failed requests)."""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Callable

from clip_server.gateway.edge import Edge, arrived_bytes
from clip_server.gateway.errors import ANSWERS, ErrorKind, Refusal, error_body, kind_of

PROBE_PATHS = ('/health/live', '/health/ready')
# jina's `/status` lists versions and the environment: this server answers it with nothing of them.
STATUS_PATH = '/status'
STATUS_BODY: dict[str, dict] = {'jina': {}, 'envs': {}}
# What a malformed request body makes jina's HTTP app raise while reading it (`EdgeMiddleware`).
_MALFORMED = (ValueError, TypeError, KeyError, RecursionError)

# The HTTP status that a request's outcome asks for; set by whatever handles the request in the
# HTTP app's own context (the streamer runs its handlers there), read by `EdgeMiddleware`.
_http_status: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar('clip_http_status', default=None)


def ask_http_status(response) -> None:
    """Ask HTTP for the status that fits a failed request (jina answers 200 with the error inside);
    nothing outside an HTTP request."""
    status = response.header.status
    asked = _http_status.get()
    if asked is not None and status.code == status.ERROR:
        asked.append(ANSWERS[kind_of(status.exception.name)].http_status)


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
                return await self.app(scope, _noting_message_bytes(receive), send)
            settings = self._edge.settings
            body = await _body_within(receive, scope, settings.max_request_bytes, settings.request_body_seconds)
            if isinstance(body, Refusal):
                return await _refuse(scope, send, body)
            if body is not None:  # else the client went away while sending it
                arrived_bytes.set(len(body))
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
        kind = ErrorKind.INVALID if isinstance(error, _MALFORMED) else ErrorKind.INTERNAL
        status = ANSWERS[kind].http_status
        self._edge.logger.warning(f'{scope["method"]} {scope["path"]}: {status}, {error!r}', exc_info=error)
        reason = (str(error).strip().splitlines() or [''])[0][:160]  # parsers' words: what, not where
        invalid = kind is ErrorKind.INVALID
        message = f'the request cannot be read: {type(error).__name__}: {reason}' if invalid else 'internal error'
        await send_json(send, status, error_body(scope['path'], kind, message))

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
            ErrorKind.BODY_TIMEOUT,
            f'the request body did not arrive within request_body_seconds ({seconds:g}): {size:,} bytes came',
        )


def _too_large(size: int, limit: int, at_least: bool = False) -> Refusal:
    amount = f'at least {size:,}' if at_least else f'{size:,}'
    return Refusal(
        ErrorKind.TOO_LARGE,
        f'the request body is {amount} bytes, over max_request_bytes ({limit:,})',
    )


def _noting_message_bytes(receive: Callable) -> Callable:
    """A WebSocket's `receive` that sets `arrived_bytes` to the size of each message it hands the app
    (jina's app reads a message, then sends its request on in the same task)."""

    async def receive_noted():
        message = await receive()
        if message['type'] == 'websocket.receive':
            arrived_bytes.set(len(message.get('bytes') or b'') + len(message.get('text') or ''))
        return message

    return receive_noted


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
    await send_json(send, refusal.http_status, error_body(scope['path'], refusal.kind, refusal.message))


async def send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    payload = json.dumps(body).encode()
    fields = [(b'content-type', b'application/json'), (b'content-length', str(len(payload)).encode()), *headers]
    await send({'type': 'http.response.start', 'status': status, 'headers': fields})
    await send({'type': 'http.response.body', 'body': payload})
