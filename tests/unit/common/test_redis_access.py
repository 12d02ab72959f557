"""Redis's doors: a real redis-server loading the rendered ACL file refuses a client without a login and each
service's user outside its keys and commands, and lets each service do what its code does."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from deploy.platform import _redis_ping, free_ports
from router_svc.cache import AdapterVersions, AnswerCache, CachedAnswer
from spiral_common.api_keys import ApiKeyStore, ClientAuth, KeyRateLimiter, RequestCounts
from spiral_common.budget import BudgetLedger
from spiral_common.chat import ChatRequest, Message
from spiral_common.config import load_settings
from spiral_common.pattern_set import PatternSet, PatternStore
from spiral_common.redis_access import USERS, Instance, acl_file, connect, password_variable
from spiral_common.traffic import TrafficLog, read_entries, stream_key
from tests.helpers import logged_exchange, wait_until
from trainer_svc.jobs import JobQueue

PREFIX = "spiral:"
NO_RETRY = Retry(NoBackoff(), 0)  # a refused login is an answer, not a reason to try again


class AclServer:
    def __init__(self, port: int, passwords: dict[str, str]) -> None:
        self.port, self.passwords = port, passwords
        self.settings = load_settings(
            {"SPIRAL_REDIS_ADDR": f"127.0.0.1:{port}", "SPIRAL_REDIS_CACHE_ADDR": "127.0.0.1:1"}
        )

    def client(self, user: str) -> aioredis.Redis:
        return connect(self.settings, user, environ={password_variable(user): self.passwords[user]})


def _start(tmp: Path, instance: Instance, passwords: dict[str, str]) -> tuple[subprocess.Popen, int]:
    (port,) = free_ports(1)
    acl = tmp / f"{instance}.acl"
    acl.write_text(acl_file(PREFIX, passwords, instance))
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        + ["--dir", str(tmp), "--save", "", "--appendonly", "no", "--aclfile", str(acl)],
        stdout=subprocess.DEVNULL,
    )

    wait_until(lambda: _redis_ping("127.0.0.1", port) == "SERVING", 10, "redis-server to answer")
    return server, port


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[AclServer, AclServer]]:
    """The state and the cache server, each with its rendered ACL file."""
    passwords = {user: uuid.uuid4().hex for user in USERS}
    started = [_start(tmp_path_factory.mktemp(str(i)), i, passwords) for i in Instance]
    yield AclServer(started[0][1], passwords), AclServer(started[1][1], passwords)
    for server, _ in started:
        server.terminate()
        server.wait(10)


@pytest.fixture
def state(servers) -> AclServer:
    return servers[0]


async def test_a_client_without_a_login_or_with_a_wrong_password_is_refused(state):
    anonymous = aioredis.Redis(port=state.port, retry=NO_RETRY)
    with pytest.raises(AuthenticationError, match="NOAUTH|authenticated"):
        await anonymous.get(f"{PREFIX}budget:2026-11-28")
    await anonymous.aclose()
    wrong = aioredis.Redis(port=state.port, username="router", password="not-the-password", retry=NO_RETRY)
    with pytest.raises(AuthenticationError):
        await wrong.ping()
    await wrong.aclose()


@pytest.mark.parametrize(
    ("user", "command"),
    [
        ("miner", ("HINCRBY", f"{PREFIX}budget:2026-11-28", "spent", "-100000")),  # the ledger
        ("miner", ("XADD", f"{PREFIX}jobs", "*", "job_id", "x")),  # the job queue
        ("miner", ("XADD", f"{PREFIX}traffic", "*", "kind", "feedback")),  # the traffic log: read only
        ("miner", ("SET", f"{PREFIX}answer:abc", "main")),
        ("trainer", ("SET", f"{PREFIX}patterns:version", "99")),  # publishing patterns is the miner's
        ("trainer", ("XADD", f"{PREFIX}traffic", "*", "kind", "feedback")),
        ("router", ("XADD", f"{PREFIX}jobs", "*", "job_id", "x")),
        ("router", ("SET", f"{PREFIX}patterns:version", "99")),  # patterns: read only
        ("router", ("SET", "other:key", "1")),  # nothing outside the prefix
        ("router", ("PUBLISH", f"{PREFIX}jobs:events", "x")),
        ("trainer", ("PUBLISH", f"{PREFIX}other", "x")),
        ("operator", ("FLUSHALL",)),  # dangerous commands: nobody
        ("operator", ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")),
        ("router", ("KEYS", "*")),
        ("trainer", ("ACL", "LIST")),
        ("miner", ("SHUTDOWN",)),
    ],
)
async def test_each_services_user_is_refused_outside_its_keys_and_commands(state, user, command):
    client = state.client(user)
    try:
        with pytest.raises(NoPermissionError):
            await client.execute_command(*command)
    finally:
        await client.aclose()


async def test_each_service_does_what_its_code_does_as_its_own_user(state):
    router, trainer, miner = state.client("router"), state.client("trainer"), state.client("miner")
    try:
        # The router: money (Lua), the traffic log and a rating, the adapter versions, the mined patterns.
        ledger = BudgetLedger(router, prefix=PREFIX, pool_usd_micros=100_000, reservation_ttl_s=60)
        await ledger.settle(await ledger.reserve(1_000, subject="cloud call"), 700)
        traffic = TrafficLog(router, prefix=PREFIX, max_entries=1000)
        exchange = logged_exchange("What is 2+2?", "4")
        await traffic.append(exchange)
        assert await traffic.feedback(exchange.answer_id, "good", "", rater="local") == "main"
        await AdapterVersions(router, prefix=PREFIX).set("v1", ("main",))
        # Client API keys: the operator creates one; the router reads it, counts its rate and spends its budget.
        operator = state.client("operator")
        try:
            _, token = await ApiKeyStore(operator, prefix=PREFIX).create("team-a", daily_usd_micros=5_000, rps=10)
        finally:
            await operator.aclose()
        keys = ApiKeyStore(router, prefix=PREFIX)
        key = await ClientAuth(keys, mode="keys").authenticate(token)
        assert key is not None and key.name == "team-a"
        await KeyRateLimiter(router, keys, prefix=PREFIX).admit(key)
        counts = RequestCounts(router, keys)  # a key without a rate: counted in memory, written in one batch
        counts.count("team-c")
        await counts.close()
        await ledger.settle(await ledger.reserve(1_000, subject="cloud call", scopes=[key.scope]), 900)
        owned = logged_exchange("What is 3+3?", "6")
        await traffic.append(owned, owner="team-a")
        assert await traffic.feedback(owned.answer_id, "bad", "", rater="team-a") == "main"
        with pytest.raises(NoPermissionError):  # a router cannot mint keys
            await ApiKeyStore(router, prefix=PREFIX).create("team-b")
        # The miner: reads the log, publishes patterns; the router reads them.
        assert [e async for _, e in read_entries(miner, stream_key(PREFIX))]
        await miner.set(f"{PREFIX}miner:cursor", "0-0")
        version = await PatternStore(miner, prefix=PREFIX).publish(PatternSet.empty())
        assert await PatternStore(router, prefix=PREFIX).current_version() == version
        # The trainer: its queue, its events channel, its machine time in the ledger, the log read only.
        queue = JobQueue(trainer, prefix=PREFIX, consumer="t1", lease_s=30, max_attempts=2)
        await queue.ensure_group()
        job, _ = await queue.submit("distill")
        claimed = await queue.claim(block_ms=100)
        assert claimed is not None and claimed.job.job_id == job.job_id
        await queue.succeed(claimed, {"ok": True})
        assert [j.job_id for j in await queue.list_recent()] == [job.job_id]
        await BudgetLedger(trainer, prefix=PREFIX, pool_usd_micros=100_000, reservation_ttl_s=60).status()
        assert [e async for _, e in read_entries(trainer, stream_key(PREFIX))]
    finally:
        for client in (router, trainer, miner):
            await client.aclose()


async def test_the_cache_server_holds_only_answers_and_a_lost_version_copy_is_put_back(servers):
    state, cache_server = servers
    router_state, router_cache = state.client("router"), cache_server.client("router")
    try:
        with pytest.raises(NoPermissionError):  # no money on the cache server
            await router_cache.hset(f"{PREFIX}budget:2026-11-28", "spent", 0)
        miner = aioredis.Redis(
            port=cache_server.port, username="miner", password=cache_server.passwords["miner"], retry=NO_RETRY
        )
        with pytest.raises((AuthenticationError, ResponseError)):  # the miner has no user there at all
            await miner.ping()
        await miner.aclose()

        await AdapterVersions(router_state, prefix=PREFIX, cache=router_cache).set("v2", ("canary",))
        cache = AnswerCache(router_cache, prefix=PREFIX, track="canary", ttl_s=60, versions=router_state)
        chat = ChatRequest((Message("user", "hi"),), max_tokens=8, temperature=0.0, top_p=1.0)
        answer, version, key = await cache.get(chat)
        assert (answer, version) == (None, "v2") and key.startswith(f"{PREFIX}cache:v2:")
        await cache.put(key, CachedAnswer("hello", "stop", 1, 1, "council", "v2"))
        await router_cache.delete(f"{PREFIX}adapter_version:canary")  # evicted, or the server restarted empty
        answer, version, _ = await cache.get(chat)  # not a miss for want of the copy: it is put back, then read
        assert answer is not None and (answer.text, version) == ("hello", "v2")
        assert await router_cache.get(f"{PREFIX}adapter_version:canary") == b"v2"
    finally:
        await router_state.aclose()
        await router_cache.aclose()
