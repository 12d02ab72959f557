"""The chat domain shared by router and heads: messages, generation parameters and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spiral_common.errors import InvalidArgument

if TYPE_CHECKING:
    from spiral_common.config import Settings

# A lone surrogate (as JSON's "\ud800" decodes) is not text: it cannot be encoded as UTF-8 for protobuf.
_SURROGATE = re.compile("[\ud800-\udfff]")

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 32
# No setting may raise the message cap above this: the gateway's request schema refuses more messages before it
# parses any of them.
MAX_MESSAGES_CEILING = 4096
# A seed travels as a protobuf int64.
SEED_RANGE = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings; None means "the service default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Limits:
    max_prompt_chars: int
    max_tokens_limit: int
    default_max_tokens: int
    default_temperature: float
    default_top_p: float = 1.0
    max_messages: int = 256


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_prompt_chars=settings.limits.max_prompt_chars,
        max_tokens_limit=settings.limits.max_tokens_limit,
        default_max_tokens=settings.limits.default_max_tokens,
        default_temperature=settings.limits.default_temperature,
        max_messages=settings.limits.max_messages,
    )


@dataclass(frozen=True)
class ChatRequest:
    """A validated conversation with every parameter resolved to a concrete value."""

    messages: tuple[Message, ...]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    model: str = ""
    # The parameters as the caller sent them (None = unset), for heads that apply their own defaults.
    requested: GenerationParams = GenerationParams()


def validate_chat(
    messages: list[Message] | tuple[Message, ...],
    params: GenerationParams,
    limits: Limits,
    *,
    model: str = "",
) -> ChatRequest:
    """Check a conversation against the limits; raise InvalidArgument naming the first bad field."""
    if not messages:
        raise InvalidArgument("messages must hold at least one message", reason="EMPTY_MESSAGES", field="messages")
    if len(messages) > limits.max_messages:
        raise InvalidArgument(
            f"the conversation has {len(messages)} messages, more than the maximum {limits.max_messages}",
            reason="TOO_MANY_MESSAGES",
            field="messages",
            limit=str(limits.max_messages),
        )
    total = 0
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise InvalidArgument(
                f"messages[{i}].role {message.role!r} is not one of {', '.join(ROLES)}",
                reason="INVALID_ROLE",
                field=f"messages[{i}].role",
            )
        if _SURROGATE.search(message.content):
            raise InvalidArgument(
                f"messages[{i}].content holds a lone UTF-16 surrogate, which is not text (it cannot be UTF-8)",
                reason="INVALID_TEXT",
                field=f"messages[{i}].content",
            )
        total += len(message.content)
    if not any(m.content.strip() for m in messages if m.role != "system"):
        raise InvalidArgument("the conversation has no user or assistant text", reason="EMPTY_PROMPT", field="messages")
    if total > limits.max_prompt_chars:
        raise InvalidArgument(
            f"the prompt has {total} characters, more than the maximum {limits.max_prompt_chars}",
            reason="PROMPT_TOO_LONG",
            field="messages",
            limit=str(limits.max_prompt_chars),
        )
    max_tokens = limits.default_max_tokens if params.max_tokens is None else params.max_tokens
    if not 1 <= max_tokens <= limits.max_tokens_limit:
        raise InvalidArgument(
            f"max_tokens must be in [1, {limits.max_tokens_limit}], got {max_tokens}",
            reason="MAX_TOKENS_OUT_OF_RANGE",
            field="params.max_tokens",
            limit=str(limits.max_tokens_limit),
        )
    temperature = limits.default_temperature if params.temperature is None else params.temperature
    if not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(
            f"temperature must be in [0, 2], got {temperature}",
            reason="TEMPERATURE_OUT_OF_RANGE",
            field="params.temperature",
        )
    top_p = limits.default_top_p if params.top_p is None else params.top_p
    if not 0.0 < top_p <= 1.0:
        raise InvalidArgument(
            f"top_p must be in (0, 1], got {top_p}", reason="TOP_P_OUT_OF_RANGE", field="params.top_p"
        )
    if len(params.stop) > MAX_STOP_SEQUENCES or any(
        not s or len(s) > MAX_STOP_CHARS or _SURROGATE.search(s) for s in params.stop
    ):
        raise InvalidArgument(
            f"stop takes at most {MAX_STOP_SEQUENCES} non-empty sequences of at most {MAX_STOP_CHARS} characters",
            reason="INVALID_STOP",
            field="params.stop",
        )
    if params.seed is not None and not SEED_RANGE[0] <= params.seed <= SEED_RANGE[1]:
        raise InvalidArgument(
            f"seed must be a 64-bit integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}], got {params.seed}",
            reason="SEED_OUT_OF_RANGE",
            field="params.seed",
        )
    return ChatRequest(
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        stop=tuple(params.stop),
        seed=params.seed,
        model=model,
        requested=params,
    )
