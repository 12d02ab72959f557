"""The async side of the heads: load state, the concurrency cap, and bridging the engine thread to streams."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from spiral_common.adapters import AdapterRegistry
from spiral_common.chat import ChatRequest, Message
from spiral_common.enums import BOTH_TRACKS, Track
from spiral_common.errors import HeadBusy, NotFound, SpiralError, Unavailable
from spiral_common.llama_engine import Engine, Outcome, check_fits
from spiral_common.specs import HeadSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(eq=False)
class LoadedAdapter:
    """An adapter in llama.cpp memory: held by the slots that serve it and the generations using it."""

    version: str
    handle: object
    council_threshold: float | None = None  # what its job calibrated (AdapterInfo.council); None: not calibrated
    users: int = 0
    freed: bool = False


@dataclass(frozen=True)
class End:
    outcome: Outcome
    head: str
    adapter_version: str
    first_token_latency_us: int
    total_latency_us: int
    council_threshold: float | None = None  # the adapter's calibrated council threshold


class HeadPool:
    """Heads sharing one engine. One generation runs at a time; up to `max_concurrent` wait or run."""

    def __init__(
        self,
        heads: list[HeadSpec],
        max_concurrent: int,
        flush_interval_ms: int = 0,
        registry: AdapterRegistry | None = None,
        state_path: Path | None = None,
        fetch: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.heads = {h.name: h for h in heads}
        self.registry = registry
        # Brings a version into the registry before it is loaded (a head pulling from the trainer into its
        # cache), and says which version "latest" is; None: the registry already holds every version.
        self.fetch = fetch
        # What each (head, track) serves, kept across restarts: written after every switch, read at start.
        self.state_path = state_path
        # (head, track) -> the adapter serving new requests there; None is the base model.
        self.slots: dict[tuple[str, Track], LoadedAdapter | None] = {
            (h.name, t): None for h in heads for t in BOTH_TRACKS
        }
        self._reload_lock = asyncio.Lock()
        self.flush_interval_s = flush_interval_ms / 1000
        self.default_head = heads[0].name
        self.max_concurrent = max_concurrent
        self.state = "loading"
        self.active = 0
        self._engine: Engine | None = None
        # llama.cpp contexts are not thread-safe: every generation runs on this one thread, in order.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        # The cancel flags of the generations running or queued, so that close() can stop them all.
        self._outstanding: set[threading.Event] = set()
        self.generations_run = 0  # started on the engine
        self.generations_dropped = 0  # queued, and skipped because their caller had gone

    async def load(self, factory: Callable[[], Engine]) -> None:
        """Build the engine on the generation thread; the pool serves once this returns."""
        try:
            self._engine = await asyncio.get_running_loop().run_in_executor(self._executor, factory)
        except Exception:
            self.state = "failed"
            raise
        self.state = "ready"

    def adapter_version(self, head: str, track: Track) -> str:
        slot = self.slots[(head, track)]
        return slot.version if slot else ""

    async def load_adapter(
        self, version: str, heads: list[str], *, tracks: tuple[Track, ...]
    ) -> tuple[str, list[str], str]:
        """Switch heads to an adapter version: loaded beside the old one, then swapped in for new requests.

        Generations already running or queued finish on the adapter they started with; an adapter no slot
        and no generation holds is freed. Returns (version, heads switched, main's previous version)."""
        if self._engine is None or self.state != "ready":
            raise Unavailable(f"the model is {self.state}", reason="MODEL_NOT_LOADED", state=self.state)
        targets = [self.spec(h).name for h in heads] or list(self.heads)
        async with self._reload_lock:
            if self.fetch is not None and self.registry is not None:
                version = await self.fetch(version)
            info = None if self.registry is None else self.registry.resolve(version)
            if info is None and version not in ("none", ""):
                raise Unavailable("no adapter registry is configured", reason="NO_ADAPTER_REGISTRY")
            previous = self.adapter_version(targets[0], Track.MAIN)
            loaded: LoadedAdapter | None = None
            if info is not None:
                loaded = next((s for s in self.slots.values() if s and s.version == info.version), None)
                if loaded is None:
                    # Loaded off the generation thread: generations keep streaming while the file loads.
                    handle = await asyncio.get_running_loop().run_in_executor(
                        None, self._engine.load_adapter, info.path
                    )
                    loaded = LoadedAdapter(
                        info.version, handle, info.council.threshold if info.council is not None else None
                    )
            replaced = [self.slots[(h, t)] for h in targets for t in tracks]
            for head in targets:
                for track in tracks:
                    self.slots[(head, track)] = loaded
            for old in {id(a): a for a in replaced if a is not None and a is not loaded}.values():
                self._release(old)
            self._save_state()
            log.info(
                "adapter switched",
                extra={
                    "version": loaded.version if loaded else "",
                    "heads": targets,
                    "tracks": [t.label for t in tracks],
                },
            )
            return (loaded.version if loaded else ""), targets, previous

    def _save_state(self) -> None:
        """Write what each (head, track) serves, atomically (a crash leaves the old file or the new one)."""
        if self.state_path is None:
            return
        state = {"serving": {f"{h}/{t.label}": (a.version if a else "") for (h, t), a in self.slots.items()}}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.chmod(0o600)
        os.replace(tmp, self.state_path)

    def saved_state(self) -> dict[str, str]:
        """What each "head/track" served before a restart, as last written ({} when unknown). Read it before
        loading anything: every switch writes the file anew."""
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            serving = json.loads(self.state_path.read_text())["serving"]
            return {str(k): str(v) for k, v in serving.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("the adapters served before the restart are unknown", extra={"error": str(exc)})
            return {}

    async def restore(self, serving: dict[str, str]) -> None:
        """Serve what `serving` says each (head, track) should: at start, what was served before the restart
        (`saved_state`), then, at start and every few seconds, the record the head replicas share
        (head_svc/serving_sync.py). A version that cannot be had leaves that slot as it is, and says so."""
        for key, version in sorted(serving.items()):
            head, _, track_label = str(key).partition("/")
            if head not in self.heads or track_label not in {t.label for t in BOTH_TRACKS}:
                continue
            track = Track.from_label(track_label)
            if self.adapter_version(head, track) == version:
                continue
            try:
                await self.load_adapter(version or "none", [head], tracks=(track,))
            except SpiralError as exc:
                log.warning(
                    "could not switch to the adapter recorded for this head and track",
                    extra={"head": head, "track": track_label, "version": version, "error": exc.message},
                )

    def _release(self, adapter: LoadedAdapter) -> None:
        """Free an adapter once no slot serves it and no generation uses it (on the generation thread)."""
        unused = adapter.users == 0 and all(s is not adapter for s in self.slots.values())
        if unused and not adapter.freed and self._engine is not None:
            adapter.freed = True
            asyncio.get_running_loop().run_in_executor(self._executor, self._engine.free_adapter, adapter.handle)

    def close(self) -> None:
        """Cancel every generation still running or queued and let the generation thread go.

        The thread is not waited for: a generation stuck in native code must not hold the process up."""
        for cancelled in self._outstanding:
            cancelled.set()
        self._executor.shutdown(wait=False)  # queued requests still run, to see their flag and end

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

    async def generate(self, head: str, request: ChatRequest, track: Track = Track.MAIN) -> AsyncIterator[Delta | End]:
        """Stream one head's answer. Closing the iterator early stops the generation within one llama.cpp
        step (a token, or a slice of the prompt's evaluation); a request still queued is dropped unrun.

        The adapter is taken from the head's slot for `track` when the call starts, and held to the end."""
        spec = self.spec(head)
        if self._engine is None or self.state != "ready":
            raise Unavailable(f"the model is {self.state}", reason="MODEL_NOT_LOADED", state=self.state)
        if self.active >= self.max_concurrent:
            raise HeadBusy(f"{self.active} generations in flight, the cap is {self.max_concurrent}", retry_after_ms=500)
        engine = self._engine
        if not any(m.role == "system" for m in request.messages):
            request = _with_system_prompt(request, spec.system_prompt)
        # The call counts against the cap from here, so that a burst cannot pile up token counts beyond it.
        self.active += 1
        try:
            # Known before generation: a prompt that cannot fit is refused here, counted in tokens off the event
            # loop and off the generation thread, without waiting in the queue behind other generations.
            tokens = await asyncio.to_thread(engine.prompt_tokens, request)
            check_fits(len(tokens), request.max_tokens, engine.context_tokens)
        except BaseException:
            self.active -= 1
            raise
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Outcome | BaseException] = asyncio.Queue()
        cancelled = threading.Event()
        flush_interval_s = self.flush_interval_s
        # Text is coalesced on the generation thread, not on the event loop: the first piece goes at once,
        # then the pieces of each flush interval go in one message, and what is left goes with the outcome.
        # The loop is woken once per message rather than once per token, and the last piece is never held
        # back behind a timer: every wake-up is CPU that llama.cpp's threads need on a small box.
        buffered: list[str] = []
        last_sent = -1.0  # perf_counter of the last message handed over; < 0: nothing sent yet

        def emit(text: str) -> None:
            nonlocal last_sent
            buffered.append(text)
            now = time.perf_counter()
            if last_sent < 0 or now - last_sent >= flush_interval_s:
                loop.call_soon_threadsafe(queue.put_nowait, "".join(buffered))
                buffered.clear()
                last_sent = now

        def hand_over(item: Outcome | BaseException) -> None:
            if buffered:
                loop.call_soon_threadsafe(queue.put_nowait, "".join(buffered))
                buffered.clear()
            loop.call_soon_threadsafe(queue.put_nowait, item)

        adapter = self.slots[(spec.name, track)]
        handle = adapter.handle if adapter else None

        def run() -> None:
            try:
                if cancelled.is_set():
                    self.generations_dropped += 1  # only this thread writes the counters
                    log.info("dropped a queued generation: its caller is gone", extra={"head": spec.name})
                    outcome = Outcome("cancelled", 0, 0)
                else:
                    self.generations_run += 1
                    outcome = engine.generate(request, emit, cancelled, handle, tokens)
                hand_over(outcome)
            except BaseException as exc:  # handed to the awaiting coroutine, which re-raises it
                hand_over(exc)

        started = time.perf_counter()
        first_token_us = 0
        held: str | Outcome | BaseException | None = None
        self._outstanding.add(cancelled)
        if adapter:
            adapter.users += 1
        try:
            loop.run_in_executor(self._executor, run)
            while True:
                item, held = (held, None) if held is not None else (await queue.get(), None)
                if isinstance(item, str):
                    if not first_token_us:
                        first_token_us = int((time.perf_counter() - started) * 1e6)
                    # A reader slower than the interval finds several messages waiting: one Delta for them all.
                    while held is None and not queue.empty():
                        more = queue.get_nowait()
                        if isinstance(more, str):
                            item += more
                        else:
                            held = more
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
                    yield End(
                        item,
                        spec.name,
                        adapter.version if adapter else "",
                        first_token_us or total_us,
                        total_us,
                        adapter.council_threshold if adapter else None,
                    )
                    return
                else:
                    raise item
        finally:
            # A caller that is gone (cancel, deadline, server stop) lands here: the engine stops at its next
            # check, or skips the request if it is still queued.
            cancelled.set()
            self._outstanding.discard(cancelled)
            self.active -= 1
            if adapter:
                adapter.users -= 1
                self._release(adapter)


def _with_system_prompt(request: ChatRequest, system_prompt: str) -> ChatRequest:
    return replace(request, messages=(Message("system", system_prompt), *request.messages))
