"""The cheap tiers under load: cache hits and pattern answers, through Envoy (gRPC) and the gateway (REST).

`make bench-cascade` (python -m bench.cascade) starts its own platform (default profile, free
ports), primes the cache with one answer, then for --duration seconds each:
  1. gRPC cache hits through Envoy: --concurrency callers in this process (grpc.aio), one request in flight each;
  2. REST cache hits through the gateway (`POST /v1/chat/completions`) with wrk, 8 connections;
  3. pattern answers (arithmetic, a different question every call) through Envoy.
Targets (issue): gRPC cache hit p95 <= 5 ms at >= 1,000 requests/s; REST >= 400 requests/s with
p95 <= 15 ms at 8 clients; pattern p95 <= 10 ms. The load generator shares the 2 cores with the
platform, so every number includes its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import grpc

from deploy.platform import Platform, free_port_env
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.config import load_settings

PROMPT = "Name three primary colours."
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def grpc_load(address: str, make_request, duration_s: float, concurrency: int) -> dict:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        await stub.Orchestrate(make_request(0))
        deadline = time.perf_counter() + duration_s

        async def worker(offset: int) -> None:
            nonlocal errors
            i = offset
            while time.perf_counter() < deadline:
                request = make_request(i)
                started = time.perf_counter()
                try:
                    await stub.Orchestrate(request, timeout=10)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p95_ms": percentile(latencies, 95) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
    }


def rest_load(url: str, duration_s: float, connections: int) -> dict:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    body = json.dumps(
        {"model": "spiral", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "temperature": 0}
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % body)
    result = subprocess.run(
        [wrk, "-t", "1", "-c", str(connections), "-d", f"{int(duration_s)}s", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    )
    os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    requests, status_errors, socket_errors = (int(match[i]) for i in (1, 2, 3))
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert rate, result.stdout
    rps = float(rate[1])
    return {
        "requests": requests,
        "errors": status_errors + socket_errors,
        "requests_per_s": rps,
        "p50_ms": float(match[4]),
        "p95_ms": float(match[5]),
        "p99_ms": float(match[6]),
    }


def cache_request(_: int) -> router_pb2.OrchestrateRequest:
    return router_pb2.OrchestrateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=PROMPT)],
        params=chat_pb2.GenerationParams(max_tokens=16, temperature=0),
    )


def pattern_request(i: int) -> router_pb2.OrchestrateRequest:
    return router_pb2.OrchestrateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=f"what is {i} * 7?")]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per load phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-cascade.json"))
    args = parser.parse_args()

    env = {
        "SPIRAL_PROFILE": "default",
        **os.environ,
        "SPIRAL_RUN_DIR": tempfile.mkdtemp(prefix="spiral-bench-"),
        "SPIRAL_COUNCIL_HEADS": "precise",
        **free_port_env(),
    }
    settings = load_settings(env)
    platform = Platform(settings)
    platform.start(timeout_s=120)
    try:
        envoy = settings.envoy.envoy_addr
        results = {
            "grpc_cache_hit_via_envoy": asyncio.run(grpc_load(envoy, cache_request, args.duration, args.concurrency)),
            "rest_cache_hit_via_gateway": rest_load(
                f"http://{settings.gateway.gateway_addr}/v1/chat/completions", args.duration, 8
            ),
            "grpc_pattern_via_envoy": asyncio.run(grpc_load(envoy, pattern_request, args.duration, args.concurrency)),
        }
    finally:
        platform.stop()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"{args.duration:.0f} s per phase, {args.concurrency} gRPC callers, 8 wrk connections")
    print("| path | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | errors |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "skipped" in r:
            print(f"| {name} | skipped: {r['skipped']} | | | | |")
            continue
        print(
            f"| {name} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['errors']} |"
        )


if __name__ == "__main__":
    main()
