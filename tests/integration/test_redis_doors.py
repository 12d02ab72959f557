"""Redis on the running platform: no way in without a login, each service's user held to its keys, and a router
stopped with SIGTERM leaves every answer it gave in the traffic log."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError

from deploy.platform import grpc_health
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common import redis_access
from spiral_common.redis_access import Instance, password_variable
from spiral_common.specs import secret
from spiral_common.traffic import read_entries, stream_key
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


def _as(platform, user: str, instance: Instance = Instance.STATE) -> aioredis.Redis:
    env = {"SPIRAL_ENV_FILE": str(platform.run / "secrets.env")}
    address = (
        platform.settings.redis.redis_cache_addr if instance is Instance.CACHE else platform.settings.redis.redis_addr
    )
    return aioredis.Redis(
        host=address.host,
        port=address.port,
        username=user,
        password=secret(password_variable(user), env),
        retry=Retry(NoBackoff(), 0),
    )


def test_no_client_gets_into_either_redis_without_a_login(platform):
    async def check() -> None:
        for address in (platform.settings.redis.redis_addr, platform.settings.redis.redis_cache_addr):
            anonymous = aioredis.Redis(host=address.host, port=address.port, retry=Retry(NoBackoff(), 0))
            with pytest.raises(AuthenticationError):
                await anonymous.get(f"{platform.settings.redis.redis_prefix}budget:2026-11-28")
            await anonymous.aclose()

    asyncio.run(check())


def test_the_services_users_are_held_to_their_keys_on_the_running_platform(platform):
    prefix = platform.settings.redis.redis_prefix

    async def check() -> None:
        refused = [
            ("miner", Instance.STATE, ("HINCRBY", f"{prefix}budget:2026-11-28", "spent", "-1000")),
            ("miner", Instance.STATE, ("XADD", f"{prefix}jobs", "*", "job_id", "forged")),
            ("router", Instance.STATE, ("XADD", f"{prefix}jobs", "*", "job_id", "forged")),
            ("trainer", Instance.STATE, ("SET", f"{prefix}patterns:version", "999")),
            ("router", Instance.CACHE, ("HSET", f"{prefix}budget:2026-11-28", "spent", "0")),
            ("operator", Instance.STATE, ("FLUSHALL",)),
        ]
        for user, instance, command in refused:
            client = _as(platform, user, instance)
            with pytest.raises(NoPermissionError):
                await client.execute_command(*command)
            await client.aclose()
        operator = _as(platform, "operator")
        assert await operator.ping()  # and the operator's tools get in
        await operator.aclose()

    asyncio.run(check())


def test_a_router_stopped_with_sigterm_leaves_every_answer_in_the_traffic_log(platform):
    s = platform.settings
    address = str(s.router.router_main_addr)
    ask = router_pb2.OrchestrateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="Say the word blue.")],
        params=chat_pb2.GenerationParams(max_tokens=4),  # cut at 4 tokens: never cached, every one a new answer
    )

    async def answer_many() -> list[str]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            # A few at a time, each asking the council's three heads (the head takes 32 calls at once here).
            replies = []
            for _ in range(3):
                replies += await asyncio.gather(*(stub.Orchestrate(ask, timeout=120) for _ in range(8)))
        return [r.answer_id for r in replies]

    answered = asyncio.run(answer_many())
    rpc = platform._rpc()
    rpc.supervisor.stopProcess("router-main", True)  # SIGTERM, and wait until it exited
    try:

        async def logged() -> set[str]:
            operator = redis_access.operator_client(s)
            try:
                return {e.answer_id async for _, e in read_entries(operator, stream_key(s.redis.redis_prefix))}
            finally:
                await operator.aclose()

        assert set(answered) <= asyncio.run(logged())
    finally:
        rpc.supervisor.startProcess("router-main", True)
        wait_until(lambda: grpc_health(address, "spiral.router.v1.RouterService") == "SERVING", 60, "router-main")
