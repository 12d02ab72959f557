"""Client API keys: stored hashed, found by key id, revoked within the cache's TTL, rate-limited, and their
budget scope reserved with the pool in one step (real Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from spiral_common.api_keys import (
    LOCAL,
    LOCAL_PRINCIPAL,
    REQUESTS_TTL_S,
    ApiKeyStore,
    ClientAuth,
    KeyRateLimiter,
    RequestCounts,
    digest,
    key_id_of,
    utc_day,
)
from spiral_common.auth import bearer
from spiral_common.budget import NO_LIMIT, BudgetLedger, Scope
from spiral_common.errors import BudgetExceeded, InvalidArgument, KeyRateLimited, PermissionDenied, Unauthenticated
from tests.helpers import free_ports, wait_until_async


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(redis_client, prefix):
    return ApiKeyStore(redis_client, prefix=prefix)


async def test_a_key_is_stored_as_its_hash_only_and_found_by_its_id(store, redis_client, prefix):
    key, token = await store.create("alice", daily_usd_micros=5_000, rps=3, models=["spiral"])
    assert token.startswith("sk-spiral-") and key_id_of(token) == key.key_id
    dump = b"".join(k + v for k, v in (await redis_client.hgetall(f"{prefix}apikey:{key.key_id}")).items())
    assert token.encode() not in dump and token.split(".", 1)[1].encode() not in dump
    assert digest(token).encode() in dump
    auth = ClientAuth(store, mode="keys")
    found = await auth.authenticate(token)
    assert found is not None and (found.name, found.daily_usd_micros, found.rps, found.models) == (
        "alice",
        5_000,
        3,
        ("spiral",),
    )
    assert await auth.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None  # one character off
    assert [k.name for k in await store.list()] == ["alice"]


async def test_names_are_unique_and_local_is_reserved(store):
    await store.create("alice")
    with pytest.raises(InvalidArgument, match="exists already"):
        await store.create("alice")
    for bad in (LOCAL, "admin", "", "has space", "x" * 65):
        with pytest.raises(InvalidArgument):
            await store.create(bad)


async def test_a_revoked_key_is_refused_once_the_cache_lapses(store):
    _, token = await store.create("alice")
    clock = Clock()
    auth = ClientAuth(store, mode="keys", ttl_s=5, clock=clock)
    assert (await auth.principal(bearer(token))).key.name == "alice"
    assert await store.revoke("alice") and not await store.revoke("alice")
    clock.now += 4.9
    assert (await auth.principal(bearer(token))).key.name == "alice"  # cached: within the documented bound
    clock.now += 0.2
    with pytest.raises(Unauthenticated) as refused:
        await auth.principal(bearer(token))
    assert refused.value.reason == "BAD_API_KEY"


async def test_without_a_key_keys_mode_refuses_and_off_mode_runs_as_local(store):
    _, token = await store.create("bob")
    with pytest.raises(Unauthenticated):
        await ClientAuth(store, mode="keys").principal(())
    off = ClientAuth(store, mode="off", admin_token="admin-secret")
    assert (await off.principal(())).key.name == LOCAL
    assert (await off.principal(bearer("sk-openai-whatever"))).key.name == LOCAL  # not a Spiral key: ignored
    assert (await off.principal(bearer(token))).key.name == "bob"  # a key still brings its identity
    with pytest.raises(Unauthenticated):
        await off.principal(bearer("sk-spiral-0123456789abcdef.wrong"))  # a Spiral key that is not valid
    # The admin token is not a client key; it is accepted only where asked (rating any answer).
    assert (await off.principal(bearer("admin-secret"))).key.name == LOCAL
    assert (await off.principal(bearer("admin-secret"), admin_ok=True)).admin
    with pytest.raises(Unauthenticated):
        await ClientAuth(store, mode="keys", admin_token="admin-secret").principal(bearer("admin-secret"))


async def test_a_key_may_use_only_its_models(store):
    key, _ = await store.create("carol", models=["spiral"])
    key.check_model("spiral")
    with pytest.raises(PermissionDenied) as refused:
        key.check_model("gpt-9")
    assert refused.value.reason == "MODEL_NOT_ALLOWED" and refused.value.metadata["api_key"] == "carol"


async def test_a_key_over_its_rate_waits_and_its_requests_are_counted(store, redis_client, prefix):
    key, _ = await store.create("dave", rps=2)
    limiter = KeyRateLimiter(redis_client, store, prefix=prefix)
    await limiter.admit(key)
    await limiter.admit(key)  # a burst of one second's worth
    with pytest.raises(KeyRateLimited) as refused:
        await limiter.admit(key)
    assert refused.value.reason == "KEY_RATE_LIMITED" and 1 <= refused.value.retry_after_ms <= 500
    unlimited, _ = await store.create("erin")
    for _ in range(50):
        await limiter.admit(unlimited)
    await limiter.counts.close()  # a key without a rate is counted in memory, written out on close
    assert await store.requests_on(utc_day()) == {"dave": 2, "erin": 50}


async def test_a_key_without_a_rate_costs_no_round_trip_and_its_counts_are_written_in_one_batch(
    store, redis_client, prefix
):
    counts = RequestCounts(redis_client, store, interval_s=3600)  # no periodic write in this test
    limiter = KeyRateLimiter(redis_client, store, prefix=prefix, counts=counts)
    unlimited, _ = await store.create("erin")
    for _ in range(20):
        await limiter.admit(unlimited)
        await limiter.admit(LOCAL_PRINCIPAL)
    assert counts.pending == 40 and await store.requests_on(utc_day()) == {}
    await counts.flush()
    assert counts.pending == 0 and await store.requests_on(utc_day()) == {"erin": 20, LOCAL: 20}
    assert 0 < await redis_client.ttl(store.requests_key(utc_day())) <= REQUESTS_TTL_S
    await counts.close()


async def test_counts_are_written_every_interval_and_kept_when_redis_is_down(store, redis_client):
    down = Redis(host="127.0.0.1", port=free_ports(1)[0], socket_connect_timeout=0.5)
    counts = RequestCounts(down, store, interval_s=0.05)
    for _ in range(5):
        counts.count("frank")
    with pytest.raises(RedisError):
        await counts.flush()
    assert counts.pending == 5  # nothing lost: the next write adds them
    counts.redis = redis_client
    counts.count("frank")
    await wait_until_async(lambda: store.requests_on(utc_day()), 5, "the periodic write")
    assert await store.requests_on(utc_day()) == {"frank": 6} and counts.pending == 0
    await counts.close()
    await down.aclose()


@pytest.fixture
def ledger(redis_client, prefix):
    return BudgetLedger(
        redis_client,
        prefix=prefix,
        pool_usd_micros=10_000,
        reservation_ttl_s=60,
        clock=lambda: datetime(2026, 11, 28, 12, tzinfo=UTC),
    )


async def test_a_keys_budget_is_reserved_with_the_pool_and_refused_naming_the_key(ledger):
    capped = Scope.for_key("alice", 3_000)
    first = await ledger.reserve(2_000, subject="a call", scopes=[capped])
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(1_500, subject="a call", scopes=[capped])
    assert refused.value.reason == "KEY_BUDGET_EXCEEDED" and refused.value.subject == "api_key:alice"
    status = await ledger.status(["key:alice"])
    assert (status.reserved_usd_micros, status.scopes["key:alice"]) == (2_000, (0, 2_000))  # nothing claimed
    await ledger.settle(first, 1_200)
    await ledger.reserve(1_800, subject="a call", scopes=[capped])  # 1,200 spent + 1,800 = the key's 3,000
    status = await ledger.status(["key:alice"])
    assert status.scopes["key:alice"] == (1_200, 1_800)


async def test_an_uncapped_key_is_counted_but_only_the_pool_limits_it(ledger):
    uncapped = Scope.for_key("bob", None)
    assert uncapped.limit_usd_micros == NO_LIMIT
    reservation = await ledger.reserve(9_000, subject="a call", scopes=[uncapped])
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve(1_001, subject="a call", scopes=[uncapped])
    assert refused.value.reason == "BUDGET_EXCEEDED" and refused.value.subject == "daily_pool"
    await ledger.settle(reservation, 8_000)
    assert (await ledger.status(["key:bob"])).scopes["key:bob"] == (8_000, 0)


async def test_closing_while_the_writer_writes_adds_every_count_once(store, redis_client):
    counts = RequestCounts(redis_client, store, interval_s=0)  # the writer writes all the time
    for i in range(200):
        counts.count("gina")
        if i % 7 == 0:
            await asyncio.sleep(0)  # let the writer start a write now and then
    await counts.close()
    assert await store.requests_on(utc_day()) == {"gina": 200} and counts.pending == 0


async def test_a_write_whose_caller_goes_away_still_adds_every_count_once(store, redis_client):
    counts = RequestCounts(redis_client, store, interval_s=3600)
    for _ in range(50):
        counts.count("hana")
    caller = asyncio.create_task(counts.flush())  # a ListApiKeys whose client then goes away
    await asyncio.sleep(0.001)
    caller.cancel()
    await counts.close()
    assert await store.requests_on(utc_day()) == {"hana": 50} and counts.pending == 0
