"""The router in-process on port 0: real Redis, scripted heads, and the real cloud client against a fake cloud."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest

from deploy.gate.fake_cloud import Behaviour, FakeCloud, providers_json
from router_svc.cloud import OpenAICompatibleClient
from router_svc.heads_client import AdapterSwitch, HeadDone, HeadText
from router_svc.server import RouterDeps, create_server
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common import canary, errors
from spiral_common.config import load_settings
from spiral_common.enums import Track
from spiral_common.logs import REQUEST_ID_HEADER
from spiral_common.specs import load_providers
from spiral_common.traffic import decode_entry
from tests.helpers import reason_of, wait_until_async

ADMIN = (("authorization", "Bearer admin-secret"),)


class ScriptedHeads:
    """Each head answers with its script (text, or a domain error, after an optional delay)."""

    def __init__(self, scripts: dict[str, object] | None = None, delays: dict[str, float] | None = None) -> None:
        self.scripts = scripts or {}
        self.delays = delays or {}
        self.calls: list[tuple[str, object, str]] = []
        self.cancelled: list[str] = []
        self.timeouts: dict[str, float | None] = {}  # the time each head was given, by head
        self.adapter = ""  # the adapter version the heads serve, as their answers report it

    async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
        self.calls.append((head, request, request_id))
        self.timeouts[head] = timeout_s
        script = self.scripts.get(head, "Paris is the capital of France.")
        try:
            await asyncio.sleep(self.delays.get(head, 0))
        except asyncio.CancelledError:
            self.cancelled.append(head)
            raise
        if isinstance(script, Exception):
            raise script
        for word in str(script).split(" "):
            yield HeadText(word + " ")
        yield HeadDone("stop", 12, len(str(script).split()), head, self.adapter)

    async def load_adapter(self, version, *, tracks, request_id):
        self.reloads = getattr(self, "reloads", []) + [(version, tracks == (Track.CANARY,))]
        return AdapterSwitch("v7" if version == "latest" else version, "", ["precise"], 1234)


@pytest.fixture(scope="module")
def cloud():
    fake = FakeCloud()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def providers_file(cloud, tmp_path):
    path = tmp_path / "providers.json"
    path.write_text(json.dumps(providers_json(cloud)))
    cloud.behaviours.clear()
    cloud.requests.clear()
    return path


class Router:
    def __init__(self, runtime, channel, heads, redis, prefix):
        self.runtime, self.channel, self.heads, self.redis, self.prefix = runtime, channel, heads, redis, prefix
        self.stub = router_pb2_grpc.RouterServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)

    async def budget(self) -> admin_pb2.GetBudgetResponse:
        return await self.admin.GetBudget(admin_pb2.GetBudgetRequest(), metadata=ADMIN)

    async def logged(self) -> list:
        """The traffic stream's entries, once the router's background writer wrote out what it queued."""
        await self.runtime.stop_background()
        return await self.redis.xrange(f"{self.prefix}traffic")


@pytest.fixture
async def make_router(redis_client, prefix, providers_file, tmp_path):
    started = []

    async def make(heads=None, council="precise,concise,creative", **env) -> Router:
        heads = heads or ScriptedHeads()
        settings = load_settings(
            {
                "SPIRAL_PROFILE": "quick_test",
                "SPIRAL_RUN_DIR": str(tmp_path),
                "SPIRAL_REDIS_PREFIX": prefix,
                "SPIRAL_COUNCIL_HEADS": council,
                "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers_file),
                "SPIRAL_COUNCIL_DEADLINE_S": "2",
                **{f"SPIRAL_{k.upper()}": str(v) for k, v in env.items()},
            }
        )
        providers = load_providers(settings.cloud.cloud_providers_file)
        client = OpenAICompatibleClient(
            {p.name: "test-key" for p in providers}, providers, timeout_s=5, stall_timeout_s=0.5
        )
        deps = RouterDeps(
            heads=heads,
            redis=redis_client,
            cloud_client=client,
            providers=providers,
            admin_token="admin-secret",
            clock=lambda: datetime(2026, 11, 25, 12, tzinfo=UTC),
        )
        runtime = create_server(settings, deps, port=0)
        await runtime.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
        started.append((runtime, channel))
        return Router(runtime, channel, heads, redis_client, prefix)

    yield make
    for runtime, channel in started:
        await channel.close()
        await runtime.server.stop(None)
        await runtime.stop_background()


def ask(text="What is the capital of France?", **params) -> dict:
    return dict(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(**params),
    )


# -- the cascade, tier by tier ----------------------------------------------------------------------


async def test_agreeing_council_answers_and_every_candidate_is_scored(make_router):
    router = await make_router()
    reply = await router.stub.Orchestrate(
        router_pb2.OrchestrateRequest(**ask()), metadata=((REQUEST_ID_HEADER, "r-1"),)
    )
    trace = reply.trace
    assert trace.tier == router_pb2.TIER_COUNCIL and reply.text == "Paris is the capital of France."
    assert [s.tier for s in trace.steps] == [router_pb2.TIER_CACHE, router_pb2.TIER_PATTERN, router_pb2.TIER_COUNCIL]
    assert [c.head for c in trace.candidates] == ["precise", "concise", "creative"]
    assert sum(c.winner for c in trace.candidates) == 1
    assert all(c.agreement == pytest.approx(1.0) for c in trace.candidates)
    assert trace.cost_usd_micros == 0 and trace.request_id == "r-1"
    assert {call[2] for call in router.heads.calls} == {"r-1"}


async def test_a_repeated_request_is_answered_from_the_cache(make_router):
    router = await make_router()
    first = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(temperature=0.0)))
    calls = len(router.heads.calls)
    second = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(temperature=0.0)))
    assert second.trace.tier == router_pb2.TIER_CACHE and second.text == first.text
    assert len(router.heads.calls) == calls  # no head was asked
    assert second.answer_id != first.answer_id


async def test_requests_differing_in_one_parameter_never_share_an_entry(make_router):
    router = await make_router()
    await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(temperature=0.0)))
    for params in [
        dict(temperature=0.1),
        dict(temperature=0.0, max_tokens=31),
        dict(temperature=0.0, seed=7),
        dict(temperature=0.0, stop=["\n"]),
        dict(temperature=0.0, top_p=0.5),
    ]:
        reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(**params)))
        assert reply.trace.tier == router_pb2.TIER_COUNCIL, params


async def test_an_adapter_change_never_serves_the_old_adapters_answer(make_router):
    router = await make_router()
    await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    await router.redis.set(f"{router.prefix}adapter_version:main", "v2")
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert reply.trace.tier == router_pb2.TIER_COUNCIL
    # The heads still served the old adapter (say one restarted and lost the switch): that answer is not
    # cached under v2.
    assert (await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))).trace.tier == router_pb2.TIER_COUNCIL
    router.heads.adapter = "v2"  # now they serve v2
    await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert (await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))).trace.tier == router_pb2.TIER_CACHE


async def test_a_cached_answer_replays_as_a_stream(make_router):
    router = await make_router()
    streamed = [e async for e in router.stub.OrchestrateStream(router_pb2.OrchestrateStreamRequest(**ask()))]
    replay = [e async for e in router.stub.OrchestrateStream(router_pb2.OrchestrateStreamRequest(**ask()))]
    text = lambda events: "".join(e.delta.text for e in events if e.HasField("delta"))  # noqa: E731
    assert text(replay) == text(streamed) == "Paris is the capital of France."
    assert replay[-1].end.trace.tier == router_pb2.TIER_CACHE
    assert replay[-1].end.finish_reason == chat_pb2.FINISH_REASON_STOP


@pytest.mark.parametrize(
    ("prompt", "answer"),
    [
        ("what is 17 * 23?", "17 * 23 = 391"),
        ("hello!", "Hello! How can I help you today?"),
        ("What is today's date?", "Today is Wednesday, 25 November 2026 (UTC: 2026-11-25)."),
    ],
)
async def test_the_pattern_head_answers_exactly_without_asking_a_head(make_router, prompt, answer):
    router = await make_router()
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(prompt)))
    assert (reply.trace.tier, reply.text) == (router_pb2.TIER_PATTERN, answer)
    assert not router.heads.calls


@pytest.mark.parametrize(
    "prompt",
    [
        " " * 130 + "a",  # stalled a router for 8.4 s on a backtracking regex
        "what is " + "*".join(["999999^64"] * 12),  # a 4,600-digit product: INTERNAL
        "10 / 0",
        "(" * 3_999,  # the quick_test profile refuses prompts over 4,000 characters
        "1+" * 1_999 + "1",
    ],
    ids=["spaces", "huge product", "division by zero", "open brackets", "long sum"],
)
async def test_hostile_prompts_miss_the_pattern_head_and_a_later_tier_answers(make_router, prompt):
    router = await make_router()
    # The deadline is a hang guard: the council's own deadline is 2 s.
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(prompt)), timeout=10)
    assert (reply.trace.tier, reply.text) == (router_pb2.TIER_COUNCIL, "Paris is the capital of France.")
    assert router_pb2.TIER_PATTERN in [s.tier for s in reply.trace.steps]


async def test_stragglers_past_the_deadline_are_cancelled_and_the_rest_vote(make_router):
    heads = ScriptedHeads(delays={"creative": 30})
    router = await make_router(heads)
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert reply.trace.tier == router_pb2.TIER_COUNCIL
    creative = next(c for c in reply.trace.candidates if c.head == "creative")
    assert creative.error == "DEADLINE_EXCEEDED" and not creative.winner
    assert heads.cancelled == ["creative"]


async def test_a_callers_deadline_bounds_the_council_and_the_heads_calls_are_cancelled(make_router, cloud):
    heads = ScriptedHeads(delays={h: 30 for h in ("precise", "concise", "creative")})
    router = await make_router(heads)  # the council's own deadline is 2 s: the caller's 1 s comes first
    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()), timeout=1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert asyncio.get_running_loop().time() - started < 1.5
    # Each head's call carried what the caller had left, not the council's 2 s ...
    assert sorted(heads.timeouts) == ["concise", "creative", "precise"]
    assert all(0 < t <= 1 for t in heads.timeouts.values()), heads.timeouts

    async def all_cancelled() -> bool:
        return sorted(heads.cancelled) == ["concise", "creative", "precise"]

    # ... and every one was cancelled, and the cloud was not started with no time left.
    await wait_until_async(all_cancelled, 5, "every head's call to be cancelled")
    assert not cloud.requests


async def test_a_single_member_council_streams_the_head_directly(make_router):
    router = await make_router(council="precise")
    events = [e async for e in router.stub.OrchestrateStream(router_pb2.OrchestrateStreamRequest(**ask()))]
    assert len([e for e in events if e.HasField("delta")]) == 6  # one message per piece, as the head sent them
    assert events[-1].end.trace.tier == router_pb2.TIER_HEAD


# -- the cloud and the cost guard ------------------------------------------------------------------------


DISAGREE = {"precise": "Paris.", "concise": "Lyon is big.", "creative": "Bananas dance tonight."}


async def test_local_failure_falls_to_the_cloud_which_is_paid_and_logged(make_router, cloud):
    router = await make_router(ScriptedHeads(DISAGREE))
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(max_tokens=8)))
    assert reply.trace.tier == router_pb2.TIER_CLOUD and reply.text == "The cloud says hello."
    # 20 prompt tokens at $1/M plus 4 completion tokens at $2/M = 28 micro-dollars
    assert reply.trace.cost_usd_micros == 28
    council = next(s for s in reply.trace.steps if s.tier == router_pb2.TIER_COUNCIL)
    assert council.outcome == router_pb2.TIER_OUTCOME_FAILED
    budget = await router.budget()
    assert (budget.spent_usd_micros, budget.reserved_usd_micros) == (28, 0)
    entries = await router.logged()
    exchange = decode_entry(entries[-1][1])
    assert (exchange.tier, exchange.answer, exchange.teaches) == (router_pb2.TIER_CLOUD, reply.text, True)
    assert (exchange.cost_usd_micros, exchange.teacher, exchange.track) == (28, "primary", Track.MAIN)


@pytest.mark.parametrize(
    ("provider_finish", "served"),
    [("content_filter", chat_pb2.FINISH_REASON_CONTENT_FILTER), ("tool_calls", chat_pb2.FINISH_REASON_OTHER)],
)
async def test_a_cloud_answer_that_did_not_stop_naturally_is_served_but_never_cached_nor_taught(
    make_router, cloud, provider_finish, served
):
    cloud.behaviours["primary"] = Behaviour(finish=provider_finish)
    router = await make_router(ScriptedHeads(DISAGREE))
    first = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(max_tokens=8)))
    assert (first.trace.tier, first.finish_reason) == (router_pb2.TIER_CLOUD, served)
    exchange = decode_entry((await router.logged())[-1][1])
    assert (exchange.finish_reason, exchange.teaches) == (served, False)
    again = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(max_tokens=8)))
    assert again.trace.tier == router_pb2.TIER_CLOUD  # not from the cache


async def test_all_heads_failing_falls_to_the_cloud(make_router):
    busy = errors.HeadBusy("busy", retry_after_ms=10)
    router = await make_router(ScriptedHeads({h: busy for h in ("precise", "concise", "creative")}))
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert reply.trace.tier == router_pb2.TIER_CLOUD
    assert {c.error for c in reply.trace.candidates} == {"HEAD_BUSY"}


@pytest.mark.parametrize("failure", ["error", "break", "stall"])
async def test_a_failing_provider_falls_over_to_the_next(make_router, cloud, failure):
    cloud.behaviours["primary"] = Behaviour(mode=failure)
    cloud.behaviours["secondary"] = Behaviour(text="Second opinion.")
    router = await make_router(ScriptedHeads(DISAGREE))
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert reply.text == "Second opinion."
    outcomes = [(s.detail.split()[0], s.outcome) for s in reply.trace.steps if s.tier == router_pb2.TIER_CLOUD]
    assert outcomes == [("primary", router_pb2.TIER_OUTCOME_FAILED), ("secondary", router_pb2.TIER_OUTCOME_ANSWERED)]
    assert (await router.budget()).reserved_usd_micros == 0


async def test_when_every_provider_fails_the_best_local_answer_is_served_and_nothing_is_cached(make_router, cloud):
    cloud.behaviours["primary"] = cloud.behaviours["secondary"] = Behaviour(mode="error")
    router = await make_router(ScriptedHeads(DISAGREE))
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert reply.trace.tier == router_pb2.TIER_LOCAL_FALLBACK and reply.text
    council = next(s for s in reply.trace.steps if s.tier == router_pb2.TIER_COUNCIL)
    assert council.outcome == router_pb2.TIER_OUTCOME_FAILED and "<" in council.detail
    again = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert again.trace.tier != router_pb2.TIER_CACHE  # a fallback answer is not cached
    # Each provider got the request and failed after: its prompt may be billed, so the ledger charges its bound,
    # 30 bytes + 8 = 38 tokens at $1/M = 38 micro-dollars, for 2 providers on each of the 2 requests.
    assert (await router.budget()).spent_usd_micros == 4 * 38


async def test_an_answer_the_vote_rejected_is_logged_as_a_fallback_and_never_teaches(make_router, cloud):
    """The bug this guards: a below-threshold council answer, served because the cloud was down, was logged as
    tier "council" and became training data for the miner and the trainer."""
    from miner_svc.mining import Miner, MinerConfig
    from spiral_common.traffic import read_entries, stream_key
    from trainer_svc.dataset import build_dataset, read_traffic

    cloud.behaviours["primary"] = cloud.behaviours["secondary"] = Behaviour(mode="error")
    rejected = await make_router(ScriptedHeads(DISAGREE))
    served = await rejected.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask("Which answer is right?")))
    accepted = await make_router()  # the heads agree: the vote accepts
    vouched = await accepted.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask("Capital of France?")))
    assert served.trace.tier == router_pb2.TIER_LOCAL_FALLBACK and vouched.trace.tier == router_pb2.TIER_COUNCIL
    await rejected.logged()
    await accepted.logged()
    logged = {e.answer_id: e async for _, e in read_entries(rejected.redis, stream_key(rejected.prefix))}
    assert logged[served.answer_id].tier == router_pb2.TIER_LOCAL_FALLBACK and not logged[served.answer_id].teaches
    assert logged[vouched.answer_id].tier == router_pb2.TIER_COUNCIL and logged[vouched.answer_id].teaches

    exchanges, ratings = await read_traffic(rejected.redis, stream_key(rejected.prefix))
    data = build_dataset(exchanges, ratings, min_examples=1, max_examples=10, heldout_fraction=0.5, max_heldout=1)
    assert [e.prompt for e in data.train + data.heldout] == ["Capital of France?"]

    class RecordingEmbedder:
        asked: list[str] = []

        def embed(self, texts):
            self.asked += texts
            return np.tile(np.eye(1, 384, dtype=np.float32), (len(texts), 1))

    embedder = RecordingEmbedder()
    await Miner(rejected.redis, embedder, prefix=rejected.prefix, config=MinerConfig()).mine(dry_run=True)
    assert embedder.asked == ["Capital of France?"]  # the miner learns from the accepted answer only


async def test_the_per_request_cap_lowers_max_tokens_when_that_fits(make_router, cloud):
    # worst case at max_tokens=200: (prompt bytes + 8) * $1/M + 200 * $2/M > a 300 micro-dollar cap
    router = await make_router(ScriptedHeads(DISAGREE), per_request_cap_usd_micros=300)
    await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(max_tokens=200)))
    assert cloud.requests[-1]["max_tokens"] < 200
    prompt_bound = len("What is the capital of France?") + 8
    assert prompt_bound * 1 + cloud.requests[-1]["max_tokens"] * 2 <= 300


async def test_a_cap_the_prompt_alone_breaks_refuses_with_budget_exceeded(make_router, cloud):
    router = await make_router(ScriptedHeads(DISAGREE), per_request_cap_usd_micros=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    code, reason, metadata = reason_of(caught.value)
    assert (code, reason, metadata["subject"]) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "BUDGET_EXCEEDED",
        "per_request_cap",
    )
    assert not cloud.requests


async def test_a_spent_pool_refuses_the_cloud_but_local_tiers_keep_answering(make_router, cloud):
    router = await make_router(ScriptedHeads(DISAGREE), daily_pool_usd_micros=100)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(max_tokens=200)))
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    assert (await router.budget()).reserved_usd_micros == 0
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask("what is 2+2?")))
    assert reply.trace.tier == router_pb2.TIER_PATTERN


# -- vote, feedback, admin -----------------------------------------------------------------------------


async def test_vote_returns_every_candidate_best_first(make_router):
    router = await make_router(ScriptedHeads({"creative": "Something else entirely."}))
    reply = await router.stub.Vote(router_pb2.VoteRequest(**ask()))
    scores = [c.score for c in reply.candidates]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert reply.candidates[0].winner and reply.accepted
    assert reply.candidates[-1].head == "creative"


async def test_feedback_attaches_to_a_logged_answer(make_router):
    router = await make_router()
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    await router.stub.SubmitFeedback(
        router_pb2.SubmitFeedbackRequest(answer_id=reply.answer_id, rating=router_pb2.RATING_BAD, comment="wrong")
    )
    kind, fields = (await router.redis.xrange(f"{router.prefix}traffic"))[-1]
    assert (fields[b"kind"], fields[b"answer_id"], fields[b"rating"]) == (b"feedback", reply.answer_id.encode(), b"bad")
    for request, reason in [
        (router_pb2.SubmitFeedbackRequest(answer_id="nope", rating=router_pb2.RATING_GOOD), "ANSWER_NOT_FOUND"),
        (router_pb2.SubmitFeedbackRequest(answer_id=reply.answer_id), "INVALID_RATING"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router.stub.SubmitFeedback(request)
        assert reason_of(caught.value)[1] == reason


async def test_an_answer_is_rated_once_however_often_bad_is_sent(make_router):
    router = await make_router()
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    bad = router_pb2.SubmitFeedbackRequest(answer_id=reply.answer_id, rating=router_pb2.RATING_BAD)
    await router.stub.SubmitFeedback(bad)
    for _ in range(5):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await router.stub.SubmitFeedback(bad)
        assert reason_of(caught.value)[:2] == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_RATED")
    ratings = [f for _, f in await router.redis.xrange(f"{router.prefix}traffic") if f[b"kind"] == b"feedback"]
    assert len(ratings) == 1


async def test_a_reload_switches_the_heads_and_the_cache_key(make_router):
    router = await make_router()
    await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    reply = await router.admin.ReloadAdapter(admin_pb2.ReloadAdapterRequest(version="latest"), metadata=ADMIN)
    assert (reply.version, reply.load_latency_us) == ("v7", 1234)
    assert router.heads.reloads == [("latest", False)]
    assert await router.redis.get(f"{router.prefix}adapter_version:main") == b"v7"
    again = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert again.trace.tier == router_pb2.TIER_COUNCIL  # the old adapter's cached answer is not served
    canary = admin_pb2.ReloadAdapterRequest(version="v8", target=admin_pb2.RELOAD_TARGET_CANARY)
    await router.admin.ReloadAdapter(canary, metadata=ADMIN)
    assert router.heads.reloads[-1] == ("v8", True)
    assert await router.redis.get(f"{router.prefix}adapter_version:main") == b"v7"


async def test_the_canary_weight_is_set_kept_and_validated(make_router, tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(canary, "apply_to_envoy", lambda settings, percent: sent.append(percent))
    router = await make_router()
    assert (await router.admin.GetCanaryWeight(admin_pb2.GetCanaryWeightRequest(), metadata=ADMIN)).percent == 5
    changed = await router.admin.SetCanaryWeight(admin_pb2.SetCanaryWeightRequest(percent=30), metadata=ADMIN)
    assert (changed.previous_percent, changed.percent) == (5, 30)
    assert (await router.admin.GetCanaryWeight(admin_pb2.GetCanaryWeightRequest(), metadata=ADMIN)).percent == 30
    assert sent == [30] and (tmp_path / "canary_weight").read_text().strip() == "30"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.admin.SetCanaryWeight(admin_pb2.SetCanaryWeightRequest(percent=120), metadata=ADMIN)
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "BAD_WEIGHT")


async def test_admin_calls_need_the_token(make_router):
    router = await make_router()
    for metadata, reason in [((), "BAD_ADMIN_TOKEN"), ((("authorization", "Bearer wrong"),), "BAD_ADMIN_TOKEN")]:
        for call in (
            router.admin.GetBudget(admin_pb2.GetBudgetRequest(), metadata=metadata),
            router.admin.ReloadAdapter(admin_pb2.ReloadAdapterRequest(version="x"), metadata=metadata),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, reason)
    assert not getattr(router.heads, "reloads", [])
    budget = await router.budget()
    assert (budget.day, budget.pool_usd_micros, budget.per_request_cap_usd_micros) == ("2026-11-25", 100_000, 20_000)


@pytest.mark.parametrize(
    ("kwargs", "code", "reason"),
    [
        (dict(messages=[]), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_MESSAGES"),
        (ask(max_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT, "MAX_TOKENS_OUT_OF_RANGE"),
        (ask(max_tokens=2**31 - 1), grpc.StatusCode.INVALID_ARGUMENT, "MAX_TOKENS_OUT_OF_RANGE"),
        (
            dict(messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER)] * 100_000 + ask()["messages"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TOO_MANY_MESSAGES",
        ),
        ({**ask(), "model": "gpt-4"}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(make_router, kwargs, code, reason):
    router = await make_router()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**kwargs))
    assert reason_of(caught.value)[:2] == (code, reason)
    assert not router.heads.calls


async def test_a_message_over_the_receive_limit_is_refused_by_grpc_itself(make_router):
    router = await make_router()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask("x" * 17 * 1024 * 1024)))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not router.heads.calls


async def test_an_unsafe_request_id_in_metadata_is_replaced(make_router):
    router = await make_router()
    reply = await router.stub.Orchestrate(
        router_pb2.OrchestrateRequest(**ask()), metadata=((REQUEST_ID_HEADER, "x" * 129),)
    )
    assert reply.trace.request_id and reply.trace.request_id != "x" * 129


async def test_an_unexpected_exception_is_internal_with_a_generic_message(make_router):
    router = await make_router(
        ScriptedHeads({h: RuntimeError("secret detail") for h in ("precise",)}), council="precise"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask()))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()
