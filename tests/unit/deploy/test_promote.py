"""Canary promotion decided from numbers the test controls, and the actions that follow."""

import pytest

from deploy.promote import PromotionPolicy, RouterStats, check_once, decide
from spiral_common.enums import Track

MAIN = RouterStats(requests=1000, error_ratio=0.01, p95_s=0.200, cloud_ratio=0.10, bad_feedback_ratio=0.05)
POLICY = PromotionPolicy()


def canary(**changes) -> RouterStats:
    values = {**MAIN.__dict__, "requests": 60}
    values.update(changes)
    return RouterStats(**values)


def test_a_canary_as_good_as_main_is_promoted():
    assert decide(MAIN, canary(), POLICY).action == "promote"
    assert decide(MAIN, canary(p95_s=0.240, cloud_ratio=0.14), POLICY).action == "promote"  # within the margins


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"error_ratio": 0.05}, "error ratio"),
        ({"p95_s": 0.300}, "p95"),
        ({"cloud_ratio": 0.30}, "cloud ratio"),
        ({"bad_feedback_ratio": 0.20}, "bad feedback"),
    ],
)
def test_a_canary_worse_on_any_number_is_rolled_back_saying_why(changes, why):
    decision = decide(MAIN, canary(**changes), POLICY)
    assert decision.action == "rollback"
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith(why)


def test_too_little_canary_traffic_waits():
    assert decide(MAIN, canary(requests=5, error_ratio=0.9), POLICY).action == "wait"


class FakeSource:
    def __init__(self, main, canary_stats):
        self.numbers = {"main": main, "canary": canary_stats}

    def stats(self, router, window):
        return self.numbers[router]


class FakePlatform:
    def __init__(self, versions):
        self.versions, self.calls = versions, []

    def adapter_versions(self):
        return self.versions

    def reload(self, version, tracks):
        self.calls.append(("reload", version, tracks == (Track.CANARY,)))

    def set_canary_weight(self, percent):
        self.calls.append(("weight", percent))


def test_promotion_loads_the_canary_adapter_on_main_and_resets_the_weight():
    platform = FakePlatform(("v1", "v2"))
    assert check_once(FakeSource(MAIN, canary()), platform, POLICY, "1h", 5).action == "promote"
    assert platform.calls == [("reload", "v2", False), ("weight", 5)]


def test_rollback_puts_mains_adapter_back_on_the_canary():
    platform = FakePlatform(("v1", "v2"))
    assert check_once(FakeSource(MAIN, canary(error_ratio=0.5)), platform, POLICY, "1h", 5).action == "rollback"
    assert platform.calls == [("reload", "v1", True)]


def test_nothing_happens_when_both_serve_the_same_adapter():
    platform = FakePlatform(("v1", "v1"))
    assert check_once(FakeSource(MAIN, canary()), platform, POLICY, "1h", 5).action == "wait"
    assert platform.calls == []
