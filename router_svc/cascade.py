"""The router's core: answer each conversation at the cheapest tier that is good enough, and say how.

Tiers, in order: the cache; the pattern head (single-turn prompts only); the local heads (a council
vote, or one head streamed directly when the council has a single member); the cloud, only when
local failed, under the cost guard. Every answer carries its decision trace and is appended to the
traffic log.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field

from router_svc.cache import AnswerCache, CachedAnswer
from router_svc.cloud import Attempt, CloudFallback
from router_svc.council import Candidate, Council, CouncilResult
from router_svc.heads_client import HeadClient, HeadDone, HeadText
from router_svc.metrics import RouterMetrics
from router_svc.mined import PatternTier
from router_svc.traffic import Exchange, TrafficLog
from spiral_common.chat import ChatRequest
from spiral_common.errors import BudgetExceeded, NotFound, SpiralError, Unavailable

log = logging.getLogger(__name__)

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
    candidates: list[Candidate] = field(default_factory=list)
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


def single_turn_prompt(chat: ChatRequest) -> str | None:
    """The user's text when the conversation is one user turn (after optional system turns)."""
    turns = [m for m in chat.messages if m.role != "system"]
    return turns[0].content if len(turns) == 1 and turns[0].role == "user" else None


class _Clock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.mark = self.started

    def lap_us(self) -> int:
        now = time.perf_counter()
        lap, self.mark = int((now - self.mark) * 1e6), now
        return lap

    def total_us(self) -> int:
        return int((time.perf_counter() - self.started) * 1e6)


