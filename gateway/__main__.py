"""Runs the REST gateway: `python -m gateway` (uvicorn on SPIRAL_GATEWAY_ADDR)."""

from __future__ import annotations

import sys

import uvicorn

from gateway.app import create_app
from spiral_common.config import ConfigError, load_settings
from spiral_common.logs import configure_logging


def main() -> None:
    settings = load_settings()
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway.gateway_addr.host,
        port=settings.gateway.gateway_addr.port,
        log_config=None,  # keep the JSON lines configured above
        access_log=False,  # requests are counted in /metrics; errors are logged
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        sys.exit(2)
