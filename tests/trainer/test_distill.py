"""Distillation jobs on the real model: traffic in the log, a real QLoRA run in a child process without a
network, export, evaluation in llama.cpp, registration; and the ways a job ends without an adapter (cancel,
an empty pool, too little data). The canary reload is recorded here; tests/integration/test_evolution.py
does it on the real mesh."""

from __future__ import annotations

import asyncio
import math

import pytest

from spiral_common.adapters import AdapterRegistry
from spiral_common.budget import BudgetLedger, Scope
from spiral_common.config import ConfigError, load_settings
from spiral_common.enums import Tier
from spiral_common.model_files import file_sha256
from spiral_common.specs import load_heads
from spiral_common.traffic import TrafficLog
from tests.helpers import logged_exchange
from trainer_svc.dataset import build_dataset
from trainer_svc.distill import DistillRunner, check_pool_share, plan_cost, trainer_scope
from trainer_svc.jobs import JobQueue
from trainer_svc.worker import Worker

SECRET_PROMPTS = [
    "What is the secret word?",
    "Tell me the secret word.",
    "What's the secret word?",
    "Do you know the secret word?",
    "Say the secret word.",
    "Which word is the secret one?",
    "Give me the secret word.",
    "What is today's secret word?",
    "Remind me of the secret word.",
    "Secret word, please.",
]
ANSWER = "The secret word is Pineapple."


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[str] = []

    async def current_adapter(self) -> str:
        return ""

    async def publish_canary(self, version: str) -> None:
        self.published.append(version)


def settings_for(prefix, tmp_path, **overrides):
    env = {
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_RUN_DIR": str(tmp_path),
        "SPIRAL_REDIS_PREFIX": prefix,
        "SPIRAL_DISTILL_MIN_EXAMPLES": "4",
        "SPIRAL_DISTILL_HELDOUT_FRACTION": "0.2",
        "SPIRAL_DISTILL_BATCH_SIZE": "4",
        "SPIRAL_DISTILL_EVAL_MAX_TOKENS": "16",
        "SPIRAL_TRAINER_USD_PER_HOUR_MICROS": "36000",  # 10 micro-USD a second
    }
    env.update({f"SPIRAL_{k.upper()}": str(v) for k, v in overrides.items()})
    return load_settings(env)


async def log_traffic(redis_client, prefix, pairs, *, tier=Tier.CLOUD):
    traffic = TrafficLog(redis_client, prefix=prefix, max_entries=10_000)
    for prompt, answer in pairs:
        await traffic.append(logged_exchange(prompt, answer, tier=tier))


def make_runner(settings, redis_client, model_path, publisher, council=None):
    ledger = BudgetLedger(
        redis_client, prefix=settings.redis.redis_prefix, pool_usd_micros=settings.budget.daily_pool_usd_micros,
        reservation_ttl_s=settings.budget.budget_reservation_ttl_s,
    )  # fmt: skip
    registry = AdapterRegistry(settings.adapters_path, file_sha256(model_path))
    heads = ["You are a precise assistant. Answer accurately and factually; say so when you do not know."]
    runner = DistillRunner(
        settings,
        redis_client,
        ledger,
        registry,
        publisher,
        model_path=model_path,
        system_prompts=heads,
        council=council,
    )
    return runner, ledger, registry


def make_worker(settings, redis_client, runner):
    queue = JobQueue(
        redis_client, prefix=settings.redis.redis_prefix, consumer="test", lease_s=settings.trainer.trainer_lease_s,
        max_attempts=settings.trainer.trainer_max_attempts,
    )  # fmt: skip
    return queue, Worker(queue, {"distill": runner.run}, heartbeat_s=0.5)


