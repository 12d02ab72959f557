"""The cloud tier's bookkeeping never under-counts (real Redis, scripted providers): a failed call that reached
the provider pays its prompt, a connection never made pays nothing, and the per-request cap covers every
attempt of one request, on this router and on another (an Envoy retry)."""

from __future__ import annotations

import httpx
import openai
import pytest

from router_svc.cloud import (
    CloudFallback,
    OpenAICompatibleClient,
    ProviderFailure,
    ProviderReply,
    prompt_token_bound,
    reached_provider,
)
from spiral_common.budget import BudgetLedger
from spiral_common.chat import ChatRequest, Message
from spiral_common.errors import BudgetExceeded
from spiral_common.specs import CloudProvider
from tests.helpers import free_ports

# $1 per million tokens in and out: a token costs one micro-dollar.
PROVIDERS = [CloudProvider(name, "http://unused", name, "KEY", 1_000_000, 1_000_000) for name in ("first", "second")]
CHAT = ChatRequest(messages=(Message("user", "x" * 92),), max_tokens=200, temperature=0.0, top_p=1.0)
PROMPT = prompt_token_bound(CHAT)  # 92 bytes + 8 = 100 tokens


class ScriptedProviders:
    """Each provider fails or answers as told; records the max_tokens it was given."""

    def __init__(self, outcomes: dict[str, ProviderFailure | ProviderReply]) -> None:
        self.outcomes = outcomes
        self.max_tokens: dict[str, int] = {}

    async def complete(self, provider, chat, max_tokens):
        self.max_tokens[provider.name] = max_tokens
        outcome = self.outcomes[provider.name]
        if isinstance(outcome, ProviderFailure):
            raise outcome
        return outcome


@pytest.fixture
def ledger(redis_client, prefix):
    return BudgetLedger(redis_client, prefix=prefix, pool_usd_micros=100_000, reservation_ttl_s=60)


def _cloud(ledger, outcomes, cap=250) -> tuple[CloudFallback, ScriptedProviders]:
    client = ScriptedProviders(outcomes)
    return CloudFallback(PROVIDERS, client, ledger, per_request_cap_usd_micros=cap), client


async def test_a_failure_after_the_request_reached_the_provider_pays_its_prompt_and_the_next_gets_the_rest(ledger):
    outcomes = {
        "first": ProviderFailure("PROVIDER_ERROR", "500", billable_tokens=30),
        "second": ProviderReply("ok", "stop", 100, 10),
    }
    cloud, client = _cloud(ledger, outcomes)
    answer = await cloud.answer(CHAT, [], request_key="r1")
    # The first attempt is charged 100 + 30; the cap (250) leaves the second 120 of which its prompt takes 100.
    assert client.max_tokens == {"first": 150, "second": 20}
    assert answer.cost_usd_micros == 110
    assert (await ledger.status()).spent_usd_micros == 130 + 110


async def test_a_connection_never_made_costs_nothing(ledger):
    never = ProviderFailure("PROVIDER_ERROR", "refused", reached=False)
    cloud, _ = _cloud(ledger, {"first": never, "second": never})
    with pytest.raises(Exception, match="every cloud provider failed"):
        await cloud.answer(CHAT, [], request_key="r2")
    status = await ledger.status()
    assert (status.spent_usd_micros, status.reserved_usd_micros) == (0, 0)


async def test_a_retry_of_the_same_request_on_another_router_shares_its_cap(ledger):
    spent = {"first": ProviderReply("ok", "stop", 100, 150), "second": ProviderReply("ok", "stop", 100, 150)}
    router_a, _ = _cloud(ledger, spent)
    router_b, _ = _cloud(ledger, spent)
    await router_a.answer(CHAT, [], request_key="r3:digest")
    with pytest.raises(BudgetExceeded) as caught:  # 250 of the cap are spent: nothing is left for a retry
        await router_b.answer(CHAT, [], request_key="r3:digest")
    assert caught.value.metadata["scope"] == "request:r3:digest"
    await router_b.answer(CHAT, [], request_key="r4:digest")  # another request has its own cap


async def test_a_connection_refused_by_a_real_client_counts_as_never_reached():
    """The real openai client against a port nobody listens on: its error says the request never left."""
    (port,) = free_ports(1)
    provider = CloudProvider("down", f"http://127.0.0.1:{port}/v1", "m", "KEY", 1_000_000, 1_000_000)
    client = OpenAICompatibleClient({"down": "k"}, [provider], timeout_s=5, stall_timeout_s=5)
    with pytest.raises(ProviderFailure) as caught:
        await client.complete(provider, CHAT, 8)
    assert not caught.value.reached
    request = httpx.Request("POST", "http://provider/v1/chat/completions")
    assert reached_provider(openai.APITimeoutError(request=request))  # a timeout may have been billed
