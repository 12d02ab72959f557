"""Settings come from the profile and the environment, and a bad value names its variable."""

import pytest

from spiral_common.config import ConfigError, Settings, load_settings, settings_env


def test_default_profile_is_the_embedded_defaults():
    settings = load_settings({})
    assert settings == Settings(run_dir="run/default")
    assert (settings.gateway_port, settings.envoy_ingress_port, settings.envoy_admin_port) == (8080, 10000, 9901)
    assert settings.canary_weight_percent == 5


def test_environment_overrides_the_profile():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_GATEWAY_PORT": "18080"})
    assert settings.profile == "quick_test"
    assert settings.gateway_port == 18080
    assert settings.default_max_tokens == 32  # from deploy/profiles/quick_test.env
    assert settings.run_dir == "run/quick_test"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SPIRAL_HEAD_PORT": "not-a-port"}, "SPIRAL_HEAD_PORT"),
        ({"SPIRAL_HEAD_PORT": "70000"}, "SPIRAL_HEAD_PORT"),
        ({"SPIRAL_CANARY_WEIGHT_PERCENT": "101"}, "SPIRAL_CANARY_WEIGHT_PERCENT"),
        ({"SPIRAL_DEFAULT_TEMPERATURE": "hot"}, "SPIRAL_DEFAULT_TEMPERATURE"),
        ({"SPIRAL_ROUTER_INSTANCE": "blue"}, "SPIRAL_ROUTER_INSTANCE"),
        ({"SPIRAL_DEFAULT_MAX_TOKENS": "5000"}, "SPIRAL_DEFAULT_MAX_TOKENS"),
        ({"SPIRAL_PROFILE": "nope"}, "SPIRAL_PROFILE"),
    ],
)
def test_bad_value_names_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings(env)


def test_settings_are_frozen_and_round_trip_through_the_environment():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_HEAD_SYSTEM_PROMPT": 'Say "hi", 100%'})
    with pytest.raises(AttributeError):
        settings.head_port = 1  # type: ignore[misc]
    assert load_settings(settings_env(settings)) == settings
