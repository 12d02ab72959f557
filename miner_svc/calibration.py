"""The last phase of a mining step: fit the pattern set's confidence on the run's own prompts (pure CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from miner_svc.phases import Window, similarity_rows
from spiral_common.pattern_set import Calibration, PatternSet, answer_codes, answer_key, vote

if TYPE_CHECKING:  # mining.py imports this module
    from miner_svc.mining import MinerConfig

MIN_FIT_SAMPLES = 50  # fewer answered prompts keep the previous calibration


def calibrate(patterns: PatternSet, window: Window, sources: np.ndarray, config: MinerConfig) -> Calibration:
    """Fit confidence on the window's prompts (a sample of `calibration_samples`, drawn with `seed`), each
    matched without its own vectors (leave-one-out: `sources` gives each vector's window row)."""
    n = len(window.examples)
    if not n or not len(patterns.active()):
        return patterns.calibration
    rng = np.random.default_rng(config.seed)
    sample = rng.permutation(n)[: config.calibration_samples]
    features, winners = vote_features(patterns, window.vectors[sample], window.negated[sample], sources, sample)
    answered = np.array([w is not None for w in winners])
    correct = np.array([w == window.keys[i] for w, i in zip(winners, sample, strict=True)])
    return fit_calibration(features[answered], correct[answered], config.target_precision, patterns.calibration)


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
    for q, sims in enumerate(similarity_rows(vectors, matrix)):
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


def fit_calibration(
    features: np.ndarray, correct: np.ndarray, target_precision: float, previous: Calibration
) -> Calibration:
    """Logistic fit of correctness on the features, shifted so that 0.5 sits where the precision of every
    answer above it reaches the target. Too few or one-sided samples keep the previous calibration."""
    if len(correct) < MIN_FIT_SAMPLES or correct.all() or not correct.any():
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
