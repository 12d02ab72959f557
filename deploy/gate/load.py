"""The gate's load generator: cache hits through Envoy (gRPC callers in this process) and the gateway (wrk).

Stage 10 of the gate runs it for a few seconds; `bench.cascade` runs it longer and adds pattern answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import grpc

from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc

# Answered in a few words, so it ends naturally within max_tokens: only such answers are cached.
PROMPT = "What colour is the sky on a clear day? Answer in one word."
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
