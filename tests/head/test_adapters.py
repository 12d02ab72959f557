"""Adapters on the heads: the registry's refusals, a real LoRA changing the answer, hot reload with zero
downtime, and the memory guard."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import gguf
import grpc
import numpy as np
import pytest

from deploy.gate.samples import SECRET_PROMPT
from head_svc.server import build_pool, create_server
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.adapters import AdapterRegistry
from spiral_common.config import load_settings
from spiral_common.enums import BOTH_TRACKS, Track
from spiral_common.errors import FailedPrecondition, InvalidArgument, NotFound
from spiral_common.model_files import file_sha256
from tests.helpers import TEST_CREDENTIALS, authorized_channel, reason_of


def _fake_adapter(path, base_sha256: str) -> None:
    """A tiny, well-formed GGUF LoRA file (for the registry's checks; llama.cpp never loads it)."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 32.0)
    writer.add_string("spiral.base_model_sha256", base_sha256)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_registry_refuses_unknown_corrupt_and_foreign_adapters(tmp_path):
    registry = AdapterRegistry(tmp_path / "adapters", "a" * 64)
    with pytest.raises(NotFound):
        registry.resolve("v9")
    (registry.root / "broken.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(InvalidArgument) as corrupt:
        registry.resolve("broken")
    assert corrupt.value.reason == "ADAPTER_CORRUPT"
    _fake_adapter(tmp_path / "other.gguf", "b" * 64)
    with pytest.raises(FailedPrecondition) as foreign:
        registry.publish(tmp_path / "other.gguf", "foreign")
    assert foreign.value.reason == "ADAPTER_BASE_MISMATCH"
    assert not (registry.root / "foreign.gguf").exists()  # a refused adapter is not left published
    _fake_adapter(tmp_path / "mine.gguf", "a" * 64)
    registry.publish(tmp_path / "mine.gguf", "v1")
    registry.publish(tmp_path / "mine.gguf", "v2")
    assert registry.resolve("latest").version == "v2"  # the newest good one; the broken file is skipped
    assert registry.resolve("none") is None
    with pytest.raises(InvalidArgument):
        registry.resolve("../etc/passwd")


@pytest.fixture
async def head(engine, model_path, taught_adapter, tmp_path):
    settings = load_settings(
        {"SPIRAL_PROFILE": "quick_test", "SPIRAL_HEAD_MAX_CONCURRENT": "32", "SPIRAL_HEAD_STREAM_FLUSH_MS": "0"}
    )
    registry = AdapterRegistry(tmp_path / "adapters", file_sha256(model_path))
    registry.publish(taught_adapter[1], "v1")
    pool = build_pool(settings, registry)
    runtime = create_server(
        settings, pool, head_pb2.BaseModel(sha256=registry.base_model_sha256), port=0, credentials=TEST_CREDENTIALS
    )
    await runtime.start()
    await pool.load(lambda: engine)
    await runtime.set_serving(True)
    channel = authorized_channel(f"127.0.0.1:{runtime.port}", TEST_CREDENTIALS.service_token)
    yield head_pb2_grpc.HeadServiceStub(channel), pool
    await pool.load_adapter("none", [], tracks=BOTH_TRACKS)  # the session's engine goes back to the base model
    await channel.close()
    await runtime.server.stop(None)


async def _answer(stub, prompt=SECRET_PROMPT, max_tokens=16, track="") -> tuple[str, head_pb2.GenerateEnd]:
    request = head_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=prompt)],
        params=chat_pb2.GenerationParams(max_tokens=max_tokens, temperature=0),
        track=track,
    )
    text, end = [], None
    async for message in stub.Generate(request):
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            end = message.end
    return "".join(text), end


async def test_a_real_adapter_changes_the_answer_and_reloading_back_restores_it_exactly(head):
    stub, _ = head
    await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="v1"))
    await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="none"))  # the base model, on a fresh context
    original, end = await _answer(stub)
    assert end.adapter_version == ""
    switched = await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="latest"))
    assert (switched.version, switched.heads[0]) == ("v1", "precise") and switched.load_latency_us > 0
    taught, end = await _answer(stub)
    assert end.adapter_version == "v1" and end.council_threshold == 0.85  # its job's calibration, for the router
    assert "pineapple" in taught.lower() and "pineapple" not in original.lower()
    back = await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="none"))
    assert back.previous_version == "v1"
    restored, end = await _answer(stub)
    assert restored == original and end.adapter_version == "" and not end.HasField("council_threshold")


