"""Envoy and supervisord configs rendered from a profile: valid for Envoy, and true to the profile."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.render import render_envoy, render_supervisord
from spiral_common.config import load_settings

ENVOY = str(Path(sys.executable).parent / "envoy")


@pytest.mark.parametrize("profile", ["default", "quick_test"])
def test_envoy_validates_every_rendered_profile(profile, tmp_path):
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy(load_settings({"SPIRAL_PROFILE": profile})))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "--log-level", "error"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _route(config: dict, prefix: str) -> dict:
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    return next(r for r in routes if r["match"]["prefix"] == prefix)


def test_router_traffic_is_split_by_the_profile_weight_without_route_timeout():
    settings = load_settings({"SPIRAL_CANARY_WEIGHT_PERCENT": "25"})
    config = yaml.safe_load(render_envoy(settings))
    route = _route(config, "/spiral.router.v1.")["route"]
    weights = {c["name"]: c["weight"] for c in route["weighted_clusters"]["clusters"]}
    assert weights == {"router_main": 75, "router_canary": 25}
    assert route["timeout"] == "0s"  # streams must not hit the 15 s default


def test_admin_listens_on_loopback_and_ports_come_from_the_profile():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    config = yaml.safe_load(render_envoy(settings))
    admin = config["admin"]["address"]["socket_address"]
    assert (admin["address"], admin["port_value"]) == ("127.0.0.1", settings.envoy_admin_port)
    ports = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"][
            "port_value"
        ]
        for c in config["static_resources"]["clusters"]
    }
    assert ports["router_main"] == settings.router_main_port
    assert ports["router_canary"] == settings.router_canary_port
    assert ports["head"] == settings.head_port


def test_supervisord_runs_every_service_and_passes_the_settings():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    conf = render_supervisord(settings, sys.executable)
    for program in ("redis", "envoy", "head", "router-main", "router-canary", "trainer", "miner", "gateway"):
        assert f"[program:{program}]" in conf
    assert f'SPIRAL_HEAD_PORT="{settings.head_port}"' in conf
    assert 'SPIRAL_ROUTER_INSTANCE="canary"' in conf
