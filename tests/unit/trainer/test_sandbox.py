"""The training child's sandbox fails closed and sees no secrets."""

from __future__ import annotations

import pytest

from spiral_common.config import ConfigError, load_settings
from spiral_common.errors import FailedPrecondition
from trainer_svc import sandbox


def test_without_a_network_namespace_a_job_refuses_unless_the_operator_allowed_the_network(monkeypatch):
    monkeypatch.setattr(sandbox, "unshare_works", lambda: False)
    with pytest.raises(FailedPrecondition) as caught:
        sandbox.sandbox_prefix("unshare")
    assert caught.value.reason == "SANDBOX_UNAVAILABLE" and "SPIRAL_TRAINER_SANDBOX=none" in caught.value.message
    assert sandbox.sandbox_prefix("none") == ([], False)
    monkeypatch.setattr(sandbox, "unshare_works", lambda: True)
    assert sandbox.sandbox_prefix("unshare") == (list(sandbox.UNSHARE), True)


def test_the_old_fall_back_mode_is_refused_at_start():
    with pytest.raises(ConfigError, match="SPIRAL_TRAINER_SANDBOX"):
        load_settings({"SPIRAL_TRAINER_SANDBOX": "auto"})


def test_the_child_sees_no_key_token_or_secrets_file():
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "OMP_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "HF_TOKEN": "hf_secret",
        "MISTRAL_API_KEY": "sk-1",
        "OPENAI_API_KEY": "sk-2",
        "SPIRAL_ADMIN_TOKEN": "admin",
        "SPIRAL_ENV_FILE": "/run/secrets.env",
        "SPIRAL_REDIS_ADDR": "127.0.0.1:6390",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    env = sandbox.child_env(environ, {"PYTHONPATH": "/repo"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "OMP_NUM_THREADS": "2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "/repo",
    }
