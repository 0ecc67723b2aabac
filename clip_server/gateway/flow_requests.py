"""One request sent through the gateway's streamer by the gateway's own routes (the OpenAI API, the
web page), as `/post` sends a client's: the edge, batching and every executor apply to it."""

from __future__ import annotations

from docarray import DocumentArray

from clip_server.gateway.errors import ErrorKind, kind_of


class FlowRequestError(Exception):
    """The Flow failed the request: its kind and the executor's own message."""

    def __init__(self, kind: ErrorKind, message: str):
        super().__init__(message)
        self.kind = kind


async def send(streamer, docs: DocumentArray, endpoint: str, parameters: dict, if_silent: ErrorKind):
    """The Flow's response to `docs` at `endpoint`; FlowRequestError if it failed, or (of kind
    `if_silent`) if the executors sent nothing back."""
    async for response in streamer.stream_docs(
        docs, request_size=max(1, len(docs)), exec_endpoint=endpoint, parameters=parameters, return_results=True
    ):
        status = response.header.status
        if status.code == status.ERROR:
            message = status.exception.args[0] if status.exception.args else status.description
            raise FlowRequestError(kind_of(status.exception.name), message)
        return response
    raise FlowRequestError(if_silent, 'the executors sent no response')
