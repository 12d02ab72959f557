"""Adapters that travel: a head pulls a published adapter from the trainer (FetchAdapter, service token) into
its cache, loads it only once it matches the registry's record and the base model, and every head replica
follows the shared record of what each head and track serves."""

from __future__ import annotations

import pytest

from head_svc.adapter_fetch import TrainerAdapterFetcher
from head_svc.heads import HeadPool
from head_svc.serving_sync import converge
from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.adapters import AdapterRegistry
from spiral_common.enums import BOTH_TRACKS, Track
from spiral_common.errors import FailedPrecondition, SpiralError
from spiral_common.grpc_service import build_server
from spiral_common.specs import HeadSpec
from tests.head.test_adapters import _fake_adapter
from tests.helpers import TEST_CREDENTIALS
from trainer_svc.servicer import TrainerServicer

BASE = "a" * 64
SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


@pytest.fixture
async def trainer(tmp_path):
    """The trainer's FetchAdapter over a registry holding v1 and v2, protected as the trainer protects it."""
    registry = AdapterRegistry(tmp_path / "registry", BASE)
    _fake_adapter(tmp_path / "a.gguf", BASE)
    registry.publish(tmp_path / "a.gguf", "v1")
    registry.publish(tmp_path / "a.gguf", "v2")
    runtime = build_server(
        domain="trainer.spiral",
        host="127.0.0.1",
        port=0,
        service_names=[SERVICE],
        add_servicers=lambda s: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(
            TrainerServicer(None, registry),  # type: ignore[arg-type]  # FetchAdapter needs no queue
            s,
        ),
        protected=[f"/{SERVICE}/FetchAdapter"],
        credentials=TEST_CREDENTIALS,
    )
    await runtime.start()
    import grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    yield channel, registry
    await channel.close()
    await runtime.server.stop(None)


def _fetcher(channel, tmp_path, base=BASE, token=TEST_CREDENTIALS.service_token):
    cache = AdapterRegistry(tmp_path / f"cache-{base[:1]}-{bool(token)}", base)
    return TrainerAdapterFetcher(channel, cache, token), cache


async def test_a_head_pulls_the_latest_adapter_verifies_it_and_keeps_it(trainer, tmp_path):
    channel, registry = trainer
    fetch, cache = _fetcher(channel, tmp_path)
    assert await fetch("latest") == "v2"
    assert (cache.root / "v2.gguf").read_bytes() == (registry.root / "v2.gguf").read_bytes()
    assert cache.sha256("v2") == registry.sha256("v2")
    assert cache.resolve("latest").version == "v2"
    assert await fetch("v1") == "v1"
    assert await fetch("none") == "none"  # the base model: nothing to pull


async def test_without_the_service_token_nothing_is_sent(trainer, tmp_path):
    channel, _ = trainer
    fetch, cache = _fetcher(channel, tmp_path, token="")
    with pytest.raises(SpiralError) as refused:
        await fetch("v1")
    assert refused.value.reason == "BAD_CREDENTIALS"
    assert list(cache.root.iterdir()) == []


async def test_a_file_that_does_not_match_its_record_is_never_cached(trainer, tmp_path):
    channel, registry = trainer
    (registry.root / "v1.gguf.sha256").write_text("0" * 64 + "\n")  # the file changed after publication
    fetch, cache = _fetcher(channel, tmp_path)
    with pytest.raises(FailedPrecondition) as mismatch:
        await fetch("v1")
    assert mismatch.value.reason == "ADAPTER_CHECKSUM_MISMATCH"
    assert list(cache.root.iterdir()) == []


async def test_an_adapter_for_another_base_model_is_refused_and_not_kept(trainer, tmp_path):
    channel, _ = trainer
    fetch, cache = _fetcher(channel, tmp_path, base="b" * 64)
    with pytest.raises(FailedPrecondition) as foreign:
        await fetch("v1")
    assert foreign.value.reason == "ADAPTER_BASE_MISMATCH"
    assert not (cache.root / "v1.gguf").exists()


class AdapterEngine:
    """Loads any adapter file (a handle is its path) and generates nothing."""

    context_tokens = 1024

    def load_adapter(self, path):
        return str(path)

    def free_adapter(self, handle):
        pass


class MemoryRecord:
    def __init__(self) -> None:
        self.serving: dict[str, str] = {}

    async def desired(self) -> dict[str, str]:
        return dict(self.serving)

    async def record(self, serving: dict[str, str]) -> None:
        self.serving.update(serving)


async def test_a_switch_on_one_head_replica_reaches_the_others_and_one_started_later(trainer, tmp_path):
    channel, _ = trainer
    record = MemoryRecord()

    async def replica(name: str) -> HeadPool:
        fetch, cache = _fetcher(channel, tmp_path / name)
        pool = HeadPool([HeadSpec("precise", "Be precise.")], 4, registry=cache, fetch=fetch)
        await pool.load(lambda: AdapterEngine())
        return pool

    first, second = await replica("a"), await replica("b")
    # Envoy gives the switch to one replica, which records it (as HeadServicer.LoadAdapter does).
    version, heads, _ = await first.load_adapter("latest", [], tracks=(Track.CANARY,))
    await record.record({f"{h}/{Track.CANARY.label}": version for h in heads})
    assert second.adapter_version("precise", Track.CANARY) == ""
    await converge(second, record)
    assert second.adapter_version("precise", Track.CANARY) == "v2"
    assert second.adapter_version("precise", Track.MAIN) == ""  # only what was switched
    later = await replica("c")
    await converge(later, record)
    assert [later.adapter_version("precise", t) for t in BOTH_TRACKS] == ["", "v2"]
