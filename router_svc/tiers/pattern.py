"""The pattern tier: a regex micro-specialist or a mined pattern answers a single-turn prompt it matches
with enough confidence: `threshold` for a regex (they are exact), and for a mined pattern at least
1 - `max_error` as well (its confidence is calibrated against intents it knows and intents it never saw)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from router_svc.mined import PatternMatcher
from router_svc.tiers.base import CascadeRequest, Pass, TierResult
from spiral_common.enums import Outcome, Tier


class PatternTier:
    tier = Tier.PATTERN

    def __init__(self, matcher: PatternMatcher, threshold: float, max_error: float = 0.02) -> None:
        self.matcher = matcher
        self.threshold = threshold
        self.mined_threshold = max(threshold, 1.0 - max_error)

    async def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        found = await self.matcher.match(request.prompt) if request.prompt is not None else None
        if found is None:
            yield Pass(Outcome.MISSED)
            return
        detail = f"{found.pattern} ({found.confidence:.2f})"
        if found.confidence < (self.mined_threshold if found.pattern_id else self.threshold):
            yield Pass(Outcome.MISSED, detail)
            return
        # Not cached: a pattern is cheaper than a lookup, and some answers (the date) change.
        yield TierResult(
            Tier.PATTERN,
            found.text,
            "stop",
            adapter_version=request.adapter_version,
            detail=detail,
            cacheable=False,
            pattern_id=found.pattern_id,
        )
