"""Client API keys end to end in-process: a real router on port 0 (real Redis, the real cloud client against a
fake cloud) and the gateway in front of it; what a client sees over gRPC and over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from deploy.gate.fake_cloud import FakeCloud, providers_json
from deploy.platform import free_ports
from gateway.app import create_app
from router_svc.cloud import OpenAICompatibleClient
from router_svc.server import RouterDeps, create_server
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.api_keys import ApiKeyStore, utc_day
from spiral_common.auth import bearer
from spiral_common.config import REPO_ROOT, ConfigError, load_settings
from spiral_common.specs import load_providers
from tests.helpers import reason_of

ADMIN_TOKEN = "admin-secret"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def cloud():
    fake = FakeCloud()
    fake.start()
    yield fake
    fake.stop()


class Router:
    def __init__(self, runtime, settings, store):
        self.runtime, self.settings, self.store = runtime, settings, store
        self.address = f"127.0.0.1:{runtime.port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = router_pb2_grpc.RouterServiceStub(self.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)

    @asynccontextmanager
    async def gateway(self) -> AsyncIterator[httpx.AsyncClient]:
        """The gateway app in front of this router, on the test's own event loop (the router serves on it too)."""
        settings = load_settings(
            {
                "SPIRAL_PROFILE": "quick_test",
                "SPIRAL_CLIENT_AUTH": self.settings.client_auth,
                "SPIRAL_GATEWAY_REQUEST_TIMEOUT_S": "20",
            },
            envoy_addr=self.address,
            envoy_internal_addr=self.address,  # the admin RPCs go to Envoy's internal listener: here, the router
        )
        app = create_app(settings, CollectorRegistry())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield client


@pytest.fixture
async def make_router(cloud, redis_client, prefix, tmp_path):
    providers_file = tmp_path / "providers.json"
    body = providers_json(cloud)
    body["providers"] = body["providers"][:1]  # one provider: a refusal is final
    providers_file.write_text(json.dumps(body))
    started = []

    async def make(client_auth: str = "off") -> Router:
        settings = load_settings(
            {
                "SPIRAL_PROFILE": "quick_test",
                "SPIRAL_RUN_DIR": str(tmp_path),
                "SPIRAL_REDIS_PREFIX": prefix,
                "SPIRAL_COUNCIL_HEADS": "",  # no local answer: every new question goes to the cloud
                "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers_file),
                "SPIRAL_DEFAULT_MAX_TOKENS": "32",
                "SPIRAL_CLIENT_AUTH": client_auth,
            }
        )
        providers = load_providers(settings.cloud.cloud_providers_file)
        deps = RouterDeps(
            heads=None,  # type: ignore[arg-type]  # no council, no head is ever asked
            redis=redis_client,
            cloud_client=OpenAICompatibleClient(
                {p.name: "k" for p in providers}, providers, timeout_s=5, stall_timeout_s=1
            ),
            providers=providers,
            admin_token=ADMIN_TOKEN,
        )
        runtime = create_server(settings, deps, port=0)
        await runtime.start()
        router = Router(runtime, settings, ApiKeyStore(redis_client, prefix=prefix))
        started.append(router)
        return router

    yield make
    for router in started:
        await router.channel.close()
        await router.runtime.server.stop(None)


def ask(text: str = QUESTION, **kwargs) -> router_pb2.OrchestrateRequest:
    return router_pb2.OrchestrateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(temperature=0.0),
        **kwargs,
    )


def details(exc: grpc.aio.AioRpcError) -> list:
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return list(status_pb2.Status.FromString(value).details)
    return []


HELLO = {"model": "spiral", "messages": [{"role": "user", "content": "hello there"}]}


