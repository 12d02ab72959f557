"""The cloud tier: a paid provider answers when local fell short, under the per-request cap, the client key's
daily budget and the daily pool (the cost guard is `router_svc.cloud.CloudFallback`).

A key whose budget is spent still gets answers from the free tiers before this one (cache, patterns, council):
only when none of them answered does this tier refuse, with KEY_BUDGET_EXCEEDED, as it refuses with
BUDGET_EXCEEDED when the pool is spent."""

from __future__ import annotations

from collections.abc import AsyncIterator

from router_svc.cache import request_digest
from router_svc.cloud import Attempt, CloudFallback
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import CascadeRequest, Pass, TierResult, TraceStep
from spiral_common.enums import Outcome, Tier
from spiral_common.errors import BudgetExceeded, DeadlineExceeded, Unavailable


class CloudTier:
    tier = Tier.CLOUD

    def __init__(self, cloud: CloudFallback, metrics: RouterMetrics) -> None:
        self.cloud = cloud
        self.metrics = metrics

    def _steps(self, attempts: list[Attempt]) -> tuple[TraceStep, ...]:
        for attempt in attempts:
            self.metrics.cloud_calls.labels(attempt.provider, attempt.outcome).inc()
        return tuple(
            TraceStep(Tier.CLOUD, Outcome.from_label(a.outcome), a.latency_us, f"{a.provider} {a.detail}".strip())
            for a in attempts
        )

    async def _publish_budget(self) -> None:
        status = await self.cloud.ledger.status()
        self.metrics.budget_spent.set(status.spent_usd_micros / 1e6)
        self.metrics.budget_reserved.set(status.reserved_usd_micros / 1e6)
        self.metrics.budget_expired_charged.set(status.expired_charged_usd_micros / 1e6)
        self.metrics.budget_over_reservation.set(status.over_reservation_usd_micros / 1e6)

    async def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        attempts: list[Attempt] = []
        try:
            key = f"{request.request_id}:{request_digest(request.chat)[:16]}"
            cloud = await self.cloud.answer(request.chat, attempts, request.deadline, key, (request.client.scope,))
        except DeadlineExceeded:
            self._steps(attempts)  # counted; the cascade traces the refusal
            raise
        except BudgetExceeded as exc:
            self._steps(attempts)  # counted; the refusal itself is the cascade's to trace
            await self._publish_budget()
            self.metrics.budget_refusals.labels(exc.subject).inc()
            if exc.reason == "KEY_BUDGET_EXCEEDED":
                self.metrics.key_refusals.labels(request.client.name, exc.reason).inc()
            raise
        except Unavailable as exc:
            steps = self._steps(attempts)
            outcome = Outcome.FAILED if attempts else Outcome.SKIPPED
            yield Pass(outcome, exc.reason, reason=exc.reason, message=exc.message, steps=steps)
            return
        await self._publish_budget()
        self.metrics.cloud_spend.inc(cloud.cost_usd_micros / 1e6)
        self.metrics.key_spend.labels(request.client.name).inc(cloud.cost_usd_micros / 1e6)
        reply = cloud.reply
        yield TierResult(
            Tier.CLOUD,
            reply.text,
            reply.finish_reason,
            reply.prompt_tokens,
            reply.completion_tokens,
            request.adapter_version,
            teacher=cloud.provider,
            cost_usd_micros=cloud.cost_usd_micros,
            steps=self._steps(attempts),
        )
