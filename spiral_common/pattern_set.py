"""Mined patterns: the versioned set the miner publishes to Redis and the router's pattern head matches against.

A pattern is a dense cluster of prompts whose teacher answers agree. It keeps its centroid and up to a few
dozen exemplar vectors; a prompt is matched by a nearest-neighbour vote over the exemplars of the patterns of
the same polarity (a negated prompt never matches a non-negated pattern: "cancel my transfer" and "do not
cancel my transfer" embed at cosine 0.97 but must not share an answer). The vote's features (share of the
winning answer, its best similarity, the margin over the best other answer) go through a logistic function
fitted on held-out prompts and shifted so that confidence 0.50 is the point above which those answers were
right at the target precision.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
from redis.asyncio import Redis

from spiral_common.embedding import DIMENSIONS
from spiral_common.redis_values import as_bytes

NEIGHBOURS = 10
# With more patterns than this, a query first picks the nearest CANDIDATE_PATTERNS by centroid, then votes
# over their exemplars only: the index stays fast at 10,000 patterns.
CANDIDATE_PATTERNS = 64
KEPT_VERSIONS = 3

# Negations that turn a request around: an imperative ("do not cancel ...", "please don't send ...", "never
# charge ...") or a refusal ("I don't want ...", "no longer want", "not to"). A negation that describes a
# problem ("my card hasn't arrived", "I don't recognise this payment") asks the same as its positive
# neighbours, so it is not split off: on banking77 splitting on every "not"/"n't" costs 4 points of coverage.
_NEGATION = re.compile(
    r"(^|[.!?,;]\s*)(please\s+)?(do not|don'?t|never)\b|\b(do not|don'?t|no longer|never) (want|wish|need)\b"
    r"|\bnot to\b",
    re.I,
)


def is_negated(prompt: str) -> bool:
    """True when the prompt asks for something not to happen: such prompts only match patterns mined from
    prompts that did too."""
    return bool(_NEGATION.search(prompt.replace("’", "'")))


def answer_key(answer: str) -> str:
    """Two teacher answers agree when they are equal after case, whitespace and trailing punctuation."""
    return " ".join(answer.lower().split()).rstrip(" .!")


@dataclass
class Pattern:
    pattern_id: str
    answer: str
    exemplars: list[str]  # a few example prompts, for people
    size: int
    agreement: float
    negated: bool
    created_ms: int
    last_matched_ms: int
    retired: bool = False
    retired_reason: str = ""  # "bad_feedback", "stale" or "superseded"
    target_head: str = ""
    # False for counter-evidence: prompts whose answers disagree with their cluster, or that no pattern
    # explains. They vote (so a prompt among them gets a low confidence) but never answer.
    answering: bool = True


@dataclass
class Calibration:
    """confidence = sigmoid(w . (share, top_similarity, margin) + bias)."""

    weights: tuple[float, float, float] = (4.0, 30.0, 10.0)
    bias: float = -29.0  # unfitted default: a unanimous vote needs similarity ~0.8 and a 0.1 margin
    fitted_on: int = 0  # held-out prompts the fit used (0: the default)
    precision_at_threshold: float = 0.0  # measured on those prompts
    coverage_at_threshold: float = 0.0

    def confidence(self, features: tuple[float, float, float]) -> float:
        z = sum(w * f for w, f in zip(self.weights, features, strict=True)) + self.bias
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


@dataclass
class PatternSet:
    version: int
    patterns: list[Pattern]
    centroids: np.ndarray  # (patterns, DIMENSIONS) float32, unit rows
    vectors: np.ndarray  # (exemplar vectors, DIMENSIONS) float32, unit rows
    owners: np.ndarray  # (exemplar vectors,) int32: the pattern each vector belongs to
    calibration: Calibration = field(default_factory=Calibration)
    model: str = ""
    mined_ms: int = 0

    @classmethod
    def empty(cls) -> PatternSet:
        return cls(
            0,
            [],
            np.zeros((0, DIMENSIONS), np.float32),
            np.zeros((0, DIMENSIONS), np.float32),
            np.zeros(0, np.int32),
        )

    def active(self) -> list[Pattern]:
        """The patterns that answer now."""
        return [p for p in self.patterns if p.answering and not p.retired]


@dataclass(frozen=True)
class Match:
    pattern: Pattern
    confidence: float
    features: tuple[float, float, float]


def vote(
    sims: np.ndarray, codes: np.ndarray, answering: np.ndarray | None = None, k: int = NEIGHBOURS
) -> tuple[int, tuple[float, float, float]] | None:
    """Nearest-neighbour vote over exemplar similarities; `codes` numbers each row's answer, -inf excludes a row.

    Returns the winning answer's closest answering row (None when the winner has none: counter-evidence
    won) and the features (share of the vote, top similarity, margin over the best row of any other answer).
    """
    n = int(np.isfinite(sims).sum())
    if n == 0:
        return None
    k = min(k, n)
    top = np.argpartition(-sims, k - 1)[:k]
    # Each neighbour votes its similarity (floored at 0), plus a hair so that only answers present can win.
    weights = np.bincount(codes[top], weights=np.maximum(sims[top], 0.0) + 1e-6)
    winner = int(np.argmax(weights))
    total = float(weights.sum()) or 1.0
    mine = codes == winner
    top_sim = float(sims[mine].max())
    candidates = np.where(mine if answering is None else mine & answering, sims, -np.inf)
    best_row = int(np.argmax(candidates))
    if not np.isfinite(candidates[best_row]):
        return None
    other = np.where(mine, -np.inf, sims)
    best_other = float(other.max()) if len(other) else -np.inf
    margin = top_sim - best_other if np.isfinite(best_other) else top_sim
    return best_row, (float(weights[winner]) / total, top_sim, margin)


def answer_codes(keys: list[str]) -> np.ndarray:
    """Numbers equal answer keys alike, for `vote`."""
    numbering: dict[str, int] = {}
    return np.array([numbering.setdefault(key, len(numbering)) for key in keys], dtype=np.int64)


class PatternIndex:
    """The active patterns of one set, ready to match a prompt's embedding."""

    def __init__(self, patterns: PatternSet) -> None:
        self.set = patterns
        self.calibration = patterns.calibration
        every = patterns.patterns
        active = np.array([not p.retired for p in every], dtype=bool)  # answering or counter-evidence
        answering = np.array([p.answering for p in every], dtype=bool)
        polarity = np.array([p.negated for p in every], dtype=bool)
        pattern_codes = answer_codes([answer_key(p.answer) for p in every])
        owners = patterns.owners
        keep = active[owners] if len(owners) else np.zeros(0, bool)
        order = np.flatnonzero(keep)
        order = order[np.argsort(owners[order], kind="stable")]  # rows grouped by pattern
        self.vectors = np.ascontiguousarray(patterns.vectors[order])
        self.owners = owners[order]
        self.codes = pattern_codes[self.owners] if len(self.owners) else np.zeros(0, np.int64)
        self.row_negated = polarity[self.owners] if len(self.owners) else np.zeros(0, bool)
        self.row_answering = answering[self.owners] if len(self.owners) else np.zeros(0, bool)
        self.active_count = int((active & answering).sum())
        # Per polarity: the patterns that have rows, their centroids, and where their rows start and end.
        self._by_polarity: dict[bool, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for negated in (False, True):
            ids = np.unique(self.owners[self.row_negated == negated])
            starts = np.searchsorted(self.owners, ids, side="left")
            ends = np.searchsorted(self.owners, ids, side="right")
            centroids = np.ascontiguousarray(patterns.centroids[ids]) if len(ids) else np.zeros((0, DIMENSIONS))
            self._by_polarity[negated] = (ids, centroids.astype(np.float32), starts, ends)

    def __len__(self) -> int:
        return self.active_count

    def match(self, vector: np.ndarray, negated: bool) -> Match | None:
        ids, centroids, starts, ends = self._by_polarity[negated]
        if not len(ids):
            return None
        if len(ids) > CANDIDATE_PATTERNS:
            nearest = np.argpartition(-(centroids @ vector), CANDIDATE_PATTERNS - 1)[:CANDIDATE_PATTERNS]
            rows = np.concatenate([np.arange(starts[i], ends[i]) for i in nearest])
            sims = self.vectors[rows] @ vector
        else:
            rows = np.arange(len(self.vectors))
            sims = np.where(self.row_negated == negated, self.vectors @ vector, -np.inf)
        result = vote(sims, self.codes[rows], self.row_answering[rows])
        if result is None:
            return None
        best, features = result
        pattern = self.set.patterns[int(self.owners[rows[best]])]
        return Match(pattern, self.calibration.confidence(features), features)


class PatternStore:
    """The published pattern sets in Redis: `<prefix>patterns:version` names the current one."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self.redis = redis
        self.version_key = f"{prefix}patterns:version"
        self.set_prefix = f"{prefix}patterns:set:"

    async def current_version(self) -> int:
        raw = await self.redis.get(self.version_key)
        return int(raw) if raw else 0

    async def load(self, version: int | None = None) -> PatternSet:
        version = await self.current_version() if version is None else version
        if not version:
            return PatternSet.empty()
        raw = await self.redis.hgetall(self.set_prefix + str(version))
        if not raw:
            return PatternSet.empty()
        meta = json.loads(raw[b"meta"])
        patterns = [Pattern(**p) for p in meta["patterns"]]
        calibration = Calibration(**{**meta["calibration"], "weights": tuple(meta["calibration"]["weights"])})
        return PatternSet(
            version=int(meta["version"]),
            patterns=patterns,
            centroids=np.frombuffer(as_bytes(raw[b"centroids"]), np.float32).reshape(-1, DIMENSIONS).copy(),
            vectors=np.frombuffer(as_bytes(raw[b"vectors"]), np.float32).reshape(-1, DIMENSIONS).copy(),
            owners=np.frombuffer(as_bytes(raw[b"owners"]), np.int32).copy(),
            calibration=calibration,
            model=meta.get("model", ""),
            mined_ms=int(meta.get("mined_ms", 0)),
        )

    async def publish(self, patterns: PatternSet) -> int:
        """Store the set under a new version, make it current, and drop versions older than the last few."""
        version = int(await self.redis.incr(self.version_key + ":next"))
        patterns.version = version
        meta = {
            "version": version,
            "patterns": [asdict(p) for p in patterns.patterns],
            "calibration": asdict(patterns.calibration),
            "model": patterns.model,
            "mined_ms": patterns.mined_ms,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.set_prefix + str(version),
                mapping={
                    "meta": json.dumps(meta),
                    "centroids": np.ascontiguousarray(patterns.centroids, np.float32).tobytes(),
                    "vectors": np.ascontiguousarray(patterns.vectors, np.float32).tobytes(),
                    "owners": np.ascontiguousarray(patterns.owners, np.int32).tobytes(),
                },
            )
            pipe.set(self.version_key, version)
            if version > KEPT_VERSIONS:
                pipe.delete(self.set_prefix + str(version - KEPT_VERSIONS))
            await pipe.execute()
        return version
