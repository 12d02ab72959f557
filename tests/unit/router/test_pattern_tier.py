"""The pattern tier's cut: a mined pattern answers only within the error bound, a regex at its threshold."""

from __future__ import annotations

from types import SimpleNamespace

from router_svc.patterns import PatternAnswer
from router_svc.tiers.base import Pass, TierResult
from router_svc.tiers.pattern import PatternTier


class FakeMatcher:
    def __init__(self, answer: PatternAnswer) -> None:
        self.answer = answer

    async def match(self, prompt: str) -> PatternAnswer:
        return self.answer


async def outcome(answer: PatternAnswer, *, threshold: float = 0.5, max_error: float = 0.02):
    tier = PatternTier(FakeMatcher(answer), threshold, max_error)  # type: ignore[arg-type]
    request = SimpleNamespace(prompt="where is my card?", adapter_version="")
    return [item async for item in tier.answer(request)][-1]  # type: ignore[arg-type]


async def test_a_mined_pattern_answers_only_within_the_error_bound():
    mined = PatternAnswer("mined:p1", "Your card is on its way.", 0.97, pattern_id="p1")
    assert isinstance(await outcome(mined), Pass)  # 0.97 < 1 - 0.02
    assert isinstance(await outcome(mined, max_error=0.05), TierResult)


async def test_a_regex_answers_at_its_threshold_whatever_the_bound():
    greeting = PatternAnswer("greeting", "Hello! How can I help you today?", 0.95)  # exact, not calibrated
    assert isinstance(await outcome(greeting), TierResult)
    assert isinstance(await outcome(greeting, threshold=0.96), Pass)
