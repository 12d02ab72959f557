"""The cloud tier: OpenAI-compatible providers in fall-over order, under the per-request cap and the daily pool.

Before a call the worst case is reserved from the daily pool: every prompt byte counted as a token
(a BPE token is at least one byte, so this bounds any provider's tokenizer) plus max_tokens, at the
provider's prices. Above the per-request cap, max_tokens is lowered to fit, or the request is refused.
After the call the reservation is settled with the provider's reported usage; on every other exit
(error, stall, timeout, our caller cancelling) it is settled with what may have been billed, or
released when nothing was. Answers are read whole before they are returned, so a provider that
breaks mid-stream can be replaced by the next one without the client seeing half an answer twice.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

import openai

from router_svc.deadline import NO_DEADLINE, time_left_s
from spiral_common.budget import BudgetLedger, Reservation, Scope
from spiral_common.chat import ChatRequest
from spiral_common.errors import BudgetExceeded, DeadlineExceeded, Unavailable
from spiral_common.specs import CloudProvider

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger(__name__)
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators a chat format adds per message


@dataclass(frozen=True)
class ProviderReply:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ProviderFailure(Exception):
    """A provider call failed; `billable_tokens` says how many completion tokens it may still charge, and
    `reached` whether the request may have reached the provider (then its prompt may be billed too)."""

    def __init__(self, reason: str, detail: str, billable_tokens: int = 0, *, reached: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.billable_tokens = billable_tokens
        self.reached = reached


def reached_provider(exc: openai.APIError) -> bool:
    """Whether a failed call may have reached the provider (and be billed): only a connection that was never
    made is known not to have. The openai client wraps its HTTP library's ConnectError (httpx's, or httpx2's in
    the openai this project pins), so the cause is known by its class name, not by one library's class."""
    if not isinstance(exc, openai.APIConnectionError) or exc.__cause__ is None:
        return True
    return not any(cls.__name__ == "ConnectError" for cls in type(exc.__cause__).__mro__)


class ProviderClient(Protocol):
    async def complete(self, provider: CloudProvider, chat: ChatRequest, max_tokens: int) -> ProviderReply: ...


