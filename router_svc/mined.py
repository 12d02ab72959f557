"""The pattern tier: the regex micro-specialists, then the miner's patterns, reloaded from Redis without a restart.

Regexes answer what they answer exactly (arithmetic, dates, greetings) and go first. Otherwise the prompt is
embedded and matched against the current pattern set (see spiral_common.pattern_set). The tier checks the
published version at most every `reload_interval_s`, on the request path (one Redis GET); a new version is
loaded by a background task while requests go on with the old one. The encoder (~25 MB, ~0.3 s) loads only
once a set with live patterns appears, so a router with no mined patterns pays nothing. Embedding goes through
an `EmbeddingBatcher` (router_svc/embedding_batcher.py): a bounded number of encoder calls on threads of their
own (ONNX Runtime releases the GIL), prompts that arrive while they are busy sharing the next call, and a cache
of recent prompts' embeddings; the match (a few small matrix products) runs in a worker thread too, so the
event loop keeps serving other requests meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from router_svc.embedding_batcher import BatchEncoder, EmbeddingBatcher, EncoderUnavailable
from router_svc.patterns import PatternAnswer, RegexPatterns
from spiral_common.pattern_set import PatternIndex, PatternSet, PatternStore, is_negated

log = logging.getLogger(__name__)


class PatternMatcher:
    """The regex micro-specialists first, then the newest mined pattern set (reloaded from Redis when a new
    version is published)."""

    def __init__(
        self,
        regex: RegexPatterns,
        store: PatternStore,
        encoder_factory: Callable[[], BatchEncoder],
        *,
        batcher_factory: Callable[[BatchEncoder], EmbeddingBatcher] = EmbeddingBatcher,
        reload_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        on_load: Callable[[PatternSet], None] | None = None,
    ) -> None:
        self.regex = regex
        self.store = store
        self.encoder_factory = encoder_factory
        self.batcher_factory = batcher_factory
        self.reload_interval_s = reload_interval_s
        self.clock = clock
        self.on_load = on_load  # told of every set loaded (the metrics publish its calibration numbers)
        self.batcher: EmbeddingBatcher | None = None
        self.index: PatternIndex | None = None
        self.version = 0
        self._checked_at = float("-inf")
        self._loading: asyncio.Task[None] | None = None

    async def match(self, prompt: str) -> PatternAnswer | None:
        exact = self.regex.match(prompt)
        if exact is not None:
            return exact
        await self._check_version()
        index, batcher = self.index, self.batcher
        if index is None or not len(index) or batcher is None:
            return None
        try:
            vector = await batcher.embed(prompt)
        except EncoderUnavailable as exc:  # overloaded or stopping: a miss, the cascade goes on (and it is counted)
            log.debug("pattern tier skipped: %s", exc)
            return None
        found = await asyncio.to_thread(index.match, vector, is_negated(prompt))
        if found is None:
            return None
        pattern = found.pattern
        return PatternAnswer(
            f"mined:{pattern.pattern_id}", pattern.answer, found.confidence, pattern_id=pattern.pattern_id
        )

    async def _check_version(self) -> None:
        now = self.clock()
        if now - self._checked_at < self.reload_interval_s or (self._loading and not self._loading.done()):
            return
        self._checked_at = now
        try:
            version = await self.store.current_version()
        except Exception:  # patterns are an optimisation: Redis trouble must not fail the request
            log.exception("pattern version check failed")
            return
        if version != self.version:
            self._loading = asyncio.create_task(self._load(version))

    async def _load(self, version: int) -> None:
        try:
            patterns = await self.store.load(version)
            if patterns.active() and self.batcher is None:
                self.batcher = self.batcher_factory(await asyncio.to_thread(self.encoder_factory))
            self.index = await asyncio.to_thread(PatternIndex, patterns)
            self.version = version
            if self.on_load is not None:
                self.on_load(patterns)
            calibration = patterns.calibration
            log.info(
                "pattern set loaded",
                extra={
                    "version": version,
                    "patterns": len(self.index),
                    "estimated_precision": calibration.precision_at_threshold,
                    "estimated_unknown_answered": calibration.unknown_answered,
                },
            )
        except Exception:
            log.exception("pattern set load failed", extra={"version": version})

    async def close(self) -> None:
        """Stop the batcher (prompts still waiting for an embedding get none: the tier misses)."""
        if self.batcher is not None:
            await self.batcher.close()

    async def wait_loaded(self) -> None:
        """For tests and start-up: check the version now and wait for any load it starts."""
        self._checked_at = float("-inf")
        await self._check_version()
        if self._loading:
            await self._loading
