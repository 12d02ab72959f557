"""SIGTERM drains: a stream in flight finishes, then the process exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import grpc
import pytest

from deploy.platform import grpc_health
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from tests.helpers import free_ports, wait_until

pytestmark = pytest.mark.integration


def _serving(address: str) -> bool:
    return grpc_health(address) == "SERVING"


def test_sigterm_during_a_stream_lets_the_stream_finish(tmp_path):
    port, metrics_port = free_ports(2)
    env = {
        **os.environ,
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_HEAD_ADDR": f"127.0.0.1:{port}",
        "SPIRAL_HEAD_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SPIRAL_RUN_DIR": str(tmp_path),
        "SPIRAL_SHUTDOWN_GRACE_S": "30",
    }
    log = (tmp_path / "head.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "head_svc"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        address = f"127.0.0.1:{port}"
        wait_until(lambda: _serving(address), 60, "the head to serve")
        with grpc.insecure_channel(address) as channel:
            stream = head_pb2_grpc.HeadServiceStub(channel).Generate(
                head_pb2.GenerateRequest(
                    messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content="Tell me a long story.")],
                    params=chat_pb2.GenerationParams(max_tokens=48, temperature=0.8, seed=1),
                )
            )
            first = next(stream)
            assert first.HasField("delta")
            process.send_signal(signal.SIGTERM)
            rest = list(stream)
        assert rest[-1].HasField("end"), "the stream was cut instead of finishing"
        assert rest[-1].end.finish_reason != chat_pb2.FINISH_REASON_CANCELLED
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert '"message": "draining"' in (tmp_path / "head.log").read_text()
