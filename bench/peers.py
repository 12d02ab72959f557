"""Spiral's gateway beside a peer gateway on the same cache-hit request: `make bench-peers` (python -m bench.peers).

The peer is LiteLLM's proxy (a benchmark peer, never a dependency of Spiral): it is installed into a scratch
virtualenv outside the project (--peer-venv, default ~/.cache/spiral-peers/litellm-<version>) on first use, and run
with a Redis cache of its own (a scratch redis-server) in front of the same stand-in provider Spiral's tests use.
Spiral runs as its own platform (default profile, free ports). Both get the same OpenAI request, primed once so
every measured request is a cache hit, and the same load generator: wrk, one thread, on the same two cores.

Measured, alternating the peers within each round (--rounds rounds):
  1. --duration seconds at 1 connection and at 8 connections: requests/s and p50/p95/p99;
  2. a throughput frontier: --sweep-duration seconds at each of 1, 2, 4, 8, 16, 32 connections, then for each
     latency bound (5, 10, 50 ms) the highest requests/s of a run whose p99 stayed under it. wrk is a closed-loop
     generator (each connection waits for its answer), so this is the best rate seen at some concurrency with p99
     under the bound, not an open-loop constant-rate search; the table says so.
It prints a markdown table with the ratios (Spiral / peer requests/s, peer / Spiral latency) for docs/benchmarks.md,
and writes every run to --json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deploy.gate.fake_cloud import FakeCloud
from deploy.gate.load import PROMPT
from deploy.platform import Platform, free_port_env, free_ports
from spiral_common.config import load_settings

LITELLM_VERSION = "1.108.7"
BODY = json.dumps(
    {"model": "spiral", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "temperature": 0}
)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%s
wrk.body = '%s'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %%d %%d %%d %%.3f %%.3f %%.3f\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""
SWEEP = (1, 2, 4, 8, 16, 32)
BOUNDS_MS = (5, 10, 50)


def wrk(url: str, connections: int, duration_s: float, key: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
        script.write(WRK_SCRIPT % (auth, BODY))
    try:
        result = subprocess.run(
            ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(duration_s))}s", "-s", script.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=duration_s + 60,
        )
    finally:
        os.unlink(script.name)
    match = re.search(r"RESULT (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)", result.stdout)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if not match or not rate:
        raise RuntimeError(f"wrk printed no result:\n{result.stdout}\n{result.stderr}")
    return {
        "connections": connections,
        "requests": int(match[1]),
        "errors": int(match[2]) + int(match[3]),
        "requests_per_s": float(rate[1]),
        "p50_ms": float(match[4]),
        "p95_ms": float(match[5]),
        "p99_ms": float(match[6]),
    }


def post(url: str, key: str, timeout_s: float = 60.0) -> dict:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, BODY.encode(), headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read())


def prime(url: str, key: str, name: str, timeout_s: float = 180.0) -> None:
    """Ask until the same request was answered twice the same way (the second from the cache)."""
    deadline = time.monotonic() + timeout_s
    answers: list[str] = []
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            answers.append(post(url, key)["choices"][0]["message"]["content"])
        except (urllib.error.URLError, ConnectionError, TimeoutError, KeyError) as error:
            last = error
            time.sleep(1)
            continue
        if len(answers) >= 3 and answers[-1] == answers[-2]:
            return
    raise SystemExit(f"bench.peers: {name} did not answer the request twice alike in {timeout_s:.0f}s: {last!r}")


def peer_venv(path: Path, version: str) -> Path:
    python = path / "bin" / "python"
    if not (path / "bin" / "litellm").exists():
        print(f"installing litellm[proxy]=={version} into {path} (a scratch virtualenv, outside the project)")
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}", "redis"], check=True, timeout=1200
        )
    return path / "bin" / "litellm"


class Peer:
    """LiteLLM's proxy with a scratch Redis cache, in front of the stand-in provider."""

    def __init__(self, litellm: Path, cloud: FakeCloud, workdir: Path) -> None:
        self.redis_port, self.port = free_ports(2)
        self.key = f"sk-bench-{secrets.token_hex(16)}"  # the proxy refuses to start without a master key
        self.workdir = workdir
        config = workdir / "litellm.yaml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "model_list": [
                        {
                            "model_name": "spiral",
                            "litellm_params": {
                                "model": "openai/stand-in",
                                "api_base": cloud.base_url,
                                "api_key": "sk-stand-in",
                            },
                        }
                    ],
                    "general_settings": {"master_key": self.key},
                    "litellm_settings": {
                        "cache": True,
                        "cache_params": {"type": "redis", "host": "127.0.0.1", "port": self.redis_port},
                    },
                }
            )
        )
        self.redis = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPIRAL_", "OPENAI_"))}
        self.log = (workdir / "litellm.log").open("w")
        self.proxy = subprocess.Popen(
            [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env | {"LITELLM_LOG": "ERROR"},
            start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def stop(self) -> None:
        for process in (self.proxy, self.redis):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM) if process is self.proxy else process.terminate()
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL) if process is self.proxy else process.kill()
                    process.wait(10)
        self.log.close()


