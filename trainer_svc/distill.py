"""A distillation job, from the traffic log to an adapter on the canary heads.

Stages (the proto's JobStage): DATASET (here), TRAIN, EXPORT and EVALUATE (in a child process without a
network, trainer_svc/train_child.py), PUBLISH (here: register the adapter, reload the canary heads).

Cost guard: the run costs the machine's time at SPIRAL_TRAINER_USD_PER_HOUR_MICROS, capped per run at
SPIRAL_DISTILL_RUN_CAP_USD_MICROS, and comes out of the same daily pool as the cloud calls. Before training,
the worst case (the whole time budget) is reserved; when the pool has less left, the time budget shrinks to
what it can pay; below SPIRAL_DISTILL_MIN_RUN_S of affordable time the job waits for the UTC reset instead of
running. Afterwards the reservation is settled with the time the run really took, whatever its outcome
(machine time was spent either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis

from spiral_common.adapters import AdapterRegistry
from spiral_common.budget import BudgetLedger, Scope
from spiral_common.config import REPO_ROOT, ConfigError, Settings
from spiral_common.errors import BudgetExceeded, FailedPrecondition
from spiral_common.specs import HeadSpec
from trainer_svc import dataset as ds
from trainer_svc.jobs import Job
from trainer_svc.sandbox import child_env, sandbox_prefix

log = logging.getLogger(__name__)

EXPORT_RESERVE_S = 20.0  # writing the GGUF and loading llama.cpp, with room to spare
EVAL_SECONDS_PER_PROMPT = 0.4  # two adapters, greedy, short answers, on 2 CPU cores
CALIBRATION_SECONDS_PER_ANSWER = 0.15  # one council head's sampled answer with the new adapter
KILL_GRACE_S = 60.0  # past the budget, the child is killed


class Deferred(Exception):
    """The job cannot run before `until` (the daily pool is spent)."""

    def __init__(self, until: datetime, reason: str) -> None:
        super().__init__(reason)
        self.until = until
        self.reason = reason


class Publisher(Protocol):
    async def current_adapter(self) -> str:
        """The version the main heads serve ("" for the base model)."""
        ...

    async def publish_canary(self, version: str) -> None: ...


ProgressFn = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class CostPlan:
    time_budget_s: int
    reserve_usd_micros: int
    shrunk: bool


def cost_of(seconds: float, usd_per_hour_micros: int) -> int:
    return math.ceil(seconds * usd_per_hour_micros / 3600)


def plan_cost(requested_s: int, remaining_usd_micros: int, settings: Settings) -> CostPlan | None:
    """The time budget the run may use and what to reserve for it: its worst case, the budget plus the grace
    before the child is killed. None when what is left (of the pool, or of the trainer's share of it) cannot
    pay for the minimum run (the job waits for the reset)."""
    rate = settings.trainer.trainer_usd_per_hour_micros
    if rate == 0:
        return CostPlan(requested_s, 0, False)
    affordable = min(settings.trainer.distill_run_cap_usd_micros, remaining_usd_micros)
    affordable_s = int(affordable * 3600 / rate - KILL_GRACE_S)
    if affordable_s < settings.trainer.distill_min_run_s:
        return None
    budget = min(requested_s, affordable_s)
    return CostPlan(budget, cost_of(budget + KILL_GRACE_S, rate), budget < requested_s)


def trainer_scope(settings: Settings) -> Scope:
    """The trainer's share of the daily pool: its machine time can never leave the cloud tier with nothing."""
    share = settings.budget.daily_pool_usd_micros * settings.trainer.trainer_pool_share_percent // 100
    return Scope("trainer", share)


def check_pool_share(settings: Settings) -> None:
    """At start: the trainer's share of the pool must pay for a minimum run, or no distillation could ever run."""
    rate = settings.trainer.trainer_usd_per_hour_micros
    need = cost_of(settings.trainer.distill_min_run_s + KILL_GRACE_S, rate)
    share = trainer_scope(settings).limit_usd_micros
    if rate and share < need:
        raise ConfigError(
            f"SPIRAL_TRAINER_POOL_SHARE_PERCENT={settings.trainer.trainer_pool_share_percent} of "
            f"SPIRAL_DAILY_POOL_USD_MICROS={settings.budget.daily_pool_usd_micros} is {share} micro-USD, less than "
            f"the shortest run costs (SPIRAL_DISTILL_MIN_RUN_S={settings.trainer.distill_min_run_s} plus "
            f"{KILL_GRACE_S:.0f} s of grace at SPIRAL_TRAINER_USD_PER_HOUR_MICROS={rate}: {need}): no distillation "
            "could ever run; raise the share or the pool, or lower the minimum run"
        )


def target_modules(setting: str) -> list[str]:
    from trainer_svc.lora import ALL_LINEAR  # torch: only the training child needs it at run time

    if setting.strip() in ("", "all"):
        return list(ALL_LINEAR)
    return [m.strip() for m in setting.split(",") if m.strip()]


class DistillRunner:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        ledger: BudgetLedger,
        registry: AdapterRegistry,
        publisher: Publisher,
        *,
        model_path: Path,
        system_prompts: list[str],
        council: list[HeadSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.ledger = ledger
        self.registry = registry
        self.publisher = publisher
        self.model_path = model_path
        self.system_prompts = system_prompts
        self.council = council or []  # the router's council heads, whose threshold the job calibrates
        check_pool_share(settings)
        self.scope = trainer_scope(settings)

    async def run(self, job: Job, progress: ProgressFn) -> dict[str, Any]:
        s = self.settings
        started = time.monotonic()
        await progress(stage="dataset")
        exchanges, ratings = await ds.read_traffic(self.redis, f"{s.redis.redis_prefix}traffic")
        data = ds.build_dataset(
            exchanges,
            ratings,
            min_examples=s.trainer.distill_min_examples,
            max_examples=s.trainer.distill_max_examples,
            heldout_fraction=s.trainer.distill_heldout_fraction,
            max_heldout=s.trainer.distill_max_heldout,
        )
        log.info(
            "distillation dataset",
            extra={"job_id": job.job_id, "train": len(data.train), "heldout": len(data.heldout),
                   "exchanges": data.exchanges_read, "left_out_bad_feedback": data.left_out_bad_feedback},
        )  # fmt: skip

        requested = job.time_budget_s or s.trainer.distill_time_budget_s
        budget = await self.ledger.status([self.scope.name])
        share_left = max(self.scope.limit_usd_micros - sum(budget.scopes[self.scope.name]), 0)
        left, whose = min((budget.remaining_usd_micros, "the daily pool"), (share_left, "the trainer's share"))
        plan = plan_cost(requested, left, s)
        if plan is None:
            raise Deferred(
                budget.resets_at,
                f"{whose} has {left} micro-USD left, less than a {s.trainer.distill_min_run_s} s run costs; "
                f"waiting for the reset at {budget.resets_at:%Y-%m-%d %H:%M} UTC",
            )
        try:
            reservation = await self.ledger.reserve(
                plan.reserve_usd_micros,
                subject=f"distillation {job.job_id}",
                ttl_s=plan.time_budget_s + 2 * KILL_GRACE_S,  # outlives the run, however it ends
                scopes=[self.scope],
            )
        except BudgetExceeded as exc:  # spent between the status and the reservation
            raise Deferred(budget.resets_at, str(exc)) from exc
        work = s.trainer_work_path / job.job_id
        try:
            try:
                result = await self._train(job, work, data, plan, progress)
            finally:
                # Machine time was spent whatever the outcome (a cancelled job too): all of it is settled (past
                # the reservation it is recorded as such), shielded.
                cost = cost_of(time.monotonic() - started, s.trainer.trainer_usd_per_hour_micros)
                await asyncio.shield(self.ledger.settle(reservation, cost))

            await progress(stage="publish")
            better = result["eval_score_new"] > result["eval_score_current"] + s.trainer.distill_min_improvement
            version, published = "", False
            if better:
                version = f"distill-{datetime.now(UTC):%Y%m%d-%H%M%S}-{job.job_id[-8:]}"
                await asyncio.to_thread(self.registry.publish, Path(result["adapter_path"]), version)
                await self.publisher.publish_canary(version)
                published = True
        finally:
            # The dataset and the unpublished adapter go; the training log stays for whoever debugs the job.
            for leftover in ("spec.json", "adapter.gguf"):
                (work / leftover).unlink(missing_ok=True)
        log.info(
            "distillation finished",
            extra={"job_id": job.job_id, "version": version, "published": published,
                   "score_new": result["eval_score_new"], "score_current": result["eval_score_current"]},
        )  # fmt: skip
        return {
            "adapter_version": version,
            "eval_score_new": result["eval_score_new"],
            "eval_score_current": result["eval_score_current"],
            "eval_exact_new": result["eval_exact_new"],
            "eval_exact_current": result["eval_exact_current"],
            "council_calibration": result.get("council_calibration"),
            "published": published,
            "cost_usd_micros": cost,
            "duration_ms": int((time.monotonic() - started) * 1000),
            "steps": result["steps"],
            "best_step": result["best_step"],
            "final_loss": result["final_loss"],
            "train_seconds": result["train_seconds"],
            "stopped_by_time_budget": result["stopped_by_time_budget"],
            "time_budget_s": plan.time_budget_s,
            "time_budget_shrunk": plan.shrunk,
            "train_examples": len(data.train),
            "heldout_examples": len(data.heldout),
            "network_isolated": result["network_isolated"],
        }

    async def _train(
        self, job: Job, work: Path, data: ds.Dataset, plan: CostPlan, progress: ProgressFn
    ) -> dict[str, Any]:
        s = self.settings
        work.mkdir(parents=True, exist_ok=True)
        current = await self.publisher.current_adapter()
        current_path = str(self.registry.info(current).path) if current not in ("", "none") else None
        # A council of one never answers (its vote has no agreement to score): nothing to calibrate.
        calibration_prompts = min(s.trainer.distill_calibration_prompts, len(data.heldout))
        calibration_prompts = calibration_prompts if len(self.council) > 1 else 0
        steps = min(
            s.trainer.distill_max_steps,
            max(1, math.ceil(s.trainer.distill_epochs * len(data.train) / s.trainer.distill_batch_size)),
        )
        spec = {
            "model_path": str(self.model_path),
            "memory_limit_mb": s.trainer.trainer_memory_limit_mb,
            "train": [[e.prompt, e.answer] for e in data.train],
            "heldout": [[e.prompt, e.answer] for e in data.heldout],
            "system_prompts": self.system_prompts,
            "quantization": s.trainer.distill_quantization,
            "rank": s.trainer.distill_rank,
            "alpha": s.trainer.distill_alpha,
            "target_modules": target_modules(s.trainer.distill_target_modules),
            "learning_rate": s.trainer.distill_learning_rate,
            "batch_size": s.trainer.distill_batch_size,
            "top_layers": s.trainer.distill_top_layers,
            "lr_schedule": s.trainer.distill_lr_schedule,
            "total_steps": steps,
            "time_budget_s": plan.time_budget_s,
            "eval_reserve_s": EXPORT_RESERVE_S
            + EVAL_SECONDS_PER_PROMPT * len(data.heldout)
            + CALIBRATION_SECONDS_PER_ANSWER * len(self.council) * calibration_prompts,
            "eval_max_tokens": s.trainer.distill_eval_max_tokens,
            "council": [
                {"system_prompt": h.system_prompt, "temperature": h.temperature, "top_p": h.top_p} for h in self.council
            ],
            "council_length_weight": s.router.council_length_weight,
            "council_diversity_weight": s.router.council_diversity_weight,
            "council_max_error": s.router.council_max_error,
            "calibration_prompts": calibration_prompts,
            "current_adapter_path": current_path,
            "out_path": str(work / "adapter.gguf"),
            "threads": s.head.head_threads,
            "metadata": {"job_id": job.job_id, "created_at": datetime.now(UTC).isoformat(timespec="seconds")},
        }
        check_recipe(spec)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        prefix, isolated = sandbox_prefix(s.trainer.trainer_sandbox)
        result = await run_child(
            [*prefix, sys.executable, "-m", "trainer_svc.train_child", str(spec_path)],
            progress,
            deadline_s=plan.time_budget_s + KILL_GRACE_S,
            log_path=work / "train.log",
        )
        # The metadata records what the adapter scored, for ListAdapters.
        result["network_isolated"] = isolated
        return result


def check_recipe(spec: dict[str, Any]) -> None:
    """Bad recipe settings fail here, before a child process is started, with the setting's name."""
    from trainer_svc.lora import LoraOptions

    LoraOptions(rank=spec["rank"], target_modules=tuple(spec["target_modules"]), batch_size=spec["batch_size"],
                lr_schedule=spec["lr_schedule"])  # fmt: skip


PARENT_PID_ENV = "SPIRAL_TRAINER_PARENT_PID"


def die_with_parent(parent_pid: int) -> None:
    """Asks the kernel to kill this process when `parent_pid` (the worker) dies, so no training outlives its job.
    Entering a user namespace changes credentials, which clears the request: the training child makes it again
    once it runs (trainer_svc/train_child.py), and leaves at once if the worker is already gone."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


async def run_child(command: list[str], progress: ProgressFn, *, deadline_s: float, log_path: Path) -> dict[str, Any]:
    """Runs the training child, relaying its progress; kills it (and its group) on cancellation or deadline."""
    env = child_env(
        os.environ,
        {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "gen")]), PARENT_PID_ENV: str(os.getpid())},
    )
    with log_path.open("ab") as stderr:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=REPO_ROOT,
            # Its own process group, so a cancel kills it and anything it started. No preexec_fn: Python code
            # between fork and exec in this process (gRPC's threads are running) crashed the child with SIGSEGV in
            # gRPC's fork handlers now and then; without it the child is spawned without them. The child asks to
            # die with this worker itself, first thing (trainer_svc/train_child.py, PARENT_PID_ENV).
            process_group=0,
        )
        result: dict[str, Any] | None = None
        error, permanent = "", False
        try:
            async with asyncio.timeout(deadline_s):
                assert process.stdout is not None
                async for line in process.stdout:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    kind = event.pop("event", "")
                    if kind == "progress":
                        await progress(**event)
                    elif kind == "result":
                        result = event
                    elif kind == "error":
                        error, permanent = event.get("error", ""), bool(event.get("permanent"))
                await process.wait()
        except TimeoutError:
            error = f"the training process ran past its time budget and was killed after {deadline_s:.0f} s"
            permanent = True
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await asyncio.shield(process.wait())
    if result is None:
        error = error or f"the training process exited with status {process.returncode} (see {log_path})"
        if permanent:  # the same job would fail the same way again
            raise FailedPrecondition(error, reason="TRAINING_FAILED")
        raise RuntimeError(error)
    return result
