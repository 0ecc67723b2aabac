"""Executors answer their own gateway only: an internal token on the executors' gRPC.

A client with a token for the gateway must not get around it (and around its limits) by dialling
an executor's port directly. `python -m clip_server` binds executors to loopback
(`clip_server.flow_config`) and makes up a random internal token for each run
(`CLIP_SERVER_INTERNAL_TOKEN`, unless the environment sets one); the Flow's processes inherit it.
The gateway sends it as `authorization` metadata with every request to an executor, and each
executor refuses a data or info call without it (gRPC UNAUTHENTICATED). Health checks stay open
for probes, and endpoint discovery too: jina's gateway sends it without metadata, and it carries
no documents. Where executors run apart from the gateway (Kubernetes, several machines), give
every process the same `CLIP_SERVER_INTERNAL_TOKEN` (a Secret): this module is the same there.
jina's shard heads forward to their workers without the gateway's metadata, so a Flow with
`shards:` gets no token of its own (its executors still listen on loopback alone).

No jina gateway classes and no docarray: the gRPC handler helpers here serve the gateway's edge too.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Callable

import grpc

INTERNAL_TOKEN_ENV = 'CLIP_SERVER_INTERNAL_TOKEN'
# RPCs an executor answers without the token: probes, and jina's endpoint discovery (see above).
OPEN_EXECUTOR_RPC_PREFIXES = ('/grpc.health.v1.Health/', '/grpc.reflection.', '/jina.JinaDiscoverEndpointsRPC/')
REFUSAL = 'executors answer their gateway only: missing or wrong internal token'
# gRPC servers on Linux set SO_REUSEPORT unless told not to, so a second server of the same user can
# bind a port already served, and the kernel then splits new connections between the two. jina picks
# executor ports at random when the Flow starts and binds them only once the model has loaded: two
# servers started together can draw the same port and silently answer each other's gateways. With
# this option the later bind fails, and that server stops with the port's name instead.
EXCLUSIVE_PORT = {'grpc.so_reuseport': 0}


def internal_token() -> str | None:
    return os.environ.get(INTERNAL_TOKEN_ENV) or None


def ensure_internal_token() -> None:
    """A random token for this run, unless the environment has one; call before the Flow starts."""
    os.environ.setdefault(INTERNAL_TOKEN_ENV, secrets.token_urlsafe(32))


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """On an executor's gRPC server: every call but `OPEN_EXECUTOR_RPC_PREFIXES` needs the token."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_EXECUTOR_RPC_PREFIXES):
            return handler
        presented = [value for key, value in details.invocation_metadata or () if key.lower() == 'authorization']
        if len(presented) == 1 and hmac.compare_digest(presented[0].encode(), self._token):
            return handler
        return aborting(handler, grpc.StatusCode.UNAUTHENTICATED, REFUSAL)


def guard_executor_servers() -> None:
    """Give every executor's gRPC server in this process the internal token's interceptor, and its
    port to itself alone (`EXCLUSIVE_PORT`).

    jina 3.27.0 (pinned) has no option for an executor's server interceptors; its `GRPCServer`
    asks `aio_tracing_server_interceptors()` for them once, in its constructor, after it built the
    request handler (which imported the executor's module, and so this package). The method is
    wrapped here, for worker servers only: the gateway's server keeps its own interceptors.
    """
    from jina.serve.runtimes.servers.grpc import GRPCServer
    from jina.serve.runtimes.worker.request_handling import WorkerRequestHandler

    original = GRPCServer.aio_tracing_server_interceptors
    if getattr(original, 'clip_guarded', False):
        return

    def interceptors(self):
        found = list(original(self) or [])
        if isinstance(getattr(self, '_request_handler', None), WorkerRequestHandler):
            self.grpc_server_options = {**(self.grpc_server_options or {}), **EXCLUSIVE_PORT}
            token = internal_token()
            if token:
                found.insert(0, InternalTokenInterceptor(token))
        return found or None

    interceptors.clip_guarded = True  # type: ignore[attr-defined]  # a mark on the function: installed once
    GRPCServer.aio_tracing_server_interceptors = interceptors


def send_internal_token(topology_graph) -> None:
    """Make the gateway send the internal token with every request to an executor: jina sends each
    node's metadata (its `grpc_metadata`) with the requests it forwards there."""
    token = internal_token()
    if not token:
        return
    for node in topology_graph.all_nodes:
        node._metadata = {**(node._metadata or {}), 'authorization': token}


# --- gRPC handlers of the same kind with another behaviour (used by the gateway's edge too) ---


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable:
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def with_behavior(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary or streaming each way) running `behavior`."""
    if handler.unary_unary:
        make = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream:
        make = grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary:
        make = grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.stream_stream_rpc_method_handler
    return make(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def aborting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `code` with `message`."""

    async def abort(request, context):
        await context.abort(code, message)

    async def abort_stream(request, context):
        await context.abort(code, message)
        yield  # never reached; makes this an async generator, as a response-streaming handler must be

    return with_behavior(handler, abort_stream if handler.unary_stream or handler.stream_stream else abort)
