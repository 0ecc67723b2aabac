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

Result = Callable[[object], object]


class _WithoutTracebacks:
    """Installs `without_tracebacks` on the gateway's request streamer, shared by all its servers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # jina 3.27.0 (pinned): the streamer behind every protocol, and the one callable each
        # response passes through on its way to the client.
        streamer = self._request_handler.streamer._streamer
        streamer._result_handler = without_tracebacks(streamer._result_handler, self.logger)


class ClipGateway(_WithoutTracebacks, CompositeGateway):
    """Several protocols, one server each."""


class ClipGRPCGateway(_WithoutTracebacks, GRPCGateway):
    """gRPC alone."""


class ClipHTTPGateway(_WithoutTracebacks, HTTPGateway):
    """HTTP alone."""


class ClipWebSocketGateway(_WithoutTracebacks, WebSocketGateway):
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
