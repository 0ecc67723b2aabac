"""The edge on gRPC: an interceptor that refuses calls the edge turns away and counts the others."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc
from jina.proto import jina_pb2
from jina.types.request.data import DataRequest

from clip_server.gateway.edge import Edge, note_wire_bytes
from clip_server.gateway.errors import ANSWERS, ErrorKind
from clip_server.internal_auth import aborting, behavior_of, with_behavior

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
# jina's `_status`: its versions and environment are no anonymous caller's business.
STATUS_RPC = '/jina.JinaInfoRPC/_status'


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Counts the document-carrying calls for the drain, and refuses new ones while draining."""

    def __init__(self, edge: Edge):
        self._edge = edge

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return handler
        if details.method.startswith(UNSERVED_RPC_PREFIXES):
            unserved = ANSWERS[ErrorKind.UNIMPLEMENTED].grpc_code
            return aborting(handler, unserved, 'single-document streaming is not served here')
        if details.method == STATUS_RPC:
            return with_behavior(handler, _anonymous_status)
        if not details.method.startswith(DATA_RPC_PREFIXES):
            return handler
        refusal = self._edge.refusal(carries_documents=not details.method.startswith(_DISCOVERY))
        if refusal is not None:
            return aborting(handler, refusal.grpc_code, refusal.message)
        return _noting_wire_bytes(with_behavior(handler, self._counted(handler)))

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


def _noting_wire_bytes(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler`, its deserializer noting on each request the bytes its message took (the edge's
    `max_pending_bytes` counts them), once per message of a stream too."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler

    def noted(message: bytes):
        request = deserialize(message)
        for each in request if isinstance(request, list) else [request]:  # jina's list RPC: the whole message each
            if isinstance(each, DataRequest):
                note_wire_bytes(each, len(message))
        return request

    return handler._replace(request_deserializer=noted)


async def _anonymous_status(request, context) -> jina_pb2.JinaInfoProto:
    """jina's `_status` without its versions, environment and addresses (as HTTP's `/status`)."""
    return jina_pb2.JinaInfoProto()
