"""jina's gateways, sending executor errors to clients without their tracebacks.

jina puts an executor exception's whole traceback (`exception.stacks`, install paths included)
into the response on gRPC, HTTP and WebSocket alike, and has no switch for it. All of a
gateway's responses pass through one result handler of its request streamer; these gateways
wrap it: a client gets the error's name, its message (which names the document and the problem)
and the request id, and the server log gets the traceback under that request id.

`python -m clip_server` serves every Flow through one of them unless the YAML names a gateway
itself (`clip_server.flow_config`): `ClipGateway` for several protocols (jina's composite
gateway, which cannot serve a single one), else the gateway of the Flow's one protocol.
"""

from __future__ import annotations

from collections.abc import Callable

from jina.serve.runtimes.gateway.composite import CompositeGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.gateway.websocket import WebSocketGateway
from jina.serve.runtimes.servers.grpc import GRPCServer

from clip_server.auth import TokenInterceptor, TokenMiddleware, configured_tokens

Result = Callable[[object], object]


class _ClipEdge:
    """Tracebacks kept server-side, and token auth when tokens are configured (`clip_server.auth`).

    `auth_tokens`: tokens in the YAML; `auth_tokens_env`: the environment variable that holds
    them, comma-separated, so that secrets stay out of files. Both go under `gateway: uses_with:`.
    """

    def __init__(self, auth_tokens: list[str] | None = None, auth_tokens_env: str | None = None, **kwargs):
        super().__init__(**kwargs)
        handler = self._request_handler  # shared by every protocol's server
        # jina 3.27.0 (pinned): the streamer behind every protocol, and the one callable each
        # response passes through on its way to the client.
        streamer = handler.streamer._streamer
        streamer._result_handler = without_tracebacks(streamer._result_handler, self.logger)
        tokens = configured_tokens(auth_tokens, auth_tokens_env)
        if tokens:
            _require_tokens(handler, getattr(self, 'servers', [self]), tokens)
            self.logger.info(f'clients must send one of {len(tokens)} authorization token(s)')


def _require_tokens(handler, servers: list, tokens: tuple[str, ...]) -> None:
    """An interceptor on each gRPC server; middleware on the FastAPI apps (HTTP, WebSocket) that
    the shared request handler builds when each server starts."""
    for server in servers:
        if isinstance(server, GRPCServer):
            server.grpc_tracing_server_interceptors = [
                *(server.grpc_tracing_server_interceptors or []),
                TokenInterceptor(tokens),
            ]
    for name in ('_http_fastapi_default_app', '_websocket_fastapi_default_app'):
        build = getattr(handler, name)

        def guarded(*args, _build=build, **kwargs):
            app = _build(*args, **kwargs)
            app.add_middleware(TokenMiddleware, tokens=tokens)
            return app

        setattr(handler, name, guarded)


class ClipGateway(_ClipEdge, CompositeGateway):
    """Several protocols, one server each."""


class ClipGRPCGateway(_ClipEdge, GRPCGateway):
    """gRPC alone."""


class ClipHTTPGateway(_ClipEdge, HTTPGateway):
    """HTTP alone."""


class ClipWebSocketGateway(_ClipEdge, WebSocketGateway):
    """WebSocket alone."""


# The gateway class for a Flow serving one protocol.
SINGLE_PROTOCOL = {'grpc': 'ClipGRPCGateway', 'http': 'ClipHTTPGateway', 'websocket': 'ClipWebSocketGateway'}


def without_tracebacks(handle_result: Result, logger) -> Result:
    """`handle_result`, then the error's traceback moved from the response to the log."""

    def handle(result):
        response = handle_result(result)
        status = response.header.status
        if status.code == status.ERROR and status.exception.stacks:
            stacks = ''.join(status.exception.stacks)
            logger.error(f'request {response.header.request_id} failed in {status.exception.executor}:\n{stacks}')
        for exception in [status.exception, *(route.status.exception for route in response.routes)]:
            del exception.stacks[:]  # the response's status, and each executor's on its route
        return response

    return handle