class Cascade:
    def __init__(
        self,
        *,
        instance: str,
        cache: AnswerCache,
        patterns: PatternTier,
        pattern_threshold: float,
        heads: HeadClient,
        council: Council,
        cloud: CloudFallback,
        traffic: TrafficLog,
        metrics: RouterMetrics,
    ) -> None:
        self.instance = instance
        self.cache = cache
        self.patterns = patterns
        self.pattern_threshold = pattern_threshold
        self.heads = heads
        self.council = council
        self.cloud = cloud
        self.traffic = traffic
        self.metrics = metrics

    def _step(self, trace: Trace, clock: _Clock, tier: str, outcome: str, detail: str = "") -> None:
        lap = clock.lap_us()
        trace.steps.append(TraceStep(tier, outcome, lap, detail))
        self.metrics.tier_latency.labels(tier, outcome).observe(lap / 1e6)

    async def stream(self, chat: ChatRequest, request_id: str) -> AsyncIterator[str | Answer]:
        """Yield text as it comes (one piece for every tier but a single streamed head), then the Answer."""
        chat_model = resolve_model(chat.model)
        clock = _Clock()
        trace = Trace(request_id=request_id, router_instance=self.instance)
        try:
            cached, version, cache_key = await self.cache.get(chat)
        except Exception:  # the cache is an optimisation: Redis trouble must not fail the request
            log.exception("cache lookup failed")
            cached, version, cache_key = None, "", ""
        self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
        if cached:
            self._step(trace, clock, "cache", "answered", f"first answered by {cached.tier}")
            async for item in self._finish(
                chat,
                chat_model,
                trace,
                clock,
                "cache",
                cached.text,
                cached.finish_reason,
                cached.prompt_tokens,
                cached.completion_tokens,
                cached.adapter_version,
            ):
                yield item
            return
        self._step(trace, clock, "cache", "missed")

        prompt = single_turn_prompt(chat)
        pattern = await self.patterns.match(prompt) if prompt is not None else None
        if pattern and pattern.confidence >= self.pattern_threshold:
            self._step(trace, clock, "pattern", "answered", f"{pattern.pattern} ({pattern.confidence:.2f})")
            async for item in self._finish(
                chat,
                chat_model,
                trace,
                clock,
                "pattern",
                pattern.text,
                "stop",
                0,
                0,
                version,
                cache_key="",
                pattern_id=pattern.pattern_id,
            ):
                yield item  # not cached: a pattern is cheaper than a lookup, and the date changes
            return
        self._step(
            trace, clock, "pattern", "missed", f"{pattern.pattern} ({pattern.confidence:.2f})" if pattern else ""
        )

        members = self.council.members
        if len(members) == 1:
            async for item in self._single_head(chat, chat_model, trace, clock, members[0], cache_key):
                yield item
            return

        result: CouncilResult | None = None
        if members:
            result = await self.council.run(chat, request_id)
            trace.candidates = result.candidates
            winner = result.winner
            if winner is not None:
                self.metrics.council_agreement.observe(winner.agreement)
            if result.accepted and winner is not None:
                self._step(trace, clock, "council", "answered", f"{winner.head} ({winner.score:.2f})")
                async for item in self._finish(
                    chat,
                    chat_model,
                    trace,
                    clock,
                    "council",
                    winner.text,
                    winner.finish_reason,
                    winner.prompt_tokens,
                    winner.completion_tokens,
                    winner.adapter_version,
                    cache_key=cache_key,
                    teacher=f"council:{winner.head}",
                ):
                    yield item
                return
            detail = f"best {winner.head} {winner.score:.2f} < {result.threshold}" if winner else "no head answered"
            self._step(trace, clock, "council", "failed", detail)
        else:
            self._step(trace, clock, "council", "skipped", "no council heads configured")

        attempts: list[Attempt] = []
        try:
            cloud = await self.cloud.answer(chat, attempts)
        except BudgetExceeded as exc:
            self._cloud_steps(trace, clock, attempts)
            await self._publish_budget()
            self.metrics.budget_refusals.labels(exc.subject).inc()
            self.metrics.requests.labels("none").inc()
            raise
        except Unavailable as exc:
            self._cloud_steps(trace, clock, attempts)
            if not attempts:
                self._step(trace, clock, "cloud", "skipped", exc.reason)
            best = result.winner if result else None
            if best is None:
                self.metrics.requests.labels("none").inc()
                raise Unavailable(
                    f"no tier could answer: the local heads gave nothing and {exc.message}", reason="NO_TIER_ANSWERED"
                ) from exc
            # Local fell short of the threshold and the cloud is out of reach: the best local answer beats none.
            async for item in self._finish(
                chat,
                chat_model,
                trace,
                clock,
                "council",
                best.text,
                best.finish_reason,
                best.prompt_tokens,
                best.completion_tokens,
                best.adapter_version,
            ):
                yield item
            return
        self._cloud_steps(trace, clock, attempts)
        await self._publish_budget()
        trace.cost_usd_micros = cloud.cost_usd_micros
        self.metrics.cloud_spend.inc(cloud.cost_usd_micros / 1e6)
        reply = cloud.reply
        async for item in self._finish(
            chat,
            chat_model,
            trace,
            clock,
            "cloud",
            reply.text,
            reply.finish_reason,
            reply.prompt_tokens,
            reply.completion_tokens,
            version,
            cache_key=cache_key,
            teacher=cloud.provider,
        ):
            yield item

    async def _publish_budget(self) -> None:
        status = await self.cloud.ledger.status()
        self.metrics.budget_spent.set(status.spent_usd_micros / 1e6)
        self.metrics.budget_reserved.set(status.reserved_usd_micros / 1e6)

    def _cloud_steps(self, trace: Trace, clock: _Clock, attempts: list[Attempt]) -> None:
        for attempt in attempts:
            detail = f"{attempt.provider} {attempt.detail}".strip()
            trace.steps.append(TraceStep("cloud", attempt.outcome, attempt.latency_us, detail))
            self.metrics.tier_latency.labels("cloud", attempt.outcome).observe(attempt.latency_us / 1e6)
            self.metrics.cloud_calls.labels(attempt.provider, attempt.outcome).inc()
        clock.lap_us()

    async def _single_head(
        self, chat: ChatRequest, model: str, trace: Trace, clock: _Clock, head: str, cache_key: str
    ) -> AsyncIterator[str | Answer]:
        """One head, streamed as it generates (no vote, so nothing to wait for)."""
        pieces: list[str] = []
        done: HeadDone | None = None
        try:
            async for event in self.heads.generate(chat, head=head, request_id=trace.request_id, head_sampling=True):
                if isinstance(event, HeadText):
                    if not pieces:
                        trace.first_token_latency_us = clock.total_us()
                        self.metrics.first_token.observe(trace.first_token_latency_us / 1e6)
                    pieces.append(event.text)
                    yield event.text
                else:
                    done = event
        except SpiralError as exc:
            self._step(trace, clock, "head", "failed", exc.reason)
            self.metrics.requests.labels("none").inc()
            raise
        if done is None:
            raise Unavailable("the head closed the stream without an end event", reason="HEAD_STREAM_TRUNCATED")
        self._step(trace, clock, "head", "answered", head)
        async for item in self._finish(
            chat,
            model,
            trace,
            clock,
            "head",
            "".join(pieces),
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
            done.adapter_version,
            cache_key=cache_key,
            streamed=True,
            teacher=f"head:{head}",
        ):
            yield item

    async def _finish(
        self,
        chat: ChatRequest,
        model: str,
        trace: Trace,
        clock: _Clock,
        tier: str,
        text: str,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        adapter_version: str,
        *,
        cache_key: str = "",
        streamed: bool = False,
        teacher: str = "",
        pattern_id: str = "",
    ) -> AsyncIterator[str | Answer]:
        """Emit the text (unless already streamed), store it, log the exchange, and emit the Answer."""
        trace.tier = tier
        trace.adapter_version = adapter_version
        if not streamed and text:
            trace.first_token_latency_us = clock.total_us()
            self.metrics.first_token.observe(trace.first_token_latency_us / 1e6)
            yield text
        trace.total_latency_us = clock.total_us()
        if cache_key and finish_reason in ("stop", "length"):
            cached = CachedAnswer(text, finish_reason, prompt_tokens, completion_tokens, tier, adapter_version)
            try:
                await self.cache.put(cache_key, cached)
            except Exception:
                log.exception("cache store failed")
        answer = Answer(uuid.uuid4().hex, text, finish_reason, prompt_tokens, completion_tokens, trace, model)
        await self.traffic.append(
            Exchange(
                answer_id=answer.answer_id,
                request_id=trace.request_id,
                router_instance=self.instance,
                model=model,
                messages=[{"role": m.role, "content": m.content} for m in chat.messages],
                params={k: v for k, v in asdict(chat.requested).items() if v not in (None, ())},
                tier=tier,
                answer=text,
                finish_reason=finish_reason,
                teacher_answer=text if tier == "cloud" else "",
                teacher=teacher if tier != "cache" else "",
                cost_usd_micros=trace.cost_usd_micros,
                latencies_us={s.tier: s.latency_us for s in trace.steps} | {"total": trace.total_latency_us},
                adapter_version=adapter_version,
                pattern_id=pattern_id,
            )
        )
        self.metrics.requests.labels(tier).inc()
        self.metrics.request_latency.labels(tier).observe(trace.total_latency_us / 1e6)
        log.info(
            "answered",
            extra={
                "tier": tier,
                "answer_id": answer.answer_id,
                "total_ms": trace.total_latency_us / 1000,
                "cost_usd_micros": trace.cost_usd_micros,
            },
        )
        yield answer

    async def answer(self, chat: ChatRequest, request_id: str) -> Answer:
        async for item in self.stream(chat, request_id):
            if isinstance(item, Answer):
                return item
        raise Unavailable("no answer was produced", reason="NO_ANSWER")

    async def vote(self, chat: ChatRequest, request_id: str) -> tuple[CouncilResult, Trace]:
        """The council alone: every candidate with its score (nothing cached, nothing logged)."""
        clock = _Clock()
        trace = Trace(request_id=request_id, router_instance=self.instance)
        if not self.council.members:
            raise Unavailable("no council heads are configured (SPIRAL_COUNCIL_HEADS)", reason="NO_COUNCIL")
        result = await self.council.run(chat, request_id)
        trace.candidates = result.candidates
        trace.tier = "council"
        self._step(
            trace,
            clock,
            "council",
            "answered" if result.accepted else "failed",
            result.winner.head if result.winner else "no head answered",
        )
        trace.total_latency_us = clock.total_us()
        return result, trace
