"""jina's gateways with a production edge: no tracebacks to clients, limits, probes, drain, auth.

jina puts an executor exception's whole traceback (`exception.stacks`, install paths included)
into the response on gRPC, HTTP and WebSocket alike, and has no switch for it. All of a
gateway's responses pass through one result handler of its request streamer; these gateways
wrap it: a client gets the error's name, its message (which names the document and the problem)
and the request id, and the server log gets the traceback under that request id. The streamer's
request handler is wrapped too, for the limits and the overload bound (`clip_server.gateway.edge`), and
each server gets the edge's interceptor or middleware, then token auth (`clip_server.gateway.auth`).

`python -m clip_server` serves every Flow through one of them unless the YAML names a gateway
itself (`clip_server.flow_config`): `ClipGateway` for several protocols (jina's composite
gateway, which cannot serve a single one), else the gateway of the Flow's one protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from fastapi.middleware.cors import CORSMiddleware
from jina.proto import jina_pb2
from jina.serve.runtimes.gateway.composite import CompositeGateway
from jina.serve.runtimes.gateway.grpc import GRPCGateway
from jina.serve.runtimes.gateway.http import HTTPGateway
from jina.serve.runtimes.gateway.websocket import WebSocketGateway
from jina.serve.runtimes.servers.grpc import GRPCServer
from jina.serve.runtimes.servers.websocket import WebSocketServer

from clip_server.gateway.auth import TokenInterceptor, TokenMiddleware, configured_tokens
from clip_server.gateway.edge import Edge, EdgeSettings
from clip_server.gateway.grpc_hooks import EdgeInterceptor
from clip_server.gateway.http_hooks import EdgeMiddleware, ask_http_status
from clip_server.gateway.openai_api import OpenAIRoutes
from clip_server.gateway.remote_images import ImageFetching
from clip_server.gateway.ui.routes import UIPage, UIRoutes
from clip_server.internal_auth import EXCLUSIVE_PORT, send_internal_token

Result = Callable[[object], object]
DEFAULTS = EdgeSettings()


class _ClipEdge:
    """Everything `clip_server.gateway.edge` and `clip_server.gateway.auth` add to one of jina's gateways.

    Options, under `gateway: uses_with:` in the Flow YAML: `auth_tokens` (tokens in the YAML),
    `auth_tokens_env` (the environment variable that holds them, comma-separated, so that secrets
    stay out of files), the `EdgeSettings` limits, and `fetch_images` (`clip_server.gateway.remote_images`:
    the hosts the OpenAI API may fetch image URLs from; none by default).
    """

    # what jina's gateway classes, beside which this one is mixed in, provide
    runtime_args: Any
    logger: Any
    metrics_registry: Any
    name: str
    _request_handler: Any

    def __init__(
        self,
        auth_tokens: list[str] | None = None,
        auth_tokens_env: str | None = None,
        max_request_bytes: int = DEFAULTS.max_request_bytes,
        max_docs_per_request: int = DEFAULTS.max_docs_per_request,
        max_pending_per_replica: int = DEFAULTS.max_pending_per_replica,
        max_pending_bytes: int = DEFAULTS.max_pending_bytes,
        drain_seconds: float = DEFAULTS.drain_seconds,
        max_search_limit: int = DEFAULTS.max_search_limit,
        request_body_seconds: float = DEFAULTS.request_body_seconds,
        fetch_images: dict | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        settings = EdgeSettings(
            max_request_bytes=max_request_bytes,
            max_docs_per_request=max_docs_per_request,
            max_pending_per_replica=max_pending_per_replica,
            max_pending_bytes=max_pending_bytes,
            drain_seconds=drain_seconds,
            max_search_limit=max_search_limit,
            request_body_seconds=request_body_seconds,
        )
        deployments = json.loads(self.runtime_args.deployments_addresses or '{}')
        self.edge = Edge(settings, deployments, self.logger)
        self.edge.export_pending_gauge(self.metrics_registry, self.name)  # with `monitoring: true`
        handler = self._request_handler  # shared by every protocol's server
        # jina 3.27.0 (pinned): the streamer behind every protocol; each request passes through its
        # request handler on the way to the executors, each response through its result handler.
        streamer = handler.streamer._streamer
        streamer._request_handler = self.edge.admitting(streamer._request_handler)
        streamer._result_handler = without_tracebacks(streamer._result_handler, self.edge, self.logger)
        send_internal_token(handler.streamer.topology_graph)
        handler.endpoint_discovery = _endpoint_discovery(handler.streamer)
        tokens = configured_tokens(auth_tokens, auth_tokens_env)
        # the first is outermost: a call without a token is refused before the edge looks at it
        interceptors = [*([TokenInterceptor(tokens)] if tokens else []), EdgeInterceptor(self.edge)]
        for server in self._servers():
            if isinstance(server, GRPCServer):
                existing = server.grpc_tracing_server_interceptors or []
                server.grpc_tracing_server_interceptors = [*existing, *interceptors]
                server.grpc_server_options = {
                    **(server.grpc_server_options or {}),
                    'grpc.max_receive_message_length': settings.max_request_bytes,
                    **EXCLUSIVE_PORT,
                }
        openai_routes = OpenAIRoutes(handler.streamer, max_docs_per_request, ImageFetching.from_option(fetch_images))
        ui_routes = UIRoutes(handler.streamer, lambda: served_endpoints(handler.streamer))
        _customize_apps(handler, self.edge, tokens, openai_routes, ui_routes)
        if tokens:
            self.logger.info(f'clients must send one of {len(tokens)} authorization token(s)')

    def _servers(self) -> list:
        return getattr(self, 'servers', [self])

    def _health_servicers(self) -> list:
        return [server.health_servicer for server in self._servers() if isinstance(server, GRPCServer)]

    async def setup_server(self):
        await super().setup_server()
        for server in self._servers():
            if isinstance(server, WebSocketServer):  # jina fixes 1 GiB when it builds uvicorn's config
                server.server.config.ws_max_size = self.edge.settings.max_request_bytes
        self._readiness = asyncio.create_task(self.edge.watch_readiness(self._health_servicers()))

    async def shutdown(self):
        """Drain first: readiness off, new calls refused, open calls finished (`Edge.drain`)."""
        await self.edge.drain(self._health_servicers())
        self._readiness.cancel()
        await super().shutdown()


def _customize_apps(
    handler, edge: Edge, tokens: tuple[str, ...], openai_routes: OpenAIRoutes, ui_routes: UIRoutes
) -> None:
    """The edge's middleware, then auth's around it, on the FastAPI apps (HTTP, WebSocket) that
    the shared request handler builds when each server starts; the OpenAI API and the web page
    (`clip_server.gateway.ui`) on the HTTP one, the page's files outside auth (they hold no data)."""
    for name in ('_http_fastapi_default_app', '_websocket_fastapi_default_app'):
        build = getattr(handler, name)

        def customized(*args, _build=build, _name=name, **kwargs):
            app = _build(*args, **kwargs)
            http = _name == '_http_fastapi_default_app'
            if http:
                openai_routes.install(app)
                ui_routes.install(app)
            app.add_middleware(EdgeMiddleware, edge=edge)
            if tokens:  # added last, so it runs first: no body is read for a client without a token
                app.add_middleware(TokenMiddleware, tokens=tokens)
            if http:  # a browser's navigation carries no token: the page's files are served before auth
                app.add_middleware(UIPage)
            _cors_outermost(app)
            return app

        setattr(handler, name, customized)


