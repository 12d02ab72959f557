"""The whole platform as real processes (Redis, Envoy, routers, head, trainer, miner, gateway) on free ports."""

from __future__ import annotations

import os

import pytest

from deploy.platform import Platform, free_port_env
from spiral_common.config import load_settings


@pytest.fixture(scope="session")
def platform(tmp_path_factory):
    env = {"SPIRAL_PROFILE": "quick_test", "SPIRAL_RUN_DIR": str(tmp_path_factory.mktemp("platform"))}
    env.update(free_port_env())
    settings = load_settings(env)
    running = Platform(settings)
    try:
        running.start(timeout_s=120)
    except Exception:
        running.stop()
        raise
    pids = [p["pid"] for p in running.processes().values()]
    yield running
    running.stop()
    for pid in pids:  # `make down` leaves no process behind
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        pytest.fail(f"process {pid} survived the platform's stop")


@pytest.fixture(scope="session")
def gateway_url(platform):
    return f"http://{platform.settings.gateway.gateway_addr}"