def frontier(runs: list[dict]) -> dict[int, float]:
    return {
        bound: max((r["requests_per_s"] for r in runs if r["p99_ms"] < bound and r["errors"] == 0), default=0.0)
        for bound in BOUNDS_MS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run at 1 and 8 connections")
    parser.add_argument("--sweep-duration", type=float, default=5.0, help="seconds per run of the frontier sweep")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peer-version", default=LITELLM_VERSION)
    parser.add_argument("--peer-venv", type=Path)
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-peers.json"))
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        raise SystemExit("bench.peers: needs wrk and redis-server (apt-get install wrk redis-server)")
    venv = args.peer_venv or Path.home() / ".cache" / "spiral-peers" / f"litellm-{args.peer_version}"
    litellm = peer_venv(venv, args.peer_version)

    workdir = Path(tempfile.mkdtemp(prefix="spiral-peers-"))
    env = {"SPIRAL_PROFILE": "default", **os.environ, "SPIRAL_RUN_DIR": str(workdir / "spiral"), **free_port_env()}
    settings = load_settings(env)
    key = env.get("SPIRAL_BENCH_API_KEY", "")  # a client key, if the platform requires one
    cloud = FakeCloud(answers={PROMPT: "Blue."})
    cloud.start()
    platform = Platform(settings)
    peer = Peer(litellm, cloud, workdir)
    results: dict[str, list[dict]] = {"spiral": [], "litellm": []}
    try:
        platform.start(timeout_s=180)
        urls = {
            "spiral": (f"http://{settings.gateway.gateway_addr}/v1/chat/completions", key),
            "litellm": (peer.url, peer.key),
        }
        for name, (url, token) in urls.items():
            prime(url, token, name)
        for round_ in range(args.rounds):
            for connections in (1, 8):
                for name, (url, token) in urls.items():
                    run = wrk(url, connections, args.duration, token) | {"round": round_, "phase": "fixed"}
                    results[name].append(run)
                    print(f"round {round_} {name:8s} c={connections}: {run}", flush=True)
        for connections in SWEEP:
            for name, (url, token) in urls.items():
                run = wrk(url, connections, args.sweep_duration, token) | {"phase": "sweep"}
                results[name].append(run)
                print(f"sweep {name:8s} c={connections}: {run}", flush=True)
    finally:
        peer.stop()
        platform.stop()
        cloud.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"litellm_version": args.peer_version, "runs": results}, indent=2))
    report(results, args)


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    def fixed(name: str, connections: int) -> list[dict]:
        return [r for r in results[name] if r["phase"] == "fixed" and r["connections"] == connections]

    def mean(runs: list[dict], field: str) -> float:
        return sum(r[field] for r in runs) / len(runs)

    print(f"\ncache hit, same request, wrk -t1, {args.duration:.0f} s per run, {args.rounds} alternating rounds")
    print("| connections | peer | requests/s (each round) | p50 / p95 / p99 (ms, mean) | errors |")
    print("|---|---|---|---|---|")
    for connections in (1, 8):
        for name in ("spiral", f"litellm {args.peer_version}"):
            runs = fixed(name.split()[0], connections)
            rates = " / ".join(f"{r['requests_per_s']:.0f}" for r in runs)
            latency = " / ".join(f"{mean(runs, f):.1f}" for f in ("p50_ms", "p95_ms", "p99_ms"))
            print(f"| {connections} | {name} | {rates} | {latency} | {sum(r['errors'] for r in runs)} |")
    print("\n| connections | Spiral / LiteLLM requests/s | LiteLLM / Spiral p50 | p95 | p99 |")
    print("|---|---|---|---|---|")
    for connections in (1, 8):
        s, p = fixed("spiral", connections), fixed("litellm", connections)
        ratios = [mean(p, f) / mean(s, f) for f in ("p50_ms", "p95_ms", "p99_ms")]
        throughput = mean(s, "requests_per_s") / mean(p, "requests_per_s")
        print(f"| {connections} | {throughput:.1f}x | " + " | ".join(f"{r:.1f}x" for r in ratios) + " |")
    sweeps = {name: [r for r in runs if r["phase"] == "sweep"] for name, runs in results.items()}
    fronts = {name: frontier(runs) for name, runs in sweeps.items()}
    print(
        f"\nthroughput frontier (closed loop: the highest requests/s of a {args.sweep_duration:.0f} s run at "
        f"{', '.join(map(str, SWEEP))} connections whose p99 stayed under the bound, 0 errors)"
    )
    print("| p99 bound | Spiral requests/s | LiteLLM requests/s | ratio |")
    print("|---|---|---|---|")
    for bound in BOUNDS_MS:
        ours, theirs = fronts["spiral"][bound], fronts["litellm"][bound]
        ratio = f"{ours / theirs:.1f}x" if theirs else "LiteLLM never under it"
        print(f"| {bound} ms | {ours:.0f} | {theirs:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
