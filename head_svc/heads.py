"""The async side of the heads: load state, the concurrency cap, and bridging the engine thread to streams."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from head_svc.engine import Engine, Outcome
from spiral_common.chat import ChatRequest, Message
from spiral_common.errors import HeadBusy, NotFound, Unavailable
from spiral_common.specs import HeadSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class End:
    outcome: Outcome
    head: str
    adapter_version: str
    first_token_latency_us: int
    total_latency_us: int


class HeadPool:
    """Heads sharing one engine. One generation runs at a time; up to `max_concurrent` wait or run."""

    def __init__(self, heads: list[HeadSpec], max_concurrent: int, flush_interval_ms: int = 0) -> None:
        self.heads = {h.name: h for h in heads}
        self.flush_interval_s = flush_interval_ms / 1000
        self.default_head = heads[0].name
        self.max_concurrent = max_concurrent
        self.state = "loading"
        self.active = 0
        self._engine: Engine | None = None
        # llama.cpp contexts are not thread-safe: every generation runs on this one thread, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")

    async def load(self, factory: Callable[[], Engine]) -> None:
        """Build the engine on the generation thread; the pool serves once this returns."""
        try:
            self._engine = await asyncio.get_running_loop().run_in_executor(self._executor, factory)
        except Exception:
            self.state = "failed"
            raise
        self.state = "ready"

    @property
    def queue_depth(self) -> int:
        return max(self.active - 1, 0)

    def spec(self, head: str) -> HeadSpec:
        """The named head's spec ('' is the default head), or NotFound."""
        spec = self.heads.get(head or self.default_head)
        if spec is None:
            raise NotFound(
                f"no head named {head!r}; heads: {', '.join(self.heads)}", reason="HEAD_NOT_FOUND", head=head
            )
        return spec

    async def generate(self, head: str, request: ChatRequest) -> AsyncIterator[Delta | End]:
        """Stream one head's answer. Closing the iterator early stops the generation at the next token."""
        spec = self.spec(head)
        if self._engine is None or self.state != "ready":
            raise Unavailable(f"the model is {self.state}", reason="MODEL_NOT_LOADED", state=self.state)
        if self.active >= self.max_concurrent:
            raise HeadBusy(f"{self.active} generations in flight, the cap is {self.max_concurrent}", retry_after_ms=500)
        engine = self._engine
        if not any(m.role == "system" for m in request.messages):
            request = _with_system_prompt(request, spec.system_prompt)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Outcome | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, text)

        def run() -> None:
            try:
                outcome = (
                    engine.generate(request, emit, cancelled) if not cancelled.is_set() else Outcome("cancelled", 0, 0)
                )
                loop.call_soon_threadsafe(queue.put_nowait, outcome)
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        started = time.perf_counter()
        first_token_us = 0
        last_flush = 0.0
        held: str | Outcome | BaseException | None = None
        self.active += 1
        try:
            loop.run_in_executor(self._executor, run)
            while True:
                item, held = (held, None) if held is not None else (await queue.get(), None)
                if isinstance(item, str):
                    if not first_token_us:
                        first_token_us = int((time.perf_counter() - started) * 1e6)
                    elif self.flush_interval_s:
                        # Coalesce the tokens of one flush interval into one message: every message costs
                        # CPU in each hop of the mesh, CPU that llama.cpp's threads need on a small box.
                        wait = last_flush + self.flush_interval_s - loop.time()
                        if wait > 0:
                            await asyncio.sleep(wait)
                        while held is None and not queue.empty():
                            more = queue.get_nowait()
                            if isinstance(more, str):
                                item += more
                            else:
                                held = more
                    last_flush = loop.time()
                    yield Delta(item)
                elif isinstance(item, Outcome):
                    total_us = int((time.perf_counter() - started) * 1e6)
                    log.info(
                        "generated",
                        extra={
                            "head": spec.name,
                            "finish_reason": item.finish_reason,
                            "prompt_tokens": item.prompt_tokens,
                            "completion_tokens": item.completion_tokens,
                            "first_token_ms": first_token_us / 1000,
                            "total_ms": total_us / 1000,
                        },
                    )
                    yield End(item, spec.name, "", first_token_us or total_us, total_us)
                    return
                else:
                    raise item
        finally:
            cancelled.set()
            self.active -= 1


def _with_system_prompt(request: ChatRequest, system_prompt: str) -> ChatRequest:
    return replace(request, messages=(Message("system", system_prompt), *request.messages))