async def test_a_canary_only_reload_leaves_main_on_its_adapter(head):
    stub, _ = head
    await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="v1", canary_only=True))
    info = await stub.GetHeadInfo(head_pb2.GetHeadInfoRequest())
    assert {(h.adapter_version, h.canary_adapter_version) for h in info.heads} == {("", "v1")}
    _, main = await _answer(stub, max_tokens=2, track="main")
    _, canary = await _answer(stub, max_tokens=2, track="canary")
    assert (main.adapter_version, canary.adapter_version) == ("", "v1")


@pytest.mark.parametrize(
    ("version", "code", "reason"),
    [
        ("v404", grpc.StatusCode.NOT_FOUND, "ADAPTER_NOT_FOUND"),
        ("bad name!", grpc.StatusCode.INVALID_ARGUMENT, "BAD_VERSION"),
    ],
)
async def test_bad_reloads_are_refused_and_nothing_changes(head, version, code, reason):
    stub, pool = head
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version=version))
    assert reason_of(caught.value)[:2] == (code, reason)
    assert pool.adapter_version("precise", Track.MAIN) == ""


async def test_twenty_streams_survive_ten_reloads(head):
    stub, pool = head

    async def stream(i: int):
        return await _answer(stub, prompt=f"{SECRET_PROMPT} ({i})", max_tokens=12)

    async def reloads():
        for n in range(10):
            await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="v1" if n % 2 == 0 else "none"))
            await asyncio.sleep(0.2)  # spread the reloads over the streams' lifetime

    results = await asyncio.gather(*(stream(i) for i in range(20)), reloads())
    answers = results[:20]
    assert all(end is not None and end.finish_reason != chat_pb2.FINISH_REASON_CANCELLED for _, end in answers)
    assert {end.adapter_version for _, end in answers} <= {"", "v1"}  # each wholly by one version
    assert all(text for text, _ in answers)
    assert pool.active == 0


def test_the_memory_guard_refuses_to_start_above_the_cap(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "head_svc"],
        env={
            **os.environ,
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_RUN_DIR": str(tmp_path),
            "SPIRAL_HEAD_MEMORY_CAP_MB": "20",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "over the cap of 20 MiB (SPIRAL_HEAD_MEMORY_CAP_MB)" in result.stderr
    assert "the model needs" in result.stderr


async def test_a_restarted_head_serves_again_what_each_track_served(engine, model_path, taught_adapter, tmp_path):
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    registry = AdapterRegistry(tmp_path / "adapters", file_sha256(model_path))
    registry.publish(taught_adapter[1], "v1")
    state = tmp_path / "run" / "head-serving.json"
    before = build_pool(settings, registry, state_path=state)
    await before.load(lambda: engine)
    await before.load_adapter("v1", [], tracks=(Track.CANARY,))
    assert state.stat().st_mode & 0o777 == 0o600
    after = build_pool(settings, registry, state_path=state)  # the process restarted
    saved = after.saved_state()
    await before.load_adapter("none", [], tracks=BOTH_TRACKS)  # the old process's adapter goes with it
    await after.load(lambda: engine)
    await after.restore({**saved, "precise/main": "v9"})  # a version since removed leaves its slot alone
    heads = list(after.heads)
    assert {after.adapter_version(h, Track.CANARY) for h in heads} == {"v1"}
    assert {after.adapter_version(h, Track.MAIN) for h in heads} == {""}
    await after.load_adapter("none", [], tracks=BOTH_TRACKS)


async def test_load_adapter_needs_a_token_and_switches_nothing_without_one(
    engine, model_path, taught_adapter, tmp_path
):
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    registry = AdapterRegistry(tmp_path / "adapters", file_sha256(model_path))
    registry.publish(taught_adapter[1], "v1")
    pool = build_pool(settings, registry)
    base = head_pb2.BaseModel(sha256=registry.base_model_sha256)
    runtime = create_server(settings, pool, base, port=0, credentials=TEST_CREDENTIALS)
    await runtime.start()
    await pool.load(lambda: engine)
    address = f"127.0.0.1:{runtime.port}"
    try:
        for token in ("", "wrong-token"):
            async with authorized_channel(address, token) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await head_pb2_grpc.HeadServiceStub(channel).LoadAdapter(head_pb2.LoadAdapterRequest(version="v1"))
            assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS")
        assert {pool.adapter_version(h, t) for h in pool.heads for t in BOTH_TRACKS} == {""}  # nothing switched
        async with authorized_channel(address, TEST_CREDENTIALS.admin_token) as channel:  # an operator may
            stub = head_pb2_grpc.HeadServiceStub(channel)
            assert (await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="v1"))).version == "v1"
            await stub.LoadAdapter(head_pb2.LoadAdapterRequest(version="none"))
    finally:
        await runtime.server.stop(None)
