"""Request bodies the gateway accepts (OpenAI chat completions and the native /orchestrate)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from spiral_common.chat import MAX_MESSAGES_CEILING

# Lists are capped in the schema because pydantic then refuses a longer one before it parses any item. The
# message cap proper is SPIRAL_MAX_MESSAGES (checked after parsing, as the router checks it); this ceiling only
# bounds the parsing.
MAX_CONTENT_PARTS = 64


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    # Any other field (tool_calls, tool_call_id, audio, ...) is refused with UNSUPPORTED_FIELD.
    model_config = ConfigDict(extra="forbid")

    role: str = Field(description="system, developer (treated as system), user or assistant.")
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] = Field(
        description=f"The message text, or a list of at most {MAX_CONTENT_PARTS} text parts."
    )
    name: str | None = Field(None, description="The author's name; accepted and ignored.")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


Messages = Annotated[list[ChatMessageIn], Field(max_length=MAX_MESSAGES_CEILING)]


class SamplingFields(BaseModel):
    max_tokens: int | None = Field(None, description="Upper bound on generated tokens.")
    max_completion_tokens: int | None = Field(None, description="Alias of max_tokens (newer OpenAI clients).")
    temperature: float | None = Field(None, description="Sampling temperature in [0, 2].")
    top_p: float | None = Field(None, description="Nucleus sampling mass in (0, 1].")
    stop: str | list[str] | None = Field(None, description="Up to 4 stop sequences.")
    seed: int | None = Field(None, description="Sampling seed, for reproducible answers.")

    def stop_sequences(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def token_cap(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class StreamOptions(BaseModel):
    include_usage: bool = False


# Fields of the OpenAI request that Spiral accepts only at the value that asks for nothing: any other value
# asks for something Spiral does not do, and is refused with UNSUPPORTED_FIELD.
NO_OP_VALUES = {"n": 1, "frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "store": False}


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions, as the OpenAI API defines it. A field not declared here (tools, tool_choice,
    response_format, logit_bias, ...) is refused with UNSUPPORTED_FIELD rather than silently dropped; the
    fields below marked "ignored" change nothing about an answer and are accepted (README, "Errors")."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model id from GET /v1/models.")
    messages: Messages
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="Number of choices; only 1 is supported.")
    user: str | None = Field(None, description="An id of the end user; accepted and ignored.")
    metadata: dict[str, str] | None = Field(
        None, max_length=16, description="Up to 16 tags for stored completions; accepted and ignored."
    )
    service_tier: str | None = Field(None, description="The OpenAI processing tier; accepted and ignored.")
    frequency_penalty: float | None = Field(None, description="Only 0 is supported.")
    presence_penalty: float | None = Field(None, description="Only 0 is supported.")
    logprobs: bool | None = Field(None, description="Only false is supported.")
    store: bool | None = Field(None, description="Only false is supported.")

    def unsupported_field(self) -> str | None:
        """The first field set to a value that asks for something Spiral does not do, or None."""
        return next((name for name, no_op in NO_OP_VALUES.items() if getattr(self, name) not in (None, no_op)), None)


class OrchestrateBody(SamplingFields):
    """POST /orchestrate: a conversation for the cascade; the answer carries its decision trace."""

    model_config = ConfigDict(extra="forbid")

    messages: Messages
    model: str = ""


class VoteBody(SamplingFields):
    """POST /vote: a conversation for the council alone."""

    model_config = ConfigDict(extra="forbid")

    messages: Messages


class FeedbackBody(BaseModel):
    """POST /feedback: a rating of an earlier answer."""

    model_config = ConfigDict(extra="forbid")

    answer_id: str = Field(description="The answer_id (or the chat completion id without its chatcmpl- prefix).")
    rating: Literal["good", "bad"]
    comment: str = Field("", max_length=2000)


class CanaryBody(BaseModel):
    """POST /admin/canary: the canary's share of router traffic."""

    model_config = ConfigDict(extra="forbid")

    percent: int = Field(ge=0, le=100, description="Share of router traffic sent to the canary, percent.")
