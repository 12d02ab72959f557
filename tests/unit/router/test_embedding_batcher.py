"""The pattern tier's embedding batcher and its cache of recent prompts, with a fake encoder."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from router_svc.embedding_batcher import EmbeddingBatcher, EmbeddingCache, EncoderUnavailable, cache_key


class FakeEncoder:
    """Vectors that name their text (its length in column 0), every call recorded; `gate` holds a call until set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.error = error
        self.gate = threading.Event()
        self.gate.set()
        self.threads: set[str] = set()

    def embed(self, texts):
        self.threads.add(threading.current_thread().name)
        self.gate.wait(5)
        self.calls.append(list(texts))
        if self.error is not None:
            raise self.error
        out = np.zeros((len(texts), 4), dtype=np.float32)
        out[:, 0] = [len(t) for t in texts]
        return out


class Recorder:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.cache: list[bool] = []
        self.refused = 0

    def embedding_batch(self, size: int, seconds: float) -> None:
        self.batches.append(size)

    def embedding_cache(self, hit: bool) -> None:
        self.cache.append(hit)

    def embedding_refused(self) -> None:
        self.refused += 1


async def test_prompts_that_arrive_together_share_one_encoder_call_off_the_event_loop():
    encoder, seen = FakeEncoder(), Recorder()
    batcher = EmbeddingBatcher(encoder, window_s=0.05, max_batch=8, observer=seen)
    prompts = ["a", "bb", "ccc", "dddd", "eeeee"]
    vectors = await asyncio.gather(*(batcher.embed(p) for p in prompts))
    assert encoder.calls == [prompts] and seen.batches == [5]
    assert [v[0] for v in vectors] == [1, 2, 3, 4, 5]  # each caller gets its own prompt's vector
    assert encoder.threads == {"pattern-encoder_0"}  # the encoder's own thread, not the loop's
    await batcher.close()


async def test_a_batch_holds_at_most_max_batch_prompts():
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, window_s=0.05, max_batch=3)
    await asyncio.gather(*(batcher.embed(str(i) * (i + 1)) for i in range(7)))
    assert [len(c) for c in encoder.calls] == [3, 3, 1]
    await batcher.close()


async def test_prompts_queued_while_the_encoder_is_busy_go_together_without_waiting_a_window():
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, window_s=0.0, max_batch=8, encoder_threads=1)
    encoder.gate.clear()
    first = asyncio.create_task(batcher.embed("first"))
    await asyncio.sleep(0.05)  # the encoder now holds "first"
    rest = [asyncio.create_task(batcher.embed(p)) for p in ("x", "yy", "zzz")]
    await asyncio.sleep(0)
    encoder.gate.set()
    await asyncio.gather(first, *rest)
    assert encoder.calls == [["first"], ["x", "yy", "zzz"]]
    await batcher.close()


