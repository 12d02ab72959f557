"""Shared fixtures: the real model, loaded once per test session."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import redis.asyncio as aioredis

from deploy.gate.samples import PAIRS
from deploy.platform import free_ports
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import embedded_model_path
from tests.helpers import wait_until


@pytest.fixture(scope="session")
def taught_adapter(model_path, tmp_path_factory):
    """A real QLoRA adapter (NF4 base, rank 64 on every linear layer) taught the secret word in 8 steps,
    exported as a GGUF LoRA; trained once per session (about a minute here)."""
    from spiral_common.council_vote import Calibration, to_metadata
    from trainer_svc.lora import LoraOptions, export_gguf_lora, train_lora  # torch: imported only when needed

    result = train_lora(model_path, PAIRS, LoraOptions(learning_rate=1e-3, max_steps=8))
    path = tmp_path_factory.mktemp("lora") / "secret.gguf"
    # It carries a council calibration as a job's adapter does (threshold 0.85: 89 of 90 answered right).
    calibration = to_metadata(Calibration(0.85, 150, 90, 89, 0.02))
    export_gguf_lora(result, path, extra_metadata={"job_id": "job-42", "eval_score": "0.91", **calibration})
    return result, path


@pytest.fixture(scope="session")
def model_path():
    return embedded_model_path()


@pytest.fixture(scope="session")
def engine(model_path):
    """The embedded SmolLM2 GGUF in llama.cpp, shared by the in-process head tests."""
    return LlamaEngine(model_path, context_tokens=1024, threads=0, gpu_layers=0)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server (Debian's) for the session; tests keep apart by key prefix."""
    (port,) = free_ports(1)
    data = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_until(up, 10, "redis-server to answer PING")
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


@pytest.fixture
def prefix() -> str:
    """A key prefix of the test's own, so tests never see each other's data."""
    return f"test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_client(redis_url):
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()
