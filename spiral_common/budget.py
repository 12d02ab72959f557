"""The daily cloud-and-training budget: integer micro-dollars in Redis, shared by every router and the trainer.

Every spend is reserved at its worst case before the money can be spent (one Lua script, atomic
across processes), then settled with the real cost, or released. A reservation carries an expiry,
so a process that crashes mid-call frees its share. Keys are per UTC day: at 00:00 UTC both the
spend and the outstanding reservations start from zero. The keys carry no TTL on purpose: Redis
evicts only keys with a TTL (volatile-lru), so memory pressure can drop cache entries, never money.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from spiral_common.errors import BudgetExceeded

# Drops the reservations that expired by ARGV[1] (now, ms) from the totals. KEYS: totals hash (spent,
# reserved), reservation expiries (zset), reservation amounts (hash).
_PURGE_EXPIRED = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(expired) do
  local amount = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('HINCRBY', KEYS[1], 'reserved', -amount)
  redis.call('HDEL', KEYS[3], id)
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
"""

# ARGV: now_ms, amount, reservation id, expires_at_ms, pool
_RESERVE = (
    _PURGE_EXPIRED
    + """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[2])
if spent + reserved + amount > tonumber(ARGV[5]) then
  return {0, spent, reserved}
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HSET', KEYS[3], ARGV[3], amount)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {1, spent, reserved + amount}
"""
)

# KEYS: as above. ARGV: reservation id, actual cost (-1 to release without spending)
_SETTLE = """
local amount = redis.call('HGET', KEYS[3], ARGV[1])
if amount then
  redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(amount))
  redis.call('HDEL', KEYS[3], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
local actual = tonumber(ARGV[2])
if actual > 0 then redis.call('HINCRBY', KEYS[1], 'spent', actual) end
return amount and 1 or 0
"""

# ARGV: now_ms. Returns {spent, reserved} after dropping expired reservations.
_STATUS = (
    _PURGE_EXPIRED
    + """
return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')}
"""
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Reservation:
    """A claim on today's pool; settle or release it exactly once."""

    reservation_id: str
    day: str
    amount_usd_micros: int


@dataclass(frozen=True)
class BudgetStatus:
    day: str
    pool_usd_micros: int
    spent_usd_micros: int
    reserved_usd_micros: int
    resets_at: datetime

    @property
    def remaining_usd_micros(self) -> int:
        return max(self.pool_usd_micros - self.spent_usd_micros - self.reserved_usd_micros, 0)


class BudgetLedger:
    """Reserve, settle and release spend against the daily pool."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        pool_usd_micros: int,
        reservation_ttl_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.pool_usd_micros = pool_usd_micros
        self.reservation_ttl_s = reservation_ttl_s
        self.clock = clock
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._status = redis.register_script(_STATUS)

    def _keys(self, day: str) -> list[str]:
        base = f"{self.prefix}budget:{day}"
        return [base, f"{base}:expiries", f"{base}:reservations"]

    def _day(self) -> tuple[str, int]:
        now = self.clock()
        return now.strftime("%Y-%m-%d"), int(now.timestamp() * 1000)

    async def reserve(self, amount_usd_micros: int, *, subject: str, ttl_s: float | None = None) -> Reservation:
        """Claim `amount` from today's pool, or raise BudgetExceeded (nothing is claimed then). The claim lapses
        after `ttl_s` (default: the ledger's) unless settled or released first."""
        day, now_ms = self._day()
        reservation = Reservation(uuid.uuid4().hex, day, amount_usd_micros)
        expires_ms = now_ms + int((self.reservation_ttl_s if ttl_s is None else ttl_s) * 1000)
        granted, spent, reserved = await self._reserve(
            keys=self._keys(day),
            args=[now_ms, amount_usd_micros, reservation.reservation_id, expires_ms, self.pool_usd_micros],
        )
        if not granted:
            raise BudgetExceeded(
                f"the daily pool of {self.pool_usd_micros} micro-USD has {self.pool_usd_micros - spent - reserved} "
                f"left ({spent} spent, {reserved} reserved); {subject} needs up to {amount_usd_micros}",
                subject="daily_pool",
                limit_usd_micros=self.pool_usd_micros,
                needed_usd_micros=str(amount_usd_micros),
                day=day,
            )
        return reservation

    async def settle(self, reservation: Reservation, actual_usd_micros: int) -> None:
        """Turn a reservation into real spend (the reservation is dropped, the actual cost counted)."""
        await self._settle(
            keys=self._keys(reservation.day), args=[reservation.reservation_id, max(actual_usd_micros, 0)]
        )

    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation without spending anything."""
        await self._settle(keys=self._keys(reservation.day), args=[reservation.reservation_id, -1])

    async def status(self) -> BudgetStatus:
        day, now_ms = self._day()
        spent, reserved = await self._status(keys=self._keys(day), args=[now_ms])
        tomorrow = (self.clock() + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return BudgetStatus(day, self.pool_usd_micros, int(spent), int(reserved), tomorrow)
