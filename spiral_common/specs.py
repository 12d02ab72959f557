"""The structured parts of the configuration: head specs and cloud providers, each from a JSON file.

A bad file stops start-up with a message naming the file and the entry, like a bad SPIRAL_* value.
Secrets (provider keys, the admin token) are never in these files: they come from the environment
or from the env file named by SPIRAL_ENV_FILE.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from spiral_common.config import REPO_ROOT, ConfigError


@dataclass(frozen=True)
class HeadSpec:
    """One specialist head: its name, the system prompt it adds, its sampling, its adapter."""

    name: str
    system_prompt: str
    temperature: float = 0.7
    top_p: float = 1.0
    adapter: str = ""  # an adapter version from the registry; empty for the base model


@dataclass(frozen=True)
class CloudProvider:
    """An OpenAI-compatible provider; prices are micro-dollars per million tokens."""

    name: str
    base_url: str
    model: str
    api_key_env: str
    input_usd_micros_per_million_tokens: int
    output_usd_micros_per_million_tokens: int


def _read(path_setting: str, key: str) -> tuple[Path, list[dict[str, Any]]]:
    path = Path(path_setting)
    path = path if path.is_absolute() else REPO_ROOT / path
    try:
        entries = json.loads(path.read_text())[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read a JSON object with a {key!r} list ({exc})") from exc
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: {key!r} must be a list")
    return path, entries


def load_heads(path_setting: str) -> list[HeadSpec]:
    path, entries = _read(path_setting, "heads")
    heads = []
    for i, entry in enumerate(entries):
        try:
            head = HeadSpec(**entry)
        except TypeError as exc:
            raise ConfigError(f"{path}: heads[{i}]: {exc}") from exc
        if not head.name or not 0 <= head.temperature <= 2 or not 0 < head.top_p <= 1:
            raise ConfigError(f"{path}: heads[{i}] needs a name, temperature in [0, 2] and top_p in (0, 1]")
        heads.append(head)
    names = [h.name for h in heads]
    if not heads or len(set(names)) != len(names):
        raise ConfigError(f"{path}: needs at least one head, with distinct names (got {names})")
    return heads


def load_providers(path_setting: str) -> list[CloudProvider]:
    path, entries = _read(path_setting, "providers")
    providers = []
    for i, entry in enumerate(entries):
        try:
            provider = CloudProvider(**entry)
        except TypeError as exc:
            raise ConfigError(f"{path}: providers[{i}]: {exc}") from exc
        if provider.input_usd_micros_per_million_tokens < 0 or provider.output_usd_micros_per_million_tokens <= 0:
            raise ConfigError(f"{path}: providers[{i}] needs non-negative input and positive output prices")
        providers.append(provider)
    return providers


def council_members(names: str, heads: list[HeadSpec]) -> list[str]:
    """The council's head names from SPIRAL_COUNCIL_HEADS, each checked against the heads file."""
    members = [n.strip() for n in names.split(",") if n.strip()]
    known = {h.name for h in heads}
    unknown = [n for n in members if n not in known]
    if unknown:
        raise ConfigError(f"SPIRAL_COUNCIL_HEADS names unknown heads {unknown}; known: {sorted(known)}")
    return members


def secret(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A secret from the environment, else from the SPIRAL_ENV_FILE env file; empty when absent."""
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    env_file = env.get("SPIRAL_ENV_FILE")
    if env_file and Path(env_file).exists():
        return dotenv_values(env_file).get(name) or ""
    return ""
