"""Platform settings: one frozen dataclass built from SPIRAL_* environment variables over a profile.

Layers, later wins: the dataclass defaults (the `default` profile), the profile file
`deploy/profiles/<SPIRAL_PROFILE>.env`, an optional secrets file named by SPIRAL_ENV_FILE, then the
process environment. Every service and the rendered Envoy / supervisor configs read the same
Settings, so an address is written in one place only. A bad value stops start-up with a message
that names the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

ENV_PREFIX = "SPIRAL_"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO_ROOT / "deploy" / "profiles"


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the environment variable."""


# Settings that take one of a few words.
_CHOICES = {
    "trainer_sandbox": ("auto", "unshare", "none"),
    "distill_quantization": ("nf4", "none"),
    "distill_lr_schedule": ("cosine", "constant"),
}


def _port(minimum: int = 0) -> dict[str, Any]:
    return {"min": minimum, "max": 65535}


@dataclass(frozen=True)
class Settings:
    """Every knob of the platform. Field `x` is read from SPIRAL_X."""

    profile: str = "default"
    # Where rendered configs, logs, pid files and Redis data live.
    run_dir: str = "run/default"
    # Interface every service binds to. Loopback by default: nothing is exposed.
    host: str = "127.0.0.1"
    log_level: str = "INFO"

    redis_port: int = field(default=6390, metadata=_port(1))
    envoy_ingress_port: int = field(default=10000, metadata=_port(1))
    envoy_admin_port: int = field(default=9901, metadata=_port(1))
    gateway_port: int = field(default=8080, metadata=_port(1))
    router_main_port: int = field(default=50051, metadata=_port())
    router_canary_port: int = field(default=50052, metadata=_port())
    head_port: int = field(default=50061, metadata=_port())
    trainer_port: int = field(default=50071, metadata=_port())
    miner_port: int = field(default=50081, metadata=_port())
    prometheus_port: int = field(default=9090, metadata=_port(1))
    alertmanager_port: int = field(default=9093, metadata=_port(1))
    pushgateway_port: int = field(default=9091, metadata=_port(1))
    router_main_metrics_port: int = field(default=9151, metadata=_port())
    router_canary_metrics_port: int = field(default=9152, metadata=_port())
    head_metrics_port: int = field(default=9161, metadata=_port())
    trainer_metrics_port: int = field(default=9171, metadata=_port())
    miner_metrics_port: int = field(default=9181, metadata=_port())

    # Share of router traffic Envoy sends to the canary router, percent.
    canary_weight_percent: int = field(default=5, metadata={"min": 0, "max": 100})
    # Compare canary and main and promote or roll back this often, seconds (0: only `make promote`).
    promotion_interval_s: int = field(default=0, metadata={"min": 0})
    # Envoy health-checks the routers this often, milliseconds.
    envoy_health_check_interval_ms: int = field(default=1000, metadata={"min": 100})
    # Envoy's local rate limit in front of the routers: sustained calls per second, and the burst.
    envoy_rate_limit_rps: int = field(default=2000, metadata={"min": 1})
    envoy_rate_limit_burst: int = field(default=4000, metadata={"min": 1})
    # Envoy closes a stream with no bytes in either direction for this long, seconds.
    envoy_stream_idle_timeout_s: int = field(default=300, metadata={"min": 1})

    # GGUF file of the base model; empty means the embedded SmolLM2-135M-Instruct.
    model_path: str = ""
    # Context window the model is loaded with, tokens.
    head_context_tokens: int = field(default=2048, metadata={"min": 128})
    # llama.cpp threads; 0 means one per CPU core.
    head_threads: int = field(default=0, metadata={"min": 0})
    # Generations in flight or queued per head process; more get RESOURCE_EXHAUSTED.
    head_max_concurrent: int = field(default=16, metadata={"min": 1})
    # After the first token, send streamed text at most this often, milliseconds (0: a message per token).
    # Every message costs CPU in each hop of the mesh; on a CPU-only box that CPU is taken from llama.cpp.
    head_stream_flush_ms: int = field(default=50, metadata={"min": 0, "max": 1000})
    # Memory guard: the head refuses to start above these caps, MiB (GPU with gpu layers, else resident).
    head_memory_cap_mb: int = field(default=4096, metadata={"min": 1})
    head_gpu_memory_cap_mb: int = field(default=10752, metadata={"min": 1})
    # Adapter registry (GGUF LoRA files); empty means <run_dir>/adapters.
    adapters_dir: str = ""
    # Layers offloaded to the GPU (0 on CPU, -1 for all).
    head_gpu_layers: int = field(default=0, metadata={"min": -1})

    # Request limits, enforced by the router and the heads.
    max_prompt_chars: int = field(default=16000, metadata={"min": 1})
    max_tokens_limit: int = field(default=1024, metadata={"min": 1})
    default_max_tokens: int = field(default=256, metadata={"min": 1})
    default_temperature: float = field(default=0.7, metadata={"min": 0.0, "max": 2.0})

    # Redis: every key the platform writes starts with this prefix.
    redis_prefix: str = "spiral:"
    # Memory cap of the Redis server, MiB; only cache entries (which carry a TTL) are evicted.
    redis_max_memory_mb: int = field(default=512, metadata={"min": 16})

    # The heads (name, system prompt, sampling, adapter): a JSON file, relative to the repo root.
    heads_file: str = "deploy/heads.json"
    # Cloud providers in fall-over order (base URL, model, prices, key variable): a JSON file.
    cloud_providers_file: str = "deploy/cloud_providers.json"

    # Cache tier: how long an answer stays, seconds.
    cache_ttl_s: int = field(default=86400, metadata={"min": 1})
    # Pattern tier: minimum confidence for a pattern to answer, in [0, 1].
    pattern_threshold: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    # Pattern tier: how often a router checks Redis for a newly mined pattern set, seconds.
    pattern_reload_interval_s: float = field(default=5.0, metadata={"min": 0.0})
    # Miner: smallest cluster that can become a pattern, prompts.
    miner_min_cluster_size: int = field(default=5, metadata={"min": 2})
    # Miner: share of a cluster's teacher answers that must agree for it to become a pattern.
    miner_min_agreement: float = field(default=0.8, metadata={"min": 0.5, "max": 1.0})
    # Miner: precision (held out) that answers at the pattern threshold must reach; calibration target.
    miner_target_precision: float = field(default=0.975, metadata={"min": 0.5, "max": 1.0})
    # Miner: a pattern that nothing matched for this long is retired, seconds (7 days).
    miner_pattern_ttl_s: int = field(default=604_800, metadata={"min": 1})
    # Miner: the most prompts one run reads from the traffic log.
    miner_max_prompts: int = field(default=50_000, metadata={"min": 1})
    # Miner: a pattern with at least this many bad ratings, making at least miner_retire_bad_share of its
    # ratings, is retired.
    miner_retire_bad_ratings: int = field(default=2, metadata={"min": 1})
    miner_retire_bad_share: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    # Miner: ONNX Runtime threads for embedding a run's prompts.
    miner_embed_threads: int = field(default=1, metadata={"min": 1})
    # Council tier: the heads that vote (comma-separated names from the heads file; empty skips the tier).
    council_heads: str = "precise,concise,step_by_step,creative,code"
    # Council tier: the whole vote's deadline, seconds; heads not done by then are cancelled.
    council_deadline_s: float = field(default=60.0, metadata={"min": 0.1})
    # Council tier: the winner's score must reach this to answer, dimensionless.
    council_threshold: float = field(default=0.3, metadata={"min": -1.0, "max": 2.0})
    council_length_weight: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    council_diversity_weight: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # Cloud tier: the most one request may cost, micro-dollars ($0.02).
    per_request_cap_usd_micros: int = field(default=20_000, metadata={"min": 0})
    # Cloud tier and trainer: the daily pool, micro-dollars ($0.10), reset at 00:00 UTC.
    daily_pool_usd_micros: int = field(default=100_000, metadata={"min": 0})
    # A reservation not settled within this many seconds (its caller crashed) is freed.
    budget_reservation_ttl_s: int = field(default=300, metadata={"min": 1})
    # Cloud tier: a provider call's whole deadline, and the longest silence inside a stream, seconds.
    cloud_timeout_s: float = field(default=60.0, metadata={"min": 0.1})
    cloud_stall_timeout_s: float = field(default=15.0, metadata={"min": 0.1})
    # Traffic log: the Redis stream keeps about this many exchanges.
    traffic_log_max_entries: int = field(default=100_000, metadata={"min": 100})

    # Trainer: the job queue. A worker heartbeats its job every heartbeat_s; a job whose worker is silent for
    # lease_s is taken over by another worker; a job that failed max_attempts times goes to the dead letters.
    trainer_heartbeat_s: float = field(default=5.0, metadata={"min": 0.05})
    trainer_lease_s: float = field(default=60.0, metadata={"min": 0.2})
    trainer_max_attempts: int = field(default=3, metadata={"min": 1})
    # Trainer: work files (datasets, adapters before publication); empty means <run_dir>/trainer.
    trainer_work_dir: str = ""
    # Trainer: run training with networking disabled: "auto" (when the kernel allows it), "unshare", "none".
    trainer_sandbox: str = "auto"
    # Scheduler: distillation as a cron expression in UTC ("" disables), mining every N hours (0 disables).
    distill_schedule: str = "0 2 * * *"
    mine_interval_h: float = field(default=6.0, metadata={"min": 0.0})
    # Distillation's wall-clock budget for the whole job, seconds; training stops in time to export and evaluate.
    distill_time_budget_s: int = field(default=2400, metadata={"min": 10})
    # Distillation's cost: the machine's time at this price, micro-dollars per hour ($0.40), capped per run ($0.20),
    # reserved from the daily pool. Below distill_min_run_s of affordable time a job waits for the UTC reset.
    trainer_usd_per_hour_micros: int = field(default=400_000, metadata={"min": 0})
    distill_run_cap_usd_micros: int = field(default=200_000, metadata={"min": 0})
    distill_min_run_s: int = field(default=120, metadata={"min": 1})
    # Distillation's dataset: at least this many distinct prompts with a teacher answer; at most this many used.
    distill_min_examples: int = field(default=16, metadata={"min": 2})
    distill_max_examples: int = field(default=20_000, metadata={"min": 2})
    # Share of the distinct prompts held out for evaluation, and the most held out.
    distill_heldout_fraction: float = field(default=0.1, metadata={"min": 0.01, "max": 0.5})
    distill_max_heldout: int = field(default=300, metadata={"min": 1})
    # Distillation's recipe: QLoRA (NF4 base, "nf4") or plain LoRA ("none"), rank, alpha, target modules
    # (comma-separated HF names, or "all"), learning rate, batch size, passes over the data, most steps.
    distill_quantization: str = "nf4"
    distill_rank: int = field(default=64, metadata={"min": 1})
    distill_alpha: float = field(default=32.0, metadata={"min": 0.0})
    distill_target_modules: str = "all"
    distill_learning_rate: float = field(default=1e-3, metadata={"min": 0.0})
    distill_batch_size: int = field(default=16, metadata={"min": 1})
    distill_epochs: float = field(default=2.0, metadata={"min": 0.0})
    distill_max_steps: int = field(default=2000, metadata={"min": 1})
    # Adapt only the last N transformer blocks (0: every block): cheaper steps, more examples per budget.
    distill_top_layers: int = field(default=0, metadata={"min": 0})
    # Learning-rate schedule: "cosine" (warm-up, then decay over the run's steps or time budget) or "constant".
    distill_lr_schedule: str = "cosine"
    # Evaluation: the most tokens generated per held-out prompt; a new adapter must beat the current one by this.
    distill_eval_max_tokens: int = field(default=64, metadata={"min": 1})
    distill_min_improvement: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    # Deadline the router gives a head for a whole answer, seconds.
    head_deadline_s: float = field(default=120.0, metadata={"min": 0.1})
    # Grace period for in-flight calls on SIGTERM, seconds.
    shutdown_grace_s: float = field(default=30.0, metadata={"min": 0.0})
    # Which router this process is: "main" or "canary" (set per process by the supervisor).
    router_instance: str = "main"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            lo, hi = f.metadata.get("min"), f.metadata.get("max")
            if lo is not None and value < lo or hi is not None and value > hi:
                bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
                raise ConfigError(f"{env_name(f.name)}={value!r} is out of range {bounds}")
        if self.router_instance not in ("main", "canary"):
            raise ConfigError(f"{env_name('router_instance')}={self.router_instance!r}: expected 'main' or 'canary'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{env_name('log_level')}={self.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{env_name(name)}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.trainer_heartbeat_s >= self.trainer_lease_s:
            raise ConfigError(
                f"{env_name('trainer_heartbeat_s')}={self.trainer_heartbeat_s} must be below "
                f"{env_name('trainer_lease_s')}={self.trainer_lease_s}"
            )
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError(
                f"{env_name('default_max_tokens')}={self.default_max_tokens} exceeds "
                f"{env_name('max_tokens_limit')}={self.max_tokens_limit}"
            )

    @property
    def run_path(self) -> Path:
        path = Path(self.run_dir)
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def adapters_path(self) -> Path:
        if not self.adapters_dir:
            return self.run_path / "adapters"
        path = Path(self.adapters_dir)
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def trainer_work_path(self) -> Path:
        if not self.trainer_work_dir:
            return self.run_path / "trainer"
        path = Path(self.trainer_work_dir)
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def redis_url(self) -> str:
        return f"redis://{self.host}:{self.redis_port}/0"

    @property
    def envoy_ingress_address(self) -> str:
        return f"{self.host}:{self.envoy_ingress_port}"

    @property
    def head_address(self) -> str:
        return f"{self.host}:{self.head_port}"

    def router_port(self, instance: str) -> int:
        return self.router_main_port if instance == "main" else self.router_canary_port

    def router_metrics_port(self, instance: str) -> int:
        return self.router_main_metrics_port if instance == "main" else self.router_canary_metrics_port


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (bool, "bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a {getattr(kind, '__name__', kind)}") from None
    return raw


def profile_values(profile: str) -> dict[str, str]:
    """The SPIRAL_* values a profile file sets (empty for a profile with no file but `default`)."""
    path = PROFILE_DIR / f"{profile}.env"
    if not path.exists():
        if profile == "default":
            return {}
        raise ConfigError(f"SPIRAL_PROFILE={profile!r}: no profile file {path}")
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from the profile, the secrets file and the environment (later wins)."""
    env = dict(os.environ if environ is None else environ)
    profile = env.get(env_name("profile"), "default")
    merged: dict[str, str] = {env_name("run_dir"): f"run/{profile}"}
    merged.update(profile_values(profile))
    secrets_file = env.get("SPIRAL_ENV_FILE")
    if secrets_file:
        if not Path(secrets_file).exists():
            raise ConfigError(f"SPIRAL_ENV_FILE={secrets_file!r}: file not found")
        merged.update({k: v for k, v in dotenv_values(secrets_file).items() if v is not None})
    merged.update({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    merged[env_name("profile")] = profile

    known = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    for key, raw in merged.items():
        name = key[len(ENV_PREFIX) :].lower()
        if name in known:
            values[name] = _parse(key, raw, known[name].type)
    values.update(overrides)
    return Settings(**values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    return {env_name(f.name): str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}
