"""What each head and track should serve, shared by every head replica: the record an adapter switch writes
and every head converges to.

An adapter switch (HeadService.LoadAdapter) reaches one head replica through Envoy; that head loads the adapter,
then records the switch here. Every head reads the record every SPIRAL_HEAD_ADAPTER_SYNC_S and switches the
slots that differ (pulling the file first where it has to), and a head that starts later begins from it. One
Redis hash, `<prefix>adapters:serving`: field `<head>/<track>` (as in run/<profile>/head-serving.json), value
the adapter version ("" for the base model).
"""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis


class ServingRecord(Protocol):
    async def desired(self) -> dict[str, str]:
        """What each "head/track" should serve ({} when nothing was ever switched)."""
        ...

    async def record(self, serving: dict[str, str]) -> None:
        """Note that these "head/track" slots now serve these versions."""
        ...


class RedisServingRecord:
    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}adapters:serving"

    async def desired(self) -> dict[str, str]:
        raw = await self._redis.hgetall(self._key)  # type: ignore[misc]
        return {_text(k): _text(v) for k, v in raw.items()}

    async def record(self, serving: dict[str, str]) -> None:
        if serving:
            await self._redis.hset(self._key, mapping=dict(serving))  # type: ignore[misc,arg-type]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
