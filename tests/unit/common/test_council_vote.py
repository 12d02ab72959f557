"""The council threshold a distillation job calibrates for its adapter, and how the adapter carries it."""

from __future__ import annotations

import math

import pytest

from spiral_common.council_vote import NEVER, Calibration, calibrate_threshold, from_metadata, to_metadata, vote, winner


def test_the_lowest_threshold_whose_answers_meet_the_bound_is_chosen():
    outcomes = [(1.0, True)] * 60 + [(0.9, True)] * 40 + [(0.5, False)] * 30
    calibration = calibrate_threshold(outcomes, max_error=0.02)
    assert calibration.threshold == 0.9
    assert (calibration.prompts, calibration.answered, calibration.right) == (130, 100, 100)
    assert calibration.coverage == pytest.approx(100 / 130) and calibration.precision == 1.0


def test_the_scan_stops_at_the_first_threshold_that_fails():
    # 0.6 on its own would pass again (6 wrong of 255), but a looser bar is never picked after a stricter failed.
    outcomes = [(1.0, True)] * 50 + [(0.8, False)] * 5 + [(0.6, True)] * 200
    assert calibrate_threshold(outcomes, max_error=0.05).threshold == 1.0


def test_a_handful_of_right_answers_proves_nothing_and_the_council_never_answers():
    calibration = calibrate_threshold([(1.0, True)] * 10, max_error=0.02)
    assert calibration.threshold == NEVER and math.isinf(calibration.threshold)
    assert (calibration.answered, calibration.coverage, calibration.precision) == (0, 0.0, 0.0)
    assert calibrate_threshold([], max_error=0.02).threshold == NEVER


def test_equal_scores_are_let_through_together():
    # A threshold at 1.0 takes every 1.0: 48 right and 3 wrong fail 0.02, so none of them may pass.
    outcomes = [(1.0, True)] * 48 + [(1.0, False)] * 3
    assert calibrate_threshold(outcomes, max_error=0.02).threshold == NEVER


def test_the_calibration_travels_in_the_adapter_metadata():
    for threshold in (0.85, NEVER):
        calibration = Calibration(threshold, 150, 90, 89, 0.02)
        metadata = {f"spiral.{k}": v for k, v in to_metadata(calibration).items()}
        assert from_metadata(metadata) == calibration
    assert from_metadata({"spiral.eval_score": "0.5"}) is None
    with pytest.raises(ValueError):
        from_metadata({"spiral.council_threshold": "0.9", "spiral.council_prompts": "10",
                       "spiral.council_answered": "5", "spiral.council_right": "6"})  # fmt: skip
    with pytest.raises(ValueError):
        from_metadata({"spiral.council_threshold": "nan"})


def test_the_winner_is_the_first_of_the_best_scores_and_no_answer_has_no_winner():
    answers = ["card_arrival", "card_arrival", "lost_card", None]
    scores = vote(answers, length_weight=0.2, diversity_weight=0.1)
    assert winner(answers, scores) == 0 and scores[3].score == 0.0
    assert winner([None, ""], vote([None, ""], length_weight=0.2, diversity_weight=0.1)) is None
