"""Client API keys: who calls the client APIs (the gateway's routes, the routers' RouterService) and with what limits.

A key is `sk-spiral-<key id>.<secret>`: the key id (8 random bytes, hex) finds the key's record in one Redis
read; the secret is 32 random bytes. Only the SHA-256 of the whole key is stored, and compared in constant
time. A plain hash is enough (no bcrypt or scrypt) because the secret has 256 bits of entropy: there is no
dictionary to try, and a fast hash keeps every request's check to microseconds. The secret is printed once,
at creation, and never stored, logged or listed.

Each key has its limits: a daily cloud budget carved out of the pool (a ledger scope, reserved in the same
atomic step as the pool: `spiral_common.budget.Scope.for_key`), a request rate (a token bucket in Redis
shared by both routers, `KeyRateLimiter`), and the models it may ask for. With `SPIRAL_CLIENT_AUTH=off` a call
without a key runs as the principal `local` (no limits but the pool's); with `keys` it is refused.

Revocation takes effect within `CACHE_TTL_S` seconds: a router keeps each key's record for that long.
Records carry no TTL: Redis's volatile-lru eviction can drop cache entries, never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

from spiral_common.auth import matches, presented_token
from spiral_common.budget import Scope
from spiral_common.errors import InvalidArgument, KeyRateLimited, PermissionDenied, Unauthenticated
from spiral_common.redis_values import as_text

log = logging.getLogger(__name__)

KEY_PREFIX = "sk-spiral-"
LOCAL = "local"  # the principal of a call without a key when client auth is off; no key may take the name
CACHE_TTL_S = 5.0  # a router trusts a key's record this long: revocation and new limits apply within it
CACHE_MAX_ENTRIES = 10_000
REQUESTS_TTL_S = 2 * 24 * 3600  # a day's request counts are kept two days
DAY_S = 24 * 3600  # POSIX time has no leap seconds: a UTC day starts at a multiple of this
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODES = ("keys", "off")


@dataclass(frozen=True)
class ApiKey:
    """A client's identity and limits (never its secret)."""

    name: str
    daily_usd_micros: int | None = None  # the day's cloud budget; None: uncapped (the pool still applies)
    rps: int = 0  # sustained requests per second, with a burst of one second's worth; 0: no rate limit
    models: tuple[str, ...] = ()  # the models it may ask for; empty: every model served
    created_ms: int = 0
    key_id: str = ""

    @property
    def scope(self) -> Scope:
        """Its budget scope in the ledger: counted for every key, capped for a key with a daily budget."""
        return Scope.for_key(self.name, self.daily_usd_micros)

    def check_model(self, model: str) -> None:
        """PermissionDenied (MODEL_NOT_ALLOWED) unless the key may ask for `model`."""
        if self.models and model not in self.models:
            raise PermissionDenied(
                f"API key {self.name!r} may not use model {model!r}; it may use: {', '.join(self.models)}",
                reason="MODEL_NOT_ALLOWED",
                field="model",
                api_key=self.name,
            )


LOCAL_PRINCIPAL = ApiKey(LOCAL)


@dataclass(frozen=True)
class Principal:
    """Who made a call: a key (or `local`), or the operator with the admin token (feedback only)."""

    key: ApiKey
    admin: bool = False


