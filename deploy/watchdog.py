"""Liveness watchdog: restarts, through supervisord, a service that is running but no longer answers its health check.

supervisord restarts a process that exits, never one that is alive but stuck (an event loop stalled in a regex
took both routers out while supervisord saw them RUNNING). `python -m deploy.watchdog` runs as a supervised
program beside the services: every SPIRAL_LIVENESS_INTERVAL_S it asks each service's health with a deadline of
SPIRAL_LIVENESS_TIMEOUT_S, from outside the process (gRPC `grpc.health.v1.Health/Check` for the routers, head,
trainer and miner, HTTP `/healthz` for the gateway). Any answer, SERVING or not, proves the process alive:
readiness is Envoy's business. A service that answered and then misses SPIRAL_LIVENESS_FAILURES probes in a
row, or that has never answered SPIRAL_LIVENESS_START_GRACE_S after supervisord reported it RUNNING, is
restarted with supervisord's XML-RPC `stopProcess` (SIGTERM, SIGKILL after `stopwaitsecs`) and
`startProcess`, and the restart is logged as one JSON line.

Why hand-written: supervisord's event listeners (superlance's `httpok`) probe HTTP only, and there is no
maintained gRPC-health listener; a loop of about a hundred lines over the grpc health stub and supervisord's
own RPC interface is smaller than adapting one. The decision (`Liveness`) has no I/O, so it is tested with
fake probes and a fake supervisor.
"""

from __future__ import annotations

import http.client
import logging
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from supervisor.xmlrpc import SupervisorTransport

from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.logs import configure_logging

log = logging.getLogger("spiral.watchdog")

Probe = Callable[[float], bool]  # timeout seconds -> did the service answer at all


def grpc_probe(address: str, service: str) -> Probe:
    """A probe that answers True when Health/Check returns any status within the deadline."""

    def probe(timeout_s: float) -> bool:
        with grpc.insecure_channel(address) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
                )
            except grpc.RpcError as exc:
                # A status other than these comes from the process itself: it is alive.
                return exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        return True

    return probe


def http_probe(url: str) -> Probe:
    """A probe that answers True when the URL returns any HTTP status within the deadline."""

    def probe(timeout_s: float) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s):
                return True
        except urllib.error.HTTPError:
            return True  # a 503 while draining is still an answer
        except OSError:
            return False

    return probe


@dataclass(frozen=True)
class Target:
    """One supervised program and how to ask whether it is alive."""

    program: str
    probe: Probe


def targets(settings: Settings) -> list[Target]:
    """The platform's services the watchdog watches, named as in supervisord.conf."""
    r = settings.router
    return [
        Target("router-main", grpc_probe(r.router_main_addr, "spiral.router.v1.RouterService")),
        Target("router-canary", grpc_probe(r.router_canary_addr, "spiral.router.v1.RouterService")),
        Target("head", grpc_probe(settings.head.head_addr, "spiral.head.v1.HeadService")),
        Target("trainer", grpc_probe(settings.trainer.trainer_addr, "spiral.trainer.v1.TrainerService")),
        Target("miner", grpc_probe(settings.miner.miner_addr, "spiral.miner.v1.MinerService")),
        Target("gateway", http_probe(f"http://{settings.gateway.gateway_addr}/healthz")),
    ]


@dataclass
class _Watch:
    running_since: float
    answered: bool = False
    misses: int = 0


@dataclass
class Liveness:
    """Decides, probe by probe, which programs to restart. No I/O: the caller gives the time and the results."""

    failures: int
    start_grace_s: float
    _watches: dict[str, _Watch] = field(default_factory=dict)

    def not_running(self, program: str) -> None:
        """supervisord is starting, backing off or has stopped it: its own rules apply, and the count restarts."""
        self._watches.pop(program, None)

    def observe(self, program: str, answered: bool, now: float) -> str | None:
        """Record one probe of a RUNNING program; return why to restart it, or None."""
        watch = self._watches.setdefault(program, _Watch(running_since=now))
        if answered:
            watch.answered, watch.misses = True, 0
            return None
        watch.misses += 1
        if watch.answered:
            if watch.misses >= self.failures:
                self._watches.pop(program)
                return f"stopped answering: {watch.misses} probes missed in a row"
            return None
        if now - watch.running_since >= self.start_grace_s and watch.misses >= self.failures:
            self._watches.pop(program)
            return f"never answered in {now - watch.running_since:.0f}s after start"
        return None


class Supervisor(Protocol):
    """The part of supervisord's XML-RPC interface the watchdog uses."""

    def states(self) -> dict[str, str]: ...

    def restart(self, program: str) -> None: ...


class XmlRpcSupervisor:
    """supervisord's `supervisor.*` XML-RPC methods over the unix socket supervisord.conf configures."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        # A fresh connection per call: the transport's connection is unusable after a failed request.
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def states(self) -> dict[str, str]:
        infos = cast(list[dict], self._rpc().supervisor.getAllProcessInfo())  # XML-RPC results are untyped
        return {info["name"]: info["statename"] for info in infos}

    def restart(self, program: str) -> None:
        rpc = self._rpc()
        try:
            rpc.supervisor.stopProcess(program, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise
        rpc.supervisor.startProcess(program, False)


def check_once(
    watched: Sequence[Target], liveness: Liveness, supervisor: Supervisor, timeout_s: float, now: float
) -> list[str]:
    """Probe every RUNNING target once and restart those `liveness` gives up on; return the restarted names."""
    states = supervisor.states()
    restarted = []
    for target in watched:
        if states.get(target.program) != "RUNNING":
            liveness.not_running(target.program)
            continue
        reason = liveness.observe(target.program, target.probe(timeout_s), now)
        if reason is None:
            continue
        log.warning("restarting a service that does not answer", extra={"program": target.program, "reason": reason})
        supervisor.restart(target.program)
        log.info("restarted", extra={"program": target.program})
        restarted.append(target.program)
    return restarted


def run(settings: Settings, supervisor: Supervisor, watched: Sequence[Target]) -> None:
    liveness = Liveness(settings.liveness_failures, settings.liveness_start_grace_s)
    while True:
        started = time.monotonic()
        try:
            check_once(watched, liveness, supervisor, settings.liveness_timeout_s, started)
        except (OSError, http.client.HTTPException, xmlrpc.client.Error) as exc:
            # supervisord busy or going down: try again next round
            log.warning("supervisord did not answer", extra={"error": repr(exc)})
        time.sleep(max(0.0, settings.liveness_interval_s - (time.monotonic() - started)))


def main() -> None:
    settings = load_settings()
    configure_logging("watchdog", settings.log_level)
    run(settings, XmlRpcSupervisor(settings.run_path / "supervisor.sock"), targets(settings))


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        print(f"watchdog: {exc}", file=sys.stderr)
        sys.exit(2)
