"""The prompt miner's core: new traffic -> embeddings -> clusters -> patterns, versioned and published to Redis.

`Miner.mine()` is what both the Mine RPC and the job queue's mine job call: it reads the window of traffic,
embeds it and publishes what `mine_patterns()` gives. `mine_patterns()` is the pure step (no I/O) that the
benchmark runs on a labelled data set, a pipeline of phases (`phases.py`, `calibration.py`): keep alive the
earlier patterns the window still matches -> cluster each polarity and group every cluster by answer ->
merge each group with the earlier patterns (refresh, supersede or add) -> absorb the stragglers that a
pattern teaching their answer claims -> keep what is left as counter-evidence -> retire on bad feedback or
age -> assemble the set -> calibrate its confidence on the window, leave-one-out against known intents and
leave-its-answer-out against intents it has never seen.

Which answer teaches a pattern: one the router marked as teaching (`spiral_common.traffic.teacher_answer`):
the cloud's, or a council answer the vote accepted. Answers from the cache, the pattern tier itself, a lone
unvoted head or a council answer below the threshold teach nothing (a pattern must not learn from its own
answers, nor from what the vote rejected). Only single-turn prompts whose answer finished with "stop" are
mined.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from redis.asyncio import Redis

from miner_svc.calibration import calibrate
from miner_svc.phases import (
    Draft,
    Window,
    absorb_stragglers,
    answer_groups,
    assemble,
    keep_alive,
    merge_group,
    retire_failing,
    straggler_groups,
)
from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.embedding import MODEL_NAME
from spiral_common.enums import Tier
from spiral_common.errors import FailedPrecondition
from spiral_common.pattern_set import Calibration, PatternSet, PatternStore
from spiral_common.redis_values import as_text
from spiral_common.traffic import Damaged, Rating, read_entries, single_turn, teacher_answer

log = logging.getLogger(__name__)

ANSWER_PATTERN_TTL_S = 7 * 24 * 3600  # feedback is accepted for a week after the answer
READ_BATCH = 1000


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MinerConfig:
    min_cluster_size: int = 5  # prompts
    min_agreement: float = 0.8  # share of a cluster's teacher answers equal to its most common one
    max_error: float = 0.02  # the router's bound: it answers at confidence >= 1 - max_error (estimates use it)
    threshold: float = 0.5  # the router's pattern threshold, a floor under 1 - max_error
    pattern_ttl_s: int = 7 * 24 * 3600  # a pattern nothing matched for this long is retired
    max_prompts: int = 50_000  # per run
    max_vectors_per_pattern: int = 64
    absorb_similarity: float = 0.5  # a straggler joins a pattern its neighbours vote for from this close
    merge_similarity: float = 0.9  # a new cluster this close to a pattern refreshes (or supersedes) it
    retire_bad_ratings: int = 2  # a pattern with at least this many bad ratings...
    retire_bad_share: float = 0.3  # ...making at least this share of its ratings is retired
    calibration_samples: int = 5000
    seed: int = 0

    @property
    def min_confidence(self) -> float:
        """The confidence at which the router answers with a mined pattern."""
        return max(self.threshold, 1.0 - self.max_error)


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass
class MineSummary:
    prompts_read: int = 0
    entries_read: int = 0
    entries_skipped: int = 0  # malformed or not minable (multi-turn, no teacher answer)
    clusters: int = 0
    patterns_published: int = 0  # active patterns in the published set
    patterns_new: int = 0
    patterns_retired: int = 0  # retired by this run
    pattern_set_version: int = 0
    duration_ms: int = 0
    dry_run: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    note: str = ""


@dataclass
class MiningInput:
    examples: list[Example]
    vectors: np.ndarray
    hits: Counter[str] = field(default_factory=Counter)  # pattern id -> answers it gave in the window
    ratings: dict[str, tuple[int, int]] = field(default_factory=dict)  # pattern id -> (good, bad), all time


def mine_patterns(
    data: MiningInput, existing: PatternSet, config: MinerConfig, now_ms: int
) -> tuple[PatternSet, MineSummary]:
    """One mining step, pure CPU: the new pattern set (version unset) and what changed."""
    window = Window.of(data.examples, data.vectors)
    draft, clusters = build_draft(window, existing, data.hits, data.ratings, config, now_ms)
    result, sources = assemble(draft, existing.calibration, MODEL_NAME, config.max_vectors_per_pattern, now_ms)

    def mine_without(rows: np.ndarray) -> tuple[PatternSet, np.ndarray]:
        """The set this run would build from the window's `rows` alone (no earlier patterns), with each
        vector's window row: the stand-in for a set that never saw the other prompts' intents."""
        part = window.take(rows)
        part_draft, _ = build_draft(part, PatternSet.empty(), Counter(), {}, config, now_ms)
        part_set, part_sources = assemble(part_draft, Calibration(), MODEL_NAME, config.max_vectors_per_pattern, now_ms)
        return part_set, np.where(part_sources >= 0, rows[np.maximum(part_sources, 0)], -1)

    result.calibration = calibrate(result, window, sources, config, mine_without)
    summary = MineSummary(
        prompts_read=len(data.examples),
        clusters=clusters,
        patterns_published=len(result.active()),
        patterns_new=draft.new,
        patterns_retired=draft.retired,
        calibration=result.calibration,
    )
    return result, summary


def build_draft(
    window: Window,
    existing: PatternSet,
    hits: Counter[str],
    ratings: dict[str, tuple[int, int]],
    config: MinerConfig,
    now_ms: int,
) -> tuple[Draft, int]:
    """The phases up to assembling: keep alive, cluster, merge, absorb, counter-evidence, retire. Gives the
    draft and the number of clusters."""
    draft = Draft.of(existing)
    keep_alive(draft, existing, window, hits, config.min_confidence, now_ms)
    groups, clusters = answer_groups(window, config)
    for group in groups:
        merge_group(draft, window, group, config, now_ms)
    stragglers = absorb_stragglers(draft, window, config.absorb_similarity)
    for group in straggler_groups(window, stragglers):
        merge_group(draft, window, group, config, now_ms)
    retire_failing(draft, ratings, config, now_ms)
    return draft, clusters


class Miner:
    """Reads the traffic log since its cursor, mines, publishes a new pattern set version."""

    def __init__(
        self,
        redis: Redis,
        embedder: Embedder,
        *,
        prefix: str,
        config: MinerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.embedder = embedder
        self.config = config
        self.clock = clock
        self.store = PatternStore(redis, prefix=prefix)
        self.stream = f"{prefix}traffic"
        self.cursor_key = f"{prefix}miner:cursor"
        self.lock_key = f"{prefix}miner:lock"
        self.answer_prefix = f"{prefix}miner:answer:"
        self.ratings_key = f"{prefix}miner:ratings"

    async def mine(self, dry_run: bool = False) -> MineSummary:
        started = time.perf_counter()
        token = uuid.uuid4().hex
        if not await self.redis.set(self.lock_key, token, nx=True, ex=3600):
            raise FailedPrecondition("a mining run is already in progress", reason="MINE_IN_PROGRESS")
        try:
            summary = await self._mine(dry_run)
        finally:
            if await self.redis.get(self.lock_key) == token.encode():
                await self.redis.delete(self.lock_key)
        summary.dry_run = dry_run
        summary.duration_ms = int((time.perf_counter() - started) * 1000)
        log.info("mined", extra={k: v for k, v in vars(summary).items() if isinstance(v, int | bool | str)})
        return summary

    async def _mine(self, dry_run: bool) -> MineSummary:
        cursor = as_text(await self.redis.get(self.cursor_key))
        examples, hits, feedback, last_id, read, skipped = await self._read(cursor)
        ratings = await self._ratings(hits, feedback, dry_run)
        existing = await self.store.load()
        if not examples and not existing.patterns:
            if last_id and not dry_run:
                await self.redis.set(self.cursor_key, last_id)
            note = "the traffic log is empty" if not read else "no minable prompts in the new traffic"
            return MineSummary(entries_read=read, entries_skipped=skipped, note=note)
        vectors = await asyncio.to_thread(self.embedder.embed, [e.prompt for e in examples])
        data = MiningInput(examples, vectors, hits, ratings)
        result, summary = await asyncio.to_thread(mine_patterns, data, existing, self.config, int(self.clock() * 1000))
        summary.entries_read, summary.entries_skipped = read, skipped
        if not examples:
            summary.note = "no minable prompts in the new traffic; patterns re-checked for retirement"
        if dry_run:
            summary.pattern_set_version = existing.version
            return summary
        summary.pattern_set_version = await self.store.publish(result)
        if last_id:
            await self.redis.set(self.cursor_key, last_id)
        return summary

    async def _read(self, cursor: str) -> tuple[list[Example], Counter[str], list[tuple[str, str]], str, int, int]:
        examples: list[Example] = []
        hits: Counter[str] = Counter()
        feedback: list[tuple[str, str]] = []
        pattern_answers: dict[str, str] = {}
        read = skipped = 0
        last_id = cursor
        async for entry_id, entry in read_entries(self.redis, self.stream, after=cursor, batch=READ_BATCH):
            last_id = entry_id
            read += 1
            if isinstance(entry, Rating):
                feedback.append((entry.answer_id, entry.rating))
                continue
            if isinstance(entry, Damaged):
                skipped += 1
                continue
            exchange: TrafficExchange = entry
            if exchange.tier == Tier.PATTERN and exchange.pattern_id:
                hits[exchange.pattern_id] += 1
                pattern_answers[exchange.answer_id] = exchange.pattern_id
                continue
            prompt = single_turn(exchange)
            taught = teacher_answer(exchange)
            if prompt is None or taught is None:
                skipped += 1
                continue
            examples.append(Example(prompt, taught[0]))
            if len(examples) >= self.config.max_prompts:
                break
        if pattern_answers:
            async with self.redis.pipeline(transaction=False) as pipe:
                for answer_id, pattern_id in pattern_answers.items():
                    if answer_id:
                        pipe.set(self.answer_prefix + answer_id, pattern_id, ex=ANSWER_PATTERN_TTL_S)
                await pipe.execute()
        return examples, hits, feedback, last_id, read, skipped

    async def _ratings(
        self, hits: Counter[str], feedback: list[tuple[str, str]], dry_run: bool
    ) -> dict[str, tuple[int, int]]:
        """Fold the window's ratings of pattern answers into each pattern's all-time (good, bad) counts."""
        if feedback:
            owners = await self.redis.mget([self.answer_prefix + a for a, _ in feedback])
            if not dry_run:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for (_, rating), owner in zip(feedback, owners, strict=True):
                        if owner:
                            pipe.hincrby(self.ratings_key, f"{as_text(owner)}:{rating}", 1)
                    await pipe.execute()
        raw = await self.redis.hgetall(self.ratings_key)
        counts: dict[str, list[int]] = {}
        for key, value in raw.items():
            pattern_id, _, rating = as_text(key).rpartition(":")
            counts.setdefault(pattern_id, [0, 0])[rating == "bad"] += int(value)
        return {k: (v[0], v[1]) for k, v in counts.items()}
