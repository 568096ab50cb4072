"""The router's client-facing error: a gRPC status and a message that says what to fix."""

from __future__ import annotations

import grpc


class RequestError(Exception):
    """A call failed in a way the caller must be told about (a gRPC status + message)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)
