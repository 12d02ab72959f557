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
import tempfile
from pathlib import Path

from deploy.gate.load import cache_request, grpc_load, rest_load
from deploy.platform import Platform, free_port_env
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2
from spiral_common.config import load_settings


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
