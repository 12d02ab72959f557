"""The traffic log off the reply path: a bounded queue, one writer, nothing lost on a graceful stop; the stream
bounded by count, age and bytes; compact UTF-8 (real Redis)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from spiral_common.traffic import TrafficBounds, TrafficLog, decode_entry, stream_key
from tests.helpers import logged_exchange


def _log(redis_client, prefix, events: Counter, **bounds) -> TrafficLog:
    queue_size = bounds.pop("queue_size", 10_000)
    return TrafficLog(
        redis_client,
        prefix=prefix,
        max_entries=bounds.get("max_entries", 10_000),
        bounds=TrafficBounds(**{"max_entries": 10_000, **bounds}),
        queue_size=queue_size,
        on_event=lambda event: events.update([event]),
    )


async def test_every_queued_exchange_is_in_the_stream_after_a_graceful_stop(redis_client, prefix):
    events: Counter = Counter()
    log = _log(redis_client, prefix, events)
    exchanges = [logged_exchange(f"question {i}", f"answer {i}") for i in range(600)]
    assert all(log.submit(e) for e in exchanges)  # returns at once: nothing awaited Redis
    await log.close()  # what the router does on SIGTERM, after its last call
    entries = await redis_client.xrange(stream_key(prefix))
    assert [decode_entry(raw).answer_id for _, raw in entries] == [e.answer_id for e in exchanges]
    assert await redis_client.exists(*(f"{prefix}answer:{e.answer_id}" for e in exchanges)) == 600
    assert events == Counter(written=600)


async def test_a_full_queue_drops_and_counts_and_never_holds_the_reply(redis_client, prefix):
    events: Counter = Counter()
    log = _log(redis_client, prefix, events, queue_size=5)
    started = time.monotonic()
    accepted = [log.submit(logged_exchange(f"q{i}", "a")) for i in range(20)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True] * 5 + [False] * 15
    await log.close()
    assert await redis_client.xlen(stream_key(prefix)) == 5
    assert events == Counter(written=5, dropped=15)


async def test_a_rating_right_after_the_answer_finds_it(redis_client, prefix):
    log = _log(redis_client, prefix, Counter())
    exchange = logged_exchange("What is 2+2?", "4")
    log.submit(exchange, owner="team-a")
    try:
        # waits for its exchange (and its owner) to be written
        assert await log.feedback(exchange.answer_id, "good", "", rater="team-a") == "main"
    finally:
        await log.close()


async def test_entries_older_than_the_age_bound_are_trimmed(redis_client, prefix):
    stream = stream_key(prefix)
    old_ms = int(time.time() * 1000) - 3 * 86400 * 1000
    for i in range(300):
        await redis_client.xadd(stream, {"kind": "exchange", "exchange": "{}"}, id=f"{old_ms + i}-0")
    log = _log(redis_client, prefix, Counter(), max_age_s=86400)
    await log.append(logged_exchange("fresh", "answer"))
    ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in await redis_client.xrange(stream)]
    # Redis trims whole nodes (about 100 small entries): at most the node holding the fresh entry keeps old ones
    assert sum(1 for ms in ids if ms < old_ms + 300) <= 100
    assert ids[-1] > old_ms + 86400 * 1000


async def test_the_stream_keeps_about_its_byte_bound(redis_client, prefix):
    log = _log(redis_client, prefix, Counter(), max_bytes=64 * 1024)
    for batch in range(10):
        for i in range(50):
            log.submit(logged_exchange(f"question {batch}-{i}", "x" * 1000))
        await log.flush()
    await log.close()
    # 64 KiB over ~1.1 KB entries: about 58 entries (Redis trims whole nodes, so a few more), not 500
    assert 30 <= await redis_client.xlen(stream_key(prefix)) <= 80


async def test_an_exchange_over_the_entry_cap_is_logged_without_its_texts(redis_client, prefix):
    events: Counter = Counter()
    log = _log(redis_client, prefix, events, max_entry_bytes=1024)
    big = logged_exchange("tell me everything " * 100, "everything " * 500)
    await log.append(big)
    ((_, raw),) = await redis_client.xrange(stream_key(prefix))
    logged = decode_entry(raw)
    assert (logged.answer_id, logged.answer, logged.teaches) == (big.answer_id, "", False)
    assert [m.content for m in logged.messages] == [""] * len(big.messages)
    assert events["stripped"] == 1 and len(raw[b"exchange_pb"]) < 1024


async def test_texts_are_stored_as_compact_utf8(redis_client, prefix):
    log = _log(redis_client, prefix, Counter())
    await log.append(logged_exchange("Où est le café ? 日本語で", "Ici — ここ"))
    ((_, raw),) = await redis_client.xrange(stream_key(prefix))
    assert "日本語で".encode() in raw[b"exchange_pb"] and "ここ".encode() in raw[b"exchange_pb"]
    assert b"\\u" not in raw[b"exchange_pb"]


async def test_a_batch_redis_refuses_is_counted_lost_and_the_writer_goes_on(redis_client, prefix):
    events: Counter = Counter()
    log = _log(redis_client, prefix, events)
    await redis_client.set(stream_key(prefix), "not a stream")  # every XADD of the batch is refused
    log.submit(logged_exchange("q", "a"))
    await log.flush()
    assert events["lost"] == 1
    await redis_client.delete(stream_key(prefix))
    log.submit(logged_exchange("q2", "a2"))
    await log.close()
    assert await redis_client.xlen(stream_key(prefix)) == 1 and events["written"] == 1


async def test_answers_that_come_one_at_a_time_share_a_round_trip(redis_client, prefix, monkeypatch):
    log = _log(redis_client, prefix, Counter())
    batches: list[int] = []
    write = TrafficLog._write

    async def counted(self, batch, owners):
        batches.append(len(batch))
        await write(self, batch, owners)

    monkeypatch.setattr(TrafficLog, "_write", counted)
    for i in range(20):  # one answer per turn of the event loop, as a busy router gives them
        log.submit(logged_exchange(f"q{i}", "a"))
        await asyncio.sleep(0.0005)
    await log.close()
    assert sum(batches) == 20 and len(batches) < 10, batches
    assert await redis_client.xlen(stream_key(prefix)) == 20
