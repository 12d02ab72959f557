"""LogRate: a token bucket per key for log records."""

from spiral_common.logs import LogRate


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_rate_then_the_next_record_counts_those_held_back() -> None:
    clock = Clock()
    rate = LogRate(5, clock)
    admitted = [rate.admit("cache") for _ in range(12)]
    assert admitted[:5] == [0] * 5 and admitted[5:] == [None] * 7
    clock.now = 0.2  # one token back
    assert rate.admit("cache") == 7
    assert rate.admit("cache") is None


def test_keys_are_independent_and_the_bucket_never_holds_more_than_a_second() -> None:
    clock = Clock()
    rate = LogRate(2, clock)
    assert [rate.admit("cache") for _ in range(3)] == [0, 0, None]
    assert rate.admit("cloud") == 0
    clock.now = 100.0
    assert [rate.admit("cache") for _ in range(3)] == [1, 0, None]


def test_zero_lets_every_record_through() -> None:
    rate = LogRate(0)
    assert all(rate.admit("cache") == 0 for _ in range(1000))
