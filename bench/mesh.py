"""What the mesh costs: raw llama-cpp-python in-process versus gateway -> Envoy -> router -> head.

`make bench` (python -m bench.mesh) starts its own platform on free ports, then asks both paths the
same prompts in alternation at temperature 0 and reports time to first token (TTFT) and decode
speed (tokens/s after the first token). Targets: the mesh adds <= 15 ms to TTFT at p95 and keeps
>= 95 % of the raw tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from deploy.platform import Platform, free_port_env
from spiral_common.chat import ChatRequest, Message
from spiral_common.config import load_settings
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import resolve_model_path
from spiral_common.specs import load_heads

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I reset my card PIN?",
    "Explain TCP in one sentence.",
    "Give me three tips for a job interview.",
    "What is 17 times 23?",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
]


# A pause between samples: llama.cpp's OpenMP threads spin-wait a while after a generation ends, and a
# sample that starts at once shares the two cores with the previous path's spinning threads.
SETTLE_S = float(os.environ.get("BENCH_MESH_SETTLE_S", "0.1"))


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    total_s: float

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / (self.total_s - self.ttft_s) if self.tokens > 1 else 0.0


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def raw_sample(engine: LlamaEngine, system: str, prompt: str, max_tokens: int) -> Sample:
    request = ChatRequest(
        messages=(Message("system", system), Message("user", prompt)), max_tokens=max_tokens, temperature=0.0, top_p=1.0
    )
    first: list[float] = []
    start = time.perf_counter()

    def emit(_: str) -> None:
        if not first:
            first.append(time.perf_counter())

    outcome = engine.generate(request, emit, threading.Event())
    end = time.perf_counter()
    return Sample(first[0] - start, outcome.completion_tokens, end - start)


def mesh_sample(client: openai.OpenAI, prompt: str, max_tokens: int, seed: int) -> Sample:
    """One streamed answer through the mesh; a fresh seed keeps the cache tier out (greedy ignores it)."""
    start = time.perf_counter()
    first = None
    tokens = 0
    stream = client.chat.completions.create(
        model="spiral",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        seed=seed,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    end = time.perf_counter()
    return Sample((first or end) - start, tokens, end - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="times each prompt is asked of each path")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-mesh.json"))
    args = parser.parse_args()

    run_dir = tempfile.mkdtemp(prefix="spiral-bench-")
    # One council member: the router streams that head directly, as a raw generation does.
    env = {"SPIRAL_PROFILE": "default", **os.environ, "SPIRAL_RUN_DIR": run_dir, "SPIRAL_COUNCIL_HEADS": "precise"}
    env.update(free_port_env())
    settings = load_settings(env)
    platform = Platform(settings)
    platform.start(timeout_s=120)
    try:
        engine = LlamaEngine(
            resolve_model_path(settings.head.model_path),
            context_tokens=settings.head.head_context_tokens,
            threads=settings.head.head_threads,
            gpu_layers=settings.head.head_gpu_layers,
        )
        client = openai.OpenAI(base_url=f"http://{settings.gateway.gateway_addr}/v1", api_key="local")
        system_prompt = load_heads(settings.head.heads_file)[0].system_prompt  # the "precise" head's
        seeds = iter(range(1, 1_000_000))
        for prompt in PROMPTS[:2]:  # warm both paths
            raw_sample(engine, system_prompt, prompt, 8)
            mesh_sample(client, prompt, 8, next(seeds))
        raw: list[Sample] = []
        mesh: list[Sample] = []
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                raw.append(raw_sample(engine, system_prompt, prompt, args.max_tokens))
                time.sleep(SETTLE_S)
                mesh.append(mesh_sample(client, prompt, args.max_tokens, next(seeds)))
                time.sleep(SETTLE_S)
    finally:
        platform.stop()

    added = [m.ttft_s - r.ttft_s for r, m in zip(raw, mesh, strict=True)]
    raw_tps = statistics.mean(s.decode_tps for s in raw if s.tokens > 1)
    mesh_tps = statistics.mean(s.decode_tps for s in mesh if s.tokens > 1)
    result = {
        "requests_per_path": len(raw),
        "max_tokens": args.max_tokens,
        "raw_ttft_ms": {"p50": p([s.ttft_s for s in raw], 50) * 1e3, "p95": p([s.ttft_s for s in raw], 95) * 1e3},
        "mesh_ttft_ms": {"p50": p([s.ttft_s for s in mesh], 50) * 1e3, "p95": p([s.ttft_s for s in mesh], 95) * 1e3},
        "added_ttft_ms": {"p50": p(added, 50) * 1e3, "p95": p(added, 95) * 1e3},
        "raw_decode_tokens_per_s": raw_tps,
        "mesh_decode_tokens_per_s": mesh_tps,
        "mesh_over_raw_tokens_per_s": mesh_tps / raw_tps,
        "same_token_counts": [r.tokens for r in raw] == [m.tokens for m in mesh],
        "samples": {
            path: [{"ttft_ms": s.ttft_s * 1e3, "tokens": s.tokens, "total_ms": s.total_s * 1e3} for s in samples]
            for path, samples in (("raw", raw), ("mesh", mesh))
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"{len(raw)} requests per path, {args.max_tokens} max tokens, temperature 0")
    print("| path | TTFT p50 (ms) | TTFT p95 (ms) | decode tokens/s |")
    print("|---|---|---|---|")
    for name, ttft, tps in [
        ("raw llama-cpp-python", result["raw_ttft_ms"], raw_tps),
        ("gateway -> Envoy -> router -> head", result["mesh_ttft_ms"], mesh_tps),
    ]:
        print(f"| {name} | {ttft['p50']:.1f} | {ttft['p95']:.1f} | {tps:.1f} |")
    added_ms = result["added_ttft_ms"]
    print(f"\nadded TTFT (paired): p50 {added_ms['p50']:.1f} ms, p95 {added_ms['p95']:.1f} ms (target <= 15 ms)")
    print(f"mesh keeps {100 * result['mesh_over_raw_tokens_per_s']:.1f} % of raw tokens/s (target >= 95 %)")
    print(f"same token counts on both paths: {result['same_token_counts']}")


if __name__ == "__main__":
    main()
