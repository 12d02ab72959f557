"""The traffic log: every answered exchange, and every rating of one, in a bounded Redis stream.

The routers write it; the miner and the trainer read it. This module is the one writer and the one reader:
an exchange is a `spiral.traffic.v1.TrafficExchange` message, serialised under the entry's field
`exchange_pb` (with `kind` = "exchange" and `answer_id` beside it, for readers that only look); a rating is
its own entry (`kind` = "feedback") naming the answer it rates, so the stream stays append-only. Entries
written before the message existed carry a JSON object under `exchange`; `exchange_from_json` reads them
(the one migration path), as `schema_version` 0.

The stream is bounded by count, age and bytes (`TrafficBounds`), and stores compact bytes: the message's
strings are plain UTF-8 in protobuf's binary form, a rating's fields plain UTF-8 (no JSON, no \\u escapes).
The routers append off the reply path, through a bounded queue one writer drains (`TrafficLog.submit`).

Which exchanges teach is decided once, by the router when it writes (`teaches`), from the tier that
answered: see `spiral_common.enums.TEACHING_TIERS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from spiral.common.v1 import chat_pb2
from spiral.traffic.v1 import traffic_pb2
from spiral_common.enums import TEACHING_TIERS, Tier, Track
from spiral_common.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from spiral_common.redis_values import as_bytes, as_text

log = logging.getLogger("spiral.traffic")

SCHEMA_VERSION = 1
ANSWER_INDEX_TTL_S = 7 * 24 * 3600  # feedback is accepted for a week after the answer
READ_BATCH = 1000
RATINGS = ("good", "bad")

_FINISH = {
    "stop": chat_pb2.FINISH_REASON_STOP,
    "length": chat_pb2.FINISH_REASON_LENGTH,
    "cancelled": chat_pb2.FINISH_REASON_CANCELLED,
    "content_filter": chat_pb2.FINISH_REASON_CONTENT_FILTER,
}
_ROLE = {"system": chat_pb2.ROLE_SYSTEM, "user": chat_pb2.ROLE_USER, "assistant": chat_pb2.ROLE_ASSISTANT}


def teaches(tier: Tier, finish_reason: int) -> bool:
    """Whether an answer may teach: a teaching tier's answer that ended naturally (a truncated one would
    teach truncation)."""
    return tier in TEACHING_TIERS and finish_reason == chat_pb2.FINISH_REASON_STOP


def exchange_from_json(doc: dict[str, Any]) -> traffic_pb2.TrafficExchange:
    """An exchange logged as JSON (before the message existed) as the message, schema_version 0.

    Old entries said a tier as a word and kept the cloud's answer in `teacher_answer`; they taught when they
    had a teacher answer or came from the council, and ended with "stop". That rule is kept for them (it
    cannot tell a below-threshold council answer from an accepted one: the old log did not record it).
    """
    tier_word = str(doc.get("tier", ""))
    tier = Tier[tier_word.upper()] if tier_word.upper() in Tier.__members__ else None
    finish = _FINISH.get(str(doc.get("finish_reason", "stop")), chat_pb2.FINISH_REASON_UNSPECIFIED)
    answer = str(doc.get("answer", ""))
    teacher_answer = str(doc.get("teacher_answer", ""))
    old_teaches = finish == chat_pb2.FINISH_REASON_STOP and bool(teacher_answer or (tier is Tier.COUNCIL and answer))
    instance = str(doc.get("router_instance", ""))
    exchange = traffic_pb2.TrafficExchange(
        schema_version=0,
        answer_id=str(doc.get("answer_id", "")),
        request_id=str(doc.get("request_id", "")),
        track=Track[instance.upper()].proto if instance.upper() in Track.__members__ else None,
        model=str(doc.get("model", "")),
        tier=tier.proto if tier else None,
        answer=teacher_answer or answer,
        finish_reason=finish,
        teaches=old_teaches,
        teacher=str(doc.get("teacher") or ("cloud" if teacher_answer else "council" if old_teaches else "")),
        cost_usd_micros=int(doc.get("cost_usd_micros", 0) or 0),
        adapter_version=str(doc.get("adapter_version", "")),
        ts_ms=int(doc.get("ts_ms", 0) or 0),
        pattern_id=str(doc.get("pattern_id", "")),
    )
    for m in doc.get("messages") or []:
        if isinstance(m, dict):
            role = _ROLE.get(str(m.get("role", "")), chat_pb2.ROLE_UNSPECIFIED)
            exchange.messages.append(chat_pb2.ChatMessage(role=role, content=str(m.get("content", ""))))
    latencies = doc.get("latencies_us") or {}
    if isinstance(latencies, dict):
        for key, value in latencies.items():
            if isinstance(value, int | float):
                exchange.latencies_us[str(key)] = int(value)
    params = doc.get("params") or {}
    if isinstance(params, dict):
        for key in ("max_tokens", "seed"):
            if isinstance(params.get(key), int):
                setattr(exchange.params, key, params[key])
        for key in ("temperature", "top_p"):
            if isinstance(params.get(key), int | float):
                setattr(exchange.params, key, float(params[key]))
        if isinstance(params.get("stop"), list):
            exchange.params.stop.extend(str(s) for s in params["stop"])
    return exchange


def single_turn(exchange: traffic_pb2.TrafficExchange) -> str | None:
    """The user's text when the exchange is one user turn (after optional system turns), else None."""
    turns = [m for m in exchange.messages if m.role != chat_pb2.ROLE_SYSTEM]
    if len(turns) != 1 or turns[0].role != chat_pb2.ROLE_USER or not turns[0].content.strip():
        return None
    return turns[0].content.strip()


