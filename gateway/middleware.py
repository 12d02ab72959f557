"""The gateway's ASGI middleware: one request id per request with the request metrics, and the body size cap."""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import error_body
from gateway.metrics import GatewayMetrics
from spiral_common.logs import REQUEST_ID_HEADER, is_safe_request_id, new_request_id, request_id_var

# Set on a response whose request came with an x-request-id the gateway would not pass on (not in the safe
# charset, or too long): the x-request-id of the response is then a fresh one.
REQUEST_ID_REPLACED_HEADER = "x-spiral-request-id-replaced"


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
        # Headers are bytes; latin-1 decodes any of them, and the check below admits ASCII only.
        sent = next((v.decode("latin-1") for k, v in scope["headers"] if k == header), "")
        replaced = bool(sent) and not is_safe_request_id(sent)
        request_id = sent if sent and not replaced else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()

        async def send_with_context(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(header, request_id.encode())]
                if replaced:
                    extra.append((REQUEST_ID_REPLACED_HEADER.encode(), b"1"))
                # an error response may carry the id already: one x-request-id header, not two
                kept = [(k, v) for k, v in message.get("headers", []) if k != header]
                message["headers"] = [*kept, *extra]
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
                self.metrics.requests.labels(scope["method"], route, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        finally:
            request_id_var.reset(token)


class BodyLimit:
    """Pure ASGI middleware: reads the request body in before any route parses it, and answers 413 as soon as
    it is known to be over `max_bytes`: from Content-Length before reading, or while a chunked body comes in
    (the rest is never read). The route then reads the body from memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_length(scope) > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body was in: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        body_sent = False

        async def replay() -> Message:
            nonlocal body_sent
            if body_sent:
                return await receive()  # after the body: the disconnect a streamed response listens for
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id", "")
        message = f"the request body is over the gateway's limit of {self.max_bytes} bytes"
        payload = error_body(413, message, "REQUEST_TOO_LARGE", {"limit": str(self.max_bytes)}, request_id)
        content = json.dumps(payload).encode()
        # Connection: close, because the rest of the body is left unread.
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _content_length(scope: Scope) -> int:
    """The declared body size; 0 when absent or unreadable (the body is then counted as it comes in)."""
    raw = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
    if not raw.isdigit():
        return 0
    return int(raw) if len(raw) <= 18 else 10**18  # int() refuses numbers of thousands of digits
