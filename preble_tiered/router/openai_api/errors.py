"""How the OpenAI API answers what goes wrong: gRPC statuses mapped to HTTP ones in OpenAI's
error shape, the exception handlers, and the gate that checks the token and the body's size
before a request's body is read."""

from __future__ import annotations

import hmac
import logging

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from preble_tiered.router.errors import RequestError
from preble_tiered.router.openai_api.schema import error_body

logger = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type)
_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param

    @classmethod
    def of(cls, e: RequestError) -> "ApiError":
        status, type_ = _HTTP.get(e.code, (500, "server_error"))
        return cls(status, e.message, type_, e.code.name.lower(), e.param)

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.code, self.param), status_code=self.status)



def install_handlers(app) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return ApiError.of(exc).response()


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error on the OpenAI API", exc_info=exc)
    return JSONResponse(error_body("internal error; see the router's log", "server_error"), status_code=500)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":  # its loc is a character position, not a field
        loc = first.get("loc", ())
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        why = (first.get("ctx") or {}).get("error", "")
        return JSONResponse(error_body(f"the request body is not valid JSON{where}" + (f": {why}" if why else ""),
                                       "invalid_request_error", "invalid_body"), status_code=400)
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid request body")
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    text = f"{param}: {msg}{more}" if param else f"{msg}{more}"
    return JSONResponse(error_body(text, "invalid_request_error", "invalid_body", param), status_code=400)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    code = "request_too_large" if exc.status_code == 413 else None
    return JSONResponse(error_body(str(exc.detail), type_, code), status_code=exc.status_code)


class Gate:
    """Before a request's body is read: the bearer token on /v1/* (401) and the body's size
    (413: by Content-Length at once, else when the bytes received pass `max_bytes`)."""

    def __init__(self, app, max_bytes: int, token: str | None) -> None:
        self.app, self.max_bytes = app, max_bytes
        self._token = token.encode() if token else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> JSONResponse | None:
        if self._token is not None and path.startswith("/v1/"):
            scheme, _, got = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(got.strip(), self._token):
                why = "missing bearer token" if not got else "wrong bearer token"
                return ApiError(401, f"{why}: send `Authorization: Bearer <token>` with the router's inference "
                                     "token (PREBLE_INFERENCE_TOKEN or --inference-token-file)",
                                "authentication_error", "invalid_api_key").response()
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return ApiError(413, f"the request body has {int(length)} bytes; the limit is {self.max_bytes}",
                            "invalid_request_error", "request_too_large").response()
        return None

    def _counting(self, receive):
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, f"the request body passed {self.max_bytes} bytes; the limit is "
                                             f"{self.max_bytes}")
            return msg

        return counted
