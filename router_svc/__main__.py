"""Runs a router instance: `python -m router_svc` (SPIRAL_ROUTER_INSTANCE picks main or canary)."""

from __future__ import annotations

import asyncio
import sys

import grpc

from router_svc.heads_client import GrpcHeadClient
from router_svc.server import create_server
from spiral_common.config import ConfigError, load_settings
from spiral_common.grpc_service import serve_until_signalled, start_metrics_server
from spiral_common.logs import configure_logging


async def main() -> None:
    settings = load_settings()
    configure_logging(f"router-{settings.router_instance}", settings.log_level)
    channel = grpc.aio.insecure_channel(settings.head_address)
    runtime = create_server(settings, GrpcHeadClient(channel, settings.head_deadline_s))
    start_metrics_server(runtime.registry, settings.host, settings.router_metrics_port(settings.router_instance))
    await runtime.start()
    await serve_until_signalled(runtime, settings.shutdown_grace_s, on_stop=channel.close)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except ConfigError as exc:
        print(f"router_svc: {exc}", file=sys.stderr)
        sys.exit(2)