def digest(token: str) -> str:
    """The stored form of a key: SHA-256 of the whole key, hex (see the module's docstring for why SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def key_id_of(token: str) -> str:
    """The key id of a Spiral key ("" for anything that is not one)."""
    if not token.startswith(KEY_PREFIX):
        return ""
    key_id, dot, secret = token[len(KEY_PREFIX) :].partition(".")
    return key_id if dot and secret and re.fullmatch(r"[0-9a-f]{16}", key_id) else ""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name in (LOCAL, "admin"):
        raise InvalidArgument(
            f"API key name {name!r}: 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit), "
            f"not {LOCAL!r} or 'admin'",
            reason="INVALID_KEY_NAME",
            field="name",
        )
    return name


# KEYS: the record, the names hash. ARGV: name, key id, then the record's field/value pairs. 0: the name is taken.
_CREATE = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""
# KEYS: the names hash. ARGV: the record key prefix, name. 0: no such key.
_REVOKE = """
local key_id = redis.call('HGET', KEYS[1], ARGV[2])
if not key_id then return 0 end
redis.call('DEL', ARGV[1] .. key_id)
redis.call('HDEL', KEYS[1], ARGV[2])
return 1
"""


def _record(key: ApiKey, hashed: str) -> dict[str, str]:
    return {
        "name": key.name,
        "sha256": hashed,
        "daily_usd_micros": "" if key.daily_usd_micros is None else str(key.daily_usd_micros),
        "rps": str(key.rps),
        "models": ",".join(key.models),
        "created_ms": str(key.created_ms),
    }


def _from_record(key_id: str, fields: dict[str, str]) -> ApiKey:
    daily = fields.get("daily_usd_micros", "")
    return ApiKey(
        name=fields["name"],
        daily_usd_micros=int(daily) if daily else None,
        rps=int(fields.get("rps") or 0),
        models=tuple(m for m in fields.get("models", "").split(",") if m),
        created_ms=int(fields.get("created_ms") or 0),
        key_id=key_id,
    )


class ApiKeyStore:
    """The keys in Redis: `<prefix>apikey:<key id>` (a hash: name, sha256, limits) and `<prefix>apikeys`
    (name -> key id, for listing and revoking by name)."""

    def __init__(self, redis: Redis, *, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.record_prefix = f"{prefix}apikey:"
        self.names = f"{prefix}apikeys"
        self.requests_prefix = f"{prefix}apikey_requests:"
        self.clock = clock
        self._create = redis.register_script(_CREATE)
        self._revoke = redis.register_script(_REVOKE)

    async def create(
        self, name: str, *, daily_usd_micros: int | None = None, rps: int = 0, models: Sequence[str] = ()
    ) -> tuple[ApiKey, str]:
        """A new key and its secret form (shown once); InvalidArgument for a bad or taken name or limit."""
        check_name(name)
        if daily_usd_micros is not None and daily_usd_micros < 0 or rps < 0:
            raise InvalidArgument("limits cannot be negative", reason="INVALID_KEY_LIMIT")
        key_id = secrets.token_hex(8)
        token = f"{KEY_PREFIX}{key_id}.{secrets.token_urlsafe(32)}"
        key = ApiKey(
            name, daily_usd_micros, rps, tuple(m.strip() for m in models if m.strip()), int(self.clock() * 1000), key_id
        )
        pairs = [item for pair in _record(key, digest(token)).items() for item in pair]
        if not await self._create(keys=[self.record_prefix + key_id, self.names], args=[name, key_id, *pairs]):
            raise InvalidArgument(f"an API key named {name!r} exists already", reason="KEY_EXISTS", field="name")
        return key, token

    async def revoke(self, name: str) -> bool:
        """Delete the key named `name` (False when there is none); routers stop accepting it within CACHE_TTL_S."""
        return bool(await self._revoke(keys=[self.names], args=[self.record_prefix, name]))

    async def list(self) -> list[ApiKey]:
        """Every key, by name."""
        ids = {as_text(k): as_text(v) for k, v in (await self.redis.hgetall(self.names)).items()}
        async with self.redis.pipeline(transaction=False) as pipe:
            for key_id in ids.values():
                pipe.hgetall(self.record_prefix + key_id)
            records = await pipe.execute()
        keys = [
            _from_record(key_id, {as_text(k): as_text(v) for k, v in record.items()})
            for key_id, record in zip(ids.values(), records, strict=True)
            if record
        ]
        return sorted(keys, key=lambda k: k.name)

    async def lookup(self, token: str) -> tuple[ApiKey, str] | None:
        """The key and its stored digest for a token's key id (None: no such key). The caller compares."""
        key_id = key_id_of(token)
        if not key_id:
            return None
        raw = await self.redis.hgetall(self.record_prefix + key_id)
        if not raw:
            return None
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        return _from_record(key_id, fields), fields.get("sha256", "")

    def requests_key(self, day: str) -> str:
        return f"{self.requests_prefix}{day}"

    async def requests_on(self, day: str) -> dict[str, int]:
        """Requests admitted on `day` (YYYY-MM-DD, UTC), by key name."""
        raw = await self.redis.hgetall(self.requests_key(day))
        return {as_text(k): int(v) for k, v in raw.items()}


