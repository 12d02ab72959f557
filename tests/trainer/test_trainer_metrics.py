"""What the trainer tells Prometheus: job metrics pushed to a real Pushgateway (the nightly-LoRA alert reads the
last success time, which a failed night must not erase), and the queue gauges the dead-letter alert reads."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import free_ports, wait_until
from trainer_svc.jobs import Job, JobQueue
from trainer_svc.publish import push_job_metrics
from trainer_svc.worker import Worker, WorkerMetrics


@pytest.fixture
def pushgateway():
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        pytest.fail("prometheus-pushgateway is missing: `make test` installs it (scripts/bootstrap.sh)")
    (port,) = free_ports(1)
    server = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{port}"], stderr=subprocess.DEVNULL)

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 15, "the Pushgateway to be ready")
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


def samples(address: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("spiral_trainer_"):
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k in ("kind", "adapter", "outcome")))
                found[(sample.name, labels)] = sample.value
    return found


def test_job_metrics_reach_the_pushgateway_and_a_failure_keeps_the_last_success(pushgateway):
    job = Job(job_id="distill-1", kind="distill", state="succeeded", created_ms=1_000, started_ms=2_000,
              finished_ms=62_000)  # fmt: skip
    result = {"final_loss": 0.25, "eval_score_new": 0.8, "eval_score_current": 0.5, "cost_usd_micros": 600}
    push_job_metrics(pushgateway, job, "succeeded", result)
    first = samples(pushgateway)
    kind = (("kind", "distill"),)
    success = first[("spiral_trainer_last_success_timestamp_seconds", kind)]
    assert first[("spiral_trainer_job_duration_seconds", kind)] == 60.0
    assert first[("spiral_trainer_final_loss", kind)] == 0.25
    assert first[("spiral_trainer_eval_score", (("adapter", "new"), *kind))] == 0.8
    assert first[("spiral_trainer_job_cost_usd_micros", kind)] == 600

    failed = Job(job_id="distill-2", kind="distill", state="failed", created_ms=100_000, started_ms=100_000,
                 finished_ms=105_000)  # fmt: skip
    push_job_metrics(pushgateway, failed, "failed", {})
    second = samples(pushgateway)
    assert second[("spiral_trainer_last_success_timestamp_seconds", kind)] == success
    assert second[("spiral_trainer_job_duration_seconds", kind)] == 5.0


async def test_the_dead_letter_gauge_counts_dead_jobs(redis_client, prefix):
    queue = JobQueue(redis_client, prefix=prefix, consumer="w", lease_s=30, max_attempts=1)
    registry = CollectorRegistry()

    async def body(job, progress):
        raise RuntimeError("always")

    worker = Worker(queue, {"mine": body}, heartbeat_s=0.2, metrics=WorkerMetrics(registry))
    await queue.submit("mine")
    assert await worker.run_one(await queue.claim(block_ms=1000)) == "failed"
    await worker._refresh_gauges()
    exposition = generate_latest(registry).decode()
    assert "spiral_jobs_dead_letter 1.0" in exposition
    assert 'spiral_trainer_jobs_total{kind="mine",outcome="failed"} 1.0' in exposition