async def test_with_two_encoder_threads_a_second_call_runs_while_the_first_is_busy():
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, window_s=0.0, max_batch=8, encoder_threads=2)
    encoder.gate.clear()
    first = asyncio.create_task(batcher.embed("first"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(batcher.embed("second"))
    third = asyncio.create_task(batcher.embed("third"))  # arrived with "second": they share the second thread
    await asyncio.sleep(0.05)
    assert encoder.threads == {"pattern-encoder_0", "pattern-encoder_1"}
    encoder.gate.set()
    await asyncio.gather(first, second, third)
    assert sorted(map(tuple, encoder.calls)) == [("first",), ("second", "third")]
    await batcher.close()


async def test_a_caller_that_goes_away_does_not_break_its_batch():
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, window_s=0.05, max_batch=8)
    leaving = asyncio.create_task(batcher.embed("leaving"))
    staying = [asyncio.create_task(batcher.embed(p)) for p in ("one", "three")]
    await asyncio.sleep(0)
    leaving.cancel()
    assert [v[0] for v in await asyncio.gather(*staying)] == [3, 5]
    assert encoder.calls == [["one", "three"]]  # the cancelled prompt was not embedded
    with pytest.raises(asyncio.CancelledError):
        await leaving

    # Cancelled while its batch is in the encoder: the others still get their vectors.
    encoder.gate.clear()
    leaving = asyncio.create_task(batcher.embed("gone"))
    staying = [asyncio.create_task(batcher.embed("here"))]
    await asyncio.sleep(0.1)
    leaving.cancel()
    encoder.gate.set()
    assert (await staying[0])[0] == 4
    await batcher.close()


async def test_an_encoder_error_reaches_every_waiter_of_the_batch_and_the_next_batch_works():
    encoder = FakeEncoder(error=RuntimeError("onnx fell over"))
    batcher = EmbeddingBatcher(encoder, window_s=0.05, max_batch=8)
    results = await asyncio.gather(*(batcher.embed(p) for p in ("a", "b", "c")), return_exceptions=True)
    assert [str(r) for r in results] == ["onnx fell over"] * 3
    encoder.error = None
    assert (await batcher.embed("again"))[0] == 5
    await batcher.close()


async def test_close_fails_the_waiters_and_refuses_new_prompts():
    encoder = FakeEncoder()
    batcher = EmbeddingBatcher(encoder, window_s=0.0, max_batch=1, encoder_threads=1)
    encoder.gate.clear()
    waiting = [asyncio.create_task(batcher.embed(p)) for p in ("in the encoder", "queued")]
    await asyncio.sleep(0.05)
    await batcher.close()
    encoder.gate.set()
    for task in waiting:
        with pytest.raises(EncoderUnavailable):
            await task
    with pytest.raises(EncoderUnavailable):
        await batcher.embed("after close")


async def test_a_full_queue_refuses_instead_of_growing():
    encoder, seen = FakeEncoder(), Recorder()
    batcher = EmbeddingBatcher(encoder, window_s=0.0, max_batch=1, max_queue=2, encoder_threads=1, observer=seen)
    encoder.gate.clear()
    first = asyncio.create_task(batcher.embed("running"))
    await asyncio.sleep(0.05)  # out of the queue, in the encoder
    queued = [asyncio.create_task(batcher.embed(p)) for p in ("q1", "q2")]
    await asyncio.sleep(0)
    with pytest.raises(EncoderUnavailable):
        await batcher.embed("one too many")
    assert seen.refused == 1
    encoder.gate.set()
    await asyncio.gather(first, *queued)
    await batcher.close()


async def test_a_repeated_prompt_comes_from_the_cache_without_calling_the_encoder():
    encoder, seen = FakeEncoder(), Recorder()
    batcher = EmbeddingBatcher(encoder, window_s=0.0, observer=seen)
    first = await batcher.embed("where is my card?")
    again = await batcher.embed("  where is my   card? ")  # the same text as the encoder sees it
    assert again is first and not again.flags.writeable
    assert encoder.calls == [["where is my card?"]] and seen.cache == [False, True]
    # The same prompt twice in one batch is embedded once.
    await asyncio.gather(batcher.embed("twice"), batcher.embed("twice"))
    assert encoder.calls[-1] == ["twice"]
    await batcher.close()


def test_the_cache_keeps_the_most_recently_used_prompts():
    cache = EmbeddingCache(2)
    for key in ("a", "b"):
        cache.put(key, np.ones(2, dtype=np.float32))
    assert cache.get("a") is not None  # "a" is now the most recent
    cache.put("c", np.ones(2, dtype=np.float32))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2
    off = EmbeddingCache(0)
    off.put("a", np.ones(2, dtype=np.float32))
    assert off.get("a") is None


def test_the_cache_key_is_the_text_as_the_tokenizer_splits_it():
    assert cache_key("  Where is\tmy card?\n") == "Where is my card?"


async def test_the_pattern_tier_misses_instead_of_failing_when_the_batcher_refuses():
    from router_svc.mined import PatternMatcher
    from router_svc.patterns import RegexPatterns

    class OneMatchIndex:
        def __len__(self) -> int:
            return 1

        def match(self, vector, negated):
            return None

    matcher = PatternMatcher(RegexPatterns(), store=None, encoder_factory=FakeEncoder, reload_interval_s=3600)  # type: ignore[arg-type]
    matcher._checked_at = float("inf")  # no version check: no store here
    matcher.index = OneMatchIndex()  # type: ignore[assignment]
    matcher.batcher = EmbeddingBatcher(FakeEncoder(), window_s=0.0)
    assert await matcher.match("where is my card?") is None  # embedded and matched: nothing close
    await matcher.close()
    assert await matcher.match("where is my new card?") is None  # closed: a miss, not an error
    assert (await matcher.match("what is 2 + 2?")).text == "2 + 2 = 4"  # the regexes need no encoder
