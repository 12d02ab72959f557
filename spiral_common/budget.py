"""The daily cloud-and-training budget: integer micro-dollars in Redis, shared by every router and the trainer.

Every spend is reserved at its worst case before the money can be spent (one Lua script, atomic
across processes), against the pool and, in the same step, against the scopes it belongs to (the trainer's
share, one client request's cap); then settled with the real cost, or released if the call never reached the
provider. A reservation carries an expiry: one whose process crashed or hung mid-call is charged at its worst
case, never released, since the provider may have billed it all. The ledger never under-counts.

Keys are per UTC day: at 00:00 UTC both the spend and the outstanding reservations start from zero. The keys
carry no TTL on purpose: Redis evicts only keys with a TTL (volatile-lru), so memory pressure can drop cache
entries, never money.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from spiral_common.errors import BudgetExceeded

# A reservation is stored as "amount|scope|scope...": the pool always, and the scopes it also counts against
# (a client key, the trainer, one client request), each with fields "<scope>:spent" and "<scope>:reserved" in
# the totals hash beside the pool's "spent" and "reserved".
_LIB = """
local function parse(record)
  local amount, scopes = nil, {}
  for part in string.gmatch(record, '[^|]+') do
    if amount == nil then amount = tonumber(part) else scopes[#scopes + 1] = part end
  end
  return amount, scopes
end
local function move(totals, scopes, reserved, spent)
  redis.call('HINCRBY', totals, 'reserved', reserved)
  if spent ~= 0 then redis.call('HINCRBY', totals, 'spent', spent) end
  for _, scope in ipairs(scopes) do
    redis.call('HINCRBY', totals, scope .. ':reserved', reserved)
    if spent ~= 0 then redis.call('HINCRBY', totals, scope .. ':spent', spent) end
  end
end
-- A reservation that expired belonged to a caller that died (or hung) mid-call: the provider may have billed
-- all of it, so it is charged at its worst case, never released. ARGV[1] is now, ms.
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(expired) do
  local record = redis.call('HGET', KEYS[3], id)
  if record then
    local amount, scopes = parse(record)
    move(KEYS[1], scopes, -amount, amount)
    redis.call('HINCRBY', KEYS[1], 'expired_charged', amount)
    redis.call('HDEL', KEYS[3], id)
  end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1]) end
local function total(field)
  return tonumber(redis.call('HGET', KEYS[1], field) or '0')
end
"""

# ARGV: now_ms, amount, reservation id, expires_at_ms, pool, then (scope, limit) pairs (a limit of -1: the scope
# only counts, as an uncapped client key's does). Returns {granted, the
# index of the limit that refused (0: the pool, n: the nth scope), spent, reserved} of that limit.
_RESERVE = (
    _LIB
    + """
