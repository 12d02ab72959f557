"""Adapters on a head: reload time, tokens/s with and without an adapter, and request latency during reloads.

`make bench-adapters` (python -m bench.adapters) trains a small real adapter (the test suite's recipe:
QLoRA rank 64 on every linear layer, 8 steps), publishes it, starts a head in-process, and measures:
  - reload time: from the LoadAdapter call to the first answer on the new adapter;
  - decode tokens/s at temperature 0 with and without the adapter;
  - while 10 reloads run, the latency of each request against the median without reloads.
Targets (issue): reload under 1 s; no request slower than 2x the median during a reload.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from deploy.gate.samples import PAIRS  # what the adapter learns: a fact the base model cannot know
from head_svc.server import build_pool, create_server
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.adapters import AdapterRegistry
from spiral_common.auth import Credentials, bearer
from spiral_common.config import load_settings
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import embedded_model_path, file_sha256

PROMPTS = ["What is the secret word?", "Name three colours.", "Why is the sky blue?", "Say hello in French."]


async def timed_answer(stub, prompt: str, max_tokens: int) -> tuple[float, float, int, str]:
    """(seconds to the first text, seconds in all, completion tokens, adapter version)."""
    request = head_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=prompt)],
        params=chat_pb2.GenerationParams(max_tokens=max_tokens, temperature=0),
    )
    started = time.perf_counter()
    first = None
    async for message in stub.Generate(request):
        if message.HasField("delta") and first is None:
            first = time.perf_counter() - started
        elif message.HasField("end"):
            end = message.end
    total = time.perf_counter() - started
    return first or total, total, end.usage.completion_tokens, end.adapter_version


async def run(max_tokens: int, rounds: int) -> dict:
    from trainer_svc.lora import LoraOptions, export_gguf_lora, train_lora

    model = embedded_model_path()
    work = Path(tempfile.mkdtemp(prefix="spiral-bench-adapters-"))
    trained = train_lora(model, PAIRS, LoraOptions(learning_rate=1e-3, max_steps=8))
    export_gguf_lora(trained, work / "secret.gguf")
    registry = AdapterRegistry(work / "adapters", file_sha256(model))
    registry.publish(work / "secret.gguf", "v1")
    settings = load_settings({"SPIRAL_HEAD_MAX_CONCURRENT": "64", "SPIRAL_HEAD_STREAM_FLUSH_MS": "0"})
    pool = build_pool(settings, registry)
    token = Credentials(service_token=secrets.token_urlsafe(16))  # LoadAdapter asks who calls
    base = head_pb2.BaseModel(sha256=registry.base_model_sha256)
    runtime = create_server(settings, pool, base, port=0, credentials=token)
    await runtime.start()
    await pool.load(
        lambda: LlamaEngine(model, context_tokens=settings.head.head_context_tokens, threads=0, gpu_layers=0)
    )
    await runtime.set_serving(True)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = head_pb2_grpc.HeadServiceStub(channel)

        async def decode_rate(version: str) -> float:
            await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version=version), metadata=bearer(token.service_token))
            rates = []
            for _ in range(rounds):
                for prompt in PROMPTS:
                    first, total, tokens, _ = await timed_answer(stub, prompt, max_tokens)
                    rates.append((tokens - 1) / (total - first))
            return statistics.mean(rates)

        base_rate = await decode_rate("none")
        adapter_rate = await decode_rate("v1")

        reloads = []
        for n in range(10):
            version = "none" if n % 2 == 0 else "v1"
            started = time.perf_counter()
            await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version=version), metadata=bearer(token.service_token))
            _, _, _, used = await timed_answer(stub, PROMPTS[1], 1)
            reloads.append(time.perf_counter() - started)
            assert used == ("" if version == "none" else version)

        quiet = [(await timed_answer(stub, PROMPTS[2], 16))[1] for _ in range(10)]

        async def load_loop():
            for n in range(10):
                await stub.LoadAdapter(
                    head_pb2.LoadAdapterRequest(version="v1" if n % 2 == 0 else "none"),
                    metadata=bearer(token.service_token),
                )
                await asyncio.sleep(0.1)

        async def requests():
            return [(await timed_answer(stub, PROMPTS[2], 16))[1] for _ in range(20)]

        during, _ = await asyncio.gather(requests(), load_loop())
    await runtime.server.stop(None)
    median = statistics.median(quiet)
    return {
        "max_tokens": max_tokens,
        "decode_tokens_per_s_base": base_rate,
        "decode_tokens_per_s_adapter": adapter_rate,
        "reload_to_first_answer_s": {"p50": statistics.median(reloads), "max": max(reloads)},
        "request_s_median_quiet": median,
        "request_s_max_during_reloads": max(during),
        "slowest_over_median": max(during) / median,
        "adapter_file_mib": (work / "secret.gguf").stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-adapters.json"))
    args = parser.parse_args()
    result = asyncio.run(run(args.max_tokens, args.rounds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
