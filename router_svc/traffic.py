"""The traffic log: every exchange (and, later, its feedback) appended to a bounded Redis stream.

The miner and the trainer read it. An exchange is one JSON document under the field `exchange`;
feedback is its own entry (kind=feedback) naming the answer it rates, so the stream stays append-only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis

from spiral_common.errors import InvalidArgument, NotFound

ANSWER_INDEX_TTL_S = 7 * 24 * 3600  # feedback is accepted for a week after the answer


@dataclass
class Exchange:
    answer_id: str
    request_id: str
    router_instance: str
    model: str
    messages: list[dict[str, str]]
    params: dict[str, Any]
    tier: str
    answer: str
    finish_reason: str
    teacher_answer: str = ""  # the cloud's answer, when the cloud answered
    teacher: str = ""  # the provider (or "council:<head>") the teacher answer came from
    cost_usd_micros: int = 0
    latencies_us: dict[str, int] = field(default_factory=dict)
    adapter_version: str = ""
    ts_ms: int = 0
    pattern_id: str = ""  # the mined pattern that answered (tier "pattern"), for its feedback


def single_turn(messages: Any) -> str | None:
    """The user's text when a logged conversation is one user turn (after optional system turns), else None."""
    if not isinstance(messages, list):
        return None
    turns = [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    if len(turns) != 1 or turns[0].get("role") != "user" or not str(turns[0].get("content", "")).strip():
        return None
    return str(turns[0]["content"]).strip()


def teacher_answer(exchange: dict[str, Any]) -> tuple[str, str] | None:
    """(answer, teacher) when a logged exchange teaches: the cloud's answer, else a council winner's; only an
    answer that ended naturally (a truncated one would teach truncation). The miner and the trainer learn
    from exactly these; a head's lone answer is the student's own."""
    if exchange.get("finish_reason", "stop") != "stop":
        return None
    if exchange.get("teacher_answer"):
        return str(exchange["teacher_answer"]), str(exchange.get("teacher") or "cloud")
    if exchange.get("tier") == "council" and exchange.get("answer"):
        return str(exchange["answer"]), str(exchange.get("teacher") or "council")
    return None


class TrafficLog:
    def __init__(self, redis: Redis, *, prefix: str, max_entries: int) -> None:
        self.redis = redis
        self.stream = f"{prefix}traffic"
        self.index_prefix = f"{prefix}answer:"
        self.max_entries = max_entries

    async def append(self, exchange: Exchange) -> None:
        exchange.ts_ms = exchange.ts_ms or int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                self.stream,
                {"kind": "exchange", "answer_id": exchange.answer_id, "exchange": json.dumps(asdict(exchange))},
                maxlen=self.max_entries,
                approximate=True,
            )
            pipe.set(self.index_prefix + exchange.answer_id, exchange.router_instance, ex=ANSWER_INDEX_TTL_S)
            await pipe.execute()

    async def feedback(self, answer_id: str, rating: str, comment: str) -> str:
        """Record a rating; returns the router instance that gave the answer (for the canary's numbers)."""
        if rating not in ("good", "bad"):
            raise InvalidArgument("rating must be good or bad", reason="INVALID_RATING", field="rating")
        if len(comment) > 2000:
            raise InvalidArgument("comment is over 2,000 characters", reason="COMMENT_TOO_LONG", field="comment")
        answered_by = await self.redis.get(self.index_prefix + answer_id) if answer_id else None
        if answered_by is None:
            raise NotFound(f"no answer {answer_id!r} in the traffic log", reason="ANSWER_NOT_FOUND", field="answer_id")
        await self.redis.xadd(
            self.stream,
            {
                "kind": "feedback",
                "answer_id": answer_id,
                "rating": rating,
                "comment": comment,
                "ts_ms": str(int(time.time() * 1000)),
            },
            maxlen=self.max_entries,
            approximate=True,
        )
        return answered_by.decode() if isinstance(answered_by, bytes) else answered_by
