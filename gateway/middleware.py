"""The request context middleware: one request id per request, and the request metrics."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.metrics import GatewayMetrics
from spiral_common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var


class RequestContext:
    """Pure ASGI middleware: the request id (from x-request-id, or new) for logs, gRPC metadata and the
    response header, and the request metrics. Starlette's BaseHTTPMiddleware would add milliseconds to
    every streamed response, so this wraps `send` instead."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = REQUEST_ID_HEADER.encode()
        request_id = next((v.decode() for k, v in scope["headers"] if k == header), "") or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (header, request_id.encode())]
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
                self.metrics.requests.labels(scope["method"], route, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            request_id_var.reset(token)
