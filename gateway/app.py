"""The gateway's HTTP app: OpenAI-compatible chat completions, /orchestrate, health and metrics."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import domain_error_response, error_body, rpc_error_body, rpc_error_response
from gateway.schemas import (
    CanaryBody,
    ChatCompletionRequest,
    ChatMessageIn,
    FeedbackBody,
    OrchestrateBody,
    SamplingFields,
    VoteBody,
)
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common import errors
from spiral_common.config import Settings
from spiral_common.grpc_service import service_registry
from spiral_common.logs import REQUEST_ID_HEADER, new_request_id, request_id_var
from spiral_common.protoconv import params_to_proto

log = logging.getLogger(__name__)

ROUTER_SERVICE = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
MODELS = ("spiral",)
_ROLES = {
    "system": chat_pb2.ROLE_SYSTEM,
    "developer": chat_pb2.ROLE_SYSTEM,
    "user": chat_pb2.ROLE_USER,
    "assistant": chat_pb2.ROLE_ASSISTANT,
}
_RATINGS = {"good": router_pb2.RATING_GOOD, "bad": router_pb2.RATING_BAD}
_FINISH = {
    chat_pb2.FINISH_REASON_STOP: "stop",
    chat_pb2.FINISH_REASON_LENGTH: "length",
    chat_pb2.FINISH_REASON_CANCELLED: "stop",
}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_http_requests_total",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to the response head (streams: to the first byte), seconds.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


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


def _messages(messages: list[ChatMessageIn]) -> list[chat_pb2.ChatMessage]:
    out = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise errors.InvalidArgument(
                f"messages[{i}].role {message.role!r} is not one of {', '.join(_ROLES)}",
                reason="INVALID_ROLE",
                field=f"messages[{i}].role",
            )
        out.append(chat_pb2.ChatMessage(role=role, content=message.text()))
    return out


def _params(body: SamplingFields) -> chat_pb2.GenerationParams:
    return params_to_proto(
        max_tokens=body.token_cap(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    registry = registry or service_registry()
    metrics = GatewayMetrics(registry)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = grpc.aio.insecure_channel(settings.envoy.envoy_addr)
        state["router"] = router_pb2_grpc.RouterServiceStub(channel)
        state["admin"] = admin_pb2_grpc.AdminServiceStub(channel)
        state["health"] = health_pb2_grpc.HealthStub(channel)
        yield
        await channel.close()

    app = FastAPI(
        title="Spiral gateway",
        version="0.1.0",
        description="OpenAI-compatible chat completions and the native cascade API of the Spiral platform.",
        lifespan=lifespan,
    )

    app.add_middleware(RequestContext, metrics=metrics)

    @app.exception_handler(RequestValidationError)
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

    @app.exception_handler(errors.SpiralError)
    async def domain_error(request: Request, exc: errors.SpiralError) -> JSONResponse:
        return domain_error_response(exc, request.state.request_id)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def rpc_error(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        return rpc_error_response(exc, request.state.request_id)

    def metadata(request: Request) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_HEADER, request.state.request_id),)

    def admin_metadata(request: Request) -> tuple[tuple[str, str], ...]:
        # The bearer token is passed on as it came; the router checks it (in constant time) and logs
        # refusals without it.
        return (*metadata(request), ("authorization", request.headers.get("authorization", "")))

    @app.get("/healthz", summary="Gateway liveness and the router's gRPC health through Envoy")
    async def healthz() -> JSONResponse:
        try:
            reply = await state["health"].Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE), timeout=2)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            status = f"UNREACHABLE ({exc.code().name})"
        code = 200 if status == "SERVING" else 503
        return JSONResponse({"status": "ok" if code == 200 else "degraded", "router": status}, status_code=code)

    @app.get("/metrics", summary="Prometheus metrics of the gateway")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="Models served (OpenAI-compatible)")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": "spiral"} for m in MODELS],
        }

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible; stream=true answers as SSE)")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        if body.n != 1:
            raise errors.InvalidArgument("only n=1 is supported", reason="UNSUPPORTED_N", field="n")
        proto: dict[str, Any] = dict(messages=_messages(body.messages), params=_params(body), model=body.model)
        created = int(time.time())
        if not body.stream:
            reply = await state["router"].Orchestrate(
                router_pb2.OrchestrateRequest(**proto), metadata=metadata(request)
            )
            return JSONResponse(
                {
                    "id": f"chatcmpl-{reply.answer_id}",
                    "object": "chat.completion",
                    "created": created,
                    "model": reply.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.text},
                            "finish_reason": _FINISH.get(reply.finish_reason, "stop"),
                        }
                    ],
                    "usage": _usage(reply.usage),
                    "spiral_trace": _trace_dict(reply.trace),
                }
            )
        call = state["router"].OrchestrateStream(
            router_pb2.OrchestrateStreamRequest(**proto), metadata=metadata(request)
        )
        first = await _next_event(call)  # an error before any token is still a plain HTTP error
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunk_id = f"chatcmpl-{request.state.request_id}"

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            return _sse(
                {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    **extra,
                }
            )

        async def events() -> AsyncIterator[bytes]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                event = first
                while event is not None:
                    if event.HasField("delta"):
                        yield chunk({"content": event.delta.text})
                    else:
                        end = event.end
                        # spiral_answer_id is what POST /feedback takes
                        yield chunk({}, _FINISH.get(end.finish_reason, "stop"), spiral_answer_id=end.answer_id)
                        if include_usage:
                            yield _sse(
                                {
                                    "id": chunk_id,
                                    "object": "chat.completion.chunk",
                                    "created": created,
                                    "model": body.model,
                                    "choices": [],
                                    "usage": _usage(end.usage),
                                    "spiral_trace": _trace_dict(end.trace),
                                }
                            )
                    event = await _next_event(call)
                yield _sse("[DONE]")
            except grpc.aio.AioRpcError as exc:
                _, error = rpc_error_body(exc, request.state.request_id)
                yield _sse(error)
            finally:
                call.cancel()  # the client went away or the stream ended: release the router's stream

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    @app.post("/orchestrate", summary="Answer through the cascade; the reply carries the decision trace")
    async def orchestrate(body: OrchestrateBody, request: Request) -> JSONResponse:
        reply = await state["router"].Orchestrate(
            router_pb2.OrchestrateRequest(messages=_messages(body.messages), params=_params(body), model=body.model),
            metadata=metadata(request),
        )
        return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    @app.post("/vote", summary="Run the council alone; every candidate with its score, best first")
    async def vote(body: VoteBody, request: Request) -> JSONResponse:
        reply = await state["router"].Vote(
            router_pb2.VoteRequest(messages=_messages(body.messages), params=_params(body)), metadata=metadata(request)
        )
        return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    @app.post("/feedback", summary="Rate an earlier answer by its answer_id (good or bad)")
    async def feedback(body: FeedbackBody, request: Request) -> JSONResponse:
        reply = await state["router"].SubmitFeedback(
            router_pb2.SubmitFeedbackRequest(
                answer_id=body.answer_id.removeprefix("chatcmpl-"), rating=_RATINGS[body.rating], comment=body.comment
            ),
            metadata=metadata(request),
        )
        return JSONResponse({"recorded": reply.recorded})

    @app.get("/admin/budget", summary="Today's cloud and training spend against the daily pool (admin token)")
    async def budget(request: Request) -> JSONResponse:
        reply = await state["admin"].GetBudget(admin_pb2.GetBudgetRequest(), metadata=admin_metadata(request))
        return JSONResponse(
            json_format.MessageToDict(
                reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    @app.get("/admin/canary", summary="The share of router traffic Envoy sends to the canary (admin token)")
    async def get_canary(request: Request) -> JSONResponse:
        reply = await state["admin"].GetCanaryWeight(
            admin_pb2.GetCanaryWeightRequest(), metadata=admin_metadata(request)
        )
        return JSONResponse({"percent": reply.percent})

    @app.post("/admin/canary", summary="Change the canary share live, without restarting Envoy (admin token)")
    async def set_canary(body: CanaryBody, request: Request) -> JSONResponse:
        reply = await state["admin"].SetCanaryWeight(
            admin_pb2.SetCanaryWeightRequest(percent=body.percent), metadata=admin_metadata(request)
        )
        return JSONResponse({"percent": reply.percent, "previous_percent": reply.previous_percent})

    @app.post("/admin/reload", summary="Hot-reload an adapter on the heads (admin token); zero failed requests")
    async def reload(request: Request, lora: str = "latest", target: Literal["all", "canary"] = "all") -> JSONResponse:
        reply = await state["admin"].ReloadAdapter(
            admin_pb2.ReloadAdapterRequest(
                version=lora,
                target=admin_pb2.RELOAD_TARGET_CANARY if target == "canary" else admin_pb2.RELOAD_TARGET_ALL,
            ),
            metadata=admin_metadata(request),
            timeout=120,
        )
        return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))

    return app


async def _next_event(call: Any) -> router_pb2.OrchestrateStreamResponse | None:
    message = await call.read()
    return None if message is grpc.aio.EOF else message


def _usage(usage: chat_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _trace_dict(trace: router_pb2.DecisionTrace) -> dict[str, Any]:
    return json_format.MessageToDict(trace, preserving_proto_field_name=True)
