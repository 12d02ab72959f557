"""The cheap tiers under load: cache hits and pattern answers, through Envoy (gRPC) and the gateway (REST).

`make bench-cascade` (python -m bench.cascade) starts its own platform (default profile, free
ports), primes the cache with one answer, then for --duration seconds each:
  1. gRPC cache hits through Envoy: --concurrency callers in this process (grpc.aio), one request in flight each;
  2. REST cache hits through the gateway (`POST /v1/chat/completions`) with wrk, 8 connections;
  3. regex pattern answers (arithmetic, a different question every call) through Envoy.
Then the mined patterns, through the gateway (REST, wrk), for --pattern-duration seconds each: a pattern set is
mined in this process from part of banking77 (--data; `mine_patterns`, the miner's own step) and published to the
platform's Redis; the rest of the data set's prompts that the set answers (the router's rule, confidence >=
1 - SPIRAL_PATTERN_MAX_ERROR) are the questions, each asked once:
  4. one client, a different prompt every request (so the embedding cache never hides the encoder);
  5. 8 clients, different prompts (prompts not asked in 4);
  6. 8 clients, 50 of the warm-up prompts asked over and over for --pattern-duration (the embedding cache's case).
Beside the client's latency each pattern phase reports the router's own pattern-tier latency (the decision
trace's step, read from each response) and, from the routers' metrics, the encoder calls, their mean batch size
and latency, and embedding cache hits. `--pattern-only` runs phases 4-6 alone.
Targets (issues): gRPC cache hit p95 <= 5 ms at >= 1,000 requests/s; REST >= 400 requests/s with
p95 <= 15 ms at 8 clients; pattern p95 <= 10 ms at one client and <= 20 ms at 8 clients. The load generator
shares the 2 cores with the platform, so every number includes its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench.miner import DEFAULT_DATA, load_vectors
from bench.peers import prime
from deploy.gate.load import cache_request, grpc_load, rest_load
from deploy.platform import Platform, free_port_env
from miner_svc.mining import Example, MinerConfig, MiningInput, mine_patterns
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2
from spiral_common import redis_access
from spiral_common.config import Settings, load_settings
from spiral_common.pattern_set import PatternIndex, PatternSet, PatternStore, is_negated

# wrk: one body per line of BODIES, taken in turn; each response's pattern step latency (the router's own) is
# kept, and a response the pattern tier did not answer is counted.
PATTERN_WRK_SCRIPT = """
local bodies = {}
for line in io.lines("%s") do bodies[#bodies + 1] = line end
STOP_AT_END = %s
local i = 0
wrapped, other, router = 0, 0, {}  -- globals: done() reads them with thread:get
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  if i > #bodies then  -- every prompt asked once: a second round would come from the embedding cache
    if STOP_AT_END then wrk.thread:stop() end
    i, wrapped = 1, wrapped + 1
  end
  return wrk.format(nil, nil, nil, bodies[i])
end
response = function(status, headers, body)
  local us = body:match('"tier":"TIER_PATTERN","outcome":"TIER_OUTCOME_ANSWERED","latency_us":"(%%d+)"')
  if us then router[#router + 1] = tonumber(us) else other = other + 1 end
end
local threads = {}
setup = function(thread) threads[#threads + 1] = thread end
done = function(summary, latency, requests)
  local all, others, wraps = {}, 0, 0
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("router")) do all[#all + 1] = v end
    others, wraps = others + t:get("other"), wraps + t:get("wrapped")
  end
  table.sort(all)
  local function q(p) if #all == 0 then return 0 end return all[math.max(1, math.ceil(#all * p))] / 1000 end
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f %%.3f %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    others, wraps, q(0.5), q(0.95), latency.mean / 1000))
end
"""
ROUTER_METRICS = {
    "spiral_pattern_embedding_batch_size": ("sum", "count"),
    "spiral_pattern_encoder_duration_seconds": ("sum", "count"),
    "spiral_pattern_embedding_cache_lookups_total": ("hit", "miss"),
}
WARM_PROMPTS = 100  # asked before the phases (the 50 repeated ones among them), never in the distinct phases
ENCODER_CALLS = "spiral_pattern_encoder_duration_seconds:count"


def pattern_request(i: int) -> router_pb2.OrchestrateRequest:
    return router_pb2.OrchestrateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=f"what is {i} * 7?")]
    )


def pattern_prompts(settings: Settings, data: Path, cache: Path | None, mine_share: float) -> tuple[PatternSet, list]:
    """A pattern set mined from the first `mine_share` of banking77 (shuffled, seed 0), and the other prompts
    that it answers by the router's rule, in a fixed random order."""
    rows = list(csv.DictReader(data.open()))
    vectors, _ = load_vectors(rows, cache)
    order = np.random.default_rng(0).permutation(len(rows))
    cut = int(len(rows) * mine_share)
    config = MinerConfig(threshold=settings.router.pattern_threshold, max_error=settings.router.pattern_max_error)
    examples = [Example(rows[i]["text"], rows[i]["category"]) for i in order[:cut]]
    mined, _ = mine_patterns(MiningInput(examples, vectors[order[:cut]]), PatternSet.empty(), config, 0)
    index = PatternIndex(mined)
    answered = []
    for i in order[cut:]:
        found = index.match(vectors[i], is_negated(rows[i]["text"]))
        # A margin over the router's bar: the router embeds on one thread, these vectors may come from two, and
        # a last-digit difference must not send a prompt at the bar to the head (whose answer is then cached).
        if found is not None and found.confidence >= config.min_confidence + 0.005:
            answered.append(rows[i]["text"])
    return mined, list(dict.fromkeys(answered))  # each prompt once


async def publish(settings: Settings, patterns: PatternSet) -> int:
    redis = redis_access.operator_client(settings)
    try:
        return await PatternStore(redis, prefix=settings.redis.redis_prefix).publish(patterns)
    finally:
        await redis.aclose()


def chat_body(prompt: str, **params: int) -> str:
    return json.dumps({"model": "spiral", "messages": [{"role": "user", "content": prompt}], **params})


def ask(url: str, prompt: str, seed: int) -> str:
    """The tier that answered (a fresh seed keeps the answer cache out: a head's answer to the prompt is cached)."""
    body = chat_body(prompt, seed=seed, max_tokens=16).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        return json.load(reply)["spiral_trace"].get("tier", "")


def warm_routers(url: str, prompts: list[str], settings: Settings, timeout_s: float = 300.0) -> None:
    """Ask `prompts` in turn until both routers (Envoy sends the canary a share) have loaded the published set
    and embedded through it: a router loads the set when a request first reaches its pattern tier."""
    deadline = time.monotonic() + timeout_s
    tracks = ("main", "canary")
    before = {track: pattern_answers(settings, track) for track in tracks}  # the regex phase's answers too
    for seed in range(1, 1_000_000):
        if min(pattern_answers(settings, track) - before[track] for track in tracks) >= 3:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.cascade: the routers did not use the mined set within {timeout_s:.0f} s")
        ask(url, prompts[seed % len(prompts)], seed)


def pattern_answers(settings: Settings, track: str) -> float:
    """How many requests this router's pattern tier has answered."""
    with urllib.request.urlopen(f"http://{settings.router.router_metrics_addr(track)}/metrics", timeout=5) as reply:
        families = text_string_to_metric_families(reply.read().decode())
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "spiral_router_tier_duration_seconds_count"
            and sample.labels == {"tier": "pattern", "outcome": "answered"}
        )


