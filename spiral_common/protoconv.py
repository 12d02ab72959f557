"""Conversions between the shared chat protos and the chat domain."""

from __future__ import annotations

from collections.abc import Iterable

from spiral.common.v1 import chat_pb2
from spiral_common.chat import GenerationParams, Message

ROLE_TO_NAME = {
    chat_pb2.ROLE_SYSTEM: "system",
    chat_pb2.ROLE_USER: "user",
    chat_pb2.ROLE_ASSISTANT: "assistant",
}
NAME_TO_ROLE = {name: role for role, name in ROLE_TO_NAME.items()}
FINISH_TO_PROTO = {
    "stop": chat_pb2.FINISH_REASON_STOP,
    "length": chat_pb2.FINISH_REASON_LENGTH,
    "cancelled": chat_pb2.FINISH_REASON_CANCELLED,
    "content_filter": chat_pb2.FINISH_REASON_CONTENT_FILTER,
    "other": chat_pb2.FINISH_REASON_OTHER,
}
FINISH_FROM_PROTO = {v: k for k, v in FINISH_TO_PROTO.items()}


def _role_name(role: chat_pb2.Role) -> str:
    # A role the domain does not accept keeps a readable name, so validation can name it in the error.
    if role in ROLE_TO_NAME:
        return ROLE_TO_NAME[role]
    return chat_pb2.Role.Name(role) if role in chat_pb2.Role.values() else f"role {role}"


def messages_from_proto(messages: Iterable[chat_pb2.ChatMessage]) -> list[Message]:
    return [Message(_role_name(m.role), m.content) for m in messages]


def messages_to_proto(messages: tuple[Message, ...] | list[Message]) -> list[chat_pb2.ChatMessage]:
    return [
        chat_pb2.ChatMessage(role=NAME_TO_ROLE.get(m.role, chat_pb2.ROLE_UNSPECIFIED), content=m.content)
        for m in messages
    ]


def params_from_proto(params: chat_pb2.GenerationParams) -> GenerationParams:
    return GenerationParams(
        max_tokens=params.max_tokens if params.HasField("max_tokens") else None,
        temperature=params.temperature if params.HasField("temperature") else None,
        top_p=params.top_p if params.HasField("top_p") else None,
        stop=tuple(params.stop),
        seed=params.seed if params.HasField("seed") else None,
    )


def params_to_proto(
    *, max_tokens: int | None, temperature: float | None, top_p: float | None, stop: tuple[str, ...], seed: int | None
) -> chat_pb2.GenerationParams:
    proto = chat_pb2.GenerationParams(stop=list(stop))
    if max_tokens is not None:
        proto.max_tokens = max_tokens
    if temperature is not None:
        proto.temperature = temperature
    if top_p is not None:
        proto.top_p = top_p
    if seed is not None:
        proto.seed = seed
    return proto


def usage_to_proto(prompt_tokens: int, completion_tokens: int) -> chat_pb2.Usage:
    return chat_pb2.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
