"""The pattern set's calibration: abstention with a stated error bound, on synthetic clusters of embeddings
(no encoder): prompts of intents never mined are refused, and the bound holds on held-out prompts."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from miner_svc.calibration import confidence_map
from miner_svc.mining import Example, MinerConfig, MiningInput, mine_patterns
from router_svc.metrics import RouterMetrics
from spiral_common.embedding import DIMENSIONS
from spiral_common.pattern_set import Calibration, Pattern, PatternIndex, PatternSet, calibration_from_json

FAMILIES, PER_FAMILY, UNSEEN, PER_INTENT = 16, 2, 8, 60


def intents(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the known intents and of the unseen ones, drawn alike: intents come in families of two
    (centre cosine ~0.6), so a question the set never saw usually sits next to one it knows."""
    families = _unit(rng.standard_normal((FAMILIES, DIMENSIONS)))
    members = np.repeat(families, PER_FAMILY, axis=0)
    centres = _unit(members + 0.8 * _unit(rng.standard_normal((len(members), DIMENSIONS))))
    order = rng.permutation(len(centres))
    return centres[order[UNSEEN:]], centres[order[:UNSEEN]]


def prompts(centres: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` prompt vectors per centre (cosine ~0.8 to it, with a spread), and the centre each came from."""
    labels = np.repeat(np.arange(len(centres)), count)
    spread = rng.uniform(0.5, 0.9, len(labels))[:, None]
    return _unit(centres[labels] + spread * _unit(rng.standard_normal((len(labels), DIMENSIONS)))), labels


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def mined():
    rng = np.random.default_rng(7)
    known, unseen = intents(rng)
    vectors, labels = prompts(known, PER_INTENT, rng)
    examples = [Example(f"prompt {i}", f"answer {label}") for i, label in enumerate(labels)]
    config = MinerConfig(max_error=0.05)
    patterns, summary = mine_patterns(MiningInput(examples, vectors), PatternSet.empty(), config, 0)
    held_out, held_labels = prompts(known, 40, rng)
    strangers, _ = prompts(unseen, 40, rng)
    return patterns, summary, config, (held_out, held_labels), strangers


def answers(index: PatternIndex, vectors: np.ndarray, min_confidence: float) -> list[str | None]:
    found = [index.match(v, False) for v in vectors]
    return [m.pattern.answer if m and m.confidence >= min_confidence else None for m in found]


def test_prompts_of_intents_never_mined_are_refused_at_the_bound(mined):
    patterns, _, config, _, strangers = mined
    index = PatternIndex(patterns)
    said = answers(index, strangers, config.min_confidence)
    assert sum(a is not None for a in said) / len(said) <= config.max_error + 0.02
    # Without abstention (the old 0.50 cut) the same prompts mostly get a confident, wrong answer.
    assert sum(a is not None for a in answers(index, strangers, 0.5)) / len(said) > 0.5


def test_the_error_bound_holds_on_held_out_prompts_of_known_intents(mined):
    patterns, _, config, (held_out, labels), _ = mined
    said = answers(PatternIndex(patterns), held_out, config.min_confidence)
    answered = [(a, f"answer {label}") for a, label in zip(said, labels, strict=True) if a is not None]
    precision = sum(a == truth for a, truth in answered) / len(answered)
    assert precision >= 1 - config.max_error
    assert len(answered) / len(said) > 0.5  # abstaining is not refusing everything


def test_the_published_estimates_are_measured_at_the_bound_and_match_held_out_prompts(mined):
    patterns, summary, config, (held_out, labels), strangers = mined
    calibration = summary.calibration
    assert calibration.estimated and calibration.max_error == config.max_error
    assert calibration.known_samples > 0 and calibration.unknown_samples > 0
    assert calibration.precision_at_threshold >= 1 - config.max_error
    assert calibration.unknown_answered <= config.max_error + 0.02  # cross-fitted: near the bound, not on it
    index = PatternIndex(patterns)
    coverage = np.mean([a is not None for a in answers(index, held_out, config.min_confidence)])
    assert abs(calibration.coverage_at_threshold - coverage) < 0.1
    assert 0 < calibration.precision_with_unknown <= calibration.precision_at_threshold
    assert all(p.reference_similarity is not None for p in patterns.active())


def test_confidence_is_a_step_function_rising_with_the_score():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    unknown = rng.random(2000) < 0.3
    right = ~unknown & (rng.random(2000) < 1 / (1 + np.exp(-3 * scores)))
    knots, levels = confidence_map(scores, right, unknown, int(unknown.sum()) + 100)
    assert list(knots) == sorted(knots) and list(levels) == sorted(levels)
    calibration = Calibration(weights=(1.0,), bias=0.0, scores=knots, levels=levels)
    assert calibration.confidence((knots[0] - 1.0,)) == 0.0
    assert calibration.confidence((knots[-1] + 1.0,)) == levels[-1] < 1.0  # finite samples never vouch for 100 %


def test_a_set_published_before_abstention_loads_and_is_held_to_the_stricter_cut():
    old = {"weights": [4.0, 30.0, 10.0], "bias": -29.0, "fitted_on": 0, "precision_at_threshold": 0.0}
    calibration = calibration_from_json(old)
    assert not calibration.estimated and calibration.scores == ()
    fields = dict(
        pattern_id="p", answer="a", exemplars=[], size=5, agreement=1.0, negated=False, created_ms=0, last_matched_ms=0
    )
    pattern = Pattern(**fields)  # as stored before: no reference similarity
    other = Pattern(**{**fields, "pattern_id": "q", "answer": "b"})
    assert pattern.reference_similarity is None
    rng = np.random.default_rng(1)
    vector = _unit(rng.standard_normal(DIMENSIONS))
    near = _unit(vector + 0.35 * _unit(rng.standard_normal(DIMENSIONS)))  # cosine ~0.94
    rival = _unit(near + 0.5 * _unit(rng.standard_normal(DIMENSIONS)))  # another answer, cosine ~0.89
    vectors = np.stack([vector, rival])
    patterns = PatternSet(1, [pattern, other], vectors, vectors, np.arange(2, dtype=np.int32), calibration)
    match = PatternIndex(patterns).match(near, False)
    assert match is not None and match.pattern is pattern
    assert 0.5 <= match.confidence < 0.98  # answered at the old 0.50, refused at 1 - 0.02


def test_the_router_publishes_the_loaded_set_s_estimates_as_gauges(mined):
    patterns, *_ = mined
    patterns.version = 3
    registry = CollectorRegistry()
    RouterMetrics(registry).pattern_set_loaded(patterns)
    assert registry.get_sample_value("spiral_pattern_set_version") == 3
    estimate = patterns.calibration.unknown_answered
    assert registry.get_sample_value("spiral_pattern_set_estimate_ratio", {"estimate": "unknown_answered"}) == estimate
    assert registry.get_sample_value("spiral_pattern_set_estimate_ratio", {"estimate": "max_error"}) == 0.05
