"""`make evolution-once`: enqueue a distillation job now, stream its progress, print the outcome.

Talks to the running platform through Envoy (start it with `make up`). Exit status 0 when the job
succeeded (whether or not its adapter beat the current one), 1 when it failed or was cancelled, 2 when the
platform could not be reached. Ctrl-C stops watching; the job goes on (cancel it with `--cancel JOB_ID`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

import grpc

from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.auth import bearer, operator_token
from spiral_common.config import ConfigError, load_settings

STAGE_NAMES = {v: k.removeprefix("JOB_STAGE_").lower() for k, v in trainer_pb2.JobStage.items()}
STATE_NAMES = {v: k.removeprefix("JOB_STATE_").lower() for k, v in trainer_pb2.JobState.items()}


WATCH_RETRIES = 30


def _final(job: trainer_pb2.Job) -> bool:
    return job.state in (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED)


def describe(job: trainer_pb2.Job) -> str:
    state = STATE_NAMES[job.state]
    if job.state == trainer_pb2.JOB_STATE_RUNNING:
        p = job.progress
        parts = [f"attempt {job.attempt}", STAGE_NAMES[p.stage]]
        if p.total_steps:
            parts.append(f"step {p.step}/{p.total_steps}")
        if p.step:
            parts.append(f"loss {p.loss:.3f}")
        if p.eta_ms:
            parts.append(f"eta {p.eta_ms / 1000:.0f} s")
        return f"{state}: " + ", ".join(parts)
    return f"{state}" + (f": {job.error}" if job.error else "")


def outcome(job: trainer_pb2.Job) -> str:
    r = job.result
    lines = [f"job {job.job_id}: {STATE_NAMES[job.state]} after {job.attempt} attempt(s)"]
    if job.error:
        lines.append(f"  error: {job.error}")
    if job.state == trainer_pb2.JOB_STATE_SUCCEEDED:
        lines.append(f"  held-out score: new {r.eval_score_new:.3f}, current {r.eval_score_current:.3f}")
        if r.HasField("council_calibration"):
            c = r.council_calibration
            bar = "never (no threshold met the bound)" if math.isinf(c.threshold) else f"{c.threshold:.3f}"
            lines.append(
                f"  council threshold: {bar}; on {c.prompts} held-out prompts it answers {c.coverage:.1%} "
                f"at {c.precision:.1%} precision (bound: at most {c.max_error:.1%} wrong)"
            )
        if r.published:
            lines.append(f"  adapter {r.adapter_version} registered and sent to the canary heads")
        else:
            lines.append("  the new adapter is not better: nothing registered, the canary is unchanged")
    lines.append(f"  cost {r.cost_usd_micros} micro-USD, {r.duration_ms / 1000:.1f} s")
    return "\n".join(lines)


async def run(address: str, time_budget_s: int, cancel: str, token: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        operator = bearer(token)  # submitting and cancelling change state: the operator's token
        try:
            if cancel:
                job = (
                    await stub.CancelJob(trainer_pb2.CancelJobRequest(job_id=cancel), timeout=10, metadata=operator)
                ).job
                print(describe(job))
                return 0
            submitted = await stub.SubmitJob(
                trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL, time_budget_s=time_budget_s),
                timeout=10,
                metadata=operator,
            )
        except grpc.aio.AioRpcError as exc:
            print(f"evolution-once: the trainer at {address} answered {exc.code().name}: {exc.details()}"
                  " (is the platform up? `make up`)", file=sys.stderr)  # fmt: skip
            return 2
        job = submitted.job
        print(f"job {job.job_id} ({STATE_NAMES[job.state]}); following it (Ctrl-C stops following, not the job)")
        last, lost = "", 0
        while not _final(job):
            try:
                async for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.job_id), metadata=operator):
                    job = update.job
                    line = describe(job)
                    if line != last:
                        print(f"  {line}", flush=True)
                        last = line
            except grpc.aio.AioRpcError as exc:
                # The trainer restarted, or a proxy dropped the stream: the job goes on; follow it again.
                lost += 1
                if lost > WATCH_RETRIES:
                    message = f"lost the job's stream {lost} times ({exc.code().name}); the job goes on"
                    print(f"evolution-once: {message}: follow it with GetJob {job.job_id}", file=sys.stderr)
                    return 2
                print(f"  (stream lost: {exc.code().name}; following again)", flush=True)
                await asyncio.sleep(2.0)  # back-off before re-attaching
        print(outcome(job))
        return 0 if job.state == trainer_pb2.JOB_STATE_SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evolution-once", description=__doc__.splitlines()[0])
    parser.add_argument("--time-budget-s", type=int, default=0, help="the job's wall-clock budget (0: configured)")
    parser.add_argument("--cancel", default="", metavar="JOB_ID", help="cancel a job instead")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"evolution-once: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(
            run(settings.envoy.envoy_internal_addr, args.time_budget_s, args.cancel, operator_token(settings))
        )
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