def teacher_answer(exchange: traffic_pb2.TrafficExchange) -> tuple[str, str] | None:
    """(answer, teacher) when the exchange teaches, else None. The miner and the trainer learn from exactly
    these."""
    if not exchange.teaches or exchange.finish_reason != chat_pb2.FINISH_REASON_STOP or not exchange.answer:
        return None
    return exchange.answer, exchange.teacher or "cloud"


@dataclass(frozen=True)
class Rating:
    """A rating entry: `rating` is "good" or "bad"."""

    answer_id: str
    rating: str
    comment: str = ""
    ts_ms: int = 0


@dataclass(frozen=True)
class Damaged:
    """An entry that could not be read (unknown kind, unparseable payload); counted, never fatal."""

    why: str


Entry = traffic_pb2.TrafficExchange | Rating | Damaged


def decode_entry(raw: Any) -> Entry:
    """One stream entry's fields (as redis-py returns them) as an exchange, a rating or Damaged."""
    fields = {as_text(k): as_bytes(v) for k, v in (raw or {}).items()}
    kind = fields.get("kind", b"").decode(errors="replace")
    if kind == "feedback":
        answer_id = fields.get("answer_id", b"").decode(errors="replace")
        rating = fields.get("rating", b"").decode(errors="replace")
        if not answer_id or rating not in RATINGS:
            return Damaged("feedback without an answer id or a known rating")
        ts = fields.get("ts_ms", b"0").decode(errors="replace")
        comment = fields.get("comment", b"").decode(errors="replace")
        return Rating(answer_id, rating, comment, int(ts) if ts.isdigit() else 0)
    if kind != "exchange":
        return Damaged(f"unknown kind {kind!r}")
    if "exchange_pb" in fields:
        exchange = traffic_pb2.TrafficExchange()
        try:
            exchange.ParseFromString(fields["exchange_pb"])
        except DecodeError:
            return Damaged("exchange_pb does not parse")
        return exchange
    try:
        doc = json.loads(fields["exchange"])
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        return exchange_from_json(doc)
    except (KeyError, ValueError, TypeError, UnicodeDecodeError):
        return Damaged("exchange JSON does not parse")


async def read_entries(
    redis: Redis, stream: str, *, after: str = "", batch: int = READ_BATCH
) -> AsyncIterator[tuple[str, Entry]]:
    """Every entry after the stream id `after` ("" for the start), oldest first, with its id."""
    last = after
    while True:
        entries = await redis.xrange(stream, min=f"({last}" if last else "-", max="+", count=batch) or []
        for entry_id, raw in entries:
            last = as_text(entry_id)
            yield last, decode_entry(raw)
        if len(entries) < batch:
            return


# KEYS: the answer's rating mark, the traffic stream. ARGV: rating, mark TTL (s), stream max length, answer id,
# comment, ts_ms. 1 when the rating was recorded, 0 when the answer was rated already.
_RATE_ONCE = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'feedback', 'answer_id', ARGV[4],
  'rating', ARGV[1], 'comment', ARGV[5], 'ts_ms', ARGV[6])