def _endpoint_discovery(streamer) -> Callable:
    """The gateway's gRPC endpoint discovery, asking the executors for their endpoints.

    jina 3.27.0's own first asks its docarray-v2 schema map, which with docarray v1 fails on every
    call (AttributeError: 'NoneType' object has no attribute '__name__'); its fallback, this, works.
    """

    async def endpoint_discovery(empty, context) -> jina_pb2.EndpointsProto:
        return jina_pb2.EndpointsProto(endpoints=await served_endpoints(streamer))

    return endpoint_discovery


async def served_endpoints(streamer) -> list[str]:
    """The endpoints the Flow's executors serve, asked of them (the web page shows search only
    when an index serves `/search`)."""
    endpoints = await streamer.topology_graph._get_all_endpoints(
        streamer._connection_pool, retry_forever=False, is_cancel=None
    )
    return sorted(endpoints)


def _cors_outermost(app) -> None:
    """jina adds CORS (`cors: true`) before these middlewares, so it would run inside them: their
    401, 413, 429 and 503 answers would carry no CORS headers, and a browser would see only a
    network error. Starlette runs `user_middleware` first to last, outermost first."""
    cors = [entry for entry in app.user_middleware if entry.cls is CORSMiddleware]
    app.user_middleware[:] = cors + [entry for entry in app.user_middleware if entry.cls is not CORSMiddleware]


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


def without_tracebacks(handle_result: Result, edge: Edge, logger) -> Result:
    """`handle_result`, then the error's traceback moved from the response to the log."""

    def handle(result):
        response = result if edge.refused_here(result) else handle_result(result)
        ask_http_status(response)
        status = response.header.status
        if status.code == status.ERROR and status.exception.stacks:
            stacks = ''.join(status.exception.stacks)
            logger.error(f'request {response.header.request_id} failed in {status.exception.executor}:\n{stacks}')
        for exception in [status.exception, *(route.status.exception for route in response.routes)]:
            del exception.stacks[:]  # the response's status, and each executor's on its route
        return response

    return handle
