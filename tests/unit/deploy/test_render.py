"""Envoy and supervisord configs rendered from a profile: valid for Envoy, and true to the profile."""

import configparser
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.render import FATAL_CONFIG_EXIT, render_envoy, render_supervisord
from spiral_common import canary
from spiral_common.config import load_settings
from spiral_common.errors import InvalidArgument

ENVOY = str(Path(sys.executable).parent / "envoy")


@pytest.mark.parametrize("profile", ["default", "quick_test"])
def test_envoy_validates_every_rendered_profile(profile, tmp_path):
    settings = load_settings({"SPIRAL_PROFILE": profile, "SPIRAL_RUN_DIR": str(tmp_path)})
    config = tmp_path / "envoy.yaml"
    config.write_text(render_envoy(settings))
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(config), "--use-dynamic-base-id", "--log-level", "error"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _routes(config: dict, listener: str = "grpc_ingress") -> list[dict]:
    found = next(x for x in config["static_resources"]["listeners"] if x["name"] == listener)
    manager = found["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["route_config"]["virtual_hosts"][0]["routes"]


def _route(config: dict, prefix: str, listener: str = "grpc_ingress") -> dict:
    return next(r for r in _routes(config, listener) if r["match"].get("prefix") == prefix)


ROUTER_CLIENT_RPCS = "/spiral.router.v1.RouterService/"


def test_router_traffic_is_split_by_runtime_weights_without_route_timeout(tmp_path):
    settings = load_settings({"SPIRAL_RUN_DIR": str(tmp_path), "SPIRAL_CANARY_WEIGHT_PERCENT": "25"})
    config = yaml.safe_load(render_envoy(settings))
    route = _route(config, ROUTER_CLIENT_RPCS)["route"]
    split = route["weighted_clusters"]
    assert split["runtime_key_prefix"] == "spiral.routers"
    assert {c["name"]: c["weight"] for c in split["clusters"]} == {"main_first": 75, "canary_first": 25}
    assert route["timeout"] == "0s"  # streams must not hit the 15 s default
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for name in ("router_main", "router_canary"):
        assert clusters[name]["common_lb_config"]["healthy_panic_threshold"]["value"] == 0
        assert (
            clusters[name]["health_checks"][0]["grpc_health_check"]["service_name"] == "spiral.router.v1.RouterService"
        )
    # each side of the split falls over to the other router when its own has no healthy host
    assert clusters["canary_first"]["cluster_type"]["typed_config"]["clusters"] == ["router_canary", "router_main"]
    assert clusters["main_first"]["cluster_type"]["typed_config"]["clusters"] == ["router_main", "router_canary"]


def test_only_calls_no_router_saw_are_retried_and_on_the_other_router(tmp_path):
    config = yaml.safe_load(render_envoy(load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})))
    policy = _route(config, ROUTER_CLIENT_RPCS)["route"]["retry_policy"]
    # No gRPC status: NO_TIER_ANSWERED (UNAVAILABLE), overload (RESOURCE_EXHAUSTED) and DEADLINE_EXCEEDED are
    # a router's answers, which a retry would only repeat; a reset before any response (a dead router) is retried.
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset"}
    assert 1 <= policy["num_retries"] <= 2
    assert [p["name"] for p in policy["retry_host_predicate"]] == ["envoy.retry_host_predicates.previous_hosts"]
    assert policy["retry_priority"]["name"] == "envoy.retry_priorities.previous_priorities"


def test_every_route_honours_the_callers_grpc_timeout_and_streams_have_no_route_timeout(tmp_path):
    config = yaml.safe_load(render_envoy(load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})))
    routes = [r for listener in ("grpc_ingress", "grpc_internal") for r in _routes(config, listener) if "route" in r]
    assert len(routes) > 1
    for route in routes:
        assert route["route"]["timeout"] == "0s", route["match"]
        # 0s: the caller's grpc-timeout, uncapped, is the call's limit; a call without one has none.
        assert route["route"]["max_stream_duration"] == {"grpc_timeout_header_max": "0s"}, route["match"]


