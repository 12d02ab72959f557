"""llama.cpp behind a small interface: one base model, the model's own chat template, token streaming."""

from __future__ import annotations

import codecs
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from spiral_common.chat import ChatRequest
from spiral_common.errors import InvalidArgument


@dataclass(frozen=True)
class Outcome:
    """How one generation ended."""

    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """Generates text for a conversation, calling `emit` with each new piece of text."""

    context_tokens: int

    def generate(self, request: ChatRequest, emit: Callable[[str], None], cancelled: threading.Event) -> Outcome: ...


class LlamaEngine:
    """llama-cpp-python over one GGUF file. A llama.cpp context is not thread-safe, so generations take a lock."""

    def __init__(self, model_path: Path, *, context_tokens: int, threads: int, gpu_layers: int) -> None:
        import llama_cpp
        from llama_cpp import Llama, llama_chat_format

        self._llama = Llama(
            model_path=str(model_path),
            n_ctx=context_tokens,
            n_threads=threads or os.cpu_count(),
            n_gpu_layers=gpu_layers,
            verbose=False,
        )
        self.context_tokens = context_tokens
        self._lock = threading.Lock()
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise InvalidArgument(f"{model_path} carries no chat template", reason="NO_CHAT_TEMPLATE")
        model = self._llama._model
        eos_id, bos_id = self._llama.token_eos(), self._llama.token_bos()
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        vocab = model.vocab
        self._is_end_of_generation = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        formatted = self._formatter(messages=[{"role": m.role, "content": m.content} for m in request.messages])
        return self._llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)

    def generate(self, request: ChatRequest, emit: Callable[[str], None], cancelled: threading.Event) -> Outcome:
        with self._lock:
            return self._generate(request, emit, cancelled)

    def _generate(self, request: ChatRequest, emit: Callable[[str], None], cancelled: threading.Event) -> Outcome:
        tokens = self.prompt_tokens(request)
        if len(tokens) + request.max_tokens > self.context_tokens:
            raise InvalidArgument(
                f"prompt ({len(tokens)} tokens) plus max_tokens ({request.max_tokens}) exceed the context window "
                f"of {self.context_tokens} tokens",
                reason="CONTEXT_OVERFLOW",
                field="messages",
                limit=str(self.context_tokens),
            )
        self._llama.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stop_holdback = max((len(s) for s in request.stop), default=1) - 1
        pending = ""
        generated = 0
        finish = "length"
        for token in self._llama.generate(tokens, temp=request.temperature, top_p=request.top_p, reset=True):
            if self._is_end_of_generation(token):
                finish = "stop"
                break
            generated += 1
            pending += decoder.decode(self._llama.detokenize([token]))
            hit = _first_stop(pending, request.stop)
            if hit is not None:
                pending = pending[:hit]
                finish = "stop"
                break
            ready = len(pending) - stop_holdback
            if ready > 0:
                emit(pending[:ready])
                pending = pending[ready:]
            if cancelled.is_set():
                finish = "cancelled"
                break
            if generated >= request.max_tokens:
                break
        # Bytes of a character cut off by max_tokens stay undecoded rather than becoming U+FFFD.
        if pending:
            emit(pending)
        return Outcome(finish, len(tokens), generated)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(positions) if positions else None
