"""The regex micro-specialists on hostile input: every prompt is answered correctly or missed, quickly, never
with an exception. Existing answers are checked in test_cascade_parts.py."""

import time
from datetime import UTC, datetime

import pytest

from router_svc.patterns import MAX_SPECIALIST_PROMPT_CHARS, SPECIALISTS, RegexPatterns

NOW = datetime(2026, 11, 25, 23, 30, tzinfo=UTC)
# Only a hang guard: each case takes microseconds; Python's backtracking `re` took minutes on some of them.
HANG_GUARD_S = 0.5

# Shapes that made backtracking regexes or the unbounded evaluator blow up, at 10,000 characters.
TEN_THOUSAND = {
    "spaces then a letter": " " * 9_999 + "a",
    "spaces": " " * 10_000,
    "digits": "1" * 10_000,
    "digits then a question mark and a letter": "1" * 9_998 + "?a",
    "alternating operators": "+-" * 5_000,
    "operators between digits": "1+" * 4_999 + "1",
    "open brackets": "(" * 10_000,
    "a question around open brackets": "what is " + "(" * 9_990 + "?",
    "spaced digits": "1 " * 5_000,
    "equals signs": "1 =" * 3_333,
}


def guarded(call):
    started = time.perf_counter()
    result = call()
    assert time.perf_counter() - started < HANG_GUARD_S
    return result


@pytest.mark.parametrize("prompt", TEN_THOUSAND.values(), ids=TEN_THOUSAND.keys())
def test_long_regex_shaped_prompts_are_missed_quickly(prompt):
    assert guarded(lambda: RegexPatterns(lambda: NOW).match(prompt)) is None


@pytest.mark.parametrize("prompt", TEN_THOUSAND.values(), ids=TEN_THOUSAND.keys())
def test_each_specialist_is_linear_even_without_the_length_cap(prompt):
    for specialist in SPECIALISTS:
        assert guarded(lambda: specialist(prompt, NOW)) is None  # noqa: B023 (called at once)


@pytest.mark.parametrize(
    "prompt",
    [
        " " * 130 + "a",  # stalled the router for 8.4 s
        "what is " + "*".join(["999999^64"] * 12),  # a 4,600-digit result: HTTP 500
        "999999^64",  # 384 digits: past the result bound
        "10 / 0",
        "1 / (2 - 2)",
        "0 ^ -1",
        "2 ^ 65",  # exponent past its bound
        "2 ^ 0.5",  # not a whole exponent
        "9 ^ 9 ^ 9",  # 9 to the 387 million
        "(2 ^ 64) ^ 64",  # refused before computing
        "10^60 * 10^60 * 10^60 * 10^60 * 10^60 * 10^60 / 10^60",  # the result fits, an intermediate does not
        "1 + " + "-" * 200 + "1",  # nested deeper than the evaluator goes
    ],
)
def test_arithmetic_past_a_bound_is_a_miss_not_an_error(prompt):
    assert guarded(lambda: RegexPatterns(lambda: NOW).match(prompt)) is None


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("(" * 120 + "1 + 1" + ")" * 120, "(" * 120 + "1 + 1" + ")" * 120 + " = 2"),  # brackets alone nest nothing
        ("(1/2)^64", "(1/2)^64 = 1/18446744073709551616 (about 5.421010862e-20)"),
        ("1" * 250 + " + 1", "1" * 250 + " + 1 = " + "1" * 249 + "2"),
        ("  what is 6 × 7 = ?  ", "6 × 7 = 42"),
    ],
)
def test_arithmetic_within_the_bounds_is_answered_exactly(prompt, expected):
    answer = guarded(lambda: RegexPatterns(lambda: NOW).match(prompt))
    assert answer is not None and answer.text == expected


def test_prompts_over_the_cap_are_not_read_even_when_they_would_match():
    padded = "what is" + " " * MAX_SPECIALIST_PROMPT_CHARS + "1 + 1"  # the arithmetic regex alone would answer it
    assert RegexPatterns(lambda: NOW).match(padded) is None
    assert RegexPatterns(lambda: NOW).match(" " * 1_000 + "hello" + " " * 1_000) is not None  # stripped first