def router_counters(settings: Settings, tracks: tuple[str, ...] = ("main", "canary")) -> dict[str, float]:
    """The batcher's metrics of the routers, summed (Envoy sends a share of requests to the canary)."""
    totals: dict[str, float] = {}
    for track in tracks:
        address = settings.router.router_metrics_addr(track)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for name, parts in ROUTER_METRICS.items():
                    for part in parts:
                        if sample.name == f"{name}_{part}" or (
                            sample.name == name and sample.labels.get("result") == part
                        ):
                            totals[f"{name}:{part}"] = totals.get(f"{name}:{part}", 0.0) + sample.value
    return totals


def pattern_rest_load(
    url: str, prompts: list[str], duration_s: float, connections: int, settings: Settings, *, once: bool
) -> dict:
    """`connections` wrk clients asking `prompts` in turn, for `duration_s` or, with `once`, until each was asked
    once. Requests/s is then connections / mean latency (wrk divides by the whole duration)."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    with tempfile.TemporaryDirectory() as folder:
        bodies, script = Path(folder) / "bodies.jsonl", Path(folder) / "pattern.lua"
        bodies.write_text("".join(chat_body(p) + "\n" for p in prompts))
        script.write_text(PATTERN_WRK_SCRIPT % (bodies, "true" if once else "false"))
        before = router_counters(settings)
        result = subprocess.run(
            [wrk, "-t", "1", "-c", str(connections), "-d", f"{int(duration_s)}s", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        )
        after = router_counters(settings)
    match = re.search(r"RESULT" + r" ([\d.]+)" * 11, result.stdout)
    assert match, result.stdout + result.stderr
    values = [float(match[i]) for i in range(1, 12)]
    if not values[0]:
        return {"skipped": f"no answer within {duration_s:.0f} s: {result.stdout[-300:]}"}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    assert rate, result.stdout
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    calls = delta.get(ENCODER_CALLS, 0.0)
    lookups = delta.get("spiral_pattern_embedding_cache_lookups_total:hit", 0.0) + delta.get(
        "spiral_pattern_embedding_cache_lookups_total:miss", 0.0
    )
    return {
        "requests": int(values[0]),
        "errors": int(values[1] + values[2]),
        "requests_per_s": connections * 1e3 / values[10] if once and values[10] else float(rate[1]),
        "p50_ms": values[3],
        "p95_ms": values[4],
        "p99_ms": values[5],
        "not_pattern": int(values[6]),
        "prompts": len(prompts),
        "prompt_list_wrapped": int(values[7]),
        "router_pattern_p50_ms": values[8],
        "router_pattern_p95_ms": values[9],
        "encoder_calls": int(calls),
        "mean_batch_size": delta.get("spiral_pattern_embedding_batch_size:sum", 0.0) / calls if calls else 0.0,
        "mean_encoder_call_ms": 1e3 * delta.get("spiral_pattern_encoder_duration_seconds:sum", 0.0) / calls
        if calls
        else 0.0,
        "embedding_cache_hit_rate": delta.get("spiral_pattern_embedding_cache_lookups_total:hit", 0.0) / lookups
        if lookups
        else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per load phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-cascade.json"))
    parser.add_argument("--pattern-duration", type=float, default=20.0, help="seconds per mined-pattern phase")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="banking77 train.csv, for the mined set")
    parser.add_argument("--embeddings-cache", type=Path, help="a .npy file to reuse the data set's embeddings")
    parser.add_argument("--mine-share", type=float, default=0.4, help="share of the data set mined")
    parser.add_argument("--pattern-only", action="store_true", help="the mined-pattern phases alone")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"bench.cascade: no data file {args.data} (pass --data)")

    env = {
        "SPIRAL_PROFILE": "default",
        **os.environ,
        "SPIRAL_RUN_DIR": tempfile.mkdtemp(prefix="spiral-bench-"),
        "SPIRAL_COUNCIL_HEADS": "precise",
        **free_port_env(),
    }
    settings = load_settings(env)
    started = time.perf_counter()
    mined, prompts = pattern_prompts(settings, args.data, args.embeddings_cache, args.mine_share)
    elapsed = time.perf_counter() - started
    print(f"mined {len(mined.active())} patterns in {elapsed:.0f} s; {len(prompts)} other prompts answered")
    platform = Platform(settings)
    platform.start(timeout_s=120)
    try:
        envoy = settings.envoy.envoy_addr
        chat_url = f"http://{settings.gateway.gateway_addr}/v1/chat/completions"
        results = {}
        if not args.pattern_only:
            # The REST request is another cache key than the gRPC one (its model): primed too, or its first
            # seconds would be misses into a cold council, not cache hits.
            prime(chat_url, "", "the gateway")
            results = {
                "grpc_cache_hit_via_envoy": asyncio.run(
                    grpc_load(envoy, cache_request, args.duration, args.concurrency)
                ),
                "rest_cache_hit_via_gateway": rest_load(chat_url, args.duration, 8),
                "grpc_pattern_via_envoy": asyncio.run(
                    grpc_load(envoy, pattern_request, args.duration, args.concurrency)
                ),
            }
        asyncio.run(publish(settings, mined))
        warm, distinct = prompts[:WARM_PROMPTS], prompts[WARM_PROMPTS:]
        warm_routers(chat_url, warm, settings)
        one = len(distinct) * 2 // 5  # 8 clients go faster: they get the larger share
        duration = args.pattern_duration
        results["rest_mined_pattern_1_client"] = pattern_rest_load(
            chat_url, distinct[:one], duration, 1, settings, once=True
        )
        results["rest_mined_pattern_8_clients"] = pattern_rest_load(
            chat_url, distinct[one:], duration, 8, settings, once=True
        )
        results["rest_mined_pattern_8_clients_repeated"] = pattern_rest_load(
            chat_url, warm[:50], duration, 8, settings, once=False
        )
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
    print()
    print(
        "| mined-pattern phase | router's pattern tier p50 / p95 (ms) | not answered by the pattern tier | "
        "prompts (list wrapped) | encoder calls | mean batch | mean encoder call (ms) | embedding cache hits |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if "router_pattern_p50_ms" in r:
            print(
                f"| {name} | {r['router_pattern_p50_ms']:.2f} / {r['router_pattern_p95_ms']:.2f} | "
                f"{r['not_pattern']} | "
                f"{r['prompts']} ({r['prompt_list_wrapped']}) | {r['encoder_calls']} | {r['mean_batch_size']:.2f} | "
                f"{r['mean_encoder_call_ms']:.2f} | {100 * r['embedding_cache_hit_rate']:.1f} % |"
            )


if __name__ == "__main__":
    main()
