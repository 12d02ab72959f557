"""HeadPool: streaming, coalescing, the concurrency cap and cancellation, over a scripted engine."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from head_svc.heads import Delta, End, HeadPool
from spiral_common.chat import ChatRequest, Message
from spiral_common.errors import HeadBusy, InvalidArgument, NotFound, Unavailable
from spiral_common.llama_engine import Outcome
from spiral_common.specs import HeadSpec

REQUEST = ChatRequest(messages=(Message("user", "hi"),), max_tokens=10, temperature=0.0, top_p=1.0)


class ScriptedEngine:
    """Emits `pieces`, one every `gap_s`, and remembers whether it saw a cancellation."""

    context_tokens = 1024

    def __init__(self, pieces: list[str], gap_s: float = 0.0) -> None:
        self.pieces, self.gap_s = pieces, gap_s
        self.saw_cancel = threading.Event()
        self.prompts: list[ChatRequest] = []

    def prompt_tokens(self, request):
        return [0] * sum(len(m.content.split()) for m in request.messages)  # a token per word

    def generate(self, request, emit, cancelled, adapter=None, tokens=None):
        self.prompts.append(request)
        for count, piece in enumerate(self.pieces, 1):
            time.sleep(self.gap_s)  # stands in for the time a token takes
            emit(piece)
            if cancelled.is_set():
                self.saw_cancel.set()
                return Outcome("cancelled", 3, count)
        return Outcome("stop", 3, len(self.pieces))


async def _pool(engine, flush_ms=0, cap=4) -> HeadPool:
    pool = HeadPool([HeadSpec("default", "Be brief.")], cap, flush_interval_ms=flush_ms)
    await pool.load(lambda: engine)
    return pool


async def test_every_piece_is_its_own_delta_without_coalescing():
    pool = await _pool(ScriptedEngine(list("abcdef")))
    events = [e async for e in pool.generate("", REQUEST)]
    assert [e.text for e in events if isinstance(e, Delta)] == list("abcdef")
    assert isinstance(events[-1], End) and events[-1].outcome.completion_tokens == 6


async def test_coalescing_sends_the_first_piece_at_once_and_batches_the_rest():
    pool = await _pool(ScriptedEngine([f"t{i} " for i in range(20)], gap_s=0.005), flush_ms=40)
    deltas = [e.text async for e in pool.generate("", REQUEST) if isinstance(e, Delta)]
    assert deltas[0] == "t0 "
    assert "".join(deltas) == "".join(f"t{i} " for i in range(20))
    assert len(deltas) < 10


async def test_the_head_system_prompt_is_added_only_when_missing():
    engine = ScriptedEngine(["x"])
    pool = await _pool(engine)
    [e async for e in pool.generate("", REQUEST)]
    own = ChatRequest(
        messages=(Message("system", "Mine."), Message("user", "hi")), max_tokens=1, temperature=0, top_p=1
    )
    [e async for e in pool.generate("", own)]
    assert [m.content for m in engine.prompts[0].messages] == ["Be brief.", "hi"]
    assert [m.content for m in engine.prompts[1].messages] == ["Mine.", "hi"]


async def test_closing_the_stream_cancels_the_generation():
    engine = ScriptedEngine(["x"] * 200, gap_s=0.005)
    pool = await _pool(engine)
    stream = pool.generate("", REQUEST)
    assert isinstance(await anext(stream), Delta)
    await stream.aclose()
    assert await asyncio.to_thread(engine.saw_cancel.wait, 5)
    assert pool.active == 0


async def test_beyond_the_cap_is_busy_and_unknown_heads_or_unloaded_models_are_refused():
    pool = await _pool(ScriptedEngine(["x"] * 100, gap_s=0.01), cap=1)
    running = pool.generate("", REQUEST)
    await anext(running)
    with pytest.raises(HeadBusy):
        await anext(pool.generate("", REQUEST))
    await running.aclose()
    with pytest.raises(NotFound):
        await anext(pool.generate("nobody", REQUEST))
    with pytest.raises(Unavailable):
        await anext(HeadPool([HeadSpec("default", "")], 1).generate("", REQUEST))


async def test_a_prompt_over_the_context_window_is_refused_before_it_queues_behind_a_generation():
    engine = ScriptedEngine(["x"] * 400, gap_s=0.01)  # four seconds of generation hold the engine
    pool = await _pool(engine)
    running = pool.generate("", REQUEST)
    await anext(running)
    too_long = ChatRequest(messages=(Message("user", "word " * 1020),), max_tokens=10, temperature=0.0, top_p=1.0)
    started = time.perf_counter()
    with pytest.raises(InvalidArgument) as caught:
        await anext(pool.generate("", too_long))
    assert caught.value.reason == "CONTEXT_OVERFLOW" and time.perf_counter() - started < 1.0
    assert pool.active == 1 and len(engine.prompts) == 1  # never queued, never run
    await running.aclose()


async def test_a_burst_is_held_to_the_cap_while_its_prompts_are_still_being_counted():
    class SlowCounting(ScriptedEngine):
        counted = 0

        def prompt_tokens(self, request):
            type(self).counted += 1
            time.sleep(0.2)  # a long prompt's tokenization
            return super().prompt_tokens(request)

    pool = await _pool(SlowCounting(["x"]), cap=2)
    outcomes = await asyncio.gather(*(anext(pool.generate("", REQUEST)) for _ in range(5)), return_exceptions=True)
    assert sum(isinstance(o, HeadBusy) for o in outcomes) == 3 and SlowCounting.counted == 2
