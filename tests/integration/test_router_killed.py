"""A router killed with SIGKILL in the middle of a cloud call: the provider may bill the whole call, so once the
reservation expires the ledger charges its worst case; nothing is released and nothing stays reserved."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
import redis.asyncio as aioredis

from deploy.gate.fake_cloud import Behaviour, FakeCloud, providers_json
from deploy.platform import free_ports, grpc_health
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.budget import BudgetLedger
from tests.helpers import wait_until

pytestmark = pytest.mark.integration
PROMPT = "What is the capital of France?"  # 30 bytes + 8 per message: 38 prompt tokens at most
PRICES = (10_000_000, 20_000_000)  # $10 / $20 per million tokens
WORST_CASE = 38 * 10 + 32 * 20  # 38 prompt tokens and max_tokens 32 completion tokens: 1,020 micro-dollars
TTL_S = 2


@pytest.fixture
def stalling_cloud():
    """A provider that starts the answer, then goes silent: the call is in flight when the router dies."""
    fake = FakeCloud(behaviours={"primary": Behaviour(mode="stall", prompt_tokens=38, text="Paris is the capital")})
    fake.start()
    yield fake
    fake.stop()


async def test_a_router_killed_mid_call_is_charged_the_worst_case_after_expiry(
    stalling_cloud, redis_url, prefix, tmp_path
):
    providers = tmp_path / "providers.json"
    body = providers_json(stalling_cloud, PRICES)
    body["providers"] = body["providers"][:1]
    providers.write_text(json.dumps(body))
    redis_port = redis_url.rsplit(":", 1)[1].split("/")[0]
    port, metrics_port = free_ports(2)
    env = {
        **os.environ,
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_TRACK": "main",
        "SPIRAL_ROUTER_MAIN_ADDR": f"127.0.0.1:{port}",
        "SPIRAL_ROUTER_MAIN_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SPIRAL_REDIS_ADDR": f"127.0.0.1:{redis_port}",
        "SPIRAL_REDIS_CACHE_ADDR": f"127.0.0.1:{redis_port}",
        "SPIRAL_REDIS_PREFIX": prefix,
        "SPIRAL_COUNCIL_HEADS": "",
        "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers),
        "FAKE_CLOUD_KEY": "k",
        "SPIRAL_DEFAULT_MAX_TOKENS": "32",
        "SPIRAL_BUDGET_RESERVATION_TTL_S": str(TTL_S),
        "SPIRAL_LOG_LEVEL": "WARNING",
    }
    log = (tmp_path / "router.log").open("w")
    router = subprocess.Popen([sys.executable, "-m", "router_svc"], env=env, stdout=log, stderr=log)
    redis = aioredis.from_url(redis_url)
    ledger = BudgetLedger(redis, prefix=prefix, pool_usd_micros=100_000, reservation_ttl_s=TTL_S)
    try:
        wait_until(lambda: grpc_health(f"127.0.0.1:{port}") == "SERVING", 30, "the router")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = router_pb2.OrchestrateRequest(
                messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=PROMPT)]
            )
            call = asyncio.ensure_future(router_pb2_grpc.RouterServiceStub(channel).Orchestrate(request, timeout=30))
            for _ in range(300):  # until the provider has the request (bounded: 30 s)
                if stalling_cloud.requests:
                    break
                await asyncio.sleep(0.1)
            assert stalling_cloud.requests, "the router never called the provider"
            during = await ledger.status()
            assert (during.reserved_usd_micros, during.spent_usd_micros) == (WORST_CASE, 0)

            router.send_signal(signal.SIGKILL)  # mid-call: no settle, no release, no drain
            assert router.wait(10) == -signal.SIGKILL
            with pytest.raises(grpc.aio.AioRpcError):
                await call

        await asyncio.sleep(TTL_S + 0.5)
        after = await ledger.status()  # expired reservations are charged by the next ledger step, whoever runs it
        assert after.reserved_usd_micros == 0
        assert after.spent_usd_micros == WORST_CASE
        assert after.expired_charged_usd_micros == WORST_CASE
        again = await ledger.status()
        assert again.spent_usd_micros == WORST_CASE  # charged once
    finally:
        if router.poll() is None:
            router.kill()
            router.wait(10)
        await redis.aclose()
