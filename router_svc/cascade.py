"""The router's core: answer each conversation at the cheapest tier that is good enough, and say how.

The tiers (`router_svc/tiers/`) are asked in the order the wiring gives them (by default: the cache, the
pattern head, the council of local heads or one head streamed directly, the cloud under the cost guard).
The first `TierResult` answers. When every tier passes, a fallback a tier left behind (the council's best
answer below its threshold) is served as `Tier.LOCAL_FALLBACK`; with none, the request fails with
NO_TIER_ANSWERED. The decision trace, the metrics, the cache entry and the traffic log record are written
here, once, from the answering tier's result.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from router_svc.cache import AnswerCache, CachedAnswer
from router_svc.council import Council, CouncilResult
from router_svc.deadline import NO_DEADLINE
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import CascadeRequest, CascadeTier, Clock, Pass, TierResult, Trace, TraceStep
from spiral.traffic.v1 import traffic_pb2
from spiral_common.api_keys import LOCAL_PRINCIPAL, ApiKey
from spiral_common.chat import ChatRequest
from spiral_common.enums import Outcome, Tier, Track
from spiral_common.errors import BudgetExceeded, DeadlineExceeded, NotFound, SpiralError, Unavailable
from spiral_common.logs import LogRate
from spiral_common.protoconv import FINISH_TO_PROTO, messages_to_proto, params_to_proto
from spiral_common.traffic import TrafficLog, teaches

log = logging.getLogger(__name__)

DEFAULT_MODEL = "spiral"
SERVED_MODELS = (DEFAULT_MODEL,)
NO_TIER = "none"  # the requests metric's label when nothing answered


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


class Cascade:
    def __init__(
        self,
        *,
        track: Track,
        tiers: Sequence[CascadeTier],
        cache: AnswerCache,
        traffic: TrafficLog,
        metrics: RouterMetrics,
        answer_log: LogRate | None = None,
    ) -> None:
        self.answer_log = answer_log or LogRate(0)
        self.track = track
        self.tiers = tuple(tiers)
        self.cache = cache
        self.traffic = traffic
        self.metrics = metrics

    def _record(self, request: CascadeRequest, tier: Tier, outcome: Outcome, detail: str = "") -> None:
        lap = request.clock.lap_us()
        request.trace.steps.append(TraceStep(tier, outcome, lap, detail))
        self.metrics.tier_latency.labels(tier.label, outcome.label).observe(lap / 1e6)

    def _record_steps(self, request: CascadeRequest, steps: Sequence[TraceStep]) -> None:
        request.clock.lap_us()
        request.trace.steps.extend(steps)
        for step in steps:
            self.metrics.tier_latency.labels(step.tier.label, step.outcome.label).observe(step.latency_us / 1e6)

    def _first_token(self, request: CascadeRequest) -> None:
        if not request.trace.first_token_latency_us:
            request.trace.first_token_latency_us = request.clock.total_us()
            self.metrics.first_token.observe(request.trace.first_token_latency_us / 1e6)

    async def stream(
        self, chat: ChatRequest, request_id: str, deadline: float = NO_DEADLINE, client: ApiKey = LOCAL_PRINCIPAL
    ) -> AsyncIterator[str | Answer]:
        """Yield text as it comes (one piece for every tier but a streaming one), then the Answer.

        `deadline` (a time.monotonic() instant) is the caller's: no tier runs past it, and a tier that would
        start with no time left does not start. `client` is the API key the request came with: the models it
        may use, and the budget its cloud spend counts against."""
        model = resolve_model(chat.model)
        try:
            client.check_model(model)
        except SpiralError as exc:
            self.metrics.key_refusals.labels(client.name, exc.reason).inc()
            raise
        request = CascadeRequest(
            chat, request_id, single_turn_prompt(chat), Trace(request_id, self.track), Clock(), deadline, client
        )
        passes: list[Pass] = []
        for tier in self.tiers:
            if not request.time_left_s():
                break
            verdict: TierResult | Pass | None = None
            try:
                async for item in tier.answer(request):
                    if isinstance(item, str):
                        self._first_token(request)
                        yield item
                    else:
                        verdict = item
            except SpiralError as exc:
                outcome = Outcome.REFUSED if isinstance(exc, BudgetExceeded) else Outcome.FAILED
                self._record(request, tier.tier, outcome, exc.reason)
                self.metrics.requests.labels(NO_TIER).inc()
                raise
            if verdict is None:
                raise Unavailable(f"the {tier.tier.label} tier gave no verdict", reason="TIER_GAVE_NO_VERDICT")
            if verdict.candidates:
                request.trace.candidates = list(verdict.candidates)
            if isinstance(verdict, TierResult):
                async for out in self._finish(request, model, verdict):
                    yield out
                return
            if verdict.steps:
                self._record_steps(request, verdict.steps)
            else:
                self._record(request, tier.tier, verdict.outcome, verdict.detail)
            passes.append(verdict)
        if request.fallback is not None:
            # Local fell short of the threshold and nothing after it answered: the best local answer beats none.
            async for out in self._finish(request, model, request.fallback, recorded=True):
                yield out
            return
        self.metrics.requests.labels(NO_TIER).inc()
        if not request.time_left_s():
            raise DeadlineExceeded(
                f"the caller's deadline passed before any tier answered (after {request.clock.total_us() // 1000} ms)",
                reason="DEADLINE_EXCEEDED",
            )
        why = "; ".join(
            p.message or p.detail for p in passes if p.outcome is not Outcome.MISSED and (p.message or p.detail)
        )
        raise Unavailable(f"no tier could answer: {why or 'every tier missed'}", reason="NO_TIER_ANSWERED")

    async def _finish(
        self, request: CascadeRequest, model: str, result: TierResult, *, recorded: bool = False
    ) -> AsyncIterator[str | Answer]:
        """Emit the text (unless already streamed), store it, log the exchange, and emit the Answer."""
        trace = request.trace
        if not recorded:
            if result.steps:
                self._record_steps(request, result.steps)
            else:
                self._record(request, result.tier, Outcome.ANSWERED, result.detail)
        trace.tier = result.tier
        trace.adapter_version = result.adapter_version
        trace.cost_usd_micros = result.cost_usd_micros
        if not result.streamed and result.text:
            self._first_token(request)
            yield result.text
        trace.total_latency_us = request.clock.total_us()
        # Only a natural stop is kept: a truncated answer (length, cancelled) would be served whole to the
        # next asker of the same question, and the longer budget it might have asked for would never be tried.
        # And only under the adapter that produced it: a head that restarted (or switched since the lookup)
        # may serve another adapter than the one the cache key was read for.
        keep = result.cacheable and bool(request.cache_key) and result.finish_reason == "stop"
        if keep and result.adapter_version != request.adapter_version:
            keep = False
            log.info(
                "not cached: the answer came from another adapter than the cache key's",
                extra={"produced_by": result.adapter_version, "keyed_for": request.adapter_version},
            )
        if keep:
            cached = CachedAnswer(
                result.text,
                result.finish_reason,
                result.prompt_tokens,
                result.completion_tokens,
                result.tier.label,
                result.adapter_version,
            )
            try:
                await self.cache.put(request.cache_key, cached)
            except Exception:
                log.exception("cache store failed")
        answer = Answer(
            uuid.uuid4().hex,
            result.text,
            result.finish_reason,
            result.prompt_tokens,
            result.completion_tokens,
            trace,
            model,
        )
        # Written in the background, with the client that got the answer: only it (or the admin) may rate it.
        self.traffic.submit(self._exchange(request, model, result, answer), owner=request.client.name)
        self.metrics.requests.labels(result.tier.label).inc()
        self.metrics.request_latency.labels(result.tier.label).observe(trace.total_latency_us / 1e6)
        held_back = self.answer_log.admit(result.tier.label)
        if held_back is not None:
            log.info(
                "answered",
                extra={
                    "tier": result.tier.label,
                    "answer_id": answer.answer_id,
                    "total_ms": trace.total_latency_us / 1000,
                    "cost_usd_micros": trace.cost_usd_micros,
                    "not_logged_before": held_back,
                },
            )
        yield answer

    def _exchange(
        self, request: CascadeRequest, model: str, result: TierResult, answer: Answer
    ) -> traffic_pb2.TrafficExchange:
        finish = FINISH_TO_PROTO[result.finish_reason]
        latencies = {s.tier.label: s.latency_us for s in request.trace.steps}
        latencies["total"] = request.trace.total_latency_us
        return traffic_pb2.TrafficExchange(
            answer_id=answer.answer_id,
            request_id=request.request_id,
            track=self.track.proto,
            model=model,
            messages=messages_to_proto(list(request.chat.messages)),
            params=params_to_proto(**vars(request.chat.requested)),  # asdict's deep copy cost more than the rest
            tier=result.tier.proto,
            answer=result.text,
            finish_reason=finish,
            teaches=teaches(result.tier, finish),
            teacher=result.teacher if result.tier is not Tier.CACHE else "",
            cost_usd_micros=result.cost_usd_micros,
            latencies_us=latencies,
            adapter_version=result.adapter_version,
            pattern_id=result.pattern_id,
        )

    async def answer(
        self, chat: ChatRequest, request_id: str, deadline: float = NO_DEADLINE, client: ApiKey = LOCAL_PRINCIPAL
    ) -> Answer:
        async for item in self.stream(chat, request_id, deadline, client):
            if isinstance(item, Answer):
                return item
        raise Unavailable("no answer was produced", reason="NO_ANSWER")


async def vote(
    council: Council,
    chat: ChatRequest,
    request_id: str,
    track: Track,
    metrics: RouterMetrics,
    deadline: float = NO_DEADLINE,
) -> tuple[CouncilResult, Trace]:
    """The council alone: every candidate with its score (nothing cached, nothing logged)."""
    clock = Clock()
    trace = Trace(request_id, track)
    if not council.members:
        raise Unavailable("no council heads are configured (SPIRAL_COUNCIL_HEADS)", reason="NO_COUNCIL")
    result = await council.run(chat, request_id, deadline)
    trace.candidates = result.candidates
    trace.tier = Tier.COUNCIL
    outcome = Outcome.ANSWERED if result.accepted else Outcome.FAILED
    lap = clock.lap_us()
    trace.steps.append(
        TraceStep(Tier.COUNCIL, outcome, lap, result.winner.head if result.winner else "no head answered")
    )
    metrics.tier_latency.labels(Tier.COUNCIL.label, outcome.label).observe(lap / 1e6)
    trace.total_latency_us = clock.total_us()
    return result, trace
