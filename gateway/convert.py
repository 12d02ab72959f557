"""JSON request bodies to protos: the conversation and the sampling fields, shared by the OpenAI and native routes."""

from __future__ import annotations

from gateway.schemas import ChatMessageIn, SamplingFields
from spiral.common.v1 import chat_pb2
from spiral_common import errors
from spiral_common.protoconv import params_to_proto

ROLES = {
    "system": chat_pb2.ROLE_SYSTEM,
    "developer": chat_pb2.ROLE_SYSTEM,
    "user": chat_pb2.ROLE_USER,
    "assistant": chat_pb2.ROLE_ASSISTANT,
}


def chat_messages(messages: list[ChatMessageIn]) -> list[chat_pb2.ChatMessage]:
    out = []
    for i, message in enumerate(messages):
        role = ROLES.get(message.role)
        if role is None:
            raise errors.InvalidArgument(
                f"messages[{i}].role {message.role!r} is not one of {', '.join(ROLES)}",
                reason="INVALID_ROLE",
                field=f"messages[{i}].role",
            )
        out.append(chat_pb2.ChatMessage(role=role, content=message.text()))
    return out


def generation_params(body: SamplingFields) -> chat_pb2.GenerationParams:
    return params_to_proto(
        max_tokens=body.token_cap(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )
