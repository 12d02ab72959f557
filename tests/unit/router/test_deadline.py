"""The caller's deadline, passed down: each step gets the lesser of its own limit and the time left (less a
margin), the cascade starts no tier with nothing left, and the council gives its heads no more."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from router_svc.council import Council
from router_svc.deadline import MARGIN_S, NO_DEADLINE, deadline_after, time_left_s
from router_svc.heads_client import HeadDone, HeadText
from router_svc.tiers.base import Pass, TierResult
from spiral_common.enums import Outcome, Tier
from spiral_common.errors import DeadlineExceeded, Unavailable
from tests.helpers import wait_until_async
from tests.unit.router.test_tiers import FakeTier, _cascade, _chat


def test_a_step_gets_the_lesser_of_its_own_limit_and_the_callers_time_left():
    assert time_left_s(100.0, 60.0, now=10.0) == 60.0  # the caller has 90 s: the step's own limit holds
    assert time_left_s(11.0, 60.0, now=10.0) == pytest.approx(1.0 - MARGIN_S)  # the caller's second is less
    assert time_left_s(10.01, 60.0, now=10.0) == 0.0  # within the margin: nothing left, never negative
    assert time_left_s(5.0, 60.0, now=10.0) == 0.0  # already past
    assert time_left_s(NO_DEADLINE, 60.0, now=10.0) == 60.0
    assert time_left_s(NO_DEADLINE) == math.inf  # neither side has a limit


def test_a_grpc_time_remaining_becomes_a_monotonic_deadline():
    assert deadline_after(None) == NO_DEADLINE  # gRPC's "no deadline"
    assert deadline_after(2.5, now=100.0) == 102.5
    assert deadline_after(1.0) == pytest.approx(time.monotonic() + 1.0, abs=0.5)


async def test_no_tier_starts_once_the_callers_time_is_up():
    never = FakeTier(Tier.CACHE, Pass(Outcome.MISSED))
    cascade, log, _ = _cascade(never)
    with pytest.raises(DeadlineExceeded) as caught:
        await cascade.answer(_chat(), "r", deadline=time.monotonic() - 1)
    assert caught.value.reason == "DEADLINE_EXCEEDED" and never.asked == 0 and not log.appended


async def test_tiers_after_the_deadline_are_skipped_but_a_fallback_in_hand_is_served():
    class SlowFallbackTier(FakeTier):
        async def answer(self, request):
            request.fallback = TierResult(Tier.LOCAL_FALLBACK, "maybe", "stop", cacheable=False)
            await asyncio.sleep(max(0.0, request.time_left_s()))  # uses every second it was given
            yield Pass(Outcome.FAILED, "below threshold")

    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "sure", "stop"))
    cascade, _, _ = _cascade(SlowFallbackTier(Tier.COUNCIL, None), cloud)
    answer = await cascade.answer(_chat(), "r", deadline=time.monotonic() + 0.2)
    assert (answer.text, answer.trace.tier, cloud.asked) == ("maybe", Tier.LOCAL_FALLBACK, 0)


class SlowHeads:
    """Heads that take `delay_s` unless cancelled; records the timeout each was given."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.timeouts: list[float | None] = []
        self.cancelled = 0

    async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
        self.timeouts.append(timeout_s)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        yield HeadText("Paris.")
        yield HeadDone("stop", 1, 1, head, "")


def _council(heads: SlowHeads, deadline_s: float) -> Council:
    return Council(heads, ["a", "b"], deadline_s=deadline_s, threshold=0.3, length_weight=0.2, diversity_weight=0.1)  # type: ignore[arg-type]


async def test_the_council_stops_at_the_callers_deadline_when_it_comes_first():
    heads = SlowHeads(delay_s=30)
    started = time.monotonic()
    result = await _council(heads, deadline_s=60).run(_chat(), "r", deadline=started + 0.3)
    assert time.monotonic() - started < 5  # not the council's own 60 s (a hang guard, not a timing target)
    assert {c.error for c in result.candidates} == {"DEADLINE_EXCEEDED"}

    async def both_cancelled() -> bool:
        return heads.cancelled == 2

    await wait_until_async(both_cancelled, 5, "the heads' calls to be cancelled")
    assert all(t is not None and t <= 0.3 for t in heads.timeouts)  # each head's call carries the time left


async def test_without_a_callers_deadline_the_council_keeps_its_own():
    heads = SlowHeads(delay_s=0)
    result = await _council(heads, deadline_s=7).run(_chat(), "r")
    assert result.winner is not None and heads.timeouts == [7, 7]


class DyingReplica:
    """The first call to each member streams a token and is cut (its head's host died); the next answers."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
        self.calls.append(head)
        yield HeadText("Par")
        if self.calls.count(head) == 1:
            raise Unavailable("head failed: UNAVAILABLE: upstream reset", reason="HEAD_UNAVAILABLE")
        yield HeadText("is.")
        yield HeadDone("stop", 1, 1, head, "")


async def test_a_member_whose_head_replica_died_mid_answer_is_asked_once_more():
    heads = DyingReplica()
    result = await _council(heads, deadline_s=7).run(_chat(), "r")  # type: ignore[arg-type]
    assert sorted(heads.calls) == ["a", "a", "b", "b"]
    assert [c.text for c in result.candidates] == ["Paris.", "Paris."] and result.winner is not None