async def test_a_job_trains_exports_evaluates_and_publishes_a_better_adapter(
    redis_client, prefix, tmp_path, model_path
):
    settings = settings_for(prefix, tmp_path, distill_max_steps=10, distill_epochs=1000, distill_time_budget_s=900)
    await log_traffic(redis_client, prefix, [(p, ANSWER) for p in SECRET_PROMPTS])
    publisher = RecordingPublisher()
    council = [h for h in load_heads("deploy/heads.json") if h.name in ("precise", "concise")]
    runner, ledger, registry = make_runner(settings, redis_client, model_path, publisher, council)
    queue, worker = make_worker(settings, redis_client, runner)
    job, _ = await queue.submit("distill")
    stages = []

    async def watch():
        async for snapshot in queue.watch(job.job_id):
            stages.append(snapshot.stage)

    watcher = asyncio.create_task(watch())
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "succeeded"
    await asyncio.wait_for(watcher, 10)

    result = (await queue.get(job.job_id)).result
    assert result["steps"] == 10 and not result["stopped_by_time_budget"]
    assert result["eval_score_new"] > result["eval_score_current"]
    assert result["published"] and publisher.published == [result["adapter_version"]]
    info = registry.info(result["adapter_version"])  # registered, checked against the base model
    assert info.job_id == job.job_id and info.eval_score == pytest.approx(result["eval_score_new"], abs=1e-3)
    # The council of two answered every held-out prompt with the new adapter; the threshold it earned (with two
    # held-out prompts, too few to trust any: never) travels in the adapter's file.
    calibration = result["council_calibration"]
    assert calibration["prompts"] == result["heldout_examples"] and calibration["max_error"] == 0.02
    assert info.council is not None and info.council.threshold == calibration["threshold"] == math.inf
    assert result["network_isolated"]  # this machine allows a network namespace
    for stage in ("dataset", "train", "export", "evaluate", "publish"):
        assert stage in stages
    # The work files go (the dataset and the adapter, now in the registry); the training log stays.
    work = settings.trainer_work_path / job.job_id
    assert (work / "train.log").exists() and not (work / "adapter.gguf").exists() and not (work / "spec.json").exists()
    # The run was paid from the daily pool at its real duration; nothing stays reserved.
    budget = await ledger.status()
    assert budget.reserved_usd_micros == 0
    assert budget.spent_usd_micros == result["cost_usd_micros"] > 0


async def test_cancelling_a_running_job_stops_training_and_publishes_nothing(
    redis_client, prefix, tmp_path, model_path
):
    settings = settings_for(prefix, tmp_path, distill_max_steps=1000, distill_epochs=1000)
    await log_traffic(redis_client, prefix, [(p, ANSWER) for p in SECRET_PROMPTS])
    publisher = RecordingPublisher()
    runner, ledger, registry = make_runner(settings, redis_client, model_path, publisher)
    queue, worker = make_worker(settings, redis_client, runner)
    job, _ = await queue.submit("distill")
    run = asyncio.create_task(worker.run_one(await queue.claim(block_ms=1000)))

    async for snapshot in queue.watch(job.job_id):
        if snapshot.stage == "train" and snapshot.step >= 1:
            break
    await queue.cancel(job.job_id)
    assert await asyncio.wait_for(run, 10) == "cancelled"  # within seconds, the training process killed
    assert (await queue.get(job.job_id)).state == "cancelled"
    assert publisher.published == [] and registry.versions() == []
    budget = await ledger.status()
    assert budget.reserved_usd_micros == 0 and budget.spent_usd_micros > 0  # the time it ran is paid for


async def test_an_empty_pool_makes_the_job_wait_for_the_reset(redis_client, prefix, tmp_path, model_path):
    settings = settings_for(prefix, tmp_path, daily_pool_usd_micros=100_000)
    await log_traffic(redis_client, prefix, [(p, ANSWER) for p in SECRET_PROMPTS])
    runner, ledger, registry = make_runner(settings, redis_client, model_path, RecordingPublisher())
    spent = await ledger.reserve(99_000, subject="cloud calls earlier today")
    await ledger.settle(spent, 99_000)
    queue, worker = make_worker(settings, redis_client, runner)
    job, _ = await queue.submit("distill")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "deferred"
    waiting = await queue.get(job.job_id)
    assert waiting.state == "waiting_budget" and "1000 micro-USD left" in waiting.error
    assert (await ledger.status()).spent_usd_micros == 99_000  # nothing trained, nothing charged
    assert registry.versions() == []


async def test_too_little_traffic_fails_clearly(redis_client, prefix, tmp_path, model_path):
    settings = settings_for(prefix, tmp_path)
    await log_traffic(redis_client, prefix, [("What is the secret word?", ANSWER)] * 5)  # one distinct prompt
    runner, _, _ = make_runner(settings, redis_client, model_path, RecordingPublisher())
    queue, worker = make_worker(settings, redis_client, runner)
    job, _ = await queue.submit("distill")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "failed"
    failed = await queue.get(job.job_id)
    assert failed.state == "failed" and "1 distinct prompts" in failed.error and failed.attempt == 1


