"""The per-key hammer: two router processes, one Redis, one $0.10 pool, three client API keys (two with small daily
budgets, one uncapped) and 300 cloud-bound requests at once, a third of them streamed."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import grpc
import pytest
import redis.asyncio as aioredis

from deploy.gate.fake_cloud import Behaviour, FakeCloud, providers_json
from deploy.platform import free_ports, grpc_health
from router_svc.cloud import cost_usd_micros
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.api_keys import ApiKeyStore
from spiral_common.auth import bearer
from spiral_common.specs import CloudProvider
from tests.helpers import reason_of, wait_until, wait_until_async

pytestmark = pytest.mark.integration
ADMIN = bearer("drill-token")
PROMPT = "What is the capital of France?"  # 38 tokens at most: worst case = actual cost = 1,020 micro-dollars
PRICES = (10_000_000, 20_000_000)
COST = 38 * 10 + 32 * 20
POOL = 100_000
BUDGETS = {"small": 5_000, "medium": 8_000, "uncapped": None}


@pytest.fixture(scope="module")
def cloud():
    fake = FakeCloud(behaviours={"primary": Behaviour(text=" ".join(["word"] * 64), delay_s=0.3, prompt_tokens=38)})
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def routers(cloud, redis_url, prefix, tmp_path):
    providers = tmp_path / "providers.json"
    body = providers_json(cloud, PRICES)
    body["providers"] = body["providers"][:1]  # one provider: a refusal is final
    providers.write_text(json.dumps(body))
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    ports = free_ports(4)
    processes, addresses = [], []
    for track, port, metrics_port in (("main", ports[0], ports[1]), ("canary", ports[2], ports[3])):
        env = {
            **os.environ,
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_TRACK": track,
            f"SPIRAL_ROUTER_{track.upper()}_ADDR": f"127.0.0.1:{port}",
            f"SPIRAL_ROUTER_{track.upper()}_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "SPIRAL_REDIS_ADDR": f"127.0.0.1:{redis_port}",
            "SPIRAL_REDIS_CACHE_ADDR": f"127.0.0.1:{redis_port}",  # one bare Redis for both, never a running 6391
            "SPIRAL_REDIS_PREFIX": prefix,
            "SPIRAL_COUNCIL_HEADS": "",
            "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers),
            "SPIRAL_DAILY_POOL_USD_MICROS": str(POOL),
            "SPIRAL_CLIENT_AUTH": "keys",
            "FAKE_CLOUD_KEY": "k",
            "SPIRAL_ADMIN_TOKEN": "drill-token",
            "SPIRAL_DEFAULT_MAX_TOKENS": "32",
            "SPIRAL_LOG_LEVEL": "WARNING",
        }
        log = (tmp_path / f"router-{track}.log").open("w")
        processes.append(subprocess.Popen([sys.executable, "-m", "router_svc"], env=env, stdout=log, stderr=log))
        addresses.append(f"127.0.0.1:{port}")
    for address in addresses:
        wait_until(lambda a=address: grpc_health(a) == "SERVING", 30, f"router at {address}")
    yield addresses
    for process in processes:
        process.terminate()
        assert process.wait(30) == 0


def _request(kind):
    return kind(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=PROMPT)],
        params=chat_pb2.GenerationParams(seed=random.getrandbits(31)),
    )


async def test_300_concurrent_requests_keep_every_key_within_its_budget_and_the_pool(routers, cloud, redis_url, prefix):
    redis = aioredis.from_url(redis_url)
    store = ApiKeyStore(redis, prefix=prefix)
    tokens = {name: (await store.create(name, daily_usd_micros=budget))[1] for name, budget in BUDGETS.items()}
    await redis.aclose()
    cloud.requests.clear()
    channels = [grpc.aio.insecure_channel(a) for a in routers]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]
    names = list(BUDGETS)

    async def one(i: int) -> tuple[str, int | grpc.aio.AioRpcError]:
        name, stub = names[i % 3], stubs[i % 2]
        metadata = bearer(tokens[name])
        try:
            if i % 3 == (i // 3) % 3:  # a third of the requests (of every key) are streamed
                events = [
                    e
                    async for e in stub.OrchestrateStream(
                        _request(router_pb2.OrchestrateStreamRequest), metadata=metadata, timeout=60
                    )
                ]
                return name, events[-1].end.trace.cost_usd_micros
            reply = await stub.Orchestrate(_request(router_pb2.OrchestrateRequest), metadata=metadata, timeout=60)
            return name, reply.trace.cost_usd_micros
        except grpc.aio.AioRpcError as exc:
            return name, exc

    results = await asyncio.gather(*(one(i) for i in range(300)))
    async with grpc.aio.insecure_channel(routers[1]) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        budget = await admin.GetBudget(admin_pb2.GetBudgetRequest(), metadata=ADMIN)

        async def listed() -> dict[str, admin_pb2.ApiKeyUsage] | None:
            keys = {k.name: k for k in (await admin.ListApiKeys(admin_pb2.ListApiKeysRequest(), metadata=ADMIN)).keys}
            # Keys without a rate are counted in memory: the other router's counts arrive within a second.
            return keys if all(keys[name].requests == 100 for name in names) else None

        keys = await wait_until_async(listed, 10, "every key's 100 requests counted")
    for channel in channels:
        await channel.close()

    refusals = {reason_of(r)[1] for _, r in results if isinstance(r, grpc.aio.AioRpcError)}
    assert refusals <= {"KEY_BUDGET_EXCEEDED", "BUDGET_EXCEEDED"}
    answered = {name: [r for n, r in results if n == name and isinstance(r, int)] for name in names}
    provider = CloudProvider("primary", cloud.base_url, "primary", "FAKE_CLOUD_KEY", *PRICES)
    tally = sum(cost_usd_micros(38, min(64, body["max_tokens"]), provider) for body in cloud.requests)
    spent = {name: keys[name].spent_usd_micros for name in names}
    report = {
        "spent_by_key": spent,
        "budgets": BUDGETS,
        "answered_by_key": {n: len(a) for n, a in answered.items()},
        "pool_spent": budget.spent_usd_micros,
        "pool": POOL,
        "provider_tally": tally,
        "reserved": budget.reserved_usd_micros,
    }
    print("per-key hammer:", json.dumps(report))
    for name, limit in BUDGETS.items():
        assert spent[name] == sum(answered[name]) == len(answered[name]) * COST
        assert keys[name].reserved_usd_micros == 0 and keys[name].requests == 100
        if limit is not None:
            assert spent[name] <= limit and len(answered[name]) == limit // COST  # each key spent what it could
    assert budget.spent_usd_micros == sum(spent.values()) == tally <= POOL
    assert sum(len(a) for a in answered.values()) == POOL // COST  # the uncapped key took the rest of the pool
    assert budget.reserved_usd_micros == 0
