"""The daily pool: atomic reservations, settlement, expiry, and the UTC reset (real Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from spiral_common.budget import BudgetLedger, Scope
from spiral_common.errors import BudgetExceeded


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 25, 23, 59, 0, tzinfo=UTC))


@pytest.fixture
def ledger(redis_client, prefix, clock):
    return BudgetLedger(redis_client, prefix=prefix, pool_usd_micros=100_000, reservation_ttl_s=60, clock=clock)


async def test_reserve_then_settle_counts_the_real_cost(ledger):
    reservation = await ledger.reserve(30_000, subject="cloud call")
    status = await ledger.status()
    assert (status.spent_usd_micros, status.reserved_usd_micros, status.remaining_usd_micros) == (0, 30_000, 70_000)
    await ledger.settle(reservation, 1_234)
    status = await ledger.status()
    assert (status.spent_usd_micros, status.reserved_usd_micros, status.remaining_usd_micros) == (1_234, 0, 98_766)


async def test_release_spends_nothing_and_settling_twice_counts_once(ledger):
    reservation = await ledger.reserve(50_000, subject="cloud call")
    await ledger.release(reservation)
    await ledger.release(reservation)
    assert (await ledger.status()).remaining_usd_micros == 100_000


async def test_a_reservation_past_the_pool_is_refused_and_claims_nothing(ledger):
    await ledger.reserve(90_000, subject="cloud call")
    with pytest.raises(BudgetExceeded) as caught:
        await ledger.reserve(20_000, subject="cloud call")
    assert caught.value.reason == "BUDGET_EXCEEDED"
    assert caught.value.metadata["needed_usd_micros"] == "20000"
    assert (await ledger.status()).reserved_usd_micros == 90_000


async def test_concurrent_reservations_never_exceed_the_pool(ledger):
    async def try_reserve():
        try:
            return await ledger.reserve(7_000, subject="cloud call")
        except BudgetExceeded:
            return None

    granted = [r for r in await asyncio.gather(*(try_reserve() for _ in range(100))) if r]
    assert len(granted) == 14  # 14 * 7,000 <= 100,000 < 15 * 7,000
    assert (await ledger.status()).reserved_usd_micros == 98_000


async def test_a_crashed_callers_reservation_is_charged_at_its_worst_case_once_it_expires(ledger, clock):
    clock.now -= timedelta(hours=12)  # midday: the expiry must not cross midnight here
    lost = await ledger.reserve(60_000, subject="cloud call")  # the caller dies and never settles
    clock.now += timedelta(seconds=61)
    status = await ledger.status()
    assert (status.spent_usd_micros, status.reserved_usd_micros, status.expired_charged_usd_micros) == (
        60_000,
        0,
        60_000,
    )
    await ledger.settle(lost, 10)  # a late settle (the caller was only stuck) counts nothing more
    await ledger.release(lost)
    assert (await ledger.status()).spent_usd_micros == 60_000
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(40_001, subject="cloud call")


async def test_a_settle_above_its_reservation_is_counted_and_recorded(ledger):
    reservation = await ledger.reserve(1_000, subject="cloud call")
    assert await ledger.settle(reservation, 1_500) == 500
    status = await ledger.status()
    assert (status.spent_usd_micros, status.over_reservation_usd_micros) == (1_500, 500)


async def test_a_scope_refuses_past_its_own_limit_and_the_pool_claims_nothing_then(ledger):
    trainer = Scope("trainer", 50_000)
    first = await ledger.reserve(30_000, subject="a run", scopes=[trainer])
    with pytest.raises(BudgetExceeded) as caught:
        await ledger.reserve(30_000, subject="a run", scopes=[trainer])
    assert (caught.value.metadata["scope"], caught.value.metadata["limit_usd_micros"]) == ("trainer", "50000")
    await ledger.reserve(70_000, subject="cloud call")  # the rest of the pool is still there for others
    await ledger.settle(first, 20_000)
    status = await ledger.status(["trainer"])
    assert status.scopes == {"trainer": (20_000, 0)} and (status.spent_usd_micros, status.reserved_usd_micros) == (
        20_000,
        70_000,
    )


async def test_concurrent_reservations_never_exceed_a_scope_nor_the_pool(ledger):
    scopes = [Scope("key:a", 20_000), Scope("key:b", 45_000)]

    async def try_reserve(scope):
        try:
            return await ledger.reserve(7_000, subject="cloud call", scopes=[scope])
        except BudgetExceeded:
            return None

    granted = await asyncio.gather(*(try_reserve(scopes[i % 3 % 2]) for i in range(90)))
    status = await ledger.status(["key:a", "key:b"])
    assert status.scopes == {"key:a": (0, 14_000), "key:b": (0, 42_000)}  # 2 and 6 of 7,000 fit
    assert sum(1 for r in granted if r) == 8 and status.reserved_usd_micros == 56_000


async def test_spend_and_reservations_reset_at_midnight_utc(ledger, clock):
    settled = await ledger.reserve(60_000, subject="cloud call")
    await ledger.settle(settled, 60_000)
    await ledger.reserve(40_000, subject="cloud call")
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(1, subject="cloud call")
    clock.now += timedelta(minutes=1)  # 00:00 UTC
    status = await ledger.status()
    assert (status.day, status.spent_usd_micros, status.reserved_usd_micros) == ("2026-11-26", 0, 0)
    assert status.resets_at == datetime(2026, 11, 27, tzinfo=UTC)
    await ledger.reserve(100_000, subject="cloud call")


async def test_a_past_days_request_scopes_are_dropped_and_its_money_kept(ledger, clock, redis_client, prefix):
    first = await ledger.reserve(1_000, subject="cloud call", scopes=[Scope.for_request("r1:abc", 20_000)])
    await ledger.settle(first, 700)
    clock.now += timedelta(minutes=1)  # 00:00 UTC: the next day's first reservation tidies the last one's
    await ledger.reserve(1, subject="cloud call")
    totals = await redis_client.hgetall(f"{prefix}budget:2026-11-25")
    assert totals[b"spent"] == b"700" and not [f for f in totals if f.startswith(b"request:")]