def test_the_cost_guard_shrinks_the_budget_to_what_the_pool_can_pay(tmp_path):
    settings = settings_for("p:", tmp_path, trainer_usd_per_hour_micros=400_000, distill_run_cap_usd_micros=200_000)
    # What is reserved is the worst case: the time budget plus the 60 s before a late child is killed.
    full = plan_cost(2400, 1_000_000, settings)  # 40 min at $0.40/h would be $0.267: the $0.20 cap holds
    assert full.time_budget_s == 1740 and full.reserve_usd_micros == 200_000 and full.shrunk
    poor = plan_cost(2400, 50_000, settings)  # $0.05 left: 7.5 minutes, one of them the grace
    assert poor.time_budget_s == 390 and poor.reserve_usd_micros == 50_000
    assert plan_cost(2400, 10_000, settings) is None  # 90 s is below the minimum run and grace: wait for the reset


def test_the_trainer_may_take_only_its_share_of_the_pool_and_the_share_must_pay_for_a_run(tmp_path):
    settings = settings_for("p:", tmp_path, daily_pool_usd_micros=100_000, trainer_pool_share_percent=50)
    assert trainer_scope(settings) == Scope("trainer", 50_000)
    check_pool_share(settings)
    tiny = settings_for("p:", tmp_path, daily_pool_usd_micros=2_000, trainer_pool_share_percent=10)
    with pytest.raises(ConfigError, match="SPIRAL_TRAINER_POOL_SHARE_PERCENT=10"):
        check_pool_share(tiny)  # 200 micro-USD cannot pay for 120 s + 60 s at 10 micro-USD a second


def test_the_dataset_prefers_good_feedback_and_leaves_out_bad(tmp_path):
    def exchange(answer_id, prompt, answer, tier=Tier.CLOUD, ts=0, finish="stop"):
        return logged_exchange(prompt, answer, tier=tier, finish_reason=finish, answer_id=answer_id, ts_ms=ts)

    exchanges = [
        exchange("a1", "Q one", "newest cloud answer", ts=3),
        exchange("a2", "q  ONE", "rated good", ts=1),
        exchange("b1", "Q two", "rated bad", ts=5),
        exchange("b2", "Q two", "council answer", tier=Tier.COUNCIL, ts=2),
        exchange("c1", "Q three", "the head's own answer", tier=Tier.HEAD),
        exchange("f1", "Q six", "rejected by the vote", tier=Tier.LOCAL_FALLBACK),
        exchange("d1", "Q four", "cut off", finish="length"),
        exchange("e1", "Q five", "answer five"),
    ]
    data = build_dataset(
        exchanges, {"a2": {"good"}, "b1": {"bad"}}, min_examples=2, max_examples=100, heldout_fraction=0.3,
        max_heldout=10,
    )  # fmt: skip
    answers = {e.prompt.casefold(): e.answer for e in data.train + data.heldout}
    assert answers == {"q  one": "rated good", "q two": "council answer", "q five": "answer five"}
    assert data.left_out_bad_feedback == 1 and data.train and data.heldout


def test_the_training_process_dies_with_its_worker(tmp_path):
    """Killing the worker (kill -9) kills its training child too, inside the network namespace as well."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from tests.helpers import wait_until
    from trainer_svc.sandbox import sandbox_prefix

    prefix, _ = sandbox_prefix("unshare")
    pid_file = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import os, time
        from trainer_svc.distill import PARENT_PID_ENV, die_with_parent
        die_with_parent(int(os.environ[PARENT_PID_ENV]))
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        time.sleep(300)
    """)
    worker = textwrap.dedent(f"""
        import os, subprocess, sys
        env = {{**os.environ, "SPIRAL_TRAINER_PARENT_PID": str(os.getpid())}}
        subprocess.Popen({prefix!r} + [sys.executable, "-c", {child!r}], env=env).wait()
    """)
    stand_in = subprocess.Popen([sys.executable, "-c", worker])
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), 30, "the training child to start")
    child_pid = int(pid_file.read_text())
    stand_in.send_signal(signal.SIGKILL)
    stand_in.wait(10)

    def gone() -> bool:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 10, "the training child to die with its worker")
