"""Envoy's admin interface, on its unix socket: the one way in (the socket is 0600 in the run directory, so
only the platform's own user may open it; over TCP, Envoy serves its statistics and nothing else)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("localhost", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


def admin_call(socket_path: Path, path: str, *, method: str = "GET", timeout_s: float = 5.0) -> str:
    """The body of an admin request (`/clusters`, `POST /runtime_modify?...`); OSError when Envoy cannot be
    reached or answers with an error status."""
    connection = _UnixConnection(socket_path, timeout_s)
    try:
        connection.request(method, path)
        reply = connection.getresponse()
        body = reply.read().decode()
    finally:
        connection.close()
    if reply.status >= 400:
        raise OSError(f"Envoy's admin answered {reply.status} to {method} {path}: {body.strip()[:200]}")
    return body
