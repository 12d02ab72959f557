"""Mined patterns: the versioned set the miner publishes to Redis and the router's pattern head matches against.

A pattern is a dense cluster of prompts whose teacher answers agree. It keeps its centroid and up to a few
dozen exemplar vectors; a prompt is matched by a nearest-neighbour vote over the exemplars of the patterns of
the same polarity (a negated prompt never matches a non-negated pattern: "cancel my transfer" and "do not
cancel my transfer" embed at cosine 0.97 but must not share an answer). The vote's features (share of the
winning answer, its best similarity, the margin over the best other answer, and how far that similarity
falls short of the answering pattern's own reference: its held-out prompts' median best similarity, so each
pattern has its own bar) give a score; the calibration maps a score to a confidence: at that score and
above, held-out answers to prompts of known intents were right, and prompts of intents never mined were
refused, at least that often (miner_svc/calibration.py). The router answers when the confidence reaches
1 - SPIRAL_PATTERN_MAX_ERROR.
"""

from __future__ import annotations

import bisect
import dataclasses
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
    # The median best similarity of this pattern's own held-out prompts (calibration); None: not measured,
    # the calibration's `reference_similarity` stands in.
    reference_similarity: float | None = None


@dataclass
class Calibration:
    """Score = w . features + bias; confidence = the step function (`scores`, `levels`) of the score.

    A calibration from before abstention (no `scores`) has three weights and gives sigmoid(score): the router
    holds it to 1 - max_error too, far stricter than the 0.50 it was fitted for. The estimates below are
    cross-fitted (thresholds fitted on half of the run's answers, measured on the other half) at
    `max_error`; 0 where not measured (an older set, or one never fitted)."""

    weights: tuple[float, ...] = (4.0, 30.0, 10.0)
    bias: float = -29.0  # unfitted default: a unanimous vote needs similarity ~0.8 and a 0.1 margin
    fitted_on: int = 0  # held-out prompts the fit used (0: the default)
    precision_at_threshold: float = 0.0  # estimated precision on known intents at 1 - max_error
    coverage_at_threshold: float = 0.0  # estimated share of known-intent prompts answered at 1 - max_error
    # Ascending score knots and the confidence from each knot up (below the first: 0).
    scores: tuple[float, ...] = ()
    levels: tuple[float, ...] = ()
    reference_similarity: float = 1.0  # a pattern's reference when it has none (1.0: the strictest)
    max_error: float = 0.0  # the operating point the estimates were measured at
    unknown_answered: float = 0.0  # estimated share of prompts of never-mined intents answered
    precision_with_unknown: float = 0.0  # estimated precision when `unknown_share` of prompts are unknown
    unknown_share: float = 0.0  # the share of unknown prompts assumed for that estimate
    known_samples: int = 0  # held-out known-intent answers the estimates rest on
    unknown_samples: int = 0  # held-out unknown prompts (simulated by leaving their answer out, or unexplained)

    def score(self, features: tuple[float, ...]) -> float:
        return sum(w * f for w, f in zip(self.weights, features[: len(self.weights)], strict=True)) + self.bias

    def confidence(self, features: tuple[float, ...]) -> float:
        z = self.score(features)
        if self.scores:
            step = bisect.bisect_right(self.scores, z) - 1
            return self.levels[step] if step >= 0 else 0.0
        return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

    @property
    def estimated(self) -> bool:
        """True when the set carries cross-fitted estimates of its error (fitted with abstention)."""
        return bool(self.scores) and self.max_error > 0


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
    features: tuple[float, ...]  # the vote's three, then the best similarity less the pattern's reference


def match_features(
    vote_features: tuple[float, float, float], pattern: Pattern, calibration: Calibration
) -> tuple[float, float, float, float]:
    """The vote's features and the out-of-distribution one: the best similarity less the answering pattern's
    reference (how close its own held-out prompts come), so a prompt farther out than its intent's usual
    prompts scores lower, whatever the pattern's width."""
    reference = pattern.reference_similarity
    if reference is None:
        reference = calibration.reference_similarity
    return (*vote_features, vote_features[1] - reference)


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
        best, voted = result
        pattern = self.set.patterns[int(self.owners[rows[best]])]
        features = match_features(voted, pattern, self.calibration)
        return Match(pattern, self.calibration.confidence(features), features)


def calibration_from_json(fields: dict) -> Calibration:
    """A stored calibration; one published before abstention lacks the newer fields and keeps their defaults."""
    known = {f.name for f in dataclasses.fields(Calibration)}
    values = {k: v for k, v in fields.items() if k in known}
    for name in ("weights", "scores", "levels"):
        if name in values:
            values[name] = tuple(values[name])
    return Calibration(**values)


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
        # Fields a newer miner added are left out, so that a router a version behind still loads the set.
        known = {f.name for f in dataclasses.fields(Pattern)}
        patterns = [Pattern(**{k: v for k, v in p.items() if k in known}) for p in meta["patterns"]]
        calibration = calibration_from_json(meta["calibration"])
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