return 1
"""


@dataclass(frozen=True)
class TrafficBounds:
    """How much the stream keeps: about `max_entries` entries, none older than `max_age_s`, about `max_bytes` of
    payload; an exchange over `max_entry_bytes` is logged without its texts (never teaches).

    Count and age are Redis's own trims (XADD MAXLEN ~, XTRIM MINID ~). Bytes: each writer keeps a moving
    average of the payloads it writes and trims to `max_bytes / average` entries when that is fewer than
    `max_entries`; with the entry cap, no one exchange can take more than its share."""

    max_entries: int
    max_age_s: int = 14 * 24 * 3600
    max_bytes: int = 128 * 1024 * 1024
    max_entry_bytes: int = 256 * 1024


# Exchanges the background writer sends in one pipeline at most (one round trip each batch).
WRITE_BATCH = 256
# How long the writer waits after the first exchange of a batch for more to join it: without it, a router
# answering a request at a time wrote a batch of one per answer, a round trip (and a trim) each.
WRITE_LINGER_S = 0.005
# A batch whose connection failed is tried again after each of these pauses, then counted as lost; a batch Redis
# refused (out of memory, a wrong type) is counted as lost at once.
WRITE_RETRY_S = (0.1, 0.5, 2.0)
# Per-entry bytes Redis keeps beside the payload (id, field names, answer id), for the byte bound.
ENTRY_OVERHEAD_BYTES = 64
DROP_LOG_INTERVAL_S = 10.0


class TrafficLog:
    """The routers' side: append exchanges and ratings; the answer index says which track gave an answer.

    `submit` is the reply path's append: it puts the exchange on a bounded queue and returns at once; one
    background task writes what is queued in batches (one pipeline each: the entries, their answer index keys,
    one trim by age). When the queue is full the exchange is dropped and counted (`on_event("dropped")`, a
    warning every 10 s): a reply is never held up by the log. `close` writes out everything queued (the
    router calls it on SIGTERM, after its last call finished), so a graceful stop loses nothing. `append`
    writes at once and returns when Redis has it (tools and tests)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        max_entries: int,
        bounds: TrafficBounds | None = None,
        queue_size: int = 10_000,
        on_event: Callable[[str], None] | None = None,
        linger_s: float = WRITE_LINGER_S,
    ) -> None:
        self.redis = redis
        self.stream = stream_key(prefix)
        self.index_prefix = f"{prefix}answer:"
        self.rated_prefix = f"{prefix}rated:"
        self.owner_prefix = f"{prefix}answer_owner:"
        self._rate_once = redis.register_script(_RATE_ONCE)
        self.max_entries = max_entries
        self.bounds = bounds or TrafficBounds(max_entries)
        self._queue: asyncio.Queue[traffic_pb2.TrafficExchange] = asyncio.Queue(queue_size)
        self._pending: dict[str, str] = {}  # answer ids queued and not yet written, to their owners
        self._writer: asyncio.Task[None] | None = None
        self._on_event = on_event or (lambda event: None)
        self.linger_s = linger_s
        self._average_bytes = 0.0
        self._dropped_since_log = 0
        self._last_drop_log = 0.0

    async def append(self, exchange: traffic_pb2.TrafficExchange, owner: str = "") -> None:
        """Write one exchange now; `owner`: the client that got the answer (an API key's name, or "local"), the
        only one that may rate it ("": anyone may, once)."""
        await self._write([exchange], {exchange.answer_id: owner})

    def submit(self, exchange: traffic_pb2.TrafficExchange, owner: str = "") -> bool:
        """Queue one exchange (and its `owner`, as in `append`) for the background writer; False when the queue
        was full and it was dropped."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._run(), name="traffic-log-writer")
        try:
            self._queue.put_nowait(exchange)
        except asyncio.QueueFull:
            self._dropped(exchange.answer_id)
            return False
        self._pending[exchange.answer_id] = owner
        return True

    async def flush(self) -> None:
        """Return once everything queued so far is written (or counted as lost)."""
        if self._writer is not None and not self._writer.done():
            await self._queue.join()

    async def close(self) -> None:
        """Write out the queue, then stop the writer."""
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.linger_s:
                await asyncio.sleep(self.linger_s)
            while len(batch) < WRITE_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_with_retries(batch, {e.answer_id: self._pending.get(e.answer_id, "") for e in batch})
            except Exception:  # the writer must outlive any one batch, or `flush` would wait for ever
                self._lost(batch)
            finally:
                for exchange in batch:
                    self._pending.pop(exchange.answer_id, None)
                    self._queue.task_done()

    async def _write_with_retries(self, batch: list[traffic_pb2.TrafficExchange], owners: dict[str, str]) -> None:
        """Write a batch; a connection that failed is tried again after a pause, a command Redis refused
        (out of memory: the state server never evicts) is not."""
        for pause in WRITE_RETRY_S:
            try:
                await self._write(batch, owners)
                return
            except ResponseError:
                raise
            except RedisError:
                log.warning("traffic log write failed; retrying", extra={"retry_in_s": pause}, exc_info=True)
                await asyncio.sleep(pause)
        await self._write(batch, owners)

    def _lost(self, batch: list[traffic_pb2.TrafficExchange]) -> None:
        log.exception("traffic log write failed; exchanges lost", extra={"exchanges": len(batch)})
        for _ in batch:
            self._on_event("lost")

    def _dropped(self, answer_id: str) -> None:
        self._on_event("dropped")
        self._dropped_since_log += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning(
                "traffic log queue full; exchanges dropped",
                extra={"dropped": self._dropped_since_log, "answer_id": answer_id, "queue_size": self._queue.maxsize},
            )
            self._dropped_since_log, self._last_drop_log = 0, now

    def _payload(self, exchange: traffic_pb2.TrafficExchange) -> bytes:
        """The exchange's bytes (protobuf: strings as plain UTF-8), stripped of its texts when over the cap."""
        exchange.schema_version = SCHEMA_VERSION
        exchange.ts_ms = exchange.ts_ms or int(time.time() * 1000)
        payload = exchange.SerializeToString()
        if len(payload) > self.bounds.max_entry_bytes:
            stripped = traffic_pb2.TrafficExchange()
            stripped.CopyFrom(exchange)
            for message in stripped.messages:
                message.content = ""
            stripped.answer, stripped.teaches = "", False  # an answer without its prompt teaches nothing
            payload = stripped.SerializeToString()
            self._on_event("stripped")
        return payload

    def _max_length(self, payload_bytes: int) -> int:
        """Entries the stream may keep: the count bound, or fewer when entries this size would pass the bytes."""
        size = payload_bytes + ENTRY_OVERHEAD_BYTES
        self._average_bytes = size if not self._average_bytes else 0.99 * self._average_bytes + 0.01 * size
        return max(1, min(self.bounds.max_entries, int(self.bounds.max_bytes / self._average_bytes)))

    async def _write(self, batch: list[traffic_pb2.TrafficExchange], owners: dict[str, str]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for exchange in batch:
                payload = self._payload(exchange)
                pipe.xadd(
                    self.stream,
                    {"kind": "exchange", "answer_id": exchange.answer_id, "exchange_pb": payload},
                    maxlen=self._max_length(len(payload)),
                    approximate=True,
                )
                track = Track(exchange.track).label if exchange.track else Track.MAIN.label
                pipe.set(self.index_prefix + exchange.answer_id, track, ex=ANSWER_INDEX_TTL_S)
                if owners.get(exchange.answer_id):  # only this client (or the admin) may rate the answer
                    pipe.set(self.owner_prefix + exchange.answer_id, owners[exchange.answer_id], ex=ANSWER_INDEX_TTL_S)
            oldest_ms = int(time.time() * 1000) - self.bounds.max_age_s * 1000
            pipe.xtrim(self.stream, minid=f"{oldest_ms}-0", approximate=True)
            await pipe.execute()
        for _ in batch:
            self._on_event("written")

    async def feedback(self, answer_id: str, rating: str, comment: str, *, rater: str, admin: bool = False) -> str:
        """Record a rating by `rater` (an API key's name, or "local"), who must be the client that got the
        answer, unless `admin`; returns the track that gave the answer (for the canary's numbers)."""
        if rating not in RATINGS:
            raise InvalidArgument("rating must be good or bad", reason="INVALID_RATING", field="rating")
        if len(comment) > 2000:
            raise InvalidArgument("comment is over 2,000 characters", reason="COMMENT_TOO_LONG", field="comment")
        if answer_id in self._pending:  # rated before the writer got to it
            await self.flush()
        answered_by, owner = (
            await self.redis.mget([self.index_prefix + answer_id, self.owner_prefix + answer_id])
            if answer_id
            else (None, None)
        )
        if answered_by is None:
            raise NotFound(f"no answer {answer_id!r} in the traffic log", reason="ANSWER_NOT_FOUND", field="answer_id")
        # An answer logged before owners were recorded has none: anyone may rate it, once.
        if not admin and owner is not None and as_text(owner) != rater:
            raise PermissionDenied(
                f"answer {answer_id!r} was given to another client; only it (or the admin) may rate it",
                reason="NOT_YOUR_ANSWER",
                field="answer_id",
            )
        # One rating per answer: a repeated "bad" would otherwise retire patterns, drop training examples and
        # steer the canary as many times as someone cares to send it.
        # The mark and the stream entry are written in one atomic step: never a mark without its rating.
        recorded = await self._rate_once(
            keys=[self.rated_prefix + answer_id, self.stream],
            args=[rating, ANSWER_INDEX_TTL_S, self.max_entries, answer_id, comment, int(time.time() * 1000)],
        )
        if not recorded:
            raise AlreadyExists(
                f"answer {answer_id!r} was rated already; one rating per answer",
                reason="ALREADY_RATED",
                field="answer_id",
            )
        return as_text(answered_by)


def stream_key(prefix: str) -> str:
    """The traffic log's Redis key under a key prefix."""
    return f"{prefix}traffic"
