"""llama.cpp behind a small interface: one base model, the model's own chat template, token streaming."""

from __future__ import annotations

import codecs
import ctypes
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from spiral_common.chat import ChatRequest
from spiral_common.errors import CONTEXT_OVERFLOW, InvalidArgument

if TYPE_CHECKING:
    from llama_cpp.llama_types import ChatCompletionRequestMessage


@dataclass(frozen=True)
class Outcome:
    """How one generation ended."""

    finish_reason: str  # "stop", "length" or "cancelled"
    prompt_tokens: int
    completion_tokens: int


class Engine(Protocol):
    """Generates text for a conversation, calling `emit` with each new piece of text."""

    context_tokens: int

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The conversation rendered by the chat template and tokenized; safe beside a running generation."""
        ...

    def generate(
        self,
        request: ChatRequest,
        emit: Callable[[str], None],
        cancelled: threading.Event,
        adapter: object = None,
        tokens: list[int] | None = None,
    ) -> Outcome:
        """`adapter` is a handle from load_adapter, or None for the base model alone; `tokens` are the
        request's prompt_tokens when the caller has them already."""
        ...

    def load_adapter(self, path: Path) -> object: ...

    def free_adapter(self, adapter: object) -> None: ...


def check_fits(prompt_tokens: int, max_tokens: int, context_tokens: int) -> None:
    """CONTEXT_OVERFLOW unless the prompt and the answer it may grow fit the context window."""
    if prompt_tokens + max_tokens > context_tokens:
        raise InvalidArgument(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceed the context window "
            f"of {context_tokens} tokens",
            reason=CONTEXT_OVERFLOW,
            field="messages",
            limit=str(context_tokens),
        )


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
        self._llama_cpp = llama_cpp
        self._active_adapter: object = None
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
        # While a prompt is evaluated (one native call per n_batch tokens) llama.cpp asks this between the graph
        # nodes of each decode, so a cancelled call stops inside a long prompt instead of after it. It is unset
        # once tokens flow: the token loop checks the flag itself, without a callback per graph node.
        self._cancelled: threading.Event | None = None
        self._abort_callback = llama_cpp.ggml_abort_callback(self._should_abort)  # held: llama.cpp keeps a pointer
        self._no_abort_callback = llama_cpp.ggml_abort_callback(0)

    def _should_abort(self, _data: object) -> bool:
        cancelled = self._cancelled
        return cancelled is not None and cancelled.is_set()

    def _check_abort_in_decode(self, on: bool) -> None:
        callback = self._abort_callback if on else self._no_abort_callback
        self._llama_cpp.llama_set_abort_callback(self._llama.ctx, callback, None)

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        # validate_chat admits only system, user and assistant roles: each dict is one of llama.cpp's message types.
        messages = cast(
            "list[ChatCompletionRequestMessage]", [{"role": m.role, "content": m.content} for m in request.messages]
        )
        formatted = self._formatter(messages=messages)
        return self._llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special, special=True)

    def load_adapter(self, path: Path) -> object:
        """Load a GGUF LoRA beside the base weights (which stay shared); refuse one llama.cpp cannot read."""
        handle = self._llama_cpp.llama_adapter_lora_init(self._llama.model, str(path).encode())
        if not handle:
            raise InvalidArgument(f"llama.cpp could not load {path.name}", reason="ADAPTER_CORRUPT")
        return handle

    def free_adapter(self, adapter: object) -> None:
        with self._lock:
            if adapter is self._active_adapter:
                self._use_adapter(None)
            self._llama_cpp.llama_adapter_lora_free(adapter)

    def _use_adapter(self, adapter: object) -> None:
        """Switch the context's adapter. The KV cache of one adapter is never reused for another (llama.cpp
        has served stale prefixes across adapters), so a switch also forgets every cached token."""
        if adapter is self._active_adapter:
            return
        if adapter is None:
            self._llama_cpp.llama_set_adapters_lora(self._llama.ctx, None, 0, None)
        else:
            # `adapter` is the opaque pointer load_adapter returned (typed `object` by the Engine protocol).
            adapters = (self._llama_cpp.llama_adapter_lora_p_ctypes * 1)(cast(Any, adapter))
            scales = (ctypes.c_float * 1)(1.0)
            if self._llama_cpp.llama_set_adapters_lora(self._llama.ctx, adapters, 1, scales):
                raise InvalidArgument("llama.cpp refused the adapter", reason="ADAPTER_CORRUPT")
        self._llama.reset()
        self._active_adapter = adapter

    def generate(
        self,
        request: ChatRequest,
        emit: Callable[[str], None],
        cancelled: threading.Event,
        adapter: object = None,
        tokens: list[int] | None = None,
    ) -> Outcome:
        with self._lock:
            self._use_adapter(adapter)
            self._cancelled = cancelled
            self._check_abort_in_decode(True)
            try:
                return self._generate(request, emit, cancelled, tokens)
            except RuntimeError:
                if not cancelled.is_set():
                    raise
                # llama_decode was aborted part-way: forget the cached tokens, the next prompt evaluates afresh.
                self._llama.reset()
                return Outcome("cancelled", 0, 0)
            finally:
                self._check_abort_in_decode(False)
                self._cancelled = None

    def _generate(
        self, request: ChatRequest, emit: Callable[[str], None], cancelled: threading.Event, tokens: list[int] | None
    ) -> Outcome:
        if tokens is None:
            tokens = self.prompt_tokens(request)
        if cancelled.is_set():  # the caller left while the template was rendered
            return Outcome("cancelled", len(tokens), 0)
        check_fits(len(tokens), request.max_tokens, self.context_tokens)
        self._llama.set_seed(request.seed if request.seed is not None else random.getrandbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stop_holdback = max((len(s) for s in request.stop), default=1) - 1
        pending = ""
        generated = 0
        finish = "length"
        for token in self._llama.generate(tokens, temp=request.temperature, top_p=request.top_p, reset=True):
            if not generated:
                self._check_abort_in_decode(False)  # the prompt is in; the loop below checks per token
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
