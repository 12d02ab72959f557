"""The cost guard under concurrency: two router processes, one Redis, one $0.10 pool, 200 requests at once."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import grpc
import pytest

from deploy.gate.fake_cloud import Behaviour, FakeCloud, providers_json
from deploy.platform import free_ports, grpc_health
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from tests.helpers import reason_of, wait_until

pytestmark = pytest.mark.integration
ADMIN = (("authorization", "Bearer drill-token"),)
# Worst case = actual cost: 38 prompt tokens at $10/M + 32 completion tokens at $20/M = 1,020 micro-dollars.
PROMPT = "What is the capital of France?"  # 30 bytes + 8 per message = 38 tokens at most
PRICES = (10_000_000, 20_000_000)
COST = 38 * 10 + 32 * 20


@pytest.fixture(scope="module")
def cloud():
    fake = FakeCloud(
        behaviours={
            name: Behaviour(text=" ".join(["word"] * 64), delay_s=0.3, prompt_tokens=38)
            for name in ("primary", "secondary")
        }
    )
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
    for instance, port, metrics_port in (("main", ports[0], ports[1]), ("canary", ports[2], ports[3])):
        env = {
            **os.environ,
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_TRACK": instance,
            f"SPIRAL_ROUTER_{instance.upper()}_ADDR": f"127.0.0.1:{port}",
            f"SPIRAL_ROUTER_{instance.upper()}_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "SPIRAL_REDIS_ADDR": f"127.0.0.1:{redis_port}",
            "SPIRAL_REDIS_CACHE_ADDR": f"127.0.0.1:{redis_port}",  # one bare Redis for both
            "SPIRAL_REDIS_PREFIX": prefix,
            "SPIRAL_COUNCIL_HEADS": "",
            "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers),
            "FAKE_CLOUD_KEY": "k",
            "SPIRAL_ADMIN_TOKEN": "drill-token",
            "SPIRAL_DEFAULT_MAX_TOKENS": "32",
            "SPIRAL_LOG_LEVEL": "WARNING",
        }
        log = (tmp_path / f"router-{instance}.log").open("w")
        processes.append(subprocess.Popen([sys.executable, "-m", "router_svc"], env=env, stdout=log, stderr=log))
        addresses.append(f"127.0.0.1:{port}")
    for address in addresses:
        wait_until(lambda a=address: _serving(a), 30, f"router at {address}")
    yield addresses
    for process in processes:
        process.terminate()
        assert process.wait(30) == 0


def _serving(address: str) -> bool:
    return grpc_health(address) == "SERVING"


def _request(kind):
    return kind(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=PROMPT)],
        params=chat_pb2.GenerationParams(seed=random.getrandbits(31)),
    )


async def _budget(address: str) -> admin_pb2.GetBudgetResponse:
    async with grpc.aio.insecure_channel(address) as channel:
        return await admin_pb2_grpc.AdminServiceStub(channel).GetBudget(admin_pb2.GetBudgetRequest(), metadata=ADMIN)


async def test_200_concurrent_cloud_requests_never_overspend_the_pool(routers):
    channels = [grpc.aio.insecure_channel(a) for a in routers]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]

    async def one(i: int):
        try:
            return await stubs[i % 2].Orchestrate(_request(router_pb2.OrchestrateRequest), timeout=60)
        except grpc.aio.AioRpcError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(200)))
    answered = [r for r in results if isinstance(r, router_pb2.OrchestrateResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(reason_of(r)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED") for r in refused)
    assert len(answered) == 100_000 // COST  # 98: every reservation was worth exactly one answer
    assert {a.trace.router_instance for a in answered} == {"main", "canary"}
    budget = await _budget(routers[0])
    assert budget.spent_usd_micros == sum(a.trace.cost_usd_micros for a in answered) <= 100_000
    assert budget.reserved_usd_micros == 0
    for channel in channels:
        await channel.close()


async def test_clients_cancelling_mid_call_leave_no_reservation_behind(routers):
    channels = [grpc.aio.insecure_channel(a) for a in routers]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]
    rng = random.Random(7)

    async def one(i: int):
        call = stubs[i % 2].OrchestrateStream(_request(router_pb2.OrchestrateStreamRequest), timeout=60)
        if i % 2:  # half the clients give up at a random moment, as impatient users do
            await asyncio.sleep(rng.uniform(0.0, 0.6))
            call.cancel()
            return "cancelled"
        try:
            return [event async for event in call]
        except grpc.aio.AioRpcError as exc:
            return exc

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert reason_of(result)[1] == "BUDGET_EXCEEDED"

    async def settled():
        budget = await _budget(routers[0])
        return budget if budget.reserved_usd_micros == 0 else None

    deadline = asyncio.get_running_loop().time() + 30
    while (budget := await settled()) is None:
        assert asyncio.get_running_loop().time() < deadline, "reservations were left behind"
        await asyncio.sleep(0.1)
    assert budget.spent_usd_micros <= 100_000
    for channel in channels:
        await channel.close()
