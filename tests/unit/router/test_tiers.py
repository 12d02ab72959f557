"""The cascade's seams: the tier enums match the contracts, old traffic entries still read, and a tier is
one small object the cascade asks in order (tested here with fakes)."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from router_svc.cascade import Answer, Cascade
from router_svc.council import Council
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import CascadeRequest, Pass, TierResult
from router_svc.tiers.council import CouncilTier
from router_svc.tiers.head import HeadTier
from spiral.common.v1 import track_pb2
from spiral.router.v1 import router_pb2
from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.chat import GenerationParams, Limits, Message, validate_chat
from spiral_common.enums import Outcome, Tier, Track, tracks_to_switch
from spiral_common.errors import CONTEXT_OVERFLOW, InvalidArgument, Unavailable
from spiral_common.traffic import Damaged, Rating, decode_entry, single_turn, teacher_answer


def test_the_enums_are_exactly_the_contracts_values():
    assert {t.value for t in Tier} == set(router_pb2.Tier.values()) - {router_pb2.TIER_UNSPECIFIED}
    assert {o.value for o in Outcome} == set(router_pb2.TierOutcome.values()) - {router_pb2.TIER_OUTCOME_UNSPECIFIED}
    assert {t.value for t in Track} == set(track_pb2.Track.values()) - {track_pb2.TRACK_UNSPECIFIED}
    for tier in Tier:
        assert router_pb2.Tier.Name(tier.proto) == f"TIER_{tier.name}" and Tier.from_label(tier.label) is tier


def test_a_switch_takes_the_canary_or_both_tracks_never_main_alone():
    assert tracks_to_switch(0) == (Track.MAIN, Track.CANARY)
    assert tracks_to_switch(Track.CANARY) == (Track.CANARY,)
    assert tracks_to_switch(0, legacy_canary_only=True) == (Track.CANARY,)
    with pytest.raises(InvalidArgument):
        tracks_to_switch(Track.MAIN)


def _old_json(**fields) -> dict:
    doc = {
        "answer_id": "a1", "request_id": "r1", "router_instance": "canary", "model": "spiral",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": " Hi there "}],
        "params": {"max_tokens": 16, "temperature": 0.5, "stop": ["\n"]}, "tier": "cloud", "answer": "Hello!",
        "finish_reason": "stop", "teacher_answer": "Hello!", "teacher": "mistral", "cost_usd_micros": 28,
        "latencies_us": {"cache": 100, "total": 900}, "adapter_version": "", "ts_ms": 5, "pattern_id": "",
    }  # fmt: skip
    return doc | fields


def test_an_exchange_logged_as_json_before_the_message_existed_still_reads():
    entry = decode_entry({b"kind": b"exchange", b"answer_id": b"a1", b"exchange": json.dumps(_old_json()).encode()})
    assert isinstance(entry, TrafficExchange) and entry.schema_version == 0
    assert (entry.tier, entry.track, entry.teacher, entry.cost_usd_micros) == (Tier.CLOUD, Track.CANARY, "mistral", 28)
    assert (entry.params.max_tokens, list(entry.params.stop), entry.latencies_us["total"]) == (16, ["\n"], 900)
    assert single_turn(entry) == "Hi there" and teacher_answer(entry) == ("Hello!", "mistral")
    old_council = _old_json(tier="council", teacher_answer="", teacher="council:precise")
    council = decode_entry({b"kind": b"exchange", b"exchange": json.dumps(old_council)})
    assert teacher_answer(council) == ("Hello!", "council:precise")
    for tier in ("head", "cache", "pattern"):
        old = decode_entry({b"kind": b"exchange", b"exchange": json.dumps(_old_json(tier=tier, teacher_answer=""))})
        assert teacher_answer(old) is None, tier
    truncated = decode_entry({b"kind": b"exchange", b"exchange": json.dumps(_old_json(finish_reason="length"))})
    assert teacher_answer(truncated) is None


def test_damaged_entries_and_ratings_are_told_apart():
    assert isinstance(decode_entry({b"kind": b"exchange", b"exchange": b"{nope"}), Damaged)
    assert isinstance(decode_entry({b"kind": b"exchange", b"exchange_pb": b"\xff\xff"}), Damaged)
    assert isinstance(decode_entry({b"kind": b"other"}), Damaged)
    assert decode_entry({b"kind": b"feedback", b"answer_id": b"a1", b"rating": b"bad"}) == Rating("a1", "bad")


class FakeTier:
    def __init__(self, tier: Tier, verdict: TierResult | Pass | None, pieces: tuple[str, ...] = ()) -> None:
        self.tier, self.verdict, self.pieces, self.asked = tier, verdict, pieces, 0

    async def answer(self, request: CascadeRequest):
        self.asked += 1
        for piece in self.pieces:
            yield piece
        if self.verdict is not None:
            yield self.verdict


class FakeLog:
    def __init__(self) -> None:
        self.appended: list[TrafficExchange] = []
        self.owners: dict[str, str] = {}

    def submit(self, exchange: TrafficExchange, owner: str = "") -> bool:
        self.appended.append(exchange)
        self.owners[exchange.answer_id] = owner
        return True


class FakeCache:
    def __init__(self) -> None:
        self.stored: list[str] = []

    async def put(self, key, answer) -> None:
        self.stored.append(key)


def _cascade(*tiers) -> tuple[Cascade, FakeLog, FakeCache]:
    log, cache = FakeLog(), FakeCache()
    metrics = RouterMetrics(CollectorRegistry())
    return Cascade(track=Track.CANARY, tiers=tiers, cache=cache, traffic=log, metrics=metrics), log, cache  # type: ignore[arg-type]


def _chat():
    return validate_chat([Message("user", "hi")], GenerationParams(), Limits(1000, 64, 16, 0.7), model="")


async def test_the_first_tier_with_a_result_answers_and_the_rest_are_not_asked():
    miss = FakeTier(Tier.CACHE, Pass(Outcome.MISSED))
    hit = FakeTier(Tier.PATTERN, TierResult(Tier.PATTERN, "Hello.", "stop", detail="greeting", cacheable=False))
    never = FakeTier(Tier.CLOUD, None)
    cascade, log, cache = _cascade(miss, hit, never)
    items = [item async for item in cascade.stream(_chat(), "req-1")]
    assert items[0] == "Hello." and isinstance(items[-1], Answer) and never.asked == 0
    trace = items[-1].trace
    assert [(s.tier, s.outcome) for s in trace.steps] == [
        (Tier.CACHE, Outcome.MISSED),
        (Tier.PATTERN, Outcome.ANSWERED),
    ]
    assert trace.tier is Tier.PATTERN and trace.track is Track.CANARY and cache.stored == []
    (logged,) = log.appended
    assert (logged.tier, logged.track, logged.teaches, logged.request_id) == (
        Tier.PATTERN,
        Track.CANARY,
        False,
        "req-1",
    )


async def test_a_streaming_tier_s_pieces_pass_through_and_are_not_repeated():
    head = FakeTier(Tier.HEAD, TierResult(Tier.HEAD, "a b", "stop", streamed=True), pieces=("a ", "b"))
    cascade, log, _ = _cascade(head)
    items = [item async for item in cascade.stream(_chat(), "r")]
    assert items[:2] == ["a ", "b"] and len(items) == 3 and not log.appended[0].teaches


async def test_a_fallback_is_served_only_when_no_later_tier_answers_and_never_teaches():
    class FallbackTier(FakeTier):
        async def answer(self, request):
            request.fallback = TierResult(Tier.LOCAL_FALLBACK, "maybe", "stop", cacheable=False)
            yield Pass(Outcome.FAILED, "below threshold")

    cascade, log, _ = _cascade(FallbackTier(Tier.COUNCIL, None), FakeTier(Tier.CLOUD, Pass(Outcome.SKIPPED, "x")))
    answer = await cascade.answer(_chat(), "r")
    assert (answer.text, answer.trace.tier, log.appended[0].teaches) == ("maybe", Tier.LOCAL_FALLBACK, False)
    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "sure", "stop", teacher="p"))
    cascade, log, _ = _cascade(FallbackTier(Tier.COUNCIL, None), cloud)
    assert (await cascade.answer(_chat(), "r")).trace.tier is Tier.CLOUD and log.appended[0].teaches


async def test_when_every_tier_passes_the_request_fails_with_the_reasons():
    cascade, log, _ = _cascade(
        FakeTier(Tier.CACHE, Pass(Outcome.MISSED)), FakeTier(Tier.CLOUD, Pass(Outcome.SKIPPED, message="no cloud"))
    )
    with pytest.raises(Unavailable) as caught:
        await cascade.answer(_chat(), "r")
    assert caught.value.reason == "NO_TIER_ANSWERED" and "no cloud" in caught.value.message and not log.appended


@pytest.mark.parametrize(
    ("finish", "kept"),
    [("stop", True), ("length", False), ("cancelled", False), ("content_filter", False), ("other", False)],
)
async def test_only_an_answer_that_stopped_naturally_is_cached_or_teaches(finish, kept):
    class CacheMiss(FakeTier):
        async def answer(self, request):
            request.cache_key = "key"
            yield Pass(Outcome.MISSED)

    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "Paris", finish, teacher="p"))
    cascade, log, cache = _cascade(CacheMiss(Tier.CACHE, None), cloud)
    await cascade.answer(_chat(), "r")
    assert (len(cache.stored), log.appended[0].teaches) == (int(kept), kept)


class OverflowingHeads:
    """Heads that count the prompt and find it too long, as a real head does before generating."""

    async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
        raise InvalidArgument("prompt (2000 tokens) plus max_tokens (16) exceed ...", reason=CONTEXT_OVERFLOW)
        yield  # an async generator, like the real client


@pytest.mark.parametrize("local", ["council", "head"])
async def test_a_prompt_too_long_for_the_heads_goes_to_the_cloud(local):
    heads = OverflowingHeads()
    if local == "council":
        council = Council(heads, ["a", "b"], deadline_s=5, threshold=0.3, length_weight=0.2, diversity_weight=0.1)  # type: ignore[arg-type]
        tier = CouncilTier(council, RouterMetrics(CollectorRegistry()))
    else:
        tier = HeadTier(heads, "a")  # type: ignore[arg-type,assignment]
    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "long answer", "stop", teacher="p"))
    cascade, log, _ = _cascade(tier, cloud)
    answer = await cascade.answer(_chat(), "r")
    assert answer.trace.tier is Tier.CLOUD and cloud.asked == 1
    assert (answer.trace.steps[0].outcome, answer.trace.steps[0].detail) == (Outcome.SKIPPED, "context overflow")
    cascade, _, _ = _cascade(tier)  # nothing after the heads: the refusal says why
    with pytest.raises(Unavailable) as caught:
        await cascade.answer(_chat(), "r")
    assert "context window" in caught.value.message or "exceed" in caught.value.message


async def test_an_answer_is_cached_only_under_the_adapter_that_produced_it():
    class CacheMiss(FakeTier):
        async def answer(self, request):
            request.cache_key, request.adapter_version = "key", "v1"
            yield Pass(Outcome.MISSED)

    for produced_by, stored in (("v1", 1), ("", 0), ("v2", 0)):
        council = FakeTier(Tier.COUNCIL, TierResult(Tier.COUNCIL, "Paris", "stop", adapter_version=produced_by))
        cascade, _, cache = _cascade(CacheMiss(Tier.CACHE, None), council)
        await cascade.answer(_chat(), "r")
        assert len(cache.stored) == stored


class AgreeingHeads:
    """Heads that all give the same answer, from an adapter calibrated to `threshold` (None: not calibrated)."""

    def __init__(self, threshold: float | None) -> None:
        self.threshold = threshold

    async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
        from router_svc.heads_client import HeadDone, HeadText

        yield HeadText("card_arrival")
        yield HeadDone("stop", 10, 2, head, "distill-1", self.threshold)


@pytest.mark.parametrize(("calibrated", "answered_by"), [(None, Tier.COUNCIL), (0.9, Tier.COUNCIL),
                                                         (float("inf"), Tier.CLOUD)])  # fmt: skip
async def test_an_adapter_whose_job_trusted_no_threshold_defers_to_the_cloud(calibrated, answered_by):
    council = Council(AgreeingHeads(calibrated), ["a", "b"], deadline_s=5, threshold=0.3, length_weight=0.2,  # type: ignore[arg-type]
                      diversity_weight=0.1)  # fmt: skip
    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "card_arrival", "stop", teacher="p"))
    cascade, _, _ = _cascade(CouncilTier(council, RouterMetrics(CollectorRegistry())), cloud)
    answer = await cascade.answer(_chat(), "r")
    assert answer.trace.tier is answered_by
    if answered_by is Tier.CLOUD:
        assert "calibrated for adapter distill-1" in answer.trace.steps[0].detail


async def test_an_adapter_calibrated_never_is_not_asked_again_until_the_recheck():
    class CountingHeads(AgreeingHeads):
        calls = 0

        async def generate(self, request, *, head, request_id, head_sampling=False, timeout_s=None):
            self.calls += 1
            async for event in super().generate(request, head=head, request_id=request_id):
                yield event

    now = [0.0]
    heads = CountingHeads(float("inf"))
    council = Council(heads, ["a", "b"], deadline_s=5, threshold=0.3, length_weight=0.2, diversity_weight=0.1)  # type: ignore[arg-type]
    tier = CouncilTier(council, RouterMetrics(CollectorRegistry()), never_recheck_s=60, clock=lambda: now[0])
    cloud = FakeTier(Tier.CLOUD, TierResult(Tier.CLOUD, "card_arrival", "stop", teacher="p"))
    cascade, _, _ = _cascade(tier, cloud)
    assert (await cascade.answer(_chat(), "r1")).trace.tier is Tier.CLOUD and heads.calls == 2
    answer = await cascade.answer(_chat(), "r2")  # not asked: its answers could not stand
    assert answer.trace.tier is Tier.CLOUD and heads.calls == 2
    assert answer.trace.steps[0].outcome is Outcome.SKIPPED
    assert answer.trace.steps[0].detail == "adapter distill-1 is calibrated never to answer in council"
    now[0] = 61.0  # after the recheck, asked again; an adapter that may answer ends the skipping
    heads.threshold = 0.9
    assert (await cascade.answer(_chat(), "r3")).trace.tier is Tier.COUNCIL and heads.calls == 4
    assert (await cascade.answer(_chat(), "r4")).trace.tier is Tier.COUNCIL and heads.calls == 6
