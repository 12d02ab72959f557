"""Runs the miner service: `python -m miner_svc`."""

from __future__ import annotations

import sys

from miner_svc.server import MinerDeps, create_server
from spiral_common import redis_access
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.embedding import SentenceEncoder, single_threaded_blas
from spiral_common.grpc_service import run_event_loop, serve_until_signalled, start_metrics_server
from spiral_common.logs import configure_logging


async def main(settings: Settings) -> None:
    configure_logging("miner", settings.log_level)
    single_threaded_blas()  # MatchPrompt; and mining shares the box with the routers and the heads
    redis = redis_access.connect(settings, "miner")
    encoder = SentenceEncoder(threads=settings.miner.miner_embed_threads)
    runtime = create_server(settings, MinerDeps(redis=redis, encoder=encoder))
    start_metrics_server(
        runtime.registry, settings.miner.miner_metrics_addr.host, settings.miner.miner_metrics_addr.port
    )
    await runtime.start()

    async def close() -> None:
        await redis.aclose()

    await serve_until_signalled(runtime, settings.shutdown_grace_s, on_stop=close)


if __name__ == "__main__":
    try:
        settings = load_settings()
        run_event_loop(main(settings), settings.event_loop)
    except ConfigError as exc:
        print(f"miner_svc: {exc}", file=sys.stderr)
        sys.exit(2)
