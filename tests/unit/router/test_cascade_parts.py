"""Pure parts of the cascade: the cache key, the regex specialists, and cloud cost arithmetic."""

from datetime import UTC, datetime

import pytest

from router_svc.cache import request_digest
from router_svc.cascade import single_turn_prompt
from router_svc.cloud import cost_usd_micros, prompt_token_bound
from router_svc.patterns import RegexPatterns
from spiral_common.chat import ChatRequest, Message
from spiral_common.specs import CloudProvider

BASE = ChatRequest(messages=(Message("user", "hi"),), max_tokens=16, temperature=0.7, top_p=1.0)


def test_the_cache_key_covers_every_parameter_that_changes_an_answer():
    from dataclasses import replace

    variants = [
        replace(BASE, messages=(Message("user", "hi!"),)),
        replace(BASE, messages=(Message("system", "hi"),)),
        replace(BASE, max_tokens=17),
        replace(BASE, temperature=0.8),
        replace(BASE, top_p=0.9),
        replace(BASE, stop=("x",)),
        replace(BASE, seed=1),
        replace(BASE, model="other"),
    ]
    digests = {request_digest(v) for v in variants} | {request_digest(BASE)}
    assert len(digests) == len(variants) + 1
    assert request_digest(replace(BASE)) == request_digest(BASE)


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("what is 12 * (3 + 4)?", "12 * (3 + 4) = 84"),
        ("1/3 + 1/6", "1/3 + 1/6 = 1/2 (about 0.5)"),
        ("What's 0.1 + 0.2?", "0.1 + 0.2 = 3/10 (about 0.3)"),  # exact, not 0.30000000000000004
        ("2^64", "2^64 = 18446744073709551616"),
        ("Hi there!", "Hello! How can I help you today?"),
        ("what day is it today?", "Today is Wednesday, 25 November 2026 (UTC: 2026-11-25)."),
    ],
)
def test_specialists_answer_exactly(prompt, expected):
    answer = RegexPatterns(lambda: datetime(2026, 11, 25, 23, 30, tzinfo=UTC)).match(prompt)
    assert answer is not None and answer.text == expected and answer.confidence >= 0.5


@pytest.mark.parametrize(
    "prompt", ["What is the capital of France?", "10 / 0", "hi, write me a poem", "2 ** 99999", ""]
)
def test_specialists_stay_quiet_on_what_they_cannot_answer_exactly(prompt):
    assert RegexPatterns().match(prompt) is None


def test_only_single_turn_conversations_reach_the_pattern_head():
    assert single_turn_prompt(BASE) == "hi"
    sys_and_user = ChatRequest(
        messages=(Message("system", "s"), Message("user", "u")), max_tokens=1, temperature=0, top_p=1
    )
    assert single_turn_prompt(sys_and_user) == "u"
    multi = ChatRequest(
        messages=(Message("user", "a"), Message("assistant", "b"), Message("user", "c")),
        max_tokens=1,
        temperature=0,
        top_p=1,
    )
    assert single_turn_prompt(multi) is None


def test_cost_is_integer_micro_dollars_rounded_up_and_the_prompt_bound_counts_bytes():
    provider = CloudProvider("p", "http://x", "m", "K", 150_000, 600_000)  # $0.15 / $0.60 per million
    assert cost_usd_micros(1_000, 1_000, provider) == 750
    assert cost_usd_micros(1, 0, provider) == 1  # 0.15 micro-dollars rounds up
    assert (
        prompt_token_bound(ChatRequest(messages=(Message("user", "héllo"),), max_tokens=1, temperature=0, top_p=1))
        == 6 + 8
    )