async def test_with_keys_required_a_call_without_a_valid_key_is_unauthenticated(make_router):
    router = await make_router("keys")
    _, token = await router.store.create("alice")
    for metadata in ((), bearer("sk-spiral-0123456789abcdef.nope"), bearer(ADMIN_TOKEN)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router.stub.Orchestrate(ask(), metadata=metadata)
        assert reason_of(refused.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "BAD_API_KEY")
    reply = await router.stub.Orchestrate(ask(), metadata=bearer(token))
    assert reply.trace.tier == router_pb2.TIER_CLOUD
    async with router.gateway() as http:
        refused = await http.post("/v1/chat/completions", json=HELLO)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "BAD_API_KEY"
        wrong = await http.post(
            "/orchestrate", json=HELLO, headers={"authorization": "Bearer sk-spiral-0123456789abcdef.x"}
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["reason"] == "BAD_API_KEY"
        ok = await http.post("/v1/chat/completions", json=HELLO, headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text


async def test_with_auth_off_a_call_without_a_key_runs_as_local_and_a_key_keeps_its_limits(make_router):
    router = await make_router("off")
    _, token = await router.store.create("bob", models=["gpt-9"])
    assert (await router.stub.Orchestrate(ask())).trace.tier == router_pb2.TIER_CLOUD
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.stub.Orchestrate(ask(), metadata=bearer(token))
    code, reason, metadata = reason_of(refused.value)
    assert (code, reason, metadata["api_key"]) == (grpc.StatusCode.PERMISSION_DENIED, "MODEL_NOT_ALLOWED", "bob")
    async with router.gateway() as http:
        assert (await http.post("/v1/chat/completions", json=HELLO)).status_code == 200
        denied = await http.post("/v1/chat/completions", json=HELLO, headers={"authorization": f"Bearer {token}"})
        assert denied.status_code == 403 and denied.json()["error"]["reason"] == "MODEL_NOT_ALLOWED"


async def test_a_key_over_its_rate_gets_429_with_the_time_to_wait(make_router):
    router = await make_router()
    _, token = await router.store.create("carol", rps=1)
    await router.stub.Orchestrate(ask(), metadata=bearer(token))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.stub.Orchestrate(ask(), metadata=bearer(token))
    assert reason_of(refused.value)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "KEY_RATE_LIMITED")
    retry = [d for d in details(refused.value) if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(retry) == 1
    async with router.gateway() as http:
        limited = await http.post("/orchestrate", json=HELLO, headers={"authorization": f"Bearer {token}"})
        assert limited.status_code == 429 and limited.json()["error"]["reason"] == "KEY_RATE_LIMITED"
        assert limited.headers["retry-after"] == "1"


async def test_a_spent_key_is_refused_by_the_cloud_only_and_free_tiers_still_answer_it(make_router):
    router = await make_router()
    # Worst case 38 + 32 * 2 = 102 micro-USD a call, actual 20 + 4 * 2 = 28: two calls fit in 150, a third not.
    _, token = await router.store.create("dave", daily_usd_micros=150)
    first = await router.stub.Orchestrate(ask(), metadata=bearer(token))
    await router.stub.Orchestrate(ask("What is the capital of Spain?"), metadata=bearer(token))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.stub.Orchestrate(ask("What is the capital of Italy?"), metadata=bearer(token))
    code, reason, metadata = reason_of(refused.value)
    assert (code, reason, metadata["subject"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "KEY_BUDGET_EXCEEDED",
        "api_key:dave",
    )
    (quota,) = [d for d in details(refused.value) if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    failure = error_details_pb2.QuotaFailure()
    quota.Unpack(failure)
    assert failure.violations[0].subject == "api_key:dave"
    cached = await router.stub.Orchestrate(ask(), metadata=bearer(token))  # the cache is free
    assert cached.trace.tier == router_pb2.TIER_CACHE and cached.text == first.text
    assert (await router.stub.Orchestrate(ask("What is the capital of Italy?"))).trace.tier == router_pb2.TIER_CLOUD
    async with router.gateway() as http:
        spent = await http.post(
            "/orchestrate",
            json={**HELLO, "messages": [{"role": "user", "content": "What is the capital city of Portugal?"}]},
            headers={"authorization": f"Bearer {token}"},
        )
        assert spent.status_code == 429 and spent.json()["error"]["reason"] == "KEY_BUDGET_EXCEEDED"
        listed = await http.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert (await http.get("/admin/keys")).status_code == 401
    keys = {k["name"]: k for k in listed.json()["keys"]}  # int64 as JSON strings, as /admin/budget has them
    assert (keys["dave"]["spent_usd_micros"], keys["dave"]["daily_usd_micros"]) == ("56", "150")
    assert (keys["dave"]["reserved_usd_micros"], keys["dave"]["requests"]) == ("0", "5")
    assert keys["local"]["spent_usd_micros"] == "28" and "daily_usd_micros" not in keys["local"]
    assert token not in listed.text
    metrics = router.runtime.registry.get_sample_value
    assert metrics("spiral_api_key_spend_usd_total", {"api_key": "dave"}) == pytest.approx(56e-6)
    assert metrics("spiral_api_key_requests_total", {"api_key": "dave"}) == 5
    assert metrics("spiral_api_key_refusals_total", {"api_key": "dave", "reason": "KEY_BUDGET_EXCEEDED"}) == 2


async def test_only_the_key_that_got_an_answer_or_the_admin_may_rate_it_and_only_once(make_router):
    router = await make_router()
    _, erin = await router.store.create("erin")
    _, frank = await router.store.create("frank")
    answer = await router.stub.Orchestrate(ask(), metadata=bearer(erin))
    rate = router_pb2.SubmitFeedbackRequest(answer_id=answer.answer_id, rating=router_pb2.RATING_BAD)
    for metadata in (bearer(frank), ()):  # another key; no key ("local")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await router.stub.SubmitFeedback(rate, metadata=metadata)
        assert reason_of(refused.value)[:2] == (grpc.StatusCode.PERMISSION_DENIED, "NOT_YOUR_ANSWER")
    assert (await router.stub.SubmitFeedback(rate, metadata=bearer(erin))).recorded
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await router.stub.SubmitFeedback(rate, metadata=bearer(erin))
    assert reason_of(again.value)[1] == "ALREADY_RATED"
    other = await router.stub.Orchestrate(ask("Name a mountain."), metadata=bearer(erin))
    async with router.gateway() as http:
        body = {"answer_id": other.answer_id, "rating": "bad"}
        denied = await http.post("/feedback", json=body, headers={"authorization": f"Bearer {frank}"})
        assert denied.status_code == 403 and denied.json()["error"]["reason"] == "NOT_YOUR_ANSWER"
        admin = await http.post("/feedback", json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.status_code == 200 and admin.json() == {"recorded": True}


async def test_list_api_keys_needs_the_admin_token(make_router):
    router = await make_router()
    await router.store.create("gina", daily_usd_micros=1_000, rps=5, models=["spiral"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await router.admin.ListApiKeys(admin_pb2.ListApiKeysRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    reply = await router.admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=bearer(ADMIN_TOKEN))
    gina = next(k for k in reply.keys if k.name == "gina")
    assert (gina.daily_usd_micros, gina.rps, list(gina.models), gina.requests) == (1_000, 5, ["spiral"], 0)
    assert gina.created_at.seconds > 0


def test_the_gateway_refuses_to_start_off_loopback_without_client_auth():
    with pytest.raises(ConfigError, match="SPIRAL_CLIENT_AUTH=keys"):
        create_app(load_settings({}, gateway_addr="0.0.0.0:8080"), CollectorRegistry())
    create_app(load_settings({}, gateway_addr="0.0.0.0:8080", client_auth="keys"), CollectorRegistry())
    (port,) = free_ports(1)
    env = {
        **os.environ,
        "SPIRAL_GATEWAY_ADDR": f"0.0.0.0:{port}",
        "SPIRAL_CLIENT_AUTH": "off",
        "SPIRAL_PROFILE": "quick_test",
    }
    started = subprocess.run(
        [sys.executable, "-m", "gateway"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert started.returncode == 2
    assert "not a loopback address" in started.stderr and "SPIRAL_CLIENT_AUTH=keys" in started.stderr


async def test_requests_of_keys_without_a_rate_are_counted_in_memory_and_written_out_on_a_graceful_stop(
    make_router, redis_client
):
    router = await make_router()
    _, token = await router.store.create("gina")  # no rate: nothing to check, so no round trip per request
    await router.stub.Orchestrate(ask(), metadata=bearer(token))  # a cloud answer, then cache hits
    for _ in range(9):
        await router.stub.Orchestrate(ask(), metadata=bearer(token))
    for _ in range(3):
        await router.stub.Orchestrate(ask())  # auth off: `local`
    day_counts = router.store.requests_key(utc_day())
    assert router.runtime.registry.get_sample_value("spiral_api_key_requests_total", {"api_key": "gina"}) == 10
    await router.runtime.server.stop(None)
    await router.runtime.stop_background()  # what SIGTERM does after the last call
    assert await router.store.requests_on(utc_day()) == {"gina": 10, "local": 3}
    assert 0 < await redis_client.ttl(day_counts) <= 2 * 24 * 3600