class OpenAICompatibleClient:
    """Streams a chat completion with the official openai client; a silent stream counts as broken."""

    def __init__(
        self, keys: dict[str, str], providers: list[CloudProvider], *, timeout_s: float, stall_timeout_s: float
    ):
        # No retries inside the client: falling over to the next provider is the retry.
        self._clients = {
            p.name: openai.AsyncOpenAI(base_url=p.base_url, api_key=keys[p.name], timeout=timeout_s, max_retries=0)
            for p in providers
        }
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s

    async def complete(self, provider: CloudProvider, chat: ChatRequest, max_tokens: int) -> ProviderReply:
        client = self._clients[provider.name]
        pieces: list[str] = []
        finish, usage = "stop", None
        try:
            async with asyncio.timeout(self.timeout_s):
                stream = await client.chat.completions.create(
                    model=provider.model,
                    # validate_chat admits only system, user and assistant roles: each is an OpenAI message param.
                    messages=cast(
                        "list[ChatCompletionMessageParam]",
                        [{"role": m.role, "content": m.content} for m in chat.messages],
                    ),
                    max_tokens=max_tokens,
                    temperature=chat.temperature,
                    top_p=chat.top_p,
                    stop=list(chat.stop) or None,
                    seed=chat.seed,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = aiter(stream)
                try:
                    while True:
                        try:
                            chunk = await asyncio.wait_for(anext(chunks), self.stall_timeout_s)
                        except StopAsyncIteration:
                            break
                        if chunk.usage:
                            usage = chunk.usage
                        for choice in chunk.choices:
                            pieces.append(choice.delta.content or "")
                            finish = choice.finish_reason or finish
                finally:
                    await stream.close()
        except TimeoutError as exc:
            raise ProviderFailure("PROVIDER_STALLED", f"no data for {self.stall_timeout_s}s", len(pieces)) from exc
        except openai.APIError as exc:
            raise ProviderFailure(
                "PROVIDER_ERROR", f"{type(exc).__name__}: {exc}", len(pieces), reached=reached_provider(exc)
            ) from exc
        if usage is None:
            raise ProviderFailure("PROVIDER_NO_USAGE", "the stream ended without usage", len(pieces))
        if finish not in ("stop", "length", "content_filter"):
            finish = "other"  # tool or function calls (never asked for), or none given: served, never kept
        return ProviderReply("".join(pieces), finish, usage.prompt_tokens, usage.completion_tokens)


@dataclass
class Attempt:
    provider: str
    outcome: str  # "answered", "failed", "refused", "skipped"
    latency_us: int
    detail: str = ""


@dataclass
class CloudAnswer:
    provider: str
    reply: ProviderReply
    cost_usd_micros: int
    max_tokens: int


def cost_usd_micros(prompt_tokens: int, completion_tokens: int, provider: CloudProvider) -> int:
    """Integer micro-dollars, rounded up."""
    numerator = (
        prompt_tokens * provider.input_usd_micros_per_million_tokens
        + completion_tokens * provider.output_usd_micros_per_million_tokens
    )
    return -(-numerator // 1_000_000)


def prompt_token_bound(chat: ChatRequest) -> int:
    return sum(len(m.content.encode()) + MESSAGE_OVERHEAD_TOKENS for m in chat.messages)


class CloudFallback:
    def __init__(
        self,
        providers: list[CloudProvider],
        client: ProviderClient,
        ledger: BudgetLedger,
        *,
        per_request_cap_usd_micros: int,
    ) -> None:
        self.providers = providers
        self.client = client
        self.ledger = ledger
        self.cap = per_request_cap_usd_micros
        self._orphans: set[asyncio.Future[None]] = set()  # releases in flight, kept alive until done

    def plan(self, provider: CloudProvider, chat: ChatRequest, cap_left: int | None = None) -> int:
        """The max_tokens this provider may use within what is left of the per-request cap (0: it cannot fit)."""
        cap = self.cap if cap_left is None else cap_left
        prompt_bound = prompt_token_bound(chat)
        if cost_usd_micros(prompt_bound, chat.max_tokens, provider) <= cap:
            return chat.max_tokens
        room = cap * 1_000_000 - prompt_bound * provider.input_usd_micros_per_million_tokens
        return max(room // provider.output_usd_micros_per_million_tokens, 0)

    async def _reserve(self, amount_usd_micros: int, subject: str, scopes: Sequence[Scope]) -> Reservation:
        """Reserve, even when our caller cancels mid-way: Redis may grant the reservation after we stop
        waiting, so an orphaned grant is released as soon as it arrives instead of waiting to expire."""
        task = asyncio.ensure_future(self.ledger.reserve(amount_usd_micros, subject=subject, scopes=scopes))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, task: asyncio.Future[Reservation]) -> None:
        if not task.cancelled() and task.exception() is None:
            release = asyncio.ensure_future(self.ledger.release(task.result()))
            self._orphans.add(release)
            release.add_done_callback(self._orphans.discard)

    async def _close(
        self, reservation: Reservation, provider: CloudProvider, prompt_bound: int, billable: int, reached: bool
    ) -> int:
        """Settle what a failed call may have cost (its prompt at least, once the request may have reached the
        provider), or release it when it never did. Returns what was charged.

        Shielded: the bookkeeping finishes even while our own task is being cancelled."""
        if not reached:
            await asyncio.shield(self.ledger.release(reservation))
            return 0
        charged = cost_usd_micros(prompt_bound, billable, provider)
        await asyncio.shield(self.ledger.settle(reservation, charged))
        return charged

    async def answer(
        self,
        chat: ChatRequest,
        attempts: list[Attempt],
        deadline: float = NO_DEADLINE,
        request_key: str = "",
        scopes: Sequence[Scope] = (),
    ) -> CloudAnswer:
        """The first provider that answers within budget; BudgetExceeded or Unavailable otherwise, or
        DeadlineExceeded when the caller's `deadline` (a time.monotonic() instant) passes first.

        The per-request cap covers every provider attempt of one client request: on this router by what the
        earlier attempts were charged, and on any router (an Envoy retry of the same request) by the ledger's
        scope for `request_key` (the request id and the request's digest). Each provider tried is appended to
        `attempts`, whatever the outcome. Each reservation also counts against `scopes` (the client key's budget),
        in the same atomic step."""
        refusal: BudgetExceeded | None = None
        scope = Scope.for_request(request_key or uuid.uuid4().hex, self.cap)
        charged = 0  # by this request's earlier attempts here
        for provider in self.providers:
            started = time.perf_counter()
            left_s = time_left_s(deadline)
            if not left_s:
                attempts.append(Attempt(provider.name, "skipped", 0, "DEADLINE_EXCEEDED"))
                raise DeadlineExceeded("the caller's deadline passed before a cloud provider answered")
            max_tokens = self.plan(provider, chat, self.cap - charged)
            if max_tokens < 1:
                refusal = BudgetExceeded(
                    f"the prompt alone would cost more than the per-request cap of {self.cap} micro-USD at "
                    f"{provider.name}'s prices",
                    subject="per_request_cap",
                    limit_usd_micros=self.cap,
                    provider=provider.name,
                )
                attempts.append(Attempt(provider.name, "refused", _since_us(started), "PER_REQUEST_CAP"))
                continue
            prompt_bound = prompt_token_bound(chat)
            try:
                reservation = await self._reserve(
                    cost_usd_micros(prompt_bound, max_tokens, provider), f"a {provider.name} call", [scope, *scopes]
                )
            except BudgetExceeded as exc:
                refusal = exc
                limit = {"daily_pool": "DAILY_POOL", "per_request_cap": "PER_REQUEST_CAP"}.get(exc.subject, exc.reason)
                attempts.append(Attempt(provider.name, "refused", _since_us(started), limit))
                continue
            try:
                async with asyncio.timeout(None if math.isinf(left_s) else left_s):
                    reply = await self.client.complete(provider, chat, max_tokens)
            except ProviderFailure as exc:
                charged += await self._close(reservation, provider, prompt_bound, exc.billable_tokens, exc.reached)
                attempts.append(Attempt(provider.name, "failed", _since_us(started), exc.reason))
                log.warning("cloud provider failed", extra={"provider": provider.name, "reason": exc.reason})
                continue
            except TimeoutError as exc:
                # The caller's time ran out mid-call: the provider may bill the whole call.
                await self._close(reservation, provider, prompt_bound, max_tokens, True)
                attempts.append(Attempt(provider.name, "failed", _since_us(started), "DEADLINE_EXCEEDED"))
                raise DeadlineExceeded(f"the caller's deadline passed while {provider.name} answered") from exc
            except BaseException:
                # Our caller went away (or we crashed) mid-call: the provider may bill the whole call.
                await self._close(reservation, provider, prompt_bound, max_tokens, True)
                raise
            actual = cost_usd_micros(reply.prompt_tokens, reply.completion_tokens, provider)
            over = await asyncio.shield(self.ledger.settle(reservation, actual))
            if over:  # the worst-case bound was wrong: recorded by the ledger (a metric, an alert), and said here
                log.error(
                    "a provider's usage went past its reservation",
                    extra={
                        "provider": provider.name,
                        "over_usd_micros": over,
                        "reserved": reservation.amount_usd_micros,
                    },
                )
            attempts.append(Attempt(provider.name, "answered", _since_us(started)))
            return CloudAnswer(provider.name, reply, actual, max_tokens)
        if refusal is not None:
            raise refusal
        if not self.providers:
            raise Unavailable("no cloud provider is configured", reason="NO_CLOUD_PROVIDER")
        raise Unavailable(
            "every cloud provider failed: " + ", ".join(f"{a.provider} {a.detail}" for a in attempts),
            reason="CLOUD_UNAVAILABLE",
        )


def _since_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
