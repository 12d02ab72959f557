"""`make test-images`: the built images serve a question, with the rest of the platform on this machine.

Starts both Redis servers (without logins: its secrets hold no Redis password) and Envoy from this machine,
the head from `spiral-head`, both routers and the gateway from `spiral-gateway-router` (podman, host network,
read-only root filesystem, UID 10001), all on free loopback ports of the quick_test profile; waits until every
one is SERVING, asks the gateway one question, prints the answer and its tier, and removes everything it
started. Needs `make images` first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from deploy.k8s import project_version
from deploy.platform import free_port_env, grpc_health
from deploy.render import render_envoy
from spiral_common.config import Settings, load_settings, settings_env

PODMAN_RUN = [
    "podman",
    "run",
    "--detach",
    "--runtime",
    "runc",
    "--network",
    "host",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--tmpfs",
    "/var/lib/spiral",
    "--user",
    "10001:10001",
]
QUESTION = "What is the capital of France?"


def wait_for(what: str, ready: Callable[[], bool], deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if ready():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} was not ready within {deadline_s:.0f} s")


def serving(address: str, service: str) -> Callable[[], bool]:
    return lambda: grpc_health(address, service) == "SERVING"


def gateway_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(stack: ExitStack, settings: Settings, tmp: Path, tag: str) -> dict[str, str]:
    env = settings_env(settings)
    env.pop("SPIRAL_TRACK")
    env.update({"SPIRAL_RUN_DIR": "/var/lib/spiral", "SPIRAL_ENV_FILE": "/etc/spiral-secrets/secrets.env"})
    env_file = tmp / "container.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    (tmp / "secrets").mkdir()
    (tmp / "secrets" / "secrets.env").write_text(f"SPIRAL_ADMIN_TOKEN=smoke-{os.urandom(8).hex()}\n")
    names: list[str] = []

    def container(role: str, image: str, *command: str, extra: tuple[str, ...] = ()) -> None:
        name = f"spiral-smoke-{role}-{os.getpid()}"
        argv = [*PODMAN_RUN, "--name", name, "--env-file", str(env_file), *extra]
        argv += ["--volume", f"{tmp / 'secrets'}:/etc/spiral-secrets:ro", image, *command]
        subprocess.run(argv, check=True, capture_output=True, text=True)
        names.append(name)
        stack.callback(subprocess.run, ["podman", "rm", "--force", name], capture_output=True)

    def process(argv: list[str], log: str) -> None:
        proc = subprocess.Popen(argv, stdout=(tmp / log).open("w"), stderr=subprocess.STDOUT)
        stack.callback(proc.wait, 10)
        stack.callback(proc.terminate)

    s = settings
    for name, redis in (("redis", s.redis.redis_addr), ("redis-cache", s.redis.redis_cache_addr)):
        process(
            ["redis-server", "--bind", redis.host, "--port", str(redis.port), "--save", "", "--appendonly", "no"],
            f"{name}.log",
        )
    (tmp / "envoy.yaml").write_text(render_envoy(s))
    envoy = str(Path(sys.executable).parent / "envoy")
    base_id = str(tmp / "envoy.base-id")
    process([envoy, "-c", str(tmp / "envoy.yaml"), "--use-dynamic-base-id", "--base-id-path", base_id], "envoy.log")
    container("head", f"localhost/spiral-head:{tag}")
    for track in ("main", "canary"):
        container(
            f"router-{track}",
            f"localhost/spiral-gateway-router:{tag}",
            "python",
            "-m",
            "router_svc",
            extra=("--env", f"SPIRAL_TRACK={track}"),
        )
    container("gateway", f"localhost/spiral-gateway-router:{tag}")
    try:
        wait_for("the head", serving(s.head.head_addr, "spiral.head.v1.HeadService"), 300)
        for track in ("main", "canary"):
            wait_for(f"router {track}", serving(s.router.router_addr(track), "spiral.router.v1.RouterService"), 120)
        url = f"http://{s.gateway.gateway_addr}"
        wait_for("the gateway", lambda: gateway_ready(url), 120)
        body = {"model": "spiral", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=180)
        reply.raise_for_status()
        answer = reply.json()
    except Exception:
        for name in names:
            logs = subprocess.run(["podman", "logs", "--tail", "20", name], capture_output=True, text=True)
            print(f"--- {name}\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        raise
    return {
        "question": QUESTION,
        "answer": answer["choices"][0]["message"]["content"],
        "tier": str(answer.get("spiral_trace", {}).get("tier", "")),
    }


def main() -> int:
    if not shutil.which("podman"):
        print("test-images: podman is missing (apt-get install podman runc)", file=sys.stderr)
        return 1
    tag = project_version()
    with tempfile.TemporaryDirectory(prefix="spiral-images-") as tmp, ExitStack() as stack:
        # One head on the council: the head tier answers, streamed, without a five-head vote on 2 cores.
        env = {
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_RUN_DIR": tmp,
            "SPIRAL_COUNCIL_HEADS": "precise",
            **free_port_env(),
        }
        result = run(stack, load_settings(env), Path(tmp), tag)
    print(json.dumps(result))
    return 0 if result["answer"].strip() else 1


if __name__ == "__main__":
    sys.exit(main())
