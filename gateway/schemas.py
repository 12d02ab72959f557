"""Request bodies the gateway accepts (OpenAI chat completions and the native /orchestrate)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(description="system, developer (treated as system), user or assistant.")
    content: str | list[TextPart] = Field(description="The message text, or a list of text parts.")
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


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


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions, as the OpenAI API defines it (fields Spiral does not use are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Model id from GET /v1/models.")
    messages: list[ChatMessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="Number of choices; only 1 is supported.")


class OrchestrateBody(SamplingFields):
    """POST /orchestrate: a conversation for the cascade; the answer carries its decision trace."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessageIn]
    model: str = ""


class VoteBody(SamplingFields):
    """POST /vote: a conversation for the council alone."""

    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessageIn]


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
