"""The router's core: answer a validated conversation and explain how (the decision trace).

For now one tier serves: the local head. The cascade (cache, pattern head, council, cloud) grows here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from router_svc.heads_client import HeadClient, HeadDone, HeadText
from spiral_common.chat import ChatRequest
from spiral_common.errors import NotFound, Unavailable

DEFAULT_MODEL = "spiral"
SERVED_MODELS = (DEFAULT_MODEL,)


@dataclass
class TraceStep:
    tier: str  # "cache", "pattern", "head", "council", "cloud"
    outcome: str  # "answered", "missed", "failed", "skipped", "refused"
    latency_us: int
    detail: str = ""


@dataclass
class Trace:
    request_id: str
    router_instance: str
    tier: str = ""
    steps: list[TraceStep] = field(default_factory=list)
    cost_usd_micros: int = 0
    adapter_version: str = ""
    total_latency_us: int = 0
    first_token_latency_us: int = 0


@dataclass
class Answer:
    answer_id: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    trace: Trace
    model: str


def resolve_model(requested: str) -> str:
    model = requested or DEFAULT_MODEL
    if model not in SERVED_MODELS:
        raise NotFound(
            f"model {requested!r} is not served here; use one of: {', '.join(SERVED_MODELS)}",
            reason="MODEL_NOT_FOUND",
            field="model",
        )
    return model


class Orchestrator:
    def __init__(self, heads: HeadClient, instance: str) -> None:
        self.heads = heads
        self.instance = instance

    async def stream(self, chat: ChatRequest, request_id: str) -> AsyncIterator[str | Answer]:
        """Yield text pieces as they come, then the whole Answer (its text included) last."""
        model = resolve_model(chat.model)
        started = time.perf_counter()
        trace = Trace(request_id=request_id, router_instance=self.instance)
        pieces: list[str] = []
        done: HeadDone | None = None
        async for event in self.heads.generate(chat, head="", request_id=request_id):
            if isinstance(event, HeadText):
                if not pieces:
                    trace.first_token_latency_us = _since_us(started)
                pieces.append(event.text)
                yield event.text
            else:
                done = event
        if done is None:
            raise Unavailable("the head closed the stream without an end event", reason="HEAD_STREAM_TRUNCATED")
        trace.total_latency_us = _since_us(started)
        trace.tier = "head"
        trace.adapter_version = done.adapter_version
        trace.steps.append(TraceStep("head", "answered", trace.total_latency_us, done.head))
        yield Answer(
            answer_id=uuid.uuid4().hex,
            text="".join(pieces),
            finish_reason=done.finish_reason,
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            trace=trace,
            model=model,
        )

    async def answer(self, chat: ChatRequest, request_id: str) -> Answer:
        async for item in self.stream(chat, request_id):
            if isinstance(item, Answer):
                return item
        raise Unavailable("no answer was produced", reason="NO_ANSWER")


def _since_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
