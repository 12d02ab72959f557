"""What a cascade tier is: one small protocol, the result it gives, and the request it sees.

A tier's `answer(request)` is an async generator. It may yield text pieces as they come (a tier that
streams, such as a lone head), and it ends with exactly one verdict: a `TierResult` when it answered, or a
`Pass` saying why it did not (missed, skipped, failed). A refusal the client must see (the cost guard's
BudgetExceeded, a head's error when nothing else can answer) is raised as a `SpiralError`. The cascade
records the tier's trace step(s) and metrics from the verdict, so a tier never touches the trace, the
request metrics or the traffic log itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from router_svc.council import Candidate
from router_svc.deadline import NO_DEADLINE, time_left_s
from spiral_common.api_keys import LOCAL_PRINCIPAL, ApiKey
from spiral_common.chat import ChatRequest
from spiral_common.enums import Outcome, Tier, Track


@dataclass(frozen=True)
class TraceStep:
    """One tier's part in a decision (a tier with several attempts, like the cloud, gives one per attempt)."""

    tier: Tier
    outcome: Outcome
    latency_us: int
    detail: str = ""


@dataclass
class Trace:
    """How an answer was produced; every answer carries one."""

    request_id: str
    track: Track
    tier: Tier | None = None
    steps: list[TraceStep] = field(default_factory=list)
    cost_usd_micros: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    adapter_version: str = ""
    total_latency_us: int = 0
    first_token_latency_us: int = 0


@dataclass(frozen=True)
class TierResult:
    """A tier's answer. The cascade emits `text` (unless `streamed`), caches it when `cacheable` and the
    request has a cache key, logs it (teaching only from the tiers in TEACHING_TIERS) and counts it."""

    tier: Tier
    text: str
    finish_reason: str  # "stop", "length", "cancelled", "content_filter", "other": only "stop" is kept
    prompt_tokens: int = 0
    completion_tokens: int = 0
    adapter_version: str = ""
    detail: str = ""  # the trace step's detail
    teacher: str = ""  # who vouches for the answer: a provider, "council:<head>", "head:<head>"
    cost_usd_micros: int = 0
    cacheable: bool = True
    streamed: bool = False  # the text was already yielded piece by piece
    pattern_id: str = ""  # the mined pattern that answered, for its feedback
    steps: tuple[TraceStep, ...] = ()  # attempts to record instead of one step (the cloud's providers)
    candidates: tuple[Candidate, ...] = ()  # the council's candidates with their scores


@dataclass(frozen=True)
class Pass:
    """A tier's "not me": why it gave no answer, for the trace."""

    outcome: Outcome  # MISSED, SKIPPED or FAILED
    detail: str = ""
    reason: str = ""  # a machine-readable reason, for the error when nothing answers
    message: str = ""  # a sentence for that error
    steps: tuple[TraceStep, ...] = ()
    candidates: tuple[Candidate, ...] = ()


class Clock:
    """Microseconds since the request started, and since the last lap (one lap per tier)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.mark = self.started

    def lap_us(self) -> int:
        now = time.perf_counter()
        lap, self.mark = int((now - self.mark) * 1e6), now
        return lap

    def total_us(self) -> int:
        return int((time.perf_counter() - self.started) * 1e6)


@dataclass
class CascadeRequest:
    """One request on its way down the cascade: what the client asked, and what earlier tiers learnt.

    Tiers may read everything and set the fields below the line for the tiers after them."""

    chat: ChatRequest
    request_id: str
    prompt: str | None  # the user's text when the conversation is a single user turn, else None
    trace: Trace
    clock: Clock
    # The caller's deadline (a time.monotonic() instant; infinity for none): a tier takes no longer than
    # `time_left_s()` gives it.
    deadline: float = NO_DEADLINE
    # The client: its key's budget scope goes with every cloud reservation ("local" when it came without a key).
    client: ApiKey = LOCAL_PRINCIPAL
    # Set by the cache tier: the adapter version now serving this track, and the key to store the answer under.
    adapter_version: str = ""
    cache_key: str = ""
    # Set by a tier that has an answer it would not vouch for (the council below its threshold): served
    # only when no later tier answers, as Tier.LOCAL_FALLBACK, and never taught.
    fallback: TierResult | None = None

    def time_left_s(self, limit_s: float = math.inf) -> float:
        """A tier's share: its own limit, cut to the caller's remaining time less a margin (0: none left)."""
        return time_left_s(self.deadline, limit_s)


class CascadeTier(Protocol):
    """One tier of the cascade."""

    tier: Tier

    def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        """Yield text pieces (streaming tiers only), then one TierResult or Pass."""
        ...
