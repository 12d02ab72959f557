"""Hosts on one machine: network namespaces joined by veth pairs to a bridge in a namespace of its own, with
addresses this module assigns (10.77.0.0/24), no default route and no link to the machine's own network."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUBNET = "10.77.0.0/24"


def _ip(*args: str, ns: str | None = None) -> str:
    command = ["ip", *(("netns", "exec", ns, "ip") if ns else ()), *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=30).stdout


def _in(ns: str, *command: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *command], check=True, capture_output=True, text=True, timeout=30
    ).stdout


@dataclass
class Host:
    name: str
    ns: str
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Run `command` on this host (inside its namespace), its output appended to `log`."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def run(self, *command: str, env: dict[str, str] | None = None, timeout_s: float = 120) -> str:
        """Run `command` on this host to its end; its stdout."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.ns, *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{command} on {self.name} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def pids(self) -> list[int]:
        """Every process running in this host's namespace."""
        out = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True, timeout=10).stdout
        return [int(p) for p in out.split()]

    def kill(self) -> None:
        """The host dies: every process in its namespace is killed at once (SIGKILL), then reaped."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        """SIGTERM to what this test started here, then SIGKILL to anything left in the namespace."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def outside_packets(self) -> int:
        """Packets this host sent anywhere but loopback and the test's subnet (iptables counts them)."""
        rules = _in(self.ns, "iptables", "-L", "OUTPUT", "-v", "-x", "-n").splitlines()
        counting = [line for line in rules if line.strip() and "spiral-outside" in line]
        return sum(int(line.split()[0]) for line in counting)


class Network:
    """Create with `Network(tag, {"infra": 1, ...})`; always `close()` (it deletes every namespace)."""

    def __init__(self, tag: str, hosts: dict[str, int]) -> None:
        self.tag = tag
        self.switch = f"{tag}-switch"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._add_namespace(self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        for name, number in hosts.items():
            self._add_host(name, number)

    def _add_namespace(self, ns: str) -> None:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True, timeout=30)
        self._namespaces.append(ns)
        _ip("link", "set", "lo", "up", ns=ns)

    def _add_host(self, name: str, number: int) -> None:
        ns = f"{self.tag}-{name}"
        self._add_namespace(ns)
        inside, outside = f"v{self.tag[-6:]}{number}a", f"v{self.tag[-6:]}{number}b"
        # Made in this (the machine's) namespace, and moved out at once: neither end stays here.
        _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", self.switch)
        address = f"10.77.0.{number}"
        _ip("addr", "add", f"{address}/24", "dev", inside, ns=ns)
        _ip("link", "set", inside, "up", ns=ns)
        _ip("link", "set", outside, "master", "br0", ns=self.switch)
        _ip("link", "set", outside, "up", ns=self.switch)
        # Count every packet sent anywhere but loopback and the subnet (there is no route for one anyway).
        for rule in (["-o", "lo", "-j", "ACCEPT"], ["-d", SUBNET, "-j", "ACCEPT"]):
            _in(ns, "iptables", "-A", "OUTPUT", *rule)
        _in(ns, "iptables", "-A", "OUTPUT", "-m", "comment", "--comment", "spiral-outside", "-j", "DROP")
        self.hosts[name] = Host(name, ns, address)

    def default_routes(self) -> dict[str, str]:
        """Each namespace's default route ("" when it has none)."""
        return {ns: _ip("route", "show", "default", ns=ns).strip() for ns in self._namespaces}

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop()
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
