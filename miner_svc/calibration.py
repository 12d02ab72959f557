"""The last phase of a mining step: fit the pattern set's confidence on the run's own prompts, against prompts
of intents it knows and of intents it has never seen, and estimate its error (pure CPU).

Every sampled prompt of the window is scored twice. Leave-one-out (without its own vectors) it is a *known*
prompt: right when the vote's answer is its teacher's. Leave-its-answer-out (without any vector of any pattern
teaching its answer) it is an *unknown* prompt, a stand-in for an intent never mined: any answer is wrong, so
only refusing is right. A prompt whose teacher answer no answering pattern gives (traffic no cluster explains)
is unknown both ways: the traffic's own evidence of what the set does not know.

From these points: each pattern's reference similarity (the median best similarity of its own known prompts
answered right), a logistic score over the four match features, and the confidence map: for a score s, the
lower of the known precision and the unknown refusal rate of the answers at threshold t, maximised over every
t <= s, each with a conformal finite-sample correction ((wrong + 1) / (answered + 1), (answered unknown + 1) /
(unknown + 1)). Answering at confidence >= 1 - max_error is then answering above the lowest threshold at which
both errors were at most max_error on these points. The published estimates are cross-fitted: the fit on one
half of the prompts, measured on the other half, both ways, pooled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from miner_svc.phases import Window, similarity_rows
from spiral_common.pattern_set import Calibration, PatternSet, answer_codes, answer_key, vote

if TYPE_CHECKING:  # mining.py imports this module
    from miner_svc.mining import MinerConfig

# The run's own mining of some window rows alone: the set, and each of its vectors' window row.
MineWithout = Callable[[np.ndarray], tuple[PatternSet, np.ndarray]]

MIN_FIT_SAMPLES = 20  # fewer answered points keep the previous calibration
# The share of prompts from never-mined intents assumed for the published "precision with unknown prompts",
# unless the window shows more (its prompts whose teacher answer no pattern gives).
ASSUMED_UNKNOWN_SHARE = 0.2
UNSEEN_FOLDS = 5  # unknown prompts are simulated a fifth of the answers at a time
# Confidence levels are rounded down to a grid (0.01 below 0.9, 0.001 above), and the map keeps a knot per
# change: at most 190 knots, and the router's cut at 1 - max_error is never more lenient than measured.
COARSE_STEP, FINE_STEP, FINE_FROM = 0.01, 0.001, 0.9


@dataclass(frozen=True)
class Points:
    """Calibration points: one per scored prompt and pass."""

    features: np.ndarray  # (points, 3): the vote's features (zeros when nothing answered)
    answered: np.ndarray  # (points,) some pattern answered
    owners: np.ndarray  # (points,) the answering pattern of the published set, for its reference; -1: none
    correct: np.ndarray  # (points,) the answer was the teacher's (never for an unknown point)
    unknown: np.ndarray  # (points,) the prompt's answer is not one the set can give (simulated or real)
    prompt: np.ndarray  # (points,) the sampled prompt it came from, for the cross-fitting folds

    def take(self, keep: np.ndarray) -> Points:
        return Points(
            self.features[keep],
            self.answered[keep],
            self.owners[keep],
            self.correct[keep],
            self.unknown[keep],
            self.prompt[keep],
        )


@dataclass(frozen=True)
class Fitted:
    calibration: Calibration
    references: dict[int, float]  # pattern index -> reference similarity


def calibrate(
    patterns: PatternSet,
    window: Window,
    sources: np.ndarray,
    config: MinerConfig,
    mine_without: MineWithout | None = None,
) -> Calibration:
    """Fit confidence on the window's prompts (a sample of `calibration_samples`, drawn with `seed`; `sources`
    gives each of the set's vectors its window row), set each pattern's reference similarity, and estimate the
    set's error at `config.max_error`. Too few answered points keep the previous calibration.

    With `mine_without` (the run's mining of some of its rows alone), unknown prompts are simulated by mining
    the window without a fifth of its answers at a time and matching that fifth's prompts against the result,
    as the router would meet an intent the miner never saw; without it, by leaving their answer's vectors
    out of the published set (cheaper, and easier to refuse: the set's clusters were carved knowing them)."""
    n = len(window.examples)
    if not n or not len(patterns.active()):
        return patterns.calibration
    rng = np.random.default_rng(config.seed)
    sample = rng.permutation(n)[: config.calibration_samples]
    points = calibration_points(patterns, window, sources, sample, mine_without, rng)
    fitted = fit(points)
    if fitted is None:
        return patterns.calibration
    estimates = cross_fitted_estimates(points, config.max_error, rng)
    real_unknown = float(points.unknown[: len(sample)].mean())  # the leave-one-out pass: the window's own
    for i, pattern in enumerate(patterns.patterns):
        pattern.reference_similarity = fitted.references.get(i)
    return _with_estimates(fitted.calibration, estimates, config.max_error, max(real_unknown, ASSUMED_UNKNOWN_SHARE))


def calibration_points(
    patterns: PatternSet,
    window: Window,
    sources: np.ndarray,
    sample: np.ndarray,
    mine_without: MineWithout | None = None,
    rng: np.random.Generator | None = None,
) -> Points:
    """The sampled prompts scored leave-one-out (known, unless no answering pattern gives their answer), then
    as prompts of intents never mined (unknown), in that order."""
    keys = [window.keys[i] for i in sample]
    answerable = {answer_key(p.answer) for p in patterns.active()}
    vectors, negated = window.vectors[sample], window.negated[sample]
    known_features, known_winners, known_owners, _ = vote_features(patterns, vectors, negated, sources, sample)
    is_known = np.array([k in answerable for k in keys], dtype=bool)
    right = np.array([w == k for w, k in zip(known_winners, keys, strict=True)], dtype=bool)
    again = np.flatnonzero(is_known)  # an unanswerable prompt is unknown already: it appears once
    if mine_without is None:
        left_out = [keys[i] for i in again]
        found = vote_features(patterns, vectors[again], negated[again], sources, sample[again], leave_out=left_out)
        left_features, left_answered, left_owners = found[0], found[2] >= 0, found[2]
    else:
        left_features, left_answered, left_owners = _unseen_intents(
            patterns, window, sources, sample[again], mine_without, rng or np.random.default_rng(0)
        )
    return Points(
        features=np.concatenate([known_features, left_features]),
        answered=np.concatenate([known_owners >= 0, left_answered]),
        owners=np.concatenate([known_owners, left_owners]),
        correct=np.concatenate([right & is_known, np.zeros(len(again), bool)]),
        unknown=np.concatenate([~is_known, np.ones(len(again), bool)]),
        prompt=np.concatenate([np.arange(len(sample)), again]),
    )


def _unseen_intents(
    patterns: PatternSet,
    window: Window,
    sources: np.ndarray,
    queries: np.ndarray,
    mine_without: MineWithout,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vote's features for each query row of the window, matched against a set mined without its answer
    (and a fifth of the others): the answers split into UNSEEN_FOLDS groups at random, one mining per group.
    Gives the features, whether anything answered, and the published set's pattern that holds the winning
    vector (-1: none holds it; the default reference stands in)."""
    holder = {int(s): int(o) for s, o in zip(sources, patterns.owners, strict=True) if s >= 0}
    answers = sorted({window.keys[i] for i in queries})
    fold_of = dict(zip(answers, rng.permutation(len(answers)) % UNSEEN_FOLDS, strict=True))
    row_fold = np.array([fold_of.get(k, -1) for k in window.keys])
    features = np.zeros((len(queries), 3))
    answered = np.zeros(len(queries), bool)
    owners = np.full(len(queries), -1)
    for fold in range(UNSEEN_FOLDS):
        asked = np.flatnonzero(row_fold[queries] == fold)
        kept = np.flatnonzero(row_fold != fold)
        if not len(asked) or not len(kept):
            continue
        part, part_sources = mine_without(kept)
        if not len(part.active()):
            continue
        rows = queries[asked]
        found, _, part_owners, best_sources = vote_features(
            part, window.vectors[rows], window.negated[rows], part_sources
        )
        features[asked] = found
        answered[asked] = part_owners >= 0
        owners[asked] = [
            holder.get(int(s), -1) if o >= 0 else -1 for s, o in zip(best_sources, part_owners, strict=True)
        ]
    return features, answered, owners


def vote_features(
    patterns: PatternSet,
    vectors: np.ndarray,
    negated: np.ndarray,
    vector_sources: np.ndarray | None = None,
    query_sources: np.ndarray | None = None,
    leave_out: list[str] | None = None,
) -> tuple[np.ndarray, list[str | None], np.ndarray, np.ndarray]:
    """For each query vector: the vote's features, the winning answer key, the answering pattern (-1: none) and
    the source of its winning vector (-1: none, or no `vector_sources`),
    by exhaustive search over the live patterns' vectors. A query never sees the vectors whose source
    (`vector_sources`, one per vector of the set) is its own (`query_sources`): leave-one-out; with `leave_out`
    (an answer key per query), nor those of any pattern with that answer: an intent the set never saw."""
    active = np.array([not p.retired for p in patterns.patterns], dtype=bool)
    rows = np.flatnonzero(active[patterns.owners]) if len(patterns.owners) else np.zeros(0, int)
    owner_keys = [answer_key(patterns.patterns[o].answer) for o in patterns.owners[rows]]
    codes = answer_codes(owner_keys)
    names = {int(c): k for c, k in zip(codes, owner_keys, strict=True)}
    code_of = {k: c for c, k in names.items()}
    row_negated = np.array([patterns.patterns[o].negated for o in patterns.owners[rows]], dtype=bool)
    row_answering = np.array([patterns.patterns[o].answering for o in patterns.owners[rows]], dtype=bool)
    row_owners = patterns.owners[rows]
    matrix = patterns.vectors[rows]
    row_sources = vector_sources[rows] if vector_sources is not None else None
    features = np.zeros((len(vectors), 3))
    owners = np.full(len(vectors), -1)
    best_sources = np.full(len(vectors), -1)
    winners: list[str | None] = []
    for q, sims in enumerate(similarity_rows(vectors, matrix)):
        blocked = row_negated != negated[q]
        if row_sources is not None and query_sources is not None:
            blocked |= row_sources == query_sources[q]
        if leave_out is not None and leave_out[q] in code_of:
            blocked |= codes == code_of[leave_out[q]]
        result = vote(np.where(blocked, -np.inf, sims), codes, row_answering) if len(rows) else None
        if result is None:
            winners.append(None)
            continue
        best, features[q] = result[0], result[1]
        owners[q] = int(row_owners[best])
        if row_sources is not None:
            best_sources[q] = int(row_sources[best])
        winners.append(names[int(codes[best])])
    return features, winners, owners, best_sources


def fit(points: Points) -> Fitted | None:
    """References, logistic score and confidence map from `points`; None when they cannot support a fit (too
    few answered points, or all right, or none)."""
    answered = points.answered
    right = points.correct[answered]
    if answered.sum() < MIN_FIT_SAMPLES or right.all() or not right.any():
        return None
    references, default = _references(points)
    features = _features(points, references, default)[answered]
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=10.0, max_iter=1000).fit(features, right)
    weights, bias = model.coef_[0], float(model.intercept_[0])
    if weights[1] + weights[3] <= 0:  # closer (both similarity features up) must never mean less trustworthy
        return None
    scores = features @ weights + bias
    knots, levels = confidence_map(scores, right, points.unknown[answered], int(points.unknown.sum()))
    calibration = Calibration(
        weights=tuple(float(w) for w in weights),
        bias=bias,
        fitted_on=int(answered.sum()),
        scores=knots,
        levels=levels,
        reference_similarity=default,
    )
    return Fitted(calibration, references)


def confidence_map(
    scores: np.ndarray, right: np.ndarray, unknown: np.ndarray, unknown_total: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Ascending score knots and the confidence from each one up (see the module's docstring), over the answered
    points' `scores`, whether each was `right`, whether it was an `unknown` prompt, and how many unknown prompts
    there were in all (answered or not)."""
    order = np.argsort(-scores, kind="stable")
    s, known, wrong_known = scores[order], ~unknown[order], ~right[order] & ~unknown[order]
    answered_known = np.cumsum(known)
    wrong = np.cumsum(wrong_known)
    answered_unknown = np.cumsum(unknown[order])
    known_precision = 1.0 - (wrong + 1) / (answered_known + 1)
    refused = 1.0 - (answered_unknown + 1) / (unknown_total + 1)
    level = np.minimum(known_precision, refused)
    # A threshold answers every tied score at once: keep the last of each run of ties (in descending order).
    last_of_tie = np.append(s[1:] != s[:-1], True)
    thresholds, level = s[last_of_tie][::-1], level[last_of_tie][::-1]  # ascending
    level = np.maximum.accumulate(level)
    step = np.where(level >= FINE_FROM, FINE_STEP, COARSE_STEP)
    level = np.round(np.floor(level / step + 1e-9) * step, 4)
    change = np.append(True, level[1:] != level[:-1])
    return tuple(float(t) for t in thresholds[change]), tuple(float(v) for v in level[change])


@dataclass
class Estimates:
    known: int = 0
    known_answered: int = 0
    known_right: int = 0
    unknown: int = 0
    unknown_answered: int = 0


def evaluate(fitted: Fitted, points: Points, max_error: float) -> Estimates:
    """What the fitted calibration does with `points` at 1 - `max_error`."""
    calibration = fitted.calibration
    features = _features(points, fitted.references, calibration.reference_similarity)
    answered = points.answered
    confidence = np.array(
        [calibration.confidence(tuple(f)) if a else 0.0 for f, a in zip(features, answered, strict=True)]
    )
    says = answered & (confidence >= 1.0 - max_error)
    known = ~points.unknown
    return Estimates(
        known=int(known.sum()),
        known_answered=int((says & known).sum()),
        known_right=int((says & known & points.correct).sum()),
        unknown=int(points.unknown.sum()),
        unknown_answered=int((says & points.unknown).sum()),
    )


def cross_fitted_estimates(points: Points, max_error: float, rng: np.random.Generator) -> Estimates:
    """Fit on half of the sampled prompts (both their passes), measure on the other half, both ways; pooled."""
    prompts = int(points.prompt.max()) + 1 if len(points.prompt) else 0
    half = rng.permutation(prompts) < prompts // 2
    total = Estimates()
    for side in (True, False):
        held_out = half[points.prompt] == side
        fitted = fit(points.take(~held_out))
        if fitted is None:
            return Estimates()
        measured = evaluate(fitted, points.take(held_out), max_error)
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(measured, name))
    return total


def _references(points: Points) -> tuple[dict[int, float], float]:
    """Each pattern's reference similarity: the median best similarity of its known points answered right;
    and the median over all of them, for the patterns without any (1.0 when there are none)."""
    good = (points.owners >= 0) & points.answered & points.correct & ~points.unknown
    top, owners = points.features[good, 1], points.owners[good]
    references = {int(o): float(np.median(top[owners == o])) for o in np.unique(owners)}
    return references, float(np.median(top)) if len(top) else 1.0


def _features(points: Points, references: dict[int, float], default: float) -> np.ndarray:
    reference = np.array([references.get(int(o), default) for o in points.owners])
    return np.column_stack([points.features, points.features[:, 1] - reference])


def _with_estimates(calibration: Calibration, e: Estimates, max_error: float, unknown_share: float) -> Calibration:
    if not e.known:
        return calibration
    precision = e.known_right / e.known_answered if e.known_answered else 0.0
    coverage = e.known_answered / e.known
    unknown_rate = e.unknown_answered / e.unknown if e.unknown else 0.0
    answered = (1 - unknown_share) * coverage + unknown_share * unknown_rate
    with_unknown = (1 - unknown_share) * coverage * precision / answered if answered else 0.0
    calibration.max_error = max_error
    calibration.precision_at_threshold = round(precision, 4)
    calibration.coverage_at_threshold = round(coverage, 4)
    calibration.unknown_answered = round(unknown_rate, 4)
    calibration.precision_with_unknown = round(with_unknown, 4)
    calibration.unknown_share = round(unknown_share, 4)
    calibration.known_samples = e.known
    calibration.unknown_samples = e.unknown
    return calibration
