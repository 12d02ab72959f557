"""The council vote formula, term by term."""

import pytest

from router_svc.council import Candidate, score_candidates


def vote(*texts, errors=()):
    errors = list(errors) + [""] * (len(texts) - len(errors))
    candidates = [Candidate(f"h{i}", t, 0, error=e) for i, (t, e) in enumerate(zip(texts, errors, strict=True))]
    return score_candidates(candidates, length_weight=0.2, diversity_weight=0.1)


def test_identical_answers_agree_fully_with_no_penalty_or_bonus():
    scored = vote("Paris is the capital.", "paris is the capital", "Paris is the capital!")
    assert all((c.agreement, c.length_penalty, c.diversity_bonus) == (pytest.approx(1), 0, 0) for c in scored)
    assert all(c.score == pytest.approx(1.0) for c in scored)


def test_the_odd_one_out_scores_lowest():
    scored = vote("Paris is the capital of France.", "The capital of France is Paris.", "Bananas are yellow.")
    assert scored[2].score < min(scored[0].score, scored[1].score)
    assert scored[2].agreement == 0.0
    assert scored[2].diversity_bonus == 1.0  # every word of it is its own


def test_length_penalty_is_the_relative_distance_from_the_median_length():
    scored = vote("a b", "a b", "a b c d e f")  # median 2 words; 6 words is 2 medians away -> capped at 1
    assert [c.length_penalty for c in scored] == [0.0, 0.0, 1.0]


def test_score_combines_the_terms_with_their_weights():
    scored = vote("one two three", "one two four", "one five six")
    for c in scored:
        assert c.score == pytest.approx(c.agreement - 0.2 * c.length_penalty + 0.1 * c.diversity_bonus)


def test_failed_and_empty_candidates_take_no_part():
    scored = vote("Paris.", "", "Paris.", errors=("", "", "HEAD_BUSY"))
    assert [c.score for c in scored] == [0.0, 0.0, 0.0]  # one real answer leaves no agreement to measure


def test_an_adapter_s_calibrated_threshold_raises_the_bar_and_never_lowers_it():
    from router_svc.council import threshold_for

    assert threshold_for(0.3, None) == 0.3
    assert threshold_for(0.3, Candidate("h", "x", 0)) == 0.3  # not calibrated
    assert threshold_for(0.3, Candidate("h", "x", 0, council_threshold=0.9)) == 0.9
    assert threshold_for(0.3, Candidate("h", "x", 0, council_threshold=0.1)) == 0.3
    assert threshold_for(0.3, Candidate("h", "x", 0, council_threshold=float("inf"))) == float("inf")
