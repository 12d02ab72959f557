"""JSON request bodies to protos: the conversation and the sampling fields, shared by the OpenAI and native routes.

Both are checked here against the limits the router applies (`validate_chat`), so that a request over a limit
is refused before any call and no out-of-range integer ever reaches a protobuf field.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.schemas import ChatMessageIn, SamplingFields
from spiral.common.v1 import chat_pb2
from spiral_common.chat import GenerationParams, Limits, Message, validate_chat
from spiral_common.protoconv import messages_to_proto, params_to_proto

# The OpenAI roles and the chat domain's: "developer" is the newer name of "system". Any other role is kept as
# it came, so that validation names it in the error.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class CheckedChat:
    """A conversation that passed the limits, as the protos of the router's requests."""

    messages: list[chat_pb2.ChatMessage]
    params: chat_pb2.GenerationParams


def checked_chat(messages: list[ChatMessageIn], body: SamplingFields, limits: Limits) -> CheckedChat:
    """The conversation and sampling fields as protos; raises InvalidArgument naming the first bad field."""
    # The params as sent (unset stays unset), for the router and heads apply their own defaults.
    params = GenerationParams(
        max_tokens=body.token_cap(),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_sequences(),
        seed=body.seed,
    )
    chat = validate_chat([Message(ROLES.get(m.role, m.role), m.text()) for m in messages], params, limits)
    return CheckedChat(
        messages=messages_to_proto(chat.messages),
        params=params_to_proto(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
            seed=params.seed,
        ),
    )
