"""Runs the trainer: `python -m trainer_svc` (gRPC service, job worker and scheduler in one process)."""

from __future__ import annotations

import asyncio
import sys

from spiral_common import redis_access
from spiral_common.config import ConfigError, load_settings
from spiral_common.grpc_service import serve_until_signalled, start_metrics_server
from spiral_common.logs import configure_logging
from spiral_common.model_files import resolve_model_path
from spiral_common.specs import secret
from trainer_svc.publish import AdminPublisher
from trainer_svc.server import TrainerDeps, create_trainer


async def main() -> None:
    settings = load_settings()
    configure_logging("trainer", settings.log_level)
    redis = redis_access.connect(settings, "trainer")
    publisher = AdminPublisher(settings.envoy.envoy_internal_addr, secret("SPIRAL_ADMIN_TOKEN"))
    deps = TrainerDeps(
        redis=redis,
        publisher=publisher,
        model_path=resolve_model_path(settings.head.model_path),
        miner_address=settings.envoy.envoy_internal_addr,
    )
    trainer = create_trainer(settings, deps)
    start_metrics_server(
        trainer.runtime.registry, settings.trainer.trainer_metrics_addr.host, settings.trainer.trainer_metrics_addr.port
    )
    await trainer.start()

    async def close() -> None:
        await trainer.stop()
        await publisher.close()
        await redis.aclose()

    await serve_until_signalled(trainer.runtime, settings.shutdown_grace_s, on_stop=close)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"trainer_svc: {exc}", file=sys.stderr)
        sys.exit(2)