local amount = tonumber(ARGV[2])
local spent, reserved = total('spent'), total('reserved')
if spent + reserved + amount > tonumber(ARGV[5]) then return {0, 0, spent, reserved} end
local scopes = {}
for i = 6, #ARGV, 2 do
  local scope = ARGV[i]
  local s_spent, s_reserved, limit = total(scope .. ':spent'), total(scope .. ':reserved'), tonumber(ARGV[i + 1])
  if limit >= 0 and s_spent + s_reserved + amount > limit then return {0, (i - 4) / 2, s_spent, s_reserved} end
  scopes[#scopes + 1] = scope
end
move(KEYS[1], scopes, amount, 0)
redis.call('HSET', KEYS[3], ARGV[3], table.concat({ARGV[2], unpack(scopes)}, '|'))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
return {1, 0, spent, reserved + amount}
"""
)

# ARGV: now_ms, reservation id, actual cost (-1 to release without spending). Returns {found, over}: over is
# what the actual cost went past the reservation (recorded in "over_reservation"). A reservation that is gone
# was settled already, or expired and was charged at its worst case: nothing more is counted.
_SETTLE = (
    _LIB
    + """
local record = redis.call('HGET', KEYS[3], ARGV[2])
if not record then return {0, 0} end
local amount, scopes = parse(record)
local actual = math.max(tonumber(ARGV[3]), 0)
move(KEYS[1], scopes, -amount, actual)
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
local over = math.max(actual - amount, 0)
if over > 0 then redis.call('HINCRBY', KEYS[1], 'over_reservation', over) end
return {1, over}
"""
)

# ARGV: now_ms, then scope names. Returns {spent, reserved, expired_charged, over_reservation, then each scope's
# spent and reserved} after charging expired reservations.
_STATUS = (
    _LIB
    + """
local out = {total('spent'), total('reserved'), total('expired_charged'), total('over_reservation')}
for i = 2, #ARGV do
  out[#out + 1] = total(ARGV[i] .. ':spent')
  out[#out + 1] = total(ARGV[i] .. ':reserved')
end
return out
"""
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Scope:
    """A limit inside the pool that a reservation also counts against, reserved in the same atomic step: the
    trainer's share, one client request's cap (all its provider attempts, on any router), a client key's."""

    name: str
    limit_usd_micros: int  # NO_LIMIT: the scope only counts what is reserved and spent in it
    subject: str = ""  # what a refusal names (QuotaFailure, metrics); empty: the name up to its first colon
    reason: str = "BUDGET_EXCEEDED"  # the refusal's reason

    def __post_init__(self) -> None:
        if not self.name or "|" in self.name or not self.name.isprintable():
            raise ValueError(f"bad budget scope name {self.name!r}")

    @classmethod
    def for_request(cls, key: str, cap_usd_micros: int) -> Scope:
        """One client request's cap (`key`: its id and digest); forgotten once its day is over."""
        return cls(f"{REQUEST_SCOPE_PREFIX}{key}", cap_usd_micros, subject="per_request_cap")

    @classmethod
    def for_key(cls, name: str, daily_usd_micros: int | None) -> Scope:
        """A client API key's share of the day (None: uncapped, only counted). A refusal is KEY_BUDGET_EXCEEDED
        and names the key (never its secret) as `api_key:<name>`."""
        limit = NO_LIMIT if daily_usd_micros is None else daily_usd_micros
        return cls(key_scope(name), limit, subject=f"api_key:{name}", reason="KEY_BUDGET_EXCEEDED")


NO_LIMIT = -1


def key_scope(name: str) -> str:
    """The ledger's scope of a client API key: fields "key:<name>:spent" and "key:<name>:reserved" of the day."""
    return f"key:{name}"


# Request scopes matter only while their request (and its retries) can still spend: a day's are dropped from its
# totals once the day is over and none of its reservations is still open (the pool's numbers stay).
REQUEST_SCOPE_PREFIX = "request:"


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
    # Charged at their worst case because their caller never settled them (it crashed or hung).
    expired_charged_usd_micros: int = 0
    # What settled costs went past their reservations: each one is a bug in the worst-case bound.
    over_reservation_usd_micros: int = 0
    # (spent, reserved) of each scope asked for.
    scopes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def remaining_usd_micros(self) -> int:
        return max(self.pool_usd_micros - self.spent_usd_micros - self.reserved_usd_micros, 0)


class BudgetLedger:
    """Reserve, settle and release spend against the daily pool and the scopes inside it."""

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
        self._tidied_day = ""  # the last day whose previous day's request scopes were dropped

    def _keys(self, day: str) -> list[str]:
        base = f"{self.prefix}budget:{day}"
        return [base, f"{base}:expiries", f"{base}:reservations"]

    def _day(self) -> tuple[str, int]:
        now = self.clock()
        return now.strftime("%Y-%m-%d"), int(now.timestamp() * 1000)

    async def reserve(
        self, amount_usd_micros: int, *, subject: str, ttl_s: float | None = None, scopes: Sequence[Scope] = ()
    ) -> Reservation:
        """Claim `amount` from today's pool and every scope, or raise BudgetExceeded naming the limit that
        refused (nothing is claimed then). The claim lapses after `ttl_s` (default: the ledger's) unless
        settled or released first; a lapsed claim is charged at its full amount."""
        day, now_ms = self._day()
        if day != self._tidied_day:
            await self._forget_request_scopes((self.clock() - timedelta(days=1)).strftime("%Y-%m-%d"))
            self._tidied_day = day
        reservation = Reservation(uuid.uuid4().hex, day, amount_usd_micros)
        expires_ms = now_ms + int((self.reservation_ttl_s if ttl_s is None else ttl_s) * 1000)
        limits = [item for scope in scopes for item in (scope.name, scope.limit_usd_micros)]
        granted, refused_by, spent, reserved = await self._reserve(
            keys=self._keys(day),
            args=[now_ms, amount_usd_micros, reservation.reservation_id, expires_ms, self.pool_usd_micros, *limits],
        )
        if not granted:
            reason = "BUDGET_EXCEEDED"
            if refused_by:
                scope = scopes[int(refused_by) - 1]
                name, limit, reason = scope.name, scope.limit_usd_micros, scope.reason
                limit_subject = scope.subject or name.split(":", 1)[0]
            else:
                name, limit, limit_subject = "daily_pool", self.pool_usd_micros, "daily_pool"
            raise BudgetExceeded(
                f"{'the daily pool' if not refused_by else name} of {limit} micro-USD has {limit - spent - reserved} "
                f"left ({spent} spent, {reserved} reserved); {subject} needs up to {amount_usd_micros}",
                subject=limit_subject,
                limit_usd_micros=limit,
                needed_usd_micros=str(amount_usd_micros),
                day=day,
                scope=name,
                reason=reason,
            )
        return reservation

    async def _forget_request_scopes(self, day: str) -> None:
        """Drop a past day's request scopes (two fields per cloud request), unless a reservation is still open."""
        totals, _, reservations = self._keys(day)
        if await self.redis.hlen(reservations):
            return
        fields = [field async for field, _ in self.redis.hscan_iter(totals, match=f"{REQUEST_SCOPE_PREFIX}*")]
        for start in range(0, len(fields), 500):
            await self.redis.hdel(totals, *fields[start : start + 500])

    async def settle(self, reservation: Reservation, actual_usd_micros: int) -> int:
        """Turn a reservation into real spend (the reservation is dropped, the actual cost counted). Returns
        what the cost went past the reservation (0 when within it), recorded in the ledger too."""
        _, now_ms = self._day()
        _, over = await self._settle(
            keys=self._keys(reservation.day), args=[now_ms, reservation.reservation_id, max(actual_usd_micros, 0)]
        )
        return int(over)

    async def release(self, reservation: Reservation) -> None:
        """Drop a reservation without spending anything: only for a call that never reached the provider."""
        _, now_ms = self._day()
        await self._settle(keys=self._keys(reservation.day), args=[now_ms, reservation.reservation_id, -1])

    async def status(self, scopes: Sequence[str] = ()) -> BudgetStatus:
        day, now_ms = self._day()
        values = [int(v) for v in await self._status(keys=self._keys(day), args=[now_ms, *scopes])]
        tomorrow = (self.clock() + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        per_scope = {name: (values[4 + 2 * i], values[5 + 2 * i]) for i, name in enumerate(scopes)}
        return BudgetStatus(day, self.pool_usd_micros, values[0], values[1], tomorrow, values[2], values[3], per_scope)
