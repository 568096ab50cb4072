"""The router's client-facing error: a gRPC status and a message that says what to fix."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A call failed in a way the caller must be told about (a gRPC status + message)."""

    def __init__(self, code: grpc.StatusCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        """The request field at fault, where one is (the OpenAI API reports it)."""


def invalid(message: str, param: str | None = None) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message, param)
