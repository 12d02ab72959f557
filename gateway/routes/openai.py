"""The OpenAI-compatible API: /v1/models and /v1/chat/completions (a JSON answer, or SSE chunks with stream=true)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from google.protobuf import json_format

from gateway.convert import checked_chat
from gateway.errors import rpc_error_body
from gateway.schemas import NO_OP_VALUES, ChatCompletionRequest
from gateway.state import ChatCallContext
from spiral.common.v1 import chat_pb2, track_pb2
from spiral.router.v1 import router_pb2
from spiral_common import errors

MODELS = ("spiral",)
FINISH_REASONS = {
    chat_pb2.FINISH_REASON_STOP: "stop",
    chat_pb2.FINISH_REASON_LENGTH: "length",
    chat_pb2.FINISH_REASON_CANCELLED: "stop",
    chat_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
    chat_pb2.FINISH_REASON_OTHER: "stop",  # tool or function calls are refused before any tier runs
}

router = APIRouter()


@router.get("/v1/models", summary="Models served (OpenAI-compatible)")
async def list_models() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "spiral"} for m in MODELS],
    }


@router.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible; stream=true answers as SSE)")
async def chat_completions(body: ChatCompletionRequest, request: Request, call: ChatCallContext) -> Response:
    unsupported = body.unsupported_field()
    if unsupported is not None:
        raise errors.InvalidArgument(
            f"{unsupported}={getattr(body, unsupported)!r} is not supported by Spiral: "
            f"only {NO_OP_VALUES[unsupported]!r}",
            reason="UNSUPPORTED_FIELD",
            field=unsupported,
        )
    chat = checked_chat(body.messages, body, call.limits)
    proto: dict[str, Any] = dict(messages=chat.messages, params=chat.params, model=body.model)
    created = int(time.time())
    if not body.stream:
        reply = await call.stubs.router.Orchestrate(
            router_pb2.OrchestrateRequest(**proto), metadata=call.metadata, timeout=call.timeout_s
        )
        # orjson: the bytes JSONResponse wrote (compact, UTF-8 unescaped); with `_trace_dict`, ~18 -> ~4 µs a reply.
        return Response(orjson.dumps(_completion(reply, created)), media_type="application/json")
    stream = call.stubs.router.OrchestrateStream(
        router_pb2.OrchestrateStreamRequest(**proto), metadata=call.metadata, timeout=call.timeout_s
    )
    first = await _next_event(stream)  # an error before any token is still a plain HTTP error
    chunks = _Chunks(id=f"chatcmpl-{request.state.request_id}", created=created, model=body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse_events(stream, first, chunks, include_usage, request.state.request_id),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


def _completion(reply: router_pb2.OrchestrateResponse, created: int) -> dict[str, Any]:
    """A `chat.completion` object, with the decision trace under `spiral_trace`."""
    return {
        "id": f"chatcmpl-{reply.answer_id}",
        "object": "chat.completion",
        "created": created,
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": FINISH_REASONS.get(reply.finish_reason, "stop"),
            }
        ],
        "usage": _usage(reply.usage),
        "spiral_trace": _trace_dict(reply.trace),
    }


@dataclass(frozen=True)
class _Chunks:
    """The `chat.completion.chunk` events of one streamed answer: one id, creation time and model for all."""

    id: str
    created: int
    model: str

    def delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    def usage(self, end: router_pb2.StreamEnd) -> bytes:
        """The extra last chunk that `stream_options.include_usage` asks for: no choices, the usage and trace."""
        return _sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": _usage(end.usage),
                "spiral_trace": _trace_dict(end.trace),
            }
        )


async def _sse_events(
    call: Any,
    first: router_pb2.OrchestrateStreamResponse | None,
    chunks: _Chunks,
    include_usage: bool,
    request_id: str,
) -> AsyncIterator[bytes]:
    """The router's stream as SSE: a role chunk, the text deltas, the finish chunk, then `[DONE]`. An error after
    the first event is a final `data: {"error": ...}` event, since the HTTP status is already sent."""
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        event = first
        while event is not None:
            if event.HasField("delta"):
                yield chunks.delta({"content": event.delta.text})
            else:
                end = event.end
                # spiral_answer_id is what POST /feedback takes
                yield chunks.delta({}, FINISH_REASONS.get(end.finish_reason, "stop"), spiral_answer_id=end.answer_id)
                if include_usage:
                    yield chunks.usage(end)
            event = await _next_event(call)
        yield _sse("[DONE]")
    except grpc.aio.AioRpcError as exc:
        _, error = rpc_error_body(exc, request_id)
        yield _sse(error)
    finally:
        call.cancel()  # the client went away or the stream ended: release the router's stream


async def _next_event(call: Any) -> router_pb2.OrchestrateStreamResponse | None:
    message = await call.read()
    return None if message is grpc.aio.EOF else message


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _usage(usage: chat_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _enum_names(enum: Any) -> dict[int, str]:
    return {number: name for name, number in enum.items()}


_TIER_NAMES = _enum_names(router_pb2.Tier)
_OUTCOME_NAMES = _enum_names(router_pb2.TierOutcome)
_TRACK_NAMES = _enum_names(track_pb2.Track)


def _step_dict(step: router_pb2.TierStep) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if step.tier:
        out["tier"] = _TIER_NAMES.get(step.tier, step.tier)
    if step.outcome:
        out["outcome"] = _OUTCOME_NAMES.get(step.outcome, step.outcome)
    if step.latency_us:
        out["latency_us"] = str(step.latency_us)
    if step.detail:
        out["detail"] = step.detail
    return out


def _trace_dict(trace: router_pb2.DecisionTrace) -> dict[str, Any]:
    """The decision trace as `json_format.MessageToDict(trace, preserving_proto_field_name=True)` gives it (fields
    at their default left out, int64 as strings, enums by name, in field order), written out: it is on every
    answer's path, and MessageToDict's reflection cost more than the rest of building the response. A council's
    candidates (not on the cache's path) still go through MessageToDict."""
    out: dict[str, Any] = {}
    if trace.request_id:
        out["request_id"] = trace.request_id
    if trace.tier:
        out["tier"] = _TIER_NAMES.get(trace.tier, trace.tier)
    if trace.steps:
        out["steps"] = [_step_dict(step) for step in trace.steps]
    if trace.cost_usd_micros:
        out["cost_usd_micros"] = str(trace.cost_usd_micros)
    if trace.candidates:
        out["candidates"] = [json_format.MessageToDict(c, preserving_proto_field_name=True) for c in trace.candidates]
    if trace.router_instance:
        out["router_instance"] = trace.router_instance
    if trace.adapter_version:
        out["adapter_version"] = trace.adapter_version
    if trace.total_latency_us:
        out["total_latency_us"] = str(trace.total_latency_us)
    if trace.first_token_latency_us:
        out["first_token_latency_us"] = str(trace.first_token_latency_us)
    if trace.track:
        out["track"] = _TRACK_NAMES.get(trace.track, trace.track)
    return out
