"""The pattern tier's embed + match in one process, without the mesh: per-request threads against the batcher.

`python -m bench.embedding_batcher` mines the same set as `bench.cascade` (banking77, --mine-share), then for
each variant and each concurrency (1 and 8 callers on one event loop, each with one request in flight) asks
different prompts for --seconds and prints p50 / p95 of embed + match. Variants: the router before the
batcher (each request embeds and matches in its own `asyncio.to_thread`), and the batcher with a window of 0 or
2 ms and 1 or 2 encoder threads. A fresh batcher (empty cache) per run; no prompt repeats within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from bench.cascade import pattern_prompts
from bench.miner import DEFAULT_DATA
from router_svc.embedding_batcher import EmbeddingBatcher
from spiral_common.config import load_settings
from spiral_common.embedding import SentenceEncoder, single_threaded_blas
from spiral_common.pattern_set import PatternIndex, is_negated


async def run(ask, prompts: list[str], concurrency: int, seconds: float) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    next_prompt = iter(prompts)

    async def caller() -> None:
        for prompt in next_prompt:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            await ask(prompt)
            latencies.append((time.perf_counter() - started) * 1e3)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / (time.perf_counter() - started), 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 2),
    }


async def main_async(args: argparse.Namespace) -> dict:
    settings = load_settings({})
    mined, prompts = pattern_prompts(settings, args.data, args.embeddings_cache, args.mine_share)
    index = PatternIndex(mined)
    encoder = SentenceEncoder(threads=1)
    encoder.embed(prompts[:8])

    async def per_request(prompt: str) -> None:
        await asyncio.to_thread(lambda: index.match(encoder.embed_one(prompt), is_negated(prompt)))

    results: dict = {}
    for concurrency in (1, 8):
        for name, window_ms, threads in (
            ("per-request threads (before)", None, 0),
            ("batcher, window 0, 1 thread", 0.0, 1),
            ("batcher, window 2 ms, 1 thread", 2.0, 1),
            ("batcher, window 0, 2 threads", 0.0, 2),
            ("batcher, window 2 ms, 2 threads", 2.0, 2),
        ):
            if window_ms is None:
                ask = per_request
                batcher = None
            else:
                batcher = EmbeddingBatcher(encoder, window_s=window_ms / 1000, encoder_threads=threads)

                async def ask(prompt: str, batcher: EmbeddingBatcher = batcher) -> None:
                    vector = await batcher.embed(prompt)
                    await asyncio.to_thread(index.match, vector, is_negated(prompt))

            offset = len(results) * 97 % len(prompts)  # each run starts elsewhere in the list
            result = await run(ask, prompts[offset:] + prompts[:offset], concurrency, args.seconds)
            if batcher is not None:
                await batcher.close()
            results[f"{name}, {concurrency} caller(s)"] = result
            print(f"| {name} | {concurrency} | {result['requests_per_s']} | {result['p50_ms']} | {result['p95_ms']} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--embeddings-cache", type=Path, help="a .npy file to reuse the data set's embeddings")
    parser.add_argument("--mine-share", type=float, default=0.4)
    parser.add_argument("--seconds", type=float, default=8.0, help="per variant and concurrency")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-embedding-batcher.json"))
    args = parser.parse_args()
    single_threaded_blas()  # as the router runs
    print("| variant | callers | requests/s | embed + match p50 (ms) | p95 (ms) |")
    print("|---|---|---|---|---|")
    results = asyncio.run(main_async(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