def utc_day(now_s: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now_s is None else now_s, UTC).strftime("%Y-%m-%d")


class ClientAuth:
    """Says who a call is from, from its `authorization: Bearer <key>` metadata, with each key's record cached
    for CACHE_TTL_S (a key revoked or changed is seen within that long)."""

    def __init__(
        self,
        store: ApiKeyStore,
        *,
        mode: str,
        admin_token: str = "",
        ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"client auth mode {mode!r}: expected one of {', '.join(MODES)}")
        self.store = store
        self.mode = mode
        self.admin_token = admin_token
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, tuple[ApiKey, str] | None]] = {}

    async def _lookup(self, token: str) -> tuple[ApiKey, str] | None:
        key_id = key_id_of(token)
        now = self.clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = await self.store.lookup(token)
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()  # unknown ids sent in bulk cannot grow the cache past its bound
        self._cache[key_id] = (now + self.ttl_s, found)
        return found

    async def authenticate(self, token: str) -> ApiKey | None:
        """The key `token` is (None when it is not a valid key), compared in constant time."""
        if not key_id_of(token):
            return None
        found = await self._lookup(token)  # the key id is not a secret: only the comparison below must not leak
        if found is None:
            return None
        key, hashed = found
        return key if hmac.compare_digest(digest(token), hashed) else None

    async def principal(
        self, metadata: Iterable[tuple[str, str | bytes]] | None, *, admin_ok: bool = False
    ) -> Principal:
        """The caller of a client RPC; Unauthenticated (BAD_API_KEY) for a bad key, or for none when keys are
        required. `admin_ok`: the admin token is accepted too (rating any answer); it is never a client key."""
        token = presented_token(metadata)
        if admin_ok and matches(token, self.admin_token):
            return Principal(LOCAL_PRINCIPAL, admin=True)
        if key_id_of(token):
            key = await self.authenticate(token)
            if key is None:
                raise Unauthenticated("the API key is not valid (unknown, revoked or mistyped)", reason="BAD_API_KEY")
            return Principal(key)
        if self.mode == "keys":
            raise Unauthenticated(
                "this platform needs a client API key: `authorization: Bearer sk-spiral-...` "
                "(an operator creates one with `make api-key NAME=<name>`)",
                reason="BAD_API_KEY",
            )
        return Principal(LOCAL_PRINCIPAL)  # auth off: no key (or another kind of token) runs as `local`


# A GCRA token bucket per key (one Redis string: the theoretical arrival time, µs), shared by both routers, and
# the day's admitted requests per key in the same step. Redis's clock (TIME) is the one clock both routers share.
# KEYS: the key's bucket, today's request counts. ARGV: emission interval µs (0: no limit), burst, key name, the
# counts' TTL (s).
# Returns {admitted, retry_after_us}.
_ADMIT = """
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if interval > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) + interval
  local over = tat - now - interval * burst
  if over > 0 then return {0, over} end
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {1, 0}
"""


# How often a router adds the requests it counted in memory (keys without a rate) to Redis's day counts.
COUNT_FLUSH_INTERVAL_S = 1.0


