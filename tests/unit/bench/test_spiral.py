"""bench-spiral's own arithmetic: the leave-intents-out split and the bill, on small made-up data."""

from __future__ import annotations

import argparse

from bench.spiral import CLOUD, Answer, council_estimate, split_intents, summarise


def _rows(intents: int, per_intent: int) -> list[dict]:
    return [{"text": f"{i}-{j}", "category": f"intent{i}"} for i in range(intents) for j in range(per_intent)]


def _args(**overrides: object) -> argparse.Namespace:
    values = {"intent_seed": 0, "intents": 0, "train_share": 0.8, "train_per_intent": 0, "test_per_intent": 0}
    return argparse.Namespace(**(values | overrides))


def test_unseen_intents_are_never_taught_and_all_their_prompts_are_out_of_scope_tests() -> None:
    split = split_intents(_rows(10, 10), _args())
    assert (len(split.known), len(split.unseen)) == (8, 2)
    assert {p.label for p in split.train} == set(split.known)
    assert {p.label for p in split.test if not p.in_scope} == set(split.unseen)
    assert sum(not p.in_scope for p in split.test) == 20
    assert not {p.text for p in split.train} & {p.text for p in split.test}


def test_the_split_is_seeded_and_capped_per_intent() -> None:
    capped = _args(intents=5, train_per_intent=3, test_per_intent=1)
    assert split_intents(_rows(10, 10), capped) == split_intents(_rows(10, 10), capped)
    split = split_intents(_rows(10, 10), capped)
    assert len(split.known) + len(split.unseen) == 5
    assert len(split.train) == 3 * 4 and len(split.test) == 5


def test_local_answers_and_the_bill_are_counted_per_scope_against_all_cloud() -> None:
    answers = [
        Answer("a", "x", True, "TIER_PATTERN", "x", 0, 1.0),
        Answer("b", "y", True, "TIER_COUNCIL", "z", 0, 1.0),  # local but wrong
        Answer("c", "w", False, "TIER_PATTERN", "x", 0, 1.0),  # an unseen intent answered locally
        Answer("d", "v", False, CLOUD, "v", 20, 1.0),
    ]
    report = summarise(answers, cloud_cost=20.0)
    assert report["in_scope_local"] == 1.0
    assert report["out_of_scope_local"] == 0.5
    assert report["local_precision"] == round(1 / 3, 4)
    assert report["tiers"]["TIER_PATTERN"] == {
        "answers": 2, "share": 0.5, "precision": 0.5, "in_scope": 1, "out_of_scope": 1
    }  # fmt: skip
    assert report["cost_per_1000_usd_micros"] == 5000.0
    assert report["all_cloud_per_1000_usd_micros"] == 20000.0
    assert report["cost_saving"] == 0.75


def test_the_estimate_gives_every_miss_the_council_answers_of_its_scope() -> None:
    cheap = [Answer(str(i), "x", True, CLOUD, "x", 20, 1.0) for i in range(4)]
    cheap.append(Answer("oos", "o", False, CLOUD, "o", 20, 1.0))
    sampled = [Answer("0", "x", True, "TIER_COUNCIL", "x", 0, 1.0), Answer("1", "x", True, CLOUD, "x", 20, 1.0)]
    estimated = council_estimate(cheap, sampled)
    assert [a.tier for a in estimated] == ["TIER_COUNCIL", CLOUD, "TIER_COUNCIL", CLOUD, CLOUD]
    assert [a.text for a in estimated] == ["0", "1", "2", "3", "oos"]
