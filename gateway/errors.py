"""gRPC and domain errors as HTTP responses: a status code and an OpenAI-style JSON error body."""

from __future__ import annotations

from typing import Any

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

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
    429: "rate_limit_error",
}


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


def rpc_error_response(exc: grpc.aio.AioRpcError, request_id: str) -> JSONResponse:
    status, body = rpc_error_body(exc, request_id)
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id})


def domain_error_response(exc: errors.SpiralError, request_id: str) -> JSONResponse:
    status = HTTP_STATUS.get(status_code_for(exc), 500)
    return JSONResponse(
        error_body(status, exc.message, exc.reason, exc.metadata, request_id),
        status_code=status,
        headers={"x-request-id": request_id},
    )


# The app's exception handlers: every error, whatever raised it, answers with the same JSON body.


async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        reason, field, message = "MALFORMED_JSON", "", f"the body is not valid JSON: {first.get('msg', '')}"
    else:
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc).replace(".[", "[")
        reason, message = "INVALID_FIELD", f"{field or 'body'}: {first.get('msg', 'invalid')}"
    metadata = {"field": field} if field else {}
    return JSONResponse(error_body(400, message, reason, metadata, request.state.request_id), status_code=400)


async def domain_error(request: Request, exc: errors.SpiralError) -> JSONResponse:
    return domain_error_response(exc, request.state.request_id)


async def rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
    return rpc_error_response(exc, request.state.request_id)


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    RequestValidationError: bad_request,
    errors.SpiralError: domain_error,
    grpc.aio.AioRpcError: rpc_error,
}