def test_a_set_weight_survives_a_restart(tmp_path, monkeypatch):
    settings = load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})
    sent = []
    monkeypatch.setattr(canary, "apply_to_envoy", lambda s, percent: sent.append(percent))
    assert canary.current_weight(settings) == 5
    assert canary.set_weight(settings, 0) == 5
    assert sent == [0]
    restarted = load_settings({"SPIRAL_RUN_DIR": str(tmp_path)})
    assert canary.current_weight(restarted) == 0
    split = _route(yaml.safe_load(render_envoy(restarted)), ROUTER_CLIENT_RPCS)["route"]["weighted_clusters"]
    assert {c["name"]: c["weight"] for c in split["clusters"]} == {"main_first": 100, "canary_first": 0}
    with pytest.raises(InvalidArgument):
        canary.set_weight(settings, 101)
    assert sent == [0]


def test_admin_is_a_unix_socket_only_its_owner_may_open_and_ports_come_from_the_profile(tmp_path):
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_RUN_DIR": str(tmp_path)})
    config = yaml.safe_load(render_envoy(settings))
    assert config["admin"]["address"] == {"pipe": {"path": str(tmp_path / "envoy-admin.sock"), "mode": 0o600}}
    # Over TCP, Envoy serves its statistics and readiness, nothing else of the admin interface.
    metrics = next(x for x in config["static_resources"]["listeners"] if x["name"] == "envoy_metrics")
    assert metrics["address"]["socket_address"]["port_value"] == settings.envoy.envoy_metrics_addr.port
    assert {r["match"]["path"] for r in _routes(config, "envoy_metrics")} == {"/stats/prometheus", "/ready"}
    head = next(c for c in config["static_resources"]["clusters"] if c["name"] == "head")
    address = head["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", settings.head.head_addr.port)


def _matched(routes: list[dict], path: str, headers: dict[str, str] | None = None) -> dict | None:
    """The route Envoy picks for a call (prefix, path and the regex this config uses; header presence)."""
    for route in routes:
        match = route["match"]
        if "prefix" in match and not path.startswith(match["prefix"]):
            continue
        if "path" in match and path != match["path"]:
            continue
        if "safe_regex" in match and not re.match(match["safe_regex"]["regex"], path):
            continue
        present = {h["name"]: h["present_match"] for h in match.get("headers", [])}
        if any((name in (headers or {})) != wanted for name, wanted in present.items()):
            continue
        return route
    return None


STATE_CHANGING = [
    "/spiral.head.v1.HeadService/LoadAdapter",
    "/spiral.trainer.v1.TrainerService/SubmitJob",
    "/spiral.trainer.v1.TrainerService/CancelJob",
    "/spiral.miner.v1.MinerService/Mine",
    "/spiral.router.v1.AdminService/SetCanaryWeight",
    "/spiral.router.v1.AdminService/ReloadAdapter",
]


def test_the_public_ingress_routes_client_and_read_only_calls_and_no_state_change(tmp_path):
    routes = _routes(yaml.safe_load(render_envoy(load_settings({"SPIRAL_RUN_DIR": str(tmp_path)}))))
    for path in [*STATE_CHANGING, "/spiral.head.v1.HeadService/Generate"]:
        assert _matched(routes, path, {"authorization": "Bearer x"}) is None, path
    for path in (
        "/spiral.router.v1.RouterService/Orchestrate",
        "/spiral.router.v1.RouterService/OrchestrateStream",
        "/grpc.health.v1.Health/Check",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/spiral.miner.v1.MinerService/ListPatterns",
    ):
        assert _matched(routes, path) is not None, path


def test_the_internal_listener_refuses_a_call_without_a_token_and_routes_one_with_it(tmp_path):
    routes = _routes(yaml.safe_load(render_envoy(load_settings({"SPIRAL_RUN_DIR": str(tmp_path)}))), "grpc_internal")
    for path in [*STATE_CHANGING, "/spiral.head.v1.HeadService/Generate"]:
        assert _matched(routes, path)["direct_response"]["status"] == 401, path
        assert "route" in _matched(routes, path, {"authorization": "Bearer x"}), path
    assert "route" in _matched(routes, "/grpc.health.v1.Health/Check")  # health and reflection need no token


