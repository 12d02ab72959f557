"""gRPC and domain errors as HTTP responses: a status code and an OpenAI-style JSON error body."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spiral_common import errors
from spiral_common.grpc_service import error_info, status_code_for

# The standard gRPC -> HTTP mapping (as grpc-gateway and Google APIs use it).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


# The schema's list caps (gateway/schemas.py), by field, as the router's reasons for the same limits.
_TOO_LONG = {"messages": "TOO_MANY_MESSAGES", "content": "TOO_MANY_CONTENT_PARTS"}


def error_body(status: int, message: str, reason: str, metadata: dict[str, str], request_id: str) -> dict:
    param = metadata.get("field")
    if param and param.startswith("params."):
        param = param[len("params.") :]  # the OpenAI request has the sampling fields at the top level
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPE.get(status, "server_error"),
            "param": param,
            "code": reason,
            "reason": reason,
            "metadata": metadata,
            "request_id": request_id,
        }
    }


def rpc_error_body(exc: grpc.aio.AioRpcError, request_id: str) -> tuple[int, dict]:
    status = HTTP_STATUS.get(exc.code(), 500)
    info = error_info(exc)
    reason = info.reason if info else exc.code().name
    metadata = dict(info.metadata) if info else {}
    message = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE and info is None:
        message = f"the platform is unavailable: {message}"
    return status, error_body(status, message, reason, metadata, request_id)


def _headers(request_id: str, metadata: dict[str, str]) -> dict[str, str]:
    """The response headers of an error: the request id, and Retry-After (whole seconds, rounded up) for a limit
    that frees itself soon (a key over its rate, a busy head: the gRPC RetryInfo's twin)."""
    headers = {"x-request-id": request_id}
    retry_ms = metadata.get("retry_after_ms", "")
    if retry_ms.isdigit():
        headers["retry-after"] = str(max(-(-int(retry_ms) // 1000), 1))
    return headers


def rpc_error_response(exc: grpc.aio.AioRpcError, request_id: str) -> JSONResponse:
    status, body = rpc_error_body(exc, request_id)
    return JSONResponse(body, status_code=status, headers=_headers(request_id, body["error"]["metadata"]))


def domain_error_response(exc: errors.SpiralError, request_id: str) -> JSONResponse:
    status = HTTP_STATUS.get(status_code_for(exc), 500)
    return JSONResponse(
        error_body(status, exc.message, exc.reason, exc.metadata, request_id),
        status_code=status,
        headers=_headers(request_id, exc.metadata),
    )


# The app's exception handlers: every error, whatever raised it, answers with the same JSON body.


async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    found = exc.errors()
    # A list over its cap is the error to report: the other errors may be about its union's other member.
    first = next((e for e in found if e.get("type") == "too_long"), found[0] if found else {})
    # ("body", "messages", 1, "content", "list[TextPart]") -> "messages[1].content", as the domain errors name
    # fields (a name with brackets is pydantic's tag of a union member, not a field)
    loc = [p for p in first.get("loc", ())[1:] if not (isinstance(p, str) and "[" in p)]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    metadata = {"field": field} if field else {}
    kind = first.get("type")
    if kind == "json_invalid":
        reason, metadata, message = "MALFORMED_JSON", {}, f"the body is not valid JSON: {first.get('msg', '')}"
    elif kind == "extra_forbidden":
        # An OpenAI field Spiral does not implement (tools, response_format, ...): refused, never dropped.
        reason, message = "UNSUPPORTED_FIELD", f"{field} is not supported by Spiral"
    elif kind == "too_long" and loc and str(loc[-1]) in _TOO_LONG:
        reason, message = _TOO_LONG[str(loc[-1])], f"{field}: {first.get('msg', 'too many items')}"
        metadata["limit"] = str(first.get("ctx", {}).get("max_length", ""))
    else:
        reason, message = "INVALID_FIELD", f"{field or 'body'}: {first.get('msg', 'invalid')}"
    return JSONResponse(error_body(400, message, reason, metadata, request.state.request_id), status_code=400)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (unknown path, wrong method, a body that cannot be read as JSON at all, such as
    a number of thousands of digits) in the same body as every other error."""
    reason = "MALFORMED_JSON" if exc.status_code == 400 else HTTPStatus(exc.status_code).name
    body = error_body(exc.status_code, str(exc.detail), reason, {}, request.state.request_id)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def domain_error(request: Request, exc: errors.SpiralError) -> JSONResponse:
    return domain_error_response(exc, request.state.request_id)


async def rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
    return rpc_error_response(exc, request.state.request_id)


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    RequestValidationError: bad_request,
    StarletteHTTPException: http_error,
    errors.SpiralError: domain_error,
    grpc.aio.AioRpcError: rpc_error,
}
