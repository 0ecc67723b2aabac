"""Every error the gateway answers, by kind, and what each transport says for it.

A refusal or a failed request names its kind once; `ANSWERS` says which HTTP status, gRPC code and
OpenAI error type each kind becomes (text-embeddings-inference's router maps its error types once
per transport the same way). The executors' errors arrive by name (`kind_of`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import grpc

from clip_server.gateway.openai_models import ErrorDetail, ErrorResponse
from clip_server.types import InvalidInputError, RequestLimitError, ServerBusyError


class ErrorKind(enum.Enum):
    INVALID = 'the request is wrong'
    UNAUTHENTICATED = 'no valid token'
    NOT_FOUND = 'no such thing here'
    BODY_TIMEOUT = 'the body came too slowly'
    TOO_LARGE = 'over a limit'
    BUSY = 'too many requests pending'
    INTERNAL = 'the server failed'
    UNIMPLEMENTED = 'not served here'
    NO_RESPONSE = 'the executors sent nothing'
    SHUTTING_DOWN = 'draining'


@dataclass(frozen=True)
class Answer:
    http_status: int
    grpc_code: grpc.StatusCode
    openai_type: str


ANSWERS = {
    ErrorKind.INVALID: Answer(400, grpc.StatusCode.INVALID_ARGUMENT, 'invalid_request_error'),
    ErrorKind.UNAUTHENTICATED: Answer(401, grpc.StatusCode.UNAUTHENTICATED, 'authentication_error'),
    ErrorKind.NOT_FOUND: Answer(404, grpc.StatusCode.NOT_FOUND, 'invalid_request_error'),
    ErrorKind.BODY_TIMEOUT: Answer(408, grpc.StatusCode.DEADLINE_EXCEEDED, 'invalid_request_error'),
    ErrorKind.TOO_LARGE: Answer(413, grpc.StatusCode.RESOURCE_EXHAUSTED, 'invalid_request_error'),
    ErrorKind.BUSY: Answer(429, grpc.StatusCode.RESOURCE_EXHAUSTED, 'rate_limit_error'),
    ErrorKind.INTERNAL: Answer(500, grpc.StatusCode.INTERNAL, 'server_error'),
    ErrorKind.UNIMPLEMENTED: Answer(501, grpc.StatusCode.UNIMPLEMENTED, 'invalid_request_error'),
    ErrorKind.NO_RESPONSE: Answer(502, grpc.StatusCode.UNAVAILABLE, 'server_error'),
    ErrorKind.SHUTTING_DOWN: Answer(503, grpc.StatusCode.UNAVAILABLE, 'server_error'),
}

# The errors of a failed request, as their names arrive in its response (from the executors, or from
# the edge answering at the door); any other is the server's own failure.
_EXECUTOR_ERRORS = {
    InvalidInputError.__name__: ErrorKind.INVALID,
    RequestLimitError.__name__: ErrorKind.TOO_LARGE,
    ServerBusyError.__name__: ErrorKind.BUSY,
}

OPENAI_PATHS = '/v1/'


def kind_of(exception_name: str) -> ErrorKind:
    """The kind of a request that failed in an executor with the exception named `exception_name`."""
    return _EXECUTOR_ERRORS.get(exception_name, ErrorKind.INTERNAL)


@dataclass(frozen=True)
class Refusal:
    """A call turned away at the door, with what each protocol says for it."""

    kind: ErrorKind
    message: str

    @property
    def http_status(self) -> int:
        return ANSWERS[self.kind].http_status

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return ANSWERS[self.kind].grpc_code


def error_body(path: str, kind: ErrorKind, message: str, param: str | None = None, code: str | None = None) -> dict:
    """An error's JSON body: OpenAI's shape on the OpenAI API's paths, `{"detail": ...}` elsewhere."""
    if not path.startswith(OPENAI_PATHS):
        return {'detail': message}
    detail = ErrorDetail(message=message, type=ANSWERS[kind].openai_type, param=param, code=code)
    return ErrorResponse(error=detail).dict()
