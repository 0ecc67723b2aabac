"""Token auth for the gateway: gRPC metadata, HTTP and WebSocket headers (or `?token=`).

`clip_client` sends `credential={'Authorization': TOKEN}` (or env `CLIP_AUTH_TOKEN`) as the raw
token: gRPC metadata `authorization`, HTTP header `Authorization`; `Bearer TOKEN` is accepted too.
It sends nothing over WebSocket, so WebSocket clients of their own send the header or `?token=`
(the query parameter counts on WebSocket handshakes alone). Probes stay open: gRPC health and
dry-run; HTTP `GET /`, `/dry_run`, `/health/*` and CORS preflights. A refusal
says only that the token is missing or wrong (gRPC UNAUTHENTICATED, HTTP 401, WebSocket close 1008).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from urllib.parse import parse_qs

import grpc

from clip_server.gateway.errors import ANSWERS, ErrorKind, error_body
from clip_server.gateway.grpc_hooks import DATA_RPC_PREFIXES, STATUS_RPC
from clip_server.gateway.http_hooks import PROBE_PATHS, send_json
from clip_server.internal_auth import aborting
from clip_server.types import ConfigurationError

REFUSAL = 'missing or wrong authorization token'
OPEN_HTTP_PATHS = ('/', '/dry_run', *PROBE_PATHS)


def configured_tokens(tokens: Iterable[str] | None, tokens_env: str | None) -> tuple[str, ...]:
    """The tokens from the YAML and from the environment variable it names (comma-separated)."""
    found = [token for token in (tokens or []) if token]
    if tokens_env:
        value = os.environ.get(tokens_env, '')
        if not value.strip():
            raise ConfigurationError(f'auth_tokens_env names {tokens_env}, which is not set: set it to the token(s)')
        found += [token.strip() for token in value.split(',') if token.strip()]
    return tuple(found)


def accepted(presented: str | None, tokens: tuple[str, ...]) -> bool:
    """Whether `presented` is one of `tokens`, raw or as `Bearer <token>`, compared in constant time."""
    if not presented:
        return False
    candidate = presented[len('Bearer ') :] if presented.startswith('Bearer ') else presented
    return any(hmac.compare_digest(candidate.encode(), token.encode()) for token in tokens)  # no early exit


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses the document-carrying RPCs without an accepted `authorization` metadata value."""

    def __init__(self, tokens: tuple[str, ...]):
        self._tokens = tokens

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not (details.method.startswith(DATA_RPC_PREFIXES) or details.method == STATUS_RPC):
            return handler
        presented = [value for key, value in details.invocation_metadata or () if key.lower() == 'authorization']
        if accepted(_only(presented), self._tokens):
            return handler
        return aborting(handler, ANSWERS[ErrorKind.UNAUTHENTICATED].grpc_code, REFUSAL)


class TokenMiddleware:
    """ASGI middleware: HTTP requests (but probes) and WebSocket connections need an accepted token."""

    def __init__(self, app, tokens: tuple[str, ...]):
        self.app, self._tokens = app, tokens

    async def __call__(self, scope, receive, send):
        kind = scope['type']
        open_probe = kind == 'http' and (scope['path'] in OPEN_HTTP_PATHS or _is_preflight(scope))
        if kind not in ('http', 'websocket') or open_probe or accepted(_presented(scope), self._tokens):
            return await self.app(scope, receive, send)
        if kind == 'websocket':
            return await send({'type': 'websocket.close', 'code': 1008, 'reason': REFUSAL})
        body = error_body(scope['path'], ErrorKind.UNAUTHENTICATED, REFUSAL, code='invalid_api_key')
        status = ANSWERS[ErrorKind.UNAUTHENTICATED].http_status
        await send_json(send, status, body, headers=((b'www-authenticate', b'Bearer'),))


def _presented(scope) -> str | None:
    """The token a request carries: its one Authorization header, or, for a WebSocket handshake
    alone (browsers cannot set its headers), a `token` query parameter. Over HTTP a token in the
    URL would end up in proxies' and servers' access logs: there it is not looked at."""
    headers = [value.decode('latin-1') for key, value in scope.get('headers', []) if key.lower() == b'authorization']
    if headers or scope['type'] != 'websocket':
        return _only(headers)
    return _only(parse_qs(scope.get('query_string', b'').decode('latin-1')).get('token', []))


def _only(values: list[str]) -> str | None:
    """The one value presented; several are refused, since proxies and servers disagree on which counts."""
    return values[0] if len(values) == 1 else None


def _is_preflight(scope) -> bool:
    """A browser's CORS preflight: it never carries credentials, so it must pass for CORS to work."""
    headers = dict(scope.get('headers', []))
    return scope['method'] == 'OPTIONS' and b'access-control-request-method' in headers
