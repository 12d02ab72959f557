"""The prompt miner's core: new traffic -> embeddings -> clusters -> patterns, versioned and published to Redis.

`Miner.mine()` is what both the Mine RPC and the job queue's mine job call. `mine_patterns()` is the pure
step (no I/O) that the benchmark runs on a labelled data set.

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
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
from redis.asyncio import Redis

from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.embedding import MODEL_NAME
from spiral_common.enums import Tier
from spiral_common.errors import FailedPrecondition
from spiral_common.pattern_set import (
    Calibration,
    Pattern,
    PatternIndex,
    PatternSet,
    PatternStore,
    answer_codes,
    answer_key,
    is_negated,
    vote,
)
from spiral_common.redis_values import as_text
from spiral_common.traffic import Damaged, Rating, read_entries, single_turn, teacher_answer

log = logging.getLogger(__name__)

ANSWER_PATTERN_TTL_S = 7 * 24 * 3600  # feedback is accepted for a week after the answer
READ_BATCH = 1000
BRUTE_FORCE_LIMIT = 3000
REDUCED_DIMENSIONS = 32
MIN_SAMPLES = 2  # HDBSCAN's density smoothing: 2 keeps clusters small and pure (purity 0.92 vs 0.58 at 5)


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MinerConfig:
    min_cluster_size: int = 5  # prompts
    min_agreement: float = 0.8  # share of a cluster's teacher answers equal to its most common one
    target_precision: float = 0.975  # answers at confidence >= threshold must be right this often (held out)
    threshold: float = 0.5  # the router's pattern threshold
    pattern_ttl_s: int = 7 * 24 * 3600  # a pattern nothing matched for this long is retired
    max_prompts: int = 50_000  # per run
    max_vectors_per_pattern: int = 64
    absorb_similarity: float = 0.5  # a straggler joins a pattern its neighbours vote for from this close
    merge_similarity: float = 0.9  # a new cluster this close to a pattern refreshes (or supersedes) it
    retire_bad_ratings: int = 2  # a pattern with at least this many bad ratings...
    retire_bad_share: float = 0.3  # ...making at least this share of its ratings is retired
    calibration_samples: int = 5000
    seed: int = 0


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


def _cluster(vectors: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (-1: noise) over unit vectors; euclidean on unit vectors orders like cosine.

    Up to BRUTE_FORCE_LIMIT prompts, exact pairwise distances (fast, quadratic memory); above, a 32-component
    PCA and a k-d tree (in 384 dimensions a tree is ten times slower than brute force; in 32 it is fast, and
    cluster purity on banking77 is the same).
    """
    if len(vectors) < max(min_cluster_size, 2):
        return np.full(len(vectors), -1)
    from sklearn.cluster import HDBSCAN

    data = vectors.astype(np.float64)
    algorithm = "brute"
    if len(vectors) > BRUTE_FORCE_LIMIT:
        from sklearn.decomposition import PCA

        data = PCA(REDUCED_DIMENSIONS, random_state=0).fit_transform(data)
        data /= np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
        algorithm = "kd_tree"
    options = dict(min_cluster_size=min_cluster_size, min_samples=MIN_SAMPLES, algorithm=algorithm, copy=True)
    labels = HDBSCAN(**options).fit_predict(data)
    if labels.max() < 0:  # HDBSCAN never returns its root as a cluster unless asked: one dense group alone
        labels = HDBSCAN(**options, allow_single_cluster=True).fit_predict(data)
    return labels


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _spread(vectors: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most `limit` rows that cover the cluster (farthest-point sampling from the centroid)."""
    if len(vectors) <= limit:
        return np.arange(len(vectors))
    chosen = [int(np.argmax(vectors @ _unit(vectors.mean(0))))]
    nearest = vectors @ vectors[chosen[0]]
    while len(chosen) < limit:
        nxt = int(np.argmin(nearest))
        chosen.append(nxt)
        nearest = np.maximum(nearest, vectors @ vectors[nxt])
    return np.asarray(chosen)


def mine_patterns(
    data: MiningInput, existing: PatternSet, config: MinerConfig, now_ms: int
) -> tuple[PatternSet, MineSummary]:
    """One mining step, pure CPU: the new pattern set (version unset) and what changed."""
    summary = MineSummary(prompts_read=len(data.examples))
    patterns = [replace(p) for p in existing.patterns]
    vectors = [existing.vectors]
    owners = [existing.owners]
    sources = [np.full(len(existing.owners), -1)]  # the window example each vector came from (-1: earlier)
    keys = [answer_key(e.answer) for e in data.examples]
    negated = np.array([is_negated(e.prompt) for e in data.examples], dtype=bool)

    # Existing patterns that still match the new traffic stay alive.
    if len(existing.active()) and len(data.examples):
        index = PatternIndex(existing)
        for vector, neg in zip(data.vectors, negated, strict=True):
            match = index.match(vector, bool(neg))
            if match and match.confidence >= config.threshold:
                match.pattern.last_matched_ms = now_ms  # index shares the existing set: copy below
        for old, new in zip(existing.patterns, patterns, strict=True):
            new.last_matched_ms = max(new.last_matched_ms, old.last_matched_ms)
    for pattern in patterns:
        if data.hits.get(pattern.pattern_id):
            pattern.last_matched_ms = now_ms

    carried = existing.centroids  # one row per pattern of earlier runs: new groups merge into or supersede them

    def add_group(chosen: np.ndarray, polarity: bool, answering: bool, agreement: float) -> None:
        """Make prompts that share an answer a pattern, or fold them into the live one they sit on."""
        key = keys[chosen[0]]
        centroid = _unit(data.vectors[chosen].mean(0))
        near = chosen[np.argsort(-(data.vectors[chosen] @ centroid))]
        exemplars = list(dict.fromkeys(data.examples[i].prompt for i in near))[:5]
        answer = Counter(data.examples[i].answer for i in chosen).most_common(1)[0][0]
        target = None
        close = np.flatnonzero(carried @ centroid >= config.merge_similarity) if len(carried) else np.array([], int)
        for i in close:
            old = patterns[int(i)]
            if old.retired or old.negated != polarity or old.answering != answering:
                continue
            if answer_key(old.answer) == key:
                target = int(i)
            elif answering:  # the traffic now teaches another answer here
                old.retired, old.retired_reason = True, "superseded"
                summary.patterns_retired += 1
        if target is None:
            patterns.append(
                Pattern(
                    pattern_id=uuid.uuid4().hex[:12],
                    answer=answer,
                    exemplars=exemplars,
                    size=len(chosen),
                    agreement=round(agreement, 4),
                    negated=polarity,
                    created_ms=now_ms,
                    last_matched_ms=now_ms,
                    answering=answering,
                )
            )
            target = len(patterns) - 1
            summary.patterns_new += answering
        else:
            old = patterns[target]
            total = old.size + len(chosen)
            old.agreement = round((old.agreement * old.size + agreement * len(chosen)) / total, 4)
            old.size, old.last_matched_ms, old.answer = total, now_ms, answer
            old.exemplars = list(dict.fromkeys(exemplars + old.exemplars))[:5]
        take = chosen[_spread(data.vectors[chosen], config.max_vectors_per_pattern)]
        vectors.append(data.vectors[take])
        owners.append(np.full(len(take), target, dtype=np.int32))
        sources.append(take)

    for polarity in (False, True):
        rows = np.flatnonzero(negated == polarity)
        labels = _cluster(data.vectors[rows], config.min_cluster_size)
        for label in sorted(set(labels.tolist()) - {-1}):
            members = rows[labels == label]
            summary.clusters += 1
            counts = Counter(keys[i] for i in members)
            top_key, agreeing = counts.most_common(1)[0]
            agreement = agreeing / len(members)
            dense = len(members) >= config.min_cluster_size and agreement >= config.min_agreement
            # The answering pattern, and counter-evidence for every other answer the cluster holds.
            for key in counts:
                chosen = np.asarray([i for i in members if keys[i] == key])
                add_group(chosen, polarity, dense and key == top_key, counts[key] / len(members))

    stragglers = _absorb(data, keys, negated, patterns, vectors, owners, sources, config)
    for polarity in (False, True):  # what no pattern explains is counter-evidence, grouped by answer
        by_key: dict[str, list[int]] = {}
        for i in stragglers:
            if negated[i] == polarity:
                by_key.setdefault(keys[i], []).append(int(i))
        for members in by_key.values():
            add_group(np.asarray(members), polarity, False, 0.0)

    for pattern in patterns:
        if pattern.retired:
            continue
        good, bad = data.ratings.get(pattern.pattern_id, (0, 0))
        if pattern.answering and bad >= config.retire_bad_ratings and bad >= config.retire_bad_share * (good + bad):
            pattern.retired, pattern.retired_reason = True, "bad_feedback"
        elif now_ms - pattern.last_matched_ms > config.pattern_ttl_s * 1000:
            pattern.retired, pattern.retired_reason = True, "stale"
        else:
            continue
        summary.patterns_retired += pattern.answering

    all_vectors = np.concatenate(vectors).astype(np.float32)
    all_owners = np.concatenate(owners).astype(np.int32)
    all_sources = np.concatenate(sources)
    # Retired counter-evidence is dropped (nobody lists it); retired patterns stay, listed, without vectors.
    # Each pattern's vectors are capped (a refreshed pattern gathers new ones every run), centroids recomputed.
    kept_patterns = [i for i, p in enumerate(patterns) if p.answering or not p.retired]
    keep = np.zeros(len(all_owners), dtype=bool)
    renumber = np.full(len(patterns), -1, dtype=np.int32)
    new_centroids = np.zeros((len(kept_patterns), all_vectors.shape[1]), np.float32)
    for new_index, i in enumerate(kept_patterns):
        renumber[i] = new_index
        rows = np.flatnonzero(all_owners == i)
        if not len(rows):
            continue
        new_centroids[new_index] = _unit(all_vectors[rows].mean(0))
        if patterns[i].retired:
            continue
        rows = rows[_spread(all_vectors[rows], config.max_vectors_per_pattern)]
        keep[rows] = True
        new_centroids[new_index] = _unit(all_vectors[rows].mean(0))
    result = PatternSet(
        version=0,
        patterns=[patterns[i] for i in kept_patterns],
        centroids=new_centroids,
        vectors=all_vectors[keep],
        owners=renumber[all_owners[keep]],
        calibration=existing.calibration,
        model=MODEL_NAME,
        mined_ms=now_ms,
    )
    result.calibration = calibrate(result, data, negated, all_sources[keep], config)
    summary.calibration = result.calibration
    summary.patterns_published = len(result.active())
    return result, summary


def _absorb(
    data: MiningInput,
    keys: list[str],
    negated: np.ndarray,
    patterns: list[Pattern],
    vectors: list[np.ndarray],
    owners: list[np.ndarray],
    sources: list[np.ndarray],
    config: MinerConfig,
) -> np.ndarray:
    """Give each prompt outside the patterns' clusters to the pattern its neighbours vote for, when that
    pattern's answer is its own teacher answer: HDBSCAN leaves a third of the prompts as noise, and the
    pattern's region should cover its consistent stragglers too (appends to vectors/owners/sources).
    Returns the prompts left over."""
    taken = set(np.concatenate(sources).tolist())
    rest = np.asarray([i for i in range(len(data.examples)) if i not in taken], dtype=int)
    matrix = np.concatenate(vectors).astype(np.float32)
    row_owner = np.concatenate(owners)
    live = np.array([not patterns[o].retired for o in row_owner], dtype=bool)
    answering = np.array([patterns[o].answering for o in row_owner], dtype=bool)
    if not len(rest) or not live.any():
        return rest
    codes = answer_codes([answer_key(patterns[o].answer) for o in row_owner])
    row_negated = np.array([patterns[o].negated for o in row_owner], dtype=bool)
    chosen_rows, chosen_owners = [], []
    for i, all_sims in zip(rest, _similarities(data.vectors[rest], matrix), strict=True):
        sims = np.where(live & (row_negated == negated[i]), all_sims, -np.inf)
        result = vote(sims, codes, answering)
        if result is None:
            continue
        best, (share, top, _) = result
        owner = int(row_owner[best])
        if answer_key(patterns[owner].answer) == keys[i] and share >= 0.5 and top >= config.absorb_similarity:
            chosen_rows.append(i)
            chosen_owners.append(owner)
    if chosen_rows:
        vectors.append(data.vectors[chosen_rows])
        owners.append(np.asarray(chosen_owners, dtype=np.int32))
        sources.append(np.asarray(chosen_rows))
        for owner in chosen_owners:
            patterns[owner].size += 1
    return np.setdiff1d(rest, np.asarray(chosen_rows, dtype=int))


def _similarities(queries: np.ndarray, matrix: np.ndarray, chunk: int = 512):
    """Rows of queries @ matrix.T, computed a chunk of queries at a time (one matrix product per chunk)."""
    for start in range(0, len(queries), chunk):
        yield from queries[start : start + chunk] @ matrix.T


def vote_features(
    patterns: PatternSet,
    vectors: np.ndarray,
    negated: np.ndarray,
    vector_sources: np.ndarray | None = None,
    query_sources: np.ndarray | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """For each query vector: the vote's features and the winning answer key, by exhaustive search over the
    live patterns' vectors. A query never sees the vectors whose source (`vector_sources`, one per vector of
    the set) is its own (`query_sources`): leave-one-out."""
    active = np.array([not p.retired for p in patterns.patterns], dtype=bool)
    rows = np.flatnonzero(active[patterns.owners]) if len(patterns.owners) else np.zeros(0, int)
    owner_keys = [answer_key(patterns.patterns[o].answer) for o in patterns.owners[rows]]
    codes = answer_codes(owner_keys)
    names = {int(c): k for c, k in zip(codes, owner_keys, strict=True)}
    row_negated = np.array([patterns.patterns[o].negated for o in patterns.owners[rows]], dtype=bool)
    row_answering = np.array([patterns.patterns[o].answering for o in patterns.owners[rows]], dtype=bool)
    matrix = patterns.vectors[rows]
    row_sources = vector_sources[rows] if vector_sources is not None else None
    features = np.zeros((len(vectors), 3))
    winners: list[str | None] = []
    for q, sims in enumerate(_similarities(vectors, matrix)):
        blocked = row_negated != negated[q]
        if row_sources is not None and query_sources is not None:
            blocked |= row_sources == query_sources[q]
        result = vote(np.where(blocked, -np.inf, sims), codes, row_answering) if len(rows) else None
        if result is None:
            winners.append(None)
            continue
        best, features[q] = result[0], result[1]
        winners.append(names[int(codes[best])])
    return features, winners


def calibrate(
    patterns: PatternSet, data: MiningInput, negated: np.ndarray, sources: np.ndarray, config: MinerConfig
) -> Calibration:
    """Fit confidence on the window's prompts, each matched without its own vectors (leave-one-out)."""
    n = len(data.examples)
    if not n or not len(patterns.active()):
        return patterns.calibration
    rng = np.random.default_rng(config.seed)
    sample = rng.permutation(n)[: config.calibration_samples]
    features, winners = vote_features(patterns, data.vectors[sample], negated[sample], sources, sample)
    answered = np.array([w is not None for w in winners])
    correct = np.array([w == answer_key(data.examples[i].answer) for w, i in zip(winners, sample, strict=True)])
    return fit_calibration(features[answered], correct[answered], config.target_precision, patterns.calibration)


def fit_calibration(
    features: np.ndarray, correct: np.ndarray, target_precision: float, previous: Calibration
) -> Calibration:
    """Logistic fit of correctness on the features, shifted so that 0.5 sits where the precision of every
    answer above it reaches the target. Too few or one-sided samples keep the previous calibration."""
    if len(correct) < 50 or correct.all() or not correct.any():
        return previous
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=1000).fit(features, correct)
    weights = model.coef_[0]
    scores = features @ weights + model.intercept_[0]
    order = np.argsort(-scores)
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero(precision >= target_precision)
    if not len(good) or weights[1] <= 0:
        return previous
    cut = int(good[-1])
    return Calibration(
        weights=(float(weights[0]), float(weights[1]), float(weights[2])),
        bias=float(model.intercept_[0] - scores[order][cut]),
        fitted_on=len(correct),
        precision_at_threshold=round(float(precision[cut]), 4),
        coverage_at_threshold=round((cut + 1) / len(correct), 4),
    )


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
