"""The cache tier: an exact-match answer from Redis, under the adapter version now serving this track."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from router_svc.cache import AnswerCache
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import CascadeRequest, Pass, TierResult
from spiral_common.enums import Outcome, Tier

log = logging.getLogger(__name__)


class CacheTier:
    tier = Tier.CACHE

    def __init__(self, cache: AnswerCache, metrics: RouterMetrics) -> None:
        self.cache = cache
        self.metrics = metrics

    async def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        try:
            cached, version, key = await self.cache.get(request.chat)
        except Exception:  # the cache is an optimisation: Redis trouble must not fail the request
            log.exception("cache lookup failed")
            cached, version, key = None, "", ""
        request.adapter_version, request.cache_key = version, key
        self.metrics.cache_lookups.labels("hit" if cached else "miss").inc()
        if cached is None:
            yield Pass(Outcome.MISSED)
            return
        yield TierResult(
            Tier.CACHE,
            cached.text,
            cached.finish_reason,
            cached.prompt_tokens,
            cached.completion_tokens,
            cached.adapter_version,
            detail=f"first answered by {cached.tier}",
            cacheable=False,
        )
