"""The platform as one object: start it under supervisord, wait until every service serves, stop it.

`spiralctl` (make up / status / down) and the integration tests both drive it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from supervisor.xmlrpc import SupervisorTransport

from deploy.render import render_all
from spiral_common.config import Address, Settings, address_settings, env_name

# Every listener of a platform: (group in Settings, address field).
ADDRESS_SETTINGS = address_settings()


def free_ports(count: int) -> list[int]:
    """Distinct ports that were free a moment ago (all sockets are held until every port is picked)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


def free_port_env() -> dict[str, str]:
    """SPIRAL_*_ADDR overrides putting every listener of a platform on a free loopback port (tests, benchmarks)."""
    return {
        env_name(name): f"127.0.0.1:{port}"
        for (_, name), port in zip(ADDRESS_SETTINGS, free_ports(len(ADDRESS_SETTINGS)), strict=True)
    }


class PlatformError(RuntimeError):
    """The platform could not be started or stopped; the message says which service and why."""


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # "SERVING", or what is wrong
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "SERVING"


def grpc_health(address: str, service: str = "", timeout: float = 1.0) -> str:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _redis_ping(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            # A server that asks for a login (the platform's: no `default` user) is up all the same.
            return "SERVING" if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")) else "NOT_SERVING"
    except OSError as exc:
        return f"UNREACHABLE ({exc.__class__.__name__})"


def _http_ok(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except OSError as exc:
        return f"UNREACHABLE ({exc.__class__.__name__})"


class Platform:
    """One profile's processes under one supervisord."""

    def __init__(self, settings: Settings, python: str = sys.executable) -> None:
        self.settings = settings
        self.python = python
        self.run = settings.run_path

    # -- supervisord -------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.run / "supervisord.conf"

    def supervisor_pid(self) -> int | None:
        try:
            pid = int((self.run / "supervisord.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, f"unix://{self.run}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> dict[str, dict]:
        infos = cast(list[dict], self._rpc().supervisor.getAllProcessInfo())  # XML-RPC results are untyped
        return {p["name"]: p for p in infos}

    # -- lifecycle ---------------------------------------------------------------------------
    def addresses(self) -> dict[str, Address]:
        """Every listener's address, by its variable (SPIRAL_HEAD_ADDR: 127.0.0.1:50061)."""
        return {env_name(name): getattr(getattr(self.settings, group), name) for group, name in ADDRESS_SETTINGS}

    def _ports_in_use(self) -> list[str]:
        busy = []
        for variable, address in self.addresses().items():
            with socket.socket() as sock:
                if address.port and sock.connect_ex((address.host, address.port)) == 0:
                    busy.append(f"{variable}={address}")
        return busy

    def start(self, timeout_s: float = 180.0) -> None:
        """Start every service (if not already up) and return once all report SERVING."""
        if self.supervisor_pid() is None:
            busy = self._ports_in_use()
            if busy:
                raise PlatformError(f"ports already in use: {', '.join(busy)} (another platform running? `make down`)")
            render_all(self.settings, self.python)
            self._validate_envoy()
            subprocess.run([self.python, "-m", "supervisor.supervisord", "-c", str(self.conf)], check=True)
        self.wait_serving(timeout_s)

    def _validate_envoy(self) -> None:
        envoy = Path(self.python).parent / "envoy"
        result = subprocess.run(
            [
                str(envoy) if envoy.exists() else "envoy",
                "--mode",
                "validate",
                "-c",
                str(self.run / "envoy.yaml"),
                "--use-dynamic-base-id",
                "--log-level",
                "error",
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise PlatformError(f"envoy rejected {self.run / 'envoy.yaml'}:\n{result.stdout}{result.stderr}")

    def checks(self) -> list[Check]:
        s = self.settings
        redis, cache = s.redis.redis_addr, s.redis.redis_cache_addr
        gateway, observability = s.gateway.gateway_addr, s.observability
        return [
            Check("redis", _redis_ping(redis.host, redis.port), f"redis://{redis}"),
            Check("redis-cache", _redis_ping(cache.host, cache.port), f"redis://{cache}"),
            Check("head", grpc_health(s.head.head_addr, "spiral.head.v1.HeadService"), s.head.head_addr),
            Check(
                "router-main",
                grpc_health(s.router.router_main_addr, "spiral.router.v1.RouterService"),
                s.router.router_main_addr,
            ),
            Check(
                "router-canary",
                grpc_health(s.router.router_canary_addr, "spiral.router.v1.RouterService"),
                s.router.router_canary_addr,
            ),
            Check(
                "trainer",
                grpc_health(s.trainer.trainer_addr, "spiral.trainer.v1.TrainerService"),
                s.trainer.trainer_addr,
            ),
            Check("miner", grpc_health(s.miner.miner_addr, "spiral.miner.v1.MinerService"), s.miner.miner_addr),
            Check(
                "envoy",
                grpc_health(s.envoy.envoy_addr, "spiral.router.v1.RouterService"),
                f"{s.envoy.envoy_addr} (internal {s.envoy.envoy_internal_addr}, admin {s.envoy_admin_path})",
            ),
            Check("gateway", _http_ok(f"http://{gateway}/healthz"), f"http://{gateway}"),
            Check(
                "prometheus",
                _http_ok(f"http://{observability.prometheus_addr}/-/ready"),
                f"http://{observability.prometheus_addr}",
            ),
            Check(
                "alertmanager",
                _http_ok(f"http://{observability.alertmanager_addr}/-/ready"),
                f"http://{observability.alertmanager_addr}",
            ),
            Check(
                "pushgateway",
                _http_ok(f"http://{observability.pushgateway_addr}/-/ready"),
                f"http://{observability.pushgateway_addr}",
            ),
        ]

    def wait_serving(self, timeout_s: float) -> list[Check]:
        deadline = time.monotonic() + timeout_s
        while True:
            checks = self.checks()
            if all(c.ok for c in checks):
                return checks
            fatal = [n for n, p in self.processes().items() if p["statename"] in ("FATAL", "EXITED")]
            if fatal or time.monotonic() > deadline:
                waiting = ", ".join(f"{c.name}: {c.state}" for c in checks if not c.ok)
                logs = "\n".join(self.log_tail(name) for name in fatal or [c.name for c in checks if not c.ok])
                raise PlatformError(f"not serving after {timeout_s:.0f}s ({waiting}); fatal: {fatal}\n{logs}")
            time.sleep(0.2)

    def log_tail(self, program: str, lines: int = 20) -> str:
        path = self.run / "logs" / f"{program}.log"
        if not path.exists():
            return f"--- {program}: no log"
        return f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop every service (each drains on SIGTERM) and supervisord; leave no process behind."""
        pid = self.supervisor_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # supervisord stops its programs in reverse priority, then exits
        deadline = time.monotonic() + timeout_s
        while self.supervisor_pid() is not None:
            if time.monotonic() > deadline:
                raise PlatformError(f"supervisord (pid {pid}) still running after {timeout_s:.0f}s")
            time.sleep(0.1)
