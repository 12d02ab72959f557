"""The cache tier: answers in Redis, keyed by a SHA-256 over everything that changes an answer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from spiral_common.chat import ChatRequest

# One round trip: read the adapter version now serving this router's heads, then the entry of the
# request under that version. An adapter change therefore never serves an answer of the old one.
# KEYS[1]: adapter version key. ARGV[1]: entry key prefix, ARGV[2]: request digest. The version is nil (false)
# when the cache server does not have it (it restarted empty, or evicted it): no entry is read then.
_LOOKUP = """
local version = redis.call('GET', KEYS[1])
if not version then return {false, false} end
return {version, redis.call('GET', ARGV[1] .. version .. ':' .. ARGV[2])}
"""


@dataclass(frozen=True)
class CachedAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tier: str  # the tier that first produced it
    adapter_version: str


def request_digest(chat: ChatRequest) -> str:
    """SHA-256 over the normalised request: messages and every generation parameter, and the model."""
    canonical = {
        "messages": [[m.role, m.content] for m in chat.messages],
        "max_tokens": chat.max_tokens,
        "temperature": round(chat.temperature, 6),
        "top_p": round(chat.top_p, 6),
        "stop": list(chat.stop),
        "seed": chat.seed,
        "model": chat.model,
    }
    return hashlib.sha256(json.dumps(canonical, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
    """Exact-match answers with a TTL. Payloads are JSON (never pickle); errors are never stored.

    The answers live on the cache server (which may evict anything), beside a copy of the adapter versions
    their keys are made with; the versions themselves live on the state server (`versions`). A lookup that
    finds no copy reads the state server's version, puts the copy back (unless an adapter switch did first)
    and looks again: a router's first lookup after a start is not a miss for want of the copy."""

    def __init__(self, redis: Redis, *, prefix: str, track: str, ttl_s: int, versions: Redis | None = None) -> None:
        self.redis = redis
        self.versions = versions or redis
        self.entry_prefix = f"{prefix}cache:"
        self.version_key = f"{prefix}adapter_version:{track}"
        self.ttl_s = ttl_s
        self._lookup = redis.register_script(_LOOKUP)

    async def get(self, chat: ChatRequest) -> tuple[CachedAnswer | None, str, str]:
        """(the answer or None, the adapter version now serving, the entry key to store under)."""
        digest = request_digest(chat)
        version, raw = await self._lookup(keys=[self.version_key], args=[self.entry_prefix, digest])
        if version is None:  # the copy is gone (a fresh or evicted cache server): put it back, then look again
            authoritative = await self.versions.get(self.version_key) or b""
            await self.redis.set(self.version_key, authoritative, nx=True)  # unless an adapter switch did first
            version, raw = await self._lookup(keys=[self.version_key], args=[self.entry_prefix, digest])
            if version is None:  # evicted again at once: a miss, keyed by the authoritative version
                version, raw = authoritative, None
        version = version.decode() if isinstance(version, bytes) else version
        key = f"{self.entry_prefix}{version}:{digest}"
        return (CachedAnswer(**json.loads(raw)) if raw else None), version, key

    async def put(self, key: str, answer: CachedAnswer) -> None:
        await self.redis.set(key, json.dumps(asdict(answer)), ex=self.ttl_s)


class AdapterVersions:
    """The adapter version each track's heads serve, as the cache key reads it (`adapter_version:<track>`): on
    the state server, and its copy on the cache server (`cache`, when that is another server)."""

    def __init__(self, redis: Redis, *, prefix: str, cache: Redis | None = None) -> None:
        self.redis = redis
        self.cache = cache if cache is not None and cache is not redis else None
        self.prefix = prefix

    async def set(self, version: str, tracks: tuple[str, ...]) -> None:
        versions = {f"{self.prefix}adapter_version:{track}": version for track in tracks}
        await self.redis.mset(versions)
        if self.cache is not None:
            await self.cache.mset(versions)
