"""The OpenAI-compatible API: /v1/models and /v1/chat/completions (a JSON answer, or SSE chunks with stream=true)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from google.protobuf import json_format

from gateway.convert import checked_chat
from gateway.errors import rpc_error_body
from gateway.schemas import NO_OP_VALUES, ChatCompletionRequest
from gateway.state import CallTimeout, ChatLimits, ClientMetadata, Stubs
from spiral.common.v1 import chat_pb2
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
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    stubs: Stubs,
    metadata: ClientMetadata,
    limits: ChatLimits,
    timeout: CallTimeout,
) -> Response:
    unsupported = body.unsupported_field()
    if unsupported is not None:
        raise errors.InvalidArgument(
            f"{unsupported}={getattr(body, unsupported)!r} is not supported by Spiral: "
            f"only {NO_OP_VALUES[unsupported]!r}",
            reason="UNSUPPORTED_FIELD",
            field=unsupported,
        )
    chat = checked_chat(body.messages, body, limits)
    proto: dict[str, Any] = dict(messages=chat.messages, params=chat.params, model=body.model)
    created = int(time.time())
    if not body.stream:
        reply = await stubs.router.Orchestrate(
            router_pb2.OrchestrateRequest(**proto), metadata=metadata, timeout=timeout
        )
        return JSONResponse(_completion(reply, created))
    call = stubs.router.OrchestrateStream(
        router_pb2.OrchestrateStreamRequest(**proto), metadata=metadata, timeout=timeout
    )
    first = await _next_event(call)  # an error before any token is still a plain HTTP error
    chunks = _Chunks(id=f"chatcmpl-{request.state.request_id}", created=created, model=body.model)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(
        _sse_events(call, first, chunks, include_usage, request.state.request_id),
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


def _trace_dict(trace: router_pb2.DecisionTrace) -> dict[str, Any]:
    return json_format.MessageToDict(trace, preserving_proto_field_name=True)
