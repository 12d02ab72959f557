"""The nightly spiral on real customer queries: does distillation teach the head what the cloud knew?

`make bench-distill` (python -m bench.distill) on ../shared/data/banking77/train.csv (read in place):
  1. a random held-out set of queries is put aside; the rest are asked of the platform's router (real Redis,
     real cascade; the local tier is off so every query reaches the cloud), where a stand-in cloud teacher
     answers each with its intent label; the traffic log records them;
  2. the head's exact-match accuracy on the held-out queries is measured before: llama.cpp, greedy, under
     the first head's system prompt, exactly as the heads serve;
  3. the nightly job runs as the platform runs it (queue, worker, cost guard, training child without a
     network, export, evaluation, registration) on the logged traffic;
  4. the same accuracy after, with the job's adapter.
Target (issue): from near chance to >= 80 % with training under 15 minutes on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import grpc

from deploy.gate.fake_cloud import FakeCloud, providers_json
from deploy.platform import free_ports
from router_svc.cloud import OpenAICompatibleClient
from router_svc.heads_client import GrpcHeadClient
from router_svc.server import RouterDeps, create_server
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common import redis_access
from spiral_common.adapters import AdapterRegistry
from spiral_common.budget import BudgetLedger
from spiral_common.chat import ChatRequest, Message
from spiral_common.config import REPO_ROOT, load_settings
from spiral_common.enums import Track
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import embedded_model_path, file_sha256
from spiral_common.specs import load_heads, load_providers
from trainer_svc.distill import DistillRunner
from trainer_svc.jobs import JobQueue
from trainer_svc.worker import Worker

DATA = REPO_ROOT.parent / "shared" / "data" / "banking77" / "train.csv"


class NoCanary:
    """The bench measures the adapter directly; nothing is reloaded."""

    async def current_adapter(self) -> str:
        return ""

    async def publish_canary(self, version: str) -> None:
        return None


def accuracy(engine: LlamaEngine, system: str, queries: list[tuple[str, str]], adapter_path: Path | None) -> float:
    handle = engine.load_adapter(adapter_path) if adapter_path else None
    right = 0
    for text, label in queries:
        request = ChatRequest(
            (Message("system", system), Message("user", text)), max_tokens=16, temperature=0.0, top_p=1.0, seed=0
        )
        pieces: list[str] = []
        engine.generate(request, pieces.append, threading.Event(), handle)
        right += "".join(pieces).strip() == label
    if handle is not None:
        engine.free_adapter(handle)
    return right / len(queries)


async def ask_all(port: int, queries: list[tuple[str, str]], concurrency: int = 8) -> dict[str, int]:
    tiers: dict[str, int] = {}
    semaphore = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)

        async def ask(text: str) -> None:
            async with semaphore:
                reply = await stub.Orchestrate(
                    router_pb2.OrchestrateRequest(
                        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
                        params=chat_pb2.GenerationParams(max_tokens=16, temperature=0.0),
                    ),
                    timeout=60,
                )
                tier = router_pb2.Tier.Name(reply.trace.tier)
                tiers[tier] = tiers.get(tier, 0) + 1

        await asyncio.gather(*(ask(text) for text, _ in queries))
    return tiers


async def main(args: argparse.Namespace) -> dict:
    rows = list(csv.DictReader(DATA.open()))
    random.Random(args.seed).shuffle(rows)
    heldout = [(r["text"], r["category"]) for r in rows[: args.heldout]]
    asked = [(r["text"], r["category"]) for r in rows[args.heldout : args.heldout + args.train_queries]]
    labels = dict(asked)
    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    (redis_port,) = free_ports(1)
    redis_server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
         "--dir", str(work), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL,
    )  # fmt: skip
    cloud = FakeCloud(answers=labels)  # the teacher knows each query's intent
    cloud.start()
    providers = work / "providers.json"
    providers.write_text(json.dumps(providers_json(cloud, prices=(10_000, 10_000))))
    os.environ["FAKE_CLOUD_KEY"] = "bench"
    settings = load_settings(
        {
            "SPIRAL_RUN_DIR": str(work),
            "SPIRAL_REDIS_ADDR": f"127.0.0.1:{redis_port}",
            "SPIRAL_COUNCIL_HEADS": "",  # no local tier: the teacher answers every query
            "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers),
            "SPIRAL_DAILY_POOL_USD_MICROS": "10000000",
            "SPIRAL_DISTILL_TIME_BUDGET_S": str(args.budget_s),
            "SPIRAL_DISTILL_LEARNING_RATE": str(args.learning_rate),
            "SPIRAL_DISTILL_BATCH_SIZE": str(args.batch_size),
            "SPIRAL_DISTILL_EPOCHS": str(args.epochs),
            "SPIRAL_DISTILL_MAX_STEPS": "100000",
            "SPIRAL_DISTILL_TOP_LAYERS": str(args.top_layers),
            "SPIRAL_DISTILL_QUANTIZATION": args.quantization,
            "SPIRAL_DISTILL_HELDOUT_FRACTION": "0.03",
            "SPIRAL_DISTILL_MAX_HELDOUT": "60",
            "SPIRAL_DISTILL_EVAL_MAX_TOKENS": "16",
        }
    )
    redis = redis_access.operator_client(settings)
    model_path = embedded_model_path()
    system = load_heads(settings.head.heads_file)[0].system_prompt
    recipe = {k: v for k, v in vars(args).items() if k != "json"}
    report: dict = {"train_queries": len(asked), "heldout_queries": len(heldout), "recipe": recipe}
    try:
        # 1. The platform is asked; the teacher answers.
        cloud_providers = load_providers(settings.cloud.cloud_providers_file)
        client = OpenAICompatibleClient({p.name: "bench" for p in cloud_providers}, cloud_providers, timeout_s=30,
                                        stall_timeout_s=10)  # fmt: skip
        head_channel = grpc.aio.insecure_channel("127.0.0.1:1")  # the local tier is off: never called
        deps = RouterDeps(heads=GrpcHeadClient(head_channel, 10, track=Track.MAIN), redis=redis, cloud_client=client,
                          providers=cloud_providers)  # fmt: skip
        router = create_server(settings, deps, port=0)
        await router.start()
        started = time.monotonic()
        report["tiers_asked"] = await ask_all(router.port, asked)
        report["ask_seconds"] = round(time.monotonic() - started, 1)
        await router.server.stop(None)
        await head_channel.close()

        # 2. Before.
        engine = LlamaEngine(model_path, context_tokens=1024, threads=0, gpu_layers=0)
        report["accuracy_before"] = await asyncio.to_thread(accuracy, engine, system, heldout, None)
        print(f"accuracy before: {report['accuracy_before']:.3f}", flush=True)

        # 3. The nightly job, as the trainer runs it.
        ledger = BudgetLedger(redis, prefix=settings.redis.redis_prefix,
                              pool_usd_micros=settings.budget.daily_pool_usd_micros,
                              reservation_ttl_s=settings.budget.budget_reservation_ttl_s)  # fmt: skip
        registry = AdapterRegistry(settings.adapters_path, file_sha256(model_path))
        runner = DistillRunner(settings, redis, ledger, registry, NoCanary(), model_path=model_path,
                               system_prompts=[h.system_prompt
                                               for h in load_heads(settings.head.heads_file)])  # fmt: skip
        queue = JobQueue(redis, prefix=settings.redis.redis_prefix, consumer="bench", lease_s=60, max_attempts=1)
        worker = Worker(queue, {"distill": runner.run}, heartbeat_s=5)
        job, _ = await queue.submit("distill")
        started = time.monotonic()
        claimed = await queue.claim(block_ms=1000)
        assert claimed is not None  # just submitted, and this is the only worker
        outcome = await worker.run_one(claimed)
        report["job_seconds"] = round(time.monotonic() - started, 1)
        final = await queue.get(job.job_id)
        report["job"] = {"outcome": outcome, "error": final.error, **final.result}
        print(json.dumps(report["job"], indent=2), flush=True)
        if outcome != "succeeded" or not final.result.get("adapter_version"):
            return report

        # 4. After.
        adapter = registry.info(final.result["adapter_version"]).path
        report["accuracy_after"] = await asyncio.to_thread(accuracy, engine, system, heldout, adapter)
        print(f"accuracy after: {report['accuracy_after']:.3f}", flush=True)
        return report
    finally:
        await redis.aclose()
        cloud.stop()
        redis_server.terminate()
        redis_server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench-distill", description=__doc__.splitlines()[0])
    parser.add_argument("--train-queries", type=int, default=4000, help="queries asked of the platform")
    parser.add_argument("--heldout", type=int, default=300, help="queries the accuracy is measured on")
    parser.add_argument("--budget-s", type=int, default=900, help="the job's wall-clock budget")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=2.0, help="passes at most; the budget ends the run first")
    parser.add_argument("--top-layers", type=int, default=12)
    parser.add_argument("--quantization", choices=("nf4", "none"), default="nf4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-distill.json"))
    args = parser.parse_args()
    result = asyncio.run(main(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=2, default=str))
