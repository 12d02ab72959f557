"""Runs the head service: `python -m head_svc` (config from SPIRAL_* variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import grpc

from head_svc import memory
from head_svc.adapter_fetch import TrainerAdapterFetcher
from head_svc.server import build_pool, create_server
from head_svc.serving_sync import converge, follow
from spiral.head.v1 import head_pb2
from spiral_common import redis_access
from spiral_common.adapters import AdapterRegistry
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.enums import BOTH_TRACKS
from spiral_common.errors import SpiralError
from spiral_common.grpc_service import run_event_loop, serve_until_signalled, service_registry, start_metrics_server
from spiral_common.llama_engine import LlamaEngine
from spiral_common.logs import configure_logging
from spiral_common.model_files import file_sha256, resolve_model_path
from spiral_common.serving import RedisServingRecord
from spiral_common.specs import secret

log = logging.getLogger("head_svc")


async def main(settings: Settings) -> None:
    configure_logging("head", settings.log_level)
    model_path = resolve_model_path(settings.head.model_path)
    base_model = head_pb2.BaseModel(
        path=str(model_path),
        sha256=file_sha256(model_path),
        size_bytes=model_path.stat().st_size,
        context_tokens=settings.head.head_context_tokens,
    )
    trainer_channel = grpc.aio.insecure_channel(settings.trainer.trainer_addr)
    fetch = None
    if settings.head.head_adapter_source == "trainer":
        # Heads on other hosts: each version is pulled from the trainer into this head's cache, and checked.
        registry = AdapterRegistry(settings.head_adapter_cache_path, base_model.sha256)
        fetch = TrainerAdapterFetcher(trainer_channel, registry, secret("SPIRAL_SERVICE_TOKEN"))
    else:
        registry = AdapterRegistry(settings.adapters_path, base_model.sha256)
    redis = redis_access.connect(settings, "head")
    serving = RedisServingRecord(redis, settings.redis.redis_prefix)
    pool = build_pool(settings, registry, state_path=settings.run_path / "head-serving.json", fetch=fetch)
    start_adapters = {spec.adapter for spec in pool.heads.values() if spec.adapter}
    if fetch is not None:
        start_adapters = {await fetch(version) for version in start_adapters}  # the memory plan reads the files
    plan = memory.plan(
        model_path,
        [info.path for info in (registry.resolve(v) for v in start_adapters) if info],
        context_tokens=settings.head.head_context_tokens,
        gpu_layers=settings.head.head_gpu_layers,
        cpu_cap_mb=settings.head.head_memory_cap_mb,
        gpu_cap_mb=settings.head.head_gpu_memory_cap_mb,
    )
    memory.check(plan)  # the loader refuses to start above the cap
    metrics = service_registry()
    memory.export_metrics(metrics, plan)
    runtime = create_server(settings, pool, base_model, metrics=metrics, serving=serving)
    start_metrics_server(runtime.registry, settings.head.head_metrics_addr.host, settings.head.head_metrics_addr.port)
    await runtime.start()
    log.info(
        "loading model",
        extra={
            "path": str(model_path),
            "sha256": base_model.sha256,
            "needed_mib": plan.needed_bytes // 2**20,
            "cap_mib": plan.cap_bytes // 2**20,
        },
    )
    await pool.load(
        lambda: LlamaEngine(
            model_path,
            context_tokens=settings.head.head_context_tokens,
            threads=settings.head.head_threads,
            gpu_layers=settings.head.head_gpu_layers,
        )
    )
    served_before = pool.saved_state()
    for spec in pool.heads.values():
        if spec.adapter:
            await pool.load_adapter(spec.adapter, [spec.name], tracks=BOTH_TRACKS)
    await pool.restore(served_before)  # what was served before a restart wins over heads.json: it came later
    # ... and what the other replicas serve now wins over both: a head that starts later catches up.
    await converge(pool, serving)
    log.info("model loaded")
    syncing = (
        asyncio.create_task(follow(pool, serving, settings.head.head_adapter_sync_s))
        if settings.head.head_adapter_sync_s
        else None
    )

    async def close() -> None:
        if syncing is not None:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
        pool.close()
        await trainer_channel.close()
        await redis.aclose()

    await serve_until_signalled(runtime, settings.shutdown_grace_s, on_stop=close)


if __name__ == "__main__":
    try:
        settings = load_settings()
        run_event_loop(main(settings), settings.event_loop)
    except (ConfigError, SpiralError, memory.MemoryCapExceeded) as exc:
        print(f"head_svc: {exc}", file=sys.stderr)
        sys.exit(2)
