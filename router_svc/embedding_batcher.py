"""The pattern tier's embeddings under concurrency: one encoder call for the prompts that arrive together, and a
cache of recent prompts' embeddings.

A request puts its prompt on a bounded queue and waits. One worker, started when the queue gets work and gone
when it is empty, waits for one of `encoder_threads` encoder threads to be free, takes the prompts waiting then
(those that arrived within `window_s` of the oldest, at most `max_batch`), embeds them in ONE encoder call on
that thread (never on the event loop), and hands each waiter its vector. Prompts that arrive while every thread
is busy queue up and go together in the next call; a prompt that waited that long has waited its window.
Measured on this 2-core box (docs/benchmarks.md): the encoder is compute-bound, so batching saves little per
prompt (padding to the longest prompt eats most of it); two threads at once are what keeps up with per-request
threads, a window costs its length at one client, so the defaults are 2 threads and no window. What the batcher
adds is a bound (at most `encoder_threads` encoder calls, never one thread per waiting request) and the cache.

A waiter that goes away (its request was cancelled) is dropped from its batch, or its vector thrown away; an
encoder error reaches every waiter of that batch; a full queue or a closed batcher is `EncoderUnavailable`,
which the pattern tier takes as a miss (the prompt goes down the cascade) rather than an error.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class BatchEncoder(Protocol):
    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class EmbeddingObserver(Protocol):
    """Where the batcher reports what it did (the router's metrics)."""

    def embedding_batch(self, size: int, seconds: float) -> None: ...

    def embedding_cache(self, hit: bool) -> None: ...

    def embedding_refused(self) -> None: ...


class EncoderUnavailable(Exception):
    """The batcher cannot take the prompt now (its queue is full, or it is closed)."""


def cache_key(text: str) -> str:
    """The text as the encoder sees it: the tokenizer splits on whitespace, so runs of it count as one space."""
    return " ".join(text.split())


class EmbeddingCache:
    """A bounded LRU of prompt embeddings, keyed by `cache_key`. The vectors are read-only: every hit shares one."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> np.ndarray | None:
        vector = self._entries.get(key)
        if vector is not None:
            self._entries.move_to_end(key)
        return vector

    def put(self, key: str, vector: np.ndarray) -> None:
        if self.max_entries <= 0:
            return
        vector.flags.writeable = False
        self._entries[key] = vector
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass
class _Waiter:
    key: str
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default=0.0)


class EmbeddingBatcher:
    """Embeds prompts for concurrent callers in micro-batches, with an LRU of recent prompts in front."""

    def __init__(
        self,
        encoder: BatchEncoder,
        *,
        window_s: float = 0.0,
        max_batch: int = 8,
        max_queue: int = 1024,
        encoder_threads: int = 2,
        cache_entries: int = 4096,
        observer: EmbeddingObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.encoder = encoder
        self.window_s = window_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.cache = EmbeddingCache(cache_entries)
        self.observer = observer
        self.clock = clock
        self._queue: list[_Waiter] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        # At most `encoder_threads` encoder calls at once, each on a thread of this pool (not the loop's default
        # pool, which other work shares); prompts wait in the queue, and batch up, while every thread is busy.
        self._threads = ThreadPoolExecutor(max_workers=encoder_threads, thread_name_prefix="pattern-encoder")
        self._free_threads = asyncio.Semaphore(encoder_threads)
        self._calls: set[asyncio.Task[None]] = set()
        self._closed = False

    async def embed(self, text: str) -> np.ndarray:
        """The prompt's unit vector (read-only). Raises EncoderUnavailable when the queue is full or closed,
        and whatever the encoder raised for the batch the prompt was in."""
        key = cache_key(text)
        cached = self.cache.get(key)
        if self.observer is not None:
            self.observer.embedding_cache(cached is not None)
        if cached is not None:
            return cached
        if self._closed or len(self._queue) >= self.max_queue:
            if self.observer is not None:
                self.observer.embedding_refused()
            raise EncoderUnavailable("closed" if self._closed else f"{len(self._queue)} prompts already waiting")
        waiter = _Waiter(key, asyncio.get_running_loop().create_future(), self.clock())
        self._queue.append(waiter)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="pattern-embedding-batcher")
        return await waiter.future  # cancelling the caller cancels the future: the worker then skips it

    async def close(self) -> None:
        """Stop: the batch being embedded and every queued prompt fail with EncoderUnavailable."""
        self._closed = True
        running = [t for t in (self._worker, *self._calls) if t is not None and not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._fail(self._queue, EncoderUnavailable("closed"))
        self._queue = []
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        """Batches until the queue is empty, then ends (the next prompt starts a new worker)."""
        while self._queue:
            await self._free_threads.acquire()
            if not self._queue:
                self._free_threads.release()
                break
            call = asyncio.create_task(self._call(await self._collect()))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[_Waiter]) -> None:
        try:
            await self._embed_batch(batch)
        except asyncio.CancelledError:
            self._fail(batch, EncoderUnavailable("closed"))
            raise
        except Exception as exc:  # the encoder failed: every waiter of the batch hears it
            self._fail(batch, exc)
        finally:
            self._free_threads.release()

    async def _collect(self) -> list[_Waiter]:
        """The waiting prompts, once the oldest has waited `window_s` or `max_batch` are waiting."""
        while len(self._queue) < self.max_batch:
            left = self._queue[0].enqueued + self.window_s - self.clock()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
        return batch

    async def _embed_batch(self, batch: list[_Waiter]) -> None:
        waiting = [w for w in batch if not w.future.done()]  # a cancelled caller is dropped here
        texts = list(dict.fromkeys(w.key for w in waiting))  # the same prompt twice is embedded once
        if not texts:
            return
        started = time.perf_counter()
        vectors = await asyncio.get_running_loop().run_in_executor(self._threads, self.encoder.embed, texts)
        if self.observer is not None:
            self.observer.embedding_batch(len(texts), time.perf_counter() - started)
        by_key = {key: np.array(vector) for key, vector in zip(texts, vectors, strict=True)}  # rows, not views
        for key, vector in by_key.items():
            self.cache.put(key, vector)
        for w in waiting:
            if not w.future.done():
                w.future.set_result(by_key[w.key])

    @staticmethod
    def _fail(batch: list[_Waiter], exc: BaseException) -> None:
        for w in batch:
            if not w.future.done():
                w.future.set_exception(exc)
