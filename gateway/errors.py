"""gRPC and domain errors as HTTP responses: a status code and an OpenAI-style JSON error body."""

from __future__ import annotations

import grpc
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