class RequestCounts:
    """The day's requests of keys without a rate, counted in memory and added to Redis's day counts in one
    pipelined step every `interval_s` (off the reply path: a request costs a dict update, not a round trip).

    `flush` writes what was counted so far (`ListApiKeys` calls it first, so a router's own counts are exact
    there; another router's arrive within `interval_s`). `close` stops the writer and flushes (the router calls
    it on SIGTERM, after its last call), so a graceful stop loses no count. Counts a failed write could not add
    are kept for the next one."""

    def __init__(self, redis: Redis, store: ApiKeyStore, *, interval_s: float = COUNT_FLUSH_INTERVAL_S) -> None:
        self.redis = redis
        self.store = store
        self.interval_s = interval_s
        self._counts: dict[tuple[str, str], int] = {}  # (day, key name) -> requests not yet in Redis
        self._day_number, self._day = -1.0, ""
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def count(self, name: str) -> None:
        """One request of the key `name`, today (UTC)."""
        now = time.time()
        if now // DAY_S != self._day_number:  # the day's name is formatted once a day, not once a request
            self._day_number, self._day = now // DAY_S, utc_day(now)
        key = (self._day, name)
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="key-request-counts")

    @property
    def pending(self) -> int:
        """Requests counted and not yet in Redis."""
        return sum(self._counts.values())

    async def flush(self) -> None:
        """Add every count so far to Redis (one pipeline); on failure the counts are kept and the error raised."""
        async with self._lock:  # one write at a time: a count is never added twice or left behind
            counts, self._counts = self._counts, {}
            if counts:
                # A caller that goes away (a cancelled ListApiKeys) does not cut the write short: counts Redis
                # took but the caller saw fail would be kept and added again. Nor does it let go of the lock
                # before the write ends: a close() right after it would find nothing left and return while the
                # counts were still on their way (a stop could lose them).
                write = asyncio.ensure_future(self._write(counts))
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await asyncio.wait([write])
                    if not write.cancelled():
                        write.exception()  # retrieved: a failed write kept its counts, the caller is gone
                    raise

    async def _write(self, counts: dict[tuple[str, str], int]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (day, name), n in counts.items():
                    pipe.hincrby(self.store.requests_key(day), name, n)
                for day in {day for day, _ in counts}:
                    pipe.expire(self.store.requests_key(day), REQUESTS_TTL_S)
                await pipe.execute()
        except Exception:
            for key, n in counts.items():
                self._counts[key] = self._counts.get(key, 0) + n
            raise

    async def close(self) -> None:
        """Stop the periodic writer, then write what is left."""
        if self._writer is not None:
            # Not in the middle of a write: one Redis applied but the writer saw cancelled would be added again.
            async with self._lock:
                self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except Exception:  # kept for the next flush; the writer must outlive a Redis outage
                log.warning("key request counts not written; kept for the next try", exc_info=True)


class KeyRateLimiter:
    """Each key's request rate, enforced across both routers; and the count of each key's requests today.

    A Lua token bucket in the Redis every router already uses, rather than a library: it is one atomic step
    (the check, the bucket and the day's count), it needs no new dependency, and both routers see one bucket.
    A key without a rate (and `local`) has nothing to check: its request is counted in memory (`counts`) and
    costs no round trip."""

    def __init__(self, redis: Redis, store: ApiKeyStore, *, prefix: str, counts: RequestCounts | None = None) -> None:
        self.store = store
        self.bucket_prefix = f"{prefix}apikey_rate:"
        self.counts = counts or RequestCounts(redis, store)
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, key: ApiKey) -> None:
        """Count the request, or raise KeyRateLimited (with the time to wait) when the key is over its rate."""
        if not key.rps:
            self.counts.count(key.name)
            return
        admitted, retry_us = await self._admit(
            keys=[self.bucket_prefix + key.name, self.store.requests_key(utc_day())],
            args=[1_000_000 // key.rps, key.rps, key.name, REQUESTS_TTL_S],
        )
        if not admitted:
            retry_after_ms = max(-(-int(retry_us) // 1000), 1)
            raise KeyRateLimited(
                f"API key {key.name!r} is over its rate of {key.rps} requests per second; retry in {retry_after_ms} ms",
                retry_after_ms=retry_after_ms,
                api_key=key.name,
                rps=str(key.rps),
            )