def test_the_heads_are_a_balanced_health_checked_cluster_of_every_endpoint(tmp_path):
    settings = load_settings(
        {"SPIRAL_RUN_DIR": str(tmp_path), "SPIRAL_HEAD_ENDPOINTS": "10.77.0.3:50061, 10.77.0.4:50062"}
    )
    config = yaml.safe_load(render_envoy(settings))
    head = next(c for c in config["static_resources"]["clusters"] if c["name"] == "head")
    endpoints = [
        e["endpoint"]["address"]["socket_address"] for e in head["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert [(e["address"], e["port_value"]) for e in endpoints] == [("10.77.0.3", 50061), ("10.77.0.4", 50062)]
    assert (head["type"], head["lb_policy"]) == ("STATIC", "LEAST_REQUEST")
    assert head["health_checks"][0]["grpc_health_check"]["service_name"] == "spiral.head.v1.HeadService"
    # Ejected when Envoy cannot reach it; never for a gRPC status the head answered (a lone head would be gone).
    outliers = head["outlier_detection"]
    assert outliers["split_external_local_origin_errors"] and outliers["consecutive_local_origin_failure"] >= 1
    assert outliers["enforcing_consecutive_5xx"] == outliers["enforcing_consecutive_gateway_failure"] == 0
    policy = _route(config, "/spiral.head.v1.", "grpc_internal")["route"]["retry_policy"]
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset", "unavailable"}
    assert [p["name"] for p in policy["retry_host_predicate"]] == ["envoy.retry_host_predicates.previous_hosts"]
    # a DNS name (a Kubernetes headless Service) is resolved to every address it has
    named = load_settings({"SPIRAL_RUN_DIR": str(tmp_path), "SPIRAL_HEAD_ENDPOINTS": "spiral-head.ns.svc:50061"})
    head = next(c for c in yaml.safe_load(render_envoy(named))["static_resources"]["clusters"] if c["name"] == "head")
    assert head["type"] == "STRICT_DNS"


def test_each_cluster_points_at_its_service_address():
    settings = load_settings({"SPIRAL_HEAD_ADDR": "10.1.2.3:7001", "SPIRAL_ROUTER_CANARY_ADDR": "canary.internal:7002"})
    clusters = {c["name"]: c for c in yaml.safe_load(render_envoy(settings))["static_resources"]["clusters"]}

    def endpoint(name: str) -> tuple[str, int]:
        lb = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        address = lb["endpoint"]["address"]["socket_address"]
        return address["address"], address["port_value"]

    assert endpoint("head") == ("10.1.2.3", 7001)
    assert endpoint("router_canary") == ("canary.internal", 7002)
    assert endpoint("router_main") == ("127.0.0.1", 50051)
    assert endpoint("trainer") == ("127.0.0.1", 50071)
    # an IP address is a STATIC endpoint; a host name is resolved by DNS
    assert (clusters["head"]["type"], clusters["router_canary"]["type"]) == ("STATIC", "STRICT_DNS")


def test_supervisord_runs_every_service_and_passes_the_settings():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    conf = render_supervisord(settings, sys.executable)
    for program in ("redis", "envoy", "head", "router-main", "router-canary", "trainer", "miner", "gateway"):
        assert f"[program:{program}]" in conf
    assert f'SPIRAL_HEAD_ADDR="{settings.head.head_addr}"' in conf
    assert 'SPIRAL_TRACK="canary"' in conf


def _program_section(conf: str, name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(conf)
    return dict(parser[f"program:{name}"])


def test_a_service_failing_on_its_config_is_not_restarted_in_a_loop():
    conf = render_supervisord(load_settings({"SPIRAL_PROFILE": "quick_test"}), sys.executable)
    for program in ("head", "router-main", "router-canary", "trainer", "miner", "gateway", "watchdog"):
        section = _program_section(conf, program)
        # exit 2 (fatal configuration) is expected: supervisord leaves it EXITED instead of restarting it
        assert (section["autorestart"], section["exitcodes"]) == ("unexpected", str(FATAL_CONFIG_EXIT)), program
        # a crash within startsecs is retried a few times with back-off, then FATAL
        assert int(section["startsecs"]) >= 1 and 1 <= int(section["startretries"]) <= 5, program
    for program in ("redis", "envoy", "prometheus"):
        assert _program_section(conf, program)["autorestart"] == "true"


def test_the_watchdog_runs_unless_its_interval_is_zero():
    watched = render_supervisord(load_settings({"SPIRAL_PROFILE": "quick_test"}), sys.executable)
    assert "-m deploy.watchdog" in _program_section(watched, "watchdog")["command"]
    off = render_supervisord(
        load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_LIVENESS_INTERVAL_S": "0"}), sys.executable
    )
    assert "[program:watchdog]" not in off


def test_the_run_directory_and_its_files_are_the_owners_alone(tmp_path):
    from deploy.render import render_all

    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_RUN_DIR": str(tmp_path / "run")})
    (tmp_path / "run").mkdir(mode=0o755)
    (tmp_path / "run" / "envoy.yaml").write_text("old")
    (tmp_path / "run" / "envoy.yaml").chmod(0o644)  # from before: made private too
    run = render_all(settings)
    for path in [run, *run.rglob("*")]:
        assert path.stat().st_mode & 0o077 == 0, path
    assert "umask=077" in (run / "supervisord.conf").read_text()


def test_two_redis_servers_run_money_and_jobs_apart_from_the_evictable_cache():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    conf = render_supervisord(settings, sys.executable)
    state, cache = _program_section(conf, "redis")["command"], _program_section(conf, "redis-cache")["command"]
    assert "--maxmemory-policy noeviction" in state and "--appendonly yes" in state
    assert "--maxmemory-policy allkeys-lru" in cache and "--appendonly no" in cache
    assert f"--port {settings.redis.redis_cache_addr.port}" in cache
    assert f"{settings.run_path}/redis.acl" in state and f"{settings.run_path}/redis-cache.acl" in cache


def test_each_redis_user_gets_a_password_and_the_acl_files_hold_only_their_hashes(tmp_path):
    from deploy.render import render_all
    from spiral_common.redis_access import USERS, password_variable
    from spiral_common.specs import secret

    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_RUN_DIR": str(tmp_path / "run")})
    run = render_all(settings)
    env = {"SPIRAL_ENV_FILE": str(run / "secrets.env")}
    passwords = {user: secret(password_variable(user), env) for user in USERS}
    assert all(len(p) >= 32 for p in passwords.values())
    state, cache = (run / "redis.acl").read_text(), (run / "redis-cache.acl").read_text()
    assert "user default off" in state and "user default off" in cache
    assert "user miner " in state and "user miner " not in cache  # the cache server: routers and operators only
    assert not any(p in state or p in cache for p in passwords.values())
    assert render_all(settings) and (run / "secrets.env").read_text().count("SPIRAL_REDIS_ROUTER_PASSWORD=") == 1


def test_the_kubernetes_acl_files_are_rendered_from_a_secrets_file(tmp_path, capsys):
    from deploy.redis_acl import main
    from spiral_common.redis_access import USERS, password_variable

    secrets_env = tmp_path / "secrets.env"
    secrets_env.write_text("".join(f"{password_variable(user)}=pw-{user}\n" for user in USERS))
    assert main(["--secrets", str(secrets_env), "--out", str(tmp_path / "acl")]) == 0
    for name in ("redis.acl", "redis-cache.acl"):
        path = tmp_path / "acl" / name
        assert path.stat().st_mode & 0o777 == 0o600 and "user default off" in path.read_text()
    secrets_env.write_text("SPIRAL_REDIS_ROUTER_PASSWORD=x\n")
    assert main(["--secrets", str(secrets_env), "--out", str(tmp_path / "acl")]) == 2
    assert "SPIRAL_REDIS_MINER_PASSWORD" in capsys.readouterr().err
