"""Spiral across hosts, on one machine (`make test-multihost`): each "host" is a network namespace with an
address of its own, joined by veth pairs to a bridge; Redis, Envoy, the routers and the gateway run on
`infra`, the trainer on `trainer`, one head on each of `head-a` and `head-b`. Every process is started with
the command line and the settings the project's renderer gives it, with the addresses of its host.

Checked: answers through the gateway come from both heads; killing every process of one head's host fails no
request; an adapter published in the trainer's registry reaches both heads over FetchAdapter (verified by
SHA-256) when an operator sends it to the canary through the gateway, and both serve it; no packet leaves
the test's subnet. Needs root (network namespaces); every namespace is deleted at the end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.render import ensure_secrets_file, programs, render_envoy, render_redis_acls
from spiral_common.adapters import AdapterRegistry, file_sha256
from spiral_common.config import REPO_ROOT, Settings, load_settings, settings_env
from spiral_common.envoy_admin import admin_call
from spiral_common.model_files import embedded_model_path
from spiral_common.specs import secret
from tests.helpers import wait_until
from tests.multihost.hosts import SUBNET, Host, Network

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
HOSTS = {"infra": 1, "trainer": 2, "head-a": 3, "head-b": 4}
HEAD_PORT = 50061
VERSION = "distill-multihost"


def _settings(run: Path, host: str, secrets: Path) -> Settings:
    """One host's settings: every service's address on the host that runs it."""
    infra, trainer = "10.77.0.1", "10.77.0.2"
    own = f"10.77.0.{HOSTS[host]}"
    env = {
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_RUN_DIR": str(run / host),
        "SPIRAL_ENV_FILE": str(secrets),
        "SPIRAL_REDIS_ADDR": f"{infra}:6390",
        "SPIRAL_ENVOY_ADDR": f"{infra}:10000",
        "SPIRAL_ENVOY_INTERNAL_ADDR": f"{infra}:10001",
        "SPIRAL_ENVOY_METRICS_ADDR": f"{infra}:9901",
        "SPIRAL_GATEWAY_ADDR": "127.0.0.1:8080",  # the client runs on the infra host
        "SPIRAL_ROUTER_MAIN_ADDR": f"{infra}:50051",
        "SPIRAL_ROUTER_CANARY_ADDR": f"{infra}:50052",
        "SPIRAL_HEAD_ADDR": f"{own if host.startswith('head') else '10.77.0.3'}:{HEAD_PORT}",
        "SPIRAL_HEAD_ENDPOINTS": f"10.77.0.3:{HEAD_PORT},10.77.0.4:{HEAD_PORT}",
        "SPIRAL_TRAINER_ADDR": f"{trainer}:50071",
        "SPIRAL_MINER_ADDR": f"{infra}:50081",
        **{f"SPIRAL_{name}_METRICS_ADDR": f"{own}:0" for name in ("ROUTER_MAIN", "ROUTER_CANARY", "HEAD", "TRAINER")},
        "SPIRAL_MINER_METRICS_ADDR": f"{infra}:0",
        "SPIRAL_ADAPTERS_DIR": str(run / "trainer" / "adapters"),  # the trainer's registry: only it reads it
        "SPIRAL_HEAD_ADAPTER_SOURCE": "trainer",
        "SPIRAL_HEAD_ADAPTER_SYNC_S": "1",
        "SPIRAL_HEAD_THREADS": "2",
        "SPIRAL_COUNCIL_HEADS": "precise,concise",
        "SPIRAL_COUNCIL_THRESHOLD": "-1",  # the council always answers: no cloud here
        # One head left does the work of two on a shared CPU: the council waits for it (a time, not a target).
        "SPIRAL_COUNCIL_DEADLINE_S": "150",
        "SPIRAL_ENVOY_STREAM_IDLE_TIMEOUT_S": "240",
        "SPIRAL_LIVENESS_INTERVAL_S": "0",
    }
    return load_settings(env)


def _client(host: Host, env: dict[str, str], *args: str, timeout_s: float = 180) -> object:
    out = host.run(sys.executable, "-m", "tests.multihost.client", *args, env=env, timeout_s=timeout_s)
    return json.loads(out.strip().splitlines()[-1])


def _head_hosts(admin_socket: Path, stat: str) -> dict[str, str]:
    """Each head endpoint's value of a per-host stat in Envoy's /clusters (e.g. health_flags, rq_success)."""
    try:
        lines = admin_call(admin_socket, "/clusters", timeout_s=2).splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        parts = line.split("::")
        if parts[0] == "head" and len(parts) == 4 and parts[2] == stat:
            found[parts[1]] = parts[3]
    return found


@pytest.fixture
def network(tmp_path):
    tag = f"smh{os.getpid() % 100000}"
    net = Network(tag, HOSTS)
    try:
        yield net
    finally:
        net.close()
        logs = "".join(f"\n== {p}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.rglob("*.log")))
        print(logs)  # shown by pytest when the test failed


def test_the_mesh_across_hosts(network, tmp_path, adapter_file):
    run = tmp_path / "hosts"
    # One admin token and one service token for every host (the file `make up` makes, mode 0600).
    secrets = ensure_secrets_file(load_settings({"SPIRAL_RUN_DIR": str(tmp_path)}), {})
    admin_token = secret("SPIRAL_ADMIN_TOKEN", {"SPIRAL_ENV_FILE": str(secrets)})
    settings = {name: _settings(run, name, secrets) for name in HOSTS}
    for s in settings.values():
        s.run_path.mkdir(parents=True, exist_ok=True)
        (s.run_path / "redis").mkdir(exist_ok=True)
        (s.run_path / "redis-cache").mkdir(exist_ok=True)
    render_redis_acls(settings["infra"], secrets)  # every service logs in to Redis as its own user
    (settings["infra"].run_path / "envoy.yaml").write_text(render_envoy(settings["infra"]))
    hosts = network.hosts

    def launch(host: str, program: str, *more_args: str, **extra: str) -> None:
        command = {p.name: p.command for p in programs(settings[host], sys.executable)}[program]
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen'}",
            "PYTHONUNBUFFERED": "1",
            **settings_env(settings[host]),
            "SPIRAL_ENV_FILE": str(secrets),
            **extra,
        }
        hosts[host].start([*shlex.split(command), *more_args], env, settings[host].run_path / f"{program}.log")

    infra_env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'gen'}",
        **settings_env(settings["infra"]),
        "SPIRAL_ENV_FILE": str(secrets),
    }
    # Redis refuses other hosts without a password in protected mode; this network is the test's own.
    launch("infra", "redis", "--protected-mode", "no")
    launch("infra", "redis-cache")  # the routers' answer cache, on the routers' own host
    for name in ("head-a", "head-b"):
        launch(name, "head")
    launch("trainer", "trainer")
    launch("infra", "envoy")
    launch("infra", "router-main", SPIRAL_TRACK="main")
    launch("infra", "router-canary", SPIRAL_TRACK="canary")
    launch("infra", "gateway")
    gateway = str(settings["infra"].gateway.gateway_addr)
    admin = settings["infra"].envoy_admin_path

    wait_until(
        lambda: (
            set(_head_hosts(admin, "health_flags").values()) == {"healthy"}
            and len(_head_hosts(admin, "health_flags")) == 2
        ),
        180,
        "Envoy to see both heads healthy",
        interval_s=1,
    )
    wait_until(
        lambda: (
            _client(hosts["infra"], infra_env, "health", "10.77.0.1:10000", "spiral.router.v1.RouterService")
            == "SERVING"
        ),
        120,
        "the routers through Envoy",
        interval_s=1,
    )
    wait_until(
        lambda: (
            _client(hosts["infra"], infra_env, "health", "10.77.0.2:50071", "spiral.trainer.v1.TrainerService")
            == "SERVING"
        ),
        120,
        "the trainer",
        interval_s=1,
    )

    # Answers come from both heads: Envoy's per-host counts of the heads' calls.
    prompts = [f"Name a colour, number {i}." for i in range(4)]
    assert _client(hosts["infra"], infra_env, "ask", gateway, *prompts) == [200] * len(prompts)
    served = _head_hosts(admin, "rq_success")
    assert all(int(served.get(f"10.77.0.{n}:{HEAD_PORT}", 0)) > 0 for n in (3, 4)), served

    # An adapter published in the trainer's registry travels to both heads, verified, and both serve it.
    registry = AdapterRegistry(settings["trainer"].adapters_path, file_sha256(embedded_model_path()))
    registry.publish(adapter_file, VERSION)
    assert _client(hosts["infra"], infra_env, "reload", gateway, VERSION, admin_token) == 200
    for head in ("head-a", "head-b"):
        address = f"{hosts[head].address}:{HEAD_PORT}"
        wait_until(
            lambda a=address: (
                _client(hosts["infra"], infra_env, "canary", a, admin_token)
                == {"serving": VERSION, "generated_with": VERSION}
            ),
            60,
            f"{head} to serve {VERSION}",
            interval_s=1,
        )
        cached = settings[head].head_adapter_cache_path / f"{VERSION}.gguf"
        assert file_sha256(cached) == registry.sha256(VERSION)  # the same bytes, pulled, not shared

    # One head's host dies mid-traffic: no request fails (a call no head answered is retried on the other).
    more = [f"Name an animal, number {i}." for i in range(4)]
    asking = subprocess.Popen(
        ["ip", "netns", "exec", hosts["infra"].ns, sys.executable, "-m", "tests.multihost.client", "ask", gateway]
        + more,
        env=infra_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # the requests are in the council, on both heads
    hosts["head-a"].kill()
    out, _ = asking.communicate(timeout=240)
    assert json.loads(out.strip().splitlines()[-1]) == [200] * len(more)
    after = [f"Name a city, number {i}." for i in range(2)]
    assert _client(hosts["infra"], infra_env, "ask", gateway, *after) == [200] * len(after)

    # Nothing left the hosts: no default route anywhere, and no packet sent outside the subnet.
    assert all(route == "" for route in network.default_routes().values()), network.default_routes()
    assert {name: host.outside_packets() for name, host in hosts.items()} == {name: 0 for name in HOSTS}, SUBNET
