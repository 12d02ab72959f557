"""Settings come from the profile and the environment, and a bad value names its variable."""

import pytest

from spiral_common.config import ConfigError, Settings, load_settings, settings_env


def test_default_profile_is_the_embedded_defaults():
    settings = load_settings({})
    assert settings == Settings(run_dir="run/default")
    assert (settings.gateway.gateway_addr, settings.envoy.envoy_addr, settings.envoy.envoy_internal_addr) == (
        "127.0.0.1:8080",
        "127.0.0.1:10000",
        "127.0.0.1:10001",
    )
    assert settings.envoy_admin_path == settings.run_path / "envoy-admin.sock"
    assert settings.head.endpoints == [settings.head.head_addr]
    assert settings.envoy.canary_weight_percent == 5


def test_environment_overrides_the_profile():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_GATEWAY_ADDR": "0.0.0.0:18080"})
    assert settings.profile == "quick_test"
    assert (settings.gateway.gateway_addr.host, settings.gateway.gateway_addr.port) == ("0.0.0.0", 18080)
    assert settings.limits.default_max_tokens == 32  # from deploy/profiles/quick_test.env
    assert settings.head.head_addr == "127.0.0.1:25061"
    assert settings.run_dir == "run/quick_test"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SPIRAL_HEAD_ADDR": "not-an-address"}, "SPIRAL_HEAD_ADDR"),
        ({"SPIRAL_HEAD_ADDR": "127.0.0.1:http"}, "SPIRAL_HEAD_ADDR"),
        ({"SPIRAL_HEAD_ADDR": "127.0.0.1:70000"}, "SPIRAL_HEAD_ADDR"),
        ({"SPIRAL_GATEWAY_ADDR": "127.0.0.1:0"}, "SPIRAL_GATEWAY_ADDR"),
        ({"SPIRAL_ENVOY_ADMIN_ADDR": "0.0.0.0:9901"}, "SPIRAL_ENVOY_ADMIN_SOCKET"),  # replaced by the socket
        ({"SPIRAL_HEAD_ENDPOINTS": "10.0.0.1:50061,nope"}, "SPIRAL_HEAD_ENDPOINTS"),
        ({"SPIRAL_HEAD_PORT": "50061"}, "SPIRAL_HEAD_PORT"),  # replaced by SPIRAL_HEAD_ADDR: not silently ignored
        ({"SPIRAL_CANARY_WEIGHT_PERCENT": "101"}, "SPIRAL_CANARY_WEIGHT_PERCENT"),
        ({"SPIRAL_DEFAULT_TEMPERATURE": "hot"}, "SPIRAL_DEFAULT_TEMPERATURE"),
        ({"SPIRAL_TRACK": "blue"}, "SPIRAL_TRACK"),
        ({"SPIRAL_ROUTER_INSTANCE": "main"}, "SPIRAL_TRACK"),
        ({"SPIRAL_DEFAULT_MAX_TOKENS": "5000"}, "SPIRAL_DEFAULT_MAX_TOKENS"),
        ({"SPIRAL_PROFILE": "nope"}, "SPIRAL_PROFILE"),
        ({"SPIRAL_PATTERN_MAX_ERROR": "0"}, "SPIRAL_PATTERN_MAX_ERROR"),
        ({"SPIRAL_PATTERN_MAX_ERROR": "1"}, "SPIRAL_PATTERN_MAX_ERROR"),
        ({"SPIRAL_MINER_TARGET_PRECISION": "0.975"}, "SPIRAL_PATTERN_MAX_ERROR"),  # replaced: says by what
        ({"SPIRAL_EVENT_LOOP": "trio"}, "SPIRAL_EVENT_LOOP"),
    ],
)
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_settings_are_frozen_and_round_trip_through_the_environment():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_HEAD_SYSTEM_PROMPT": 'Say "hi", 100%'})
    with pytest.raises(AttributeError):
        settings.head.head_addr = "127.0.0.1:1"  # type: ignore[misc]
    assert load_settings(settings_env(settings)) == settings


def test_a_service_binds_and_is_reached_at_its_own_address():
    settings = load_settings({"SPIRAL_HEAD_ADDR": "10.0.0.7:50061", "SPIRAL_ROUTER_CANARY_ADDR": "canary.local:0"})
    assert (settings.head.head_addr.host, settings.head.head_addr.port) == ("10.0.0.7", 50061)
    assert settings.router.router_addr("canary") == "canary.local:0"  # port 0: any free port
    assert settings.router.router_addr("main") == "127.0.0.1:50051"
    assert settings.redis.redis_url == "redis://127.0.0.1:6390/0"


def test_settings_are_grouped_per_service_and_keep_their_variable_names():
    settings = load_settings({"SPIRAL_COUNCIL_HEADS": "precise", "SPIRAL_DISTILL_RANK": "8"}, miner_max_prompts=10)
    assert settings.router.council_heads == "precise"
    assert settings.trainer.distill_rank == 8
    assert settings.miner.miner_max_prompts == 10
    env = settings_env(settings)
    assert (env["SPIRAL_COUNCIL_HEADS"], env["SPIRAL_DISTILL_RANK"], env["SPIRAL_MINER_MAX_PROMPTS"]) == (
        "precise",
        "8",
        "10",
    )
    with pytest.raises(TypeError):
        load_settings({}, no_such_setting=1)
