"""Runs the trainer: `python -m trainer_svc` (gRPC service, job worker and scheduler in one process)."""

from __future__ import annotations

import sys

from spiral_common import redis_access
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.grpc_service import run_event_loop, serve_until_signalled, start_metrics_server
from spiral_common.logs import configure_logging
from spiral_common.model_files import resolve_model_path
from spiral_common.specs import secret
from trainer_svc.publish import AdminPublisher
from trainer_svc.server import TrainerDeps, create_trainer


async def main(settings: Settings) -> None:
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
        settings = load_settings()
        run_event_loop(main(settings), settings.event_loop)
    except ConfigError as exc:
        print(f"trainer_svc: {exc}", file=sys.stderr)
        sys.exit(2)
