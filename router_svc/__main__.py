"""Runs the router of one track: `python -m router_svc` (SPIRAL_TRACK picks main or canary)."""

from __future__ import annotations

import logging
import sys

import grpc

from router_svc.cloud import OpenAICompatibleClient
from router_svc.heads_client import GrpcHeadClient
from router_svc.server import RouterDeps, create_server
from spiral_common import redis_access
from spiral_common.config import ConfigError, Settings, load_settings
from spiral_common.embedding import single_threaded_blas
from spiral_common.enums import Track
from spiral_common.grpc_service import run_event_loop, serve_until_signalled, start_metrics_server
from spiral_common.logs import configure_logging
from spiral_common.specs import load_providers, secret

log = logging.getLogger("router_svc")


async def main(settings: Settings) -> None:
    configure_logging(f"router-{settings.router.track}", settings.log_level)
    single_threaded_blas()  # the pattern tier's matching: see the function
    providers = load_providers(settings.cloud.cloud_providers_file)
    keys = {p.name: secret(p.api_key_env) for p in providers}
    usable = [p for p in providers if keys[p.name]]
    for provider in providers:
        if not keys[provider.name]:
            log.warning(
                "cloud provider disabled: %s is not set", provider.api_key_env, extra={"provider": provider.name}
            )
    # The heads are reached through Envoy's internal listener: its head cluster balances over every replica.
    channel = grpc.aio.insecure_channel(settings.envoy.envoy_internal_addr)
    redis = redis_access.connect(settings, "router")
    cache_redis = redis_access.connect(settings, "router", redis_access.Instance.CACHE)
    deps = RouterDeps(
        heads=GrpcHeadClient(
            channel,
            settings.router.head_deadline_s,
            track=Track.from_label(settings.router.track),
            service_token=secret("SPIRAL_SERVICE_TOKEN"),
        ),
        redis=redis,
        cache_redis=cache_redis,
        cloud_client=OpenAICompatibleClient(
            keys, usable, timeout_s=settings.cloud.cloud_timeout_s, stall_timeout_s=settings.cloud.cloud_stall_timeout_s
        ),
        providers=usable,
        admin_token=secret("SPIRAL_ADMIN_TOKEN"),
    )
    runtime = create_server(settings, deps)
    start_metrics_server(
        runtime.registry,
        settings.router.router_metrics_addr(settings.router.track).host,
        settings.router.router_metrics_addr(settings.router.track).port,
    )
    await runtime.start()

    async def close() -> None:
        await channel.close()
        await redis.aclose()
        await cache_redis.aclose()

    await serve_until_signalled(runtime, settings.shutdown_grace_s, on_stop=close)


if __name__ == "__main__":
    try:
        settings = load_settings()
        run_event_loop(main(settings), settings.event_loop)
    except ConfigError as exc:
        print(f"router_svc: {exc}", file=sys.stderr)
        sys.exit(2)
