"""The head service in-process on port 0, over the session's llama.cpp engine (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import grpc

from head_svc.heads import HeadPool
from head_svc.server import build_pool, create_server
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.config import load_settings

BASE = head_pb2.BaseModel(path="embedded", sha256="0" * 64)


@asynccontextmanager
async def running_head(
    engine: object, max_concurrent: int
) -> AsyncIterator[tuple[head_pb2_grpc.HeadServiceStub, HeadPool]]:
    """A serving head (quick_test settings, `max_concurrent` generations) and its pool; stopped on exit."""
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_HEAD_MAX_CONCURRENT": str(max_concurrent)})
    pool = build_pool(settings)
    runtime = create_server(settings, pool, BASE, port=0)
    await runtime.start()
    load: Callable[[], object] = lambda: engine  # noqa: E731
    await pool.load(load)
    await runtime.set_serving(True)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
    try:
        yield head_pb2_grpc.HeadServiceStub(channel), pool
    finally:
        await channel.close()
        await runtime.server.stop(None)
