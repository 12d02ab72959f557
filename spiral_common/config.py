"""Platform settings: one frozen dataclass per service, composed into `Settings`, built from SPIRAL_* variables.

Layers, later wins: the dataclass defaults (the `default` profile), the profile file
`deploy/profiles/<SPIRAL_PROFILE>.env`, an optional secrets file named by SPIRAL_ENV_FILE, then the
process environment. Every service and the rendered Envoy / supervisor configs read the same
Settings, so an address is written in one place only. A field `x` of any group is read from SPIRAL_X
(`settings.router.council_heads` from SPIRAL_COUNCIL_HEADS). Each service has its own address
(SPIRAL_<SERVICE>_ADDR, host:port): it binds its listener there and the others reach it there.
A bad value stops start-up with a message that names the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from spiral_common.chat import MAX_MESSAGES_CEILING

ENV_PREFIX = "SPIRAL_"
REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = REPO_ROOT / "deploy" / "profiles"


class ConfigError(ValueError):
    """A setting is missing or out of range; the message names the environment variable."""


class Address(str):
    """A `host:port` address: a str (a gRPC target as it stands) that also gives its host and port."""

    @property
    def host(self) -> str:
        return self.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.rpartition(":")[2])


def parse_address(name: str, raw: str) -> Address:
    """`raw` as an Address, or a ConfigError naming the variable `name`."""
    host, colon, port = raw.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"{name}={raw!r}: expected host:port")
    return Address(raw)


# Settings that take one of a few words.
_CHOICES = {
    "trainer_sandbox": ("unshare", "none"),
    "distill_quantization": ("nf4", "none"),
    "distill_lr_schedule": ("cosine", "constant"),
    "client_auth": ("keys", "off"),
    "event_loop": ("uvloop", "asyncio"),
    "head_adapter_source": ("registry", "trainer"),
}
# The variables this version replaced: a profile or environment still setting one fails loudly.
_REPLACED = {
    "SPIRAL_HOST": "the host part of each SPIRAL_<SERVICE>_ADDR",
    **{
        f"SPIRAL_{service}_PORT": f"SPIRAL_{service}_ADDR (host:port)"
        for service in (
            "REDIS",
            "ENVOY_ADMIN",
            "GATEWAY",
            "ROUTER_MAIN",
            "ROUTER_CANARY",
            "HEAD",
            "TRAINER",
            "MINER",
            "PROMETHEUS",
            "ALERTMANAGER",
            "PUSHGATEWAY",
            "ROUTER_MAIN_METRICS",
            "ROUTER_CANARY_METRICS",
            "HEAD_METRICS",
            "TRAINER_METRICS",
            "MINER_METRICS",
        )
    },
    "SPIRAL_ENVOY_INGRESS_PORT": "SPIRAL_ENVOY_ADDR (host:port)",
    "SPIRAL_ENVOY_ADMIN_ADDR": "SPIRAL_ENVOY_METRICS_ADDR (Envoy's stats only; the admin interface is the unix socket "
    "SPIRAL_ENVOY_ADMIN_SOCKET)",
    "SPIRAL_ROUTER_INSTANCE": "SPIRAL_TRACK (main or canary)",
    "SPIRAL_MINER_TARGET_PRECISION": "SPIRAL_PATTERN_MAX_ERROR (the error bound: 1 - the target precision)",
}


def _addr(default: str, min_port: int = 0) -> Any:
    """An address field; `min_port` 0 lets tests and benchmarks ask for any free port (or, for a metrics
    address, no metrics server)."""
    return field(default=Address(default), metadata={"min_port": min_port})


def _check(group: Any) -> None:
    """The checks every group shares: ranges, address ports, and one-of-a-few-words settings."""
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None and value < lo or hi is not None and value > hi:
            bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise ConfigError(f"{env_name(f.name)}={value!r} is out of range {bounds}")
        if "min_port" in f.metadata:
            address = parse_address(env_name(f.name), value)
            object.__setattr__(group, f.name, address)  # a plain str given in code becomes an Address
            if not f.metadata["min_port"] <= address.port <= 65535:
                raise ConfigError(f"{env_name(f.name)}={value!r}: port out of range [{f.metadata['min_port']}, 65535]")
        allowed = _CHOICES.get(f.name)
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{env_name(f.name)}={value!r}: expected one of {', '.join(allowed)}")


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host in ("::1", "[::1]")


@dataclass(frozen=True)
class RedisSettings:
    """The two Redis servers: the state (money, jobs, patterns, traffic log; never evicts) and the router's answer
    cache (evicts the least recently used). Each service logs in as its own user: spiral_common.redis_access."""

    redis_addr: Address = _addr("127.0.0.1:6390", 1)
    # The answer cache's server: allkeys-lru, no persistence, nothing else in it.
    redis_cache_addr: Address = _addr("127.0.0.1:6391", 1)
    # Every key the platform writes starts with this prefix.
    redis_prefix: str = "spiral:"
    # Memory cap of the state server, MiB: it never evicts (noeviction); a write beyond the cap is refused.
    redis_max_memory_mb: int = field(default=512, metadata={"min": 16})
    # Memory cap of the cache server, MiB: beyond it the least recently used answers are evicted.
    redis_cache_max_memory_mb: int = field(default=256, metadata={"min": 16})

    def __post_init__(self) -> None:
        _check(self)

    @property
    def redis_url(self) -> str:
        """The state server, without a user (spiral_common.redis_access.connect adds the service's)."""
        return f"redis://{self.redis_addr}/0"


@dataclass(frozen=True)
class EnvoySettings:
    """Envoy: the gRPC ingress every client (the gateway, the trainer, `spiralctl`) calls, and the canary split."""

    # The public ingress: the routers' client RPCs and read-only calls only. Loopback by default: nothing is exposed.
    envoy_addr: Address = _addr("127.0.0.1:10000", 1)
    # The internal listener: operators' tools and the services' calls to each other (the routers reach the heads
    # here). Every call but health and reflection must carry `authorization: Bearer <token>`; each service then
    # checks the token itself.
    envoy_internal_addr: Address = _addr("127.0.0.1:10001", 1)
    # Envoy's statistics for Prometheus (/stats/prometheus and /ready, nothing else of the admin interface).
    envoy_metrics_addr: Address = _addr("127.0.0.1:9901", 1)
    # The admin interface (no authentication): a unix socket only its owner may open (mode 0600); empty means
    # <run_dir>/envoy-admin.sock. A socket path is at most 107 bytes.
    envoy_admin_socket: str = ""
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

    def __post_init__(self) -> None:
        _check(self)
        if len(self.envoy_admin_socket.encode()) > 107:
            raise ConfigError(f"{env_name('envoy_admin_socket')}={self.envoy_admin_socket!r}: longer than 107 bytes")


@dataclass(frozen=True)
class GatewaySettings:
    """The OpenAI-compatible REST gateway (its /metrics is on the same address)."""

    gateway_addr: Address = _addr("127.0.0.1:8080", 1)
    # Request bodies over this many bytes are refused with 413 before they are parsed.
    gateway_max_body_bytes: int = field(default=1024 * 1024, metadata={"min": 1024})
    # The deadline of each call to the routers (sent as grpc-timeout through Envoy to the router and the
    # heads), seconds: beyond it the client gets 504 and every hop stops working on the request. It should
    # cover the council's and the cloud's deadlines (SPIRAL_COUNCIL_DEADLINE_S, SPIRAL_CLOUD_TIMEOUT_S).
    gateway_request_timeout_s: float = field(default=180.0, metadata={"min": 1.0})

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class RouterSettings:
    """The routers (main and canary) and their cascade: cache, patterns, council, cloud."""

    router_main_addr: Address = _addr("127.0.0.1:50051")
    router_canary_addr: Address = _addr("127.0.0.1:50052")
    router_main_metrics_addr: Address = _addr("127.0.0.1:9151")
    router_canary_metrics_addr: Address = _addr("127.0.0.1:9152")
    # The track this router process serves: "main" or "canary" (set per process by the supervisor).
    track: str = "main"
    # Cache tier: how long an answer stays, seconds.
    cache_ttl_s: int = field(default=86400, metadata={"min": 1})
    # Pattern tier: minimum confidence for a regex specialist (and a floor for a mined pattern) to answer, in [0, 1].
    pattern_threshold: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    # Pattern tier: a mined pattern answers only when its calibrated chance of being wrong is at most this, on
    # prompts of known intents and on prompts of intents never mined alike (confidence >= 1 - this), in (0, 1).
    pattern_max_error: float = 0.02
    # Pattern tier: how often a router checks Redis for a newly mined pattern set, seconds.
    pattern_reload_interval_s: float = field(default=5.0, metadata={"min": 0.0})
    # Pattern tier: a prompt waits at most this long for others to share its encoder call, milliseconds (0: no
    # wait; prompts that queued while the encoder threads were busy still go together).
    pattern_batch_window_ms: float = field(default=0.0, metadata={"min": 0.0, "max": 1000.0})
    # Pattern tier: at most this many prompts per encoder call.
    pattern_batch_max: int = field(default=8, metadata={"min": 1, "max": 256})
    # Pattern tier: encoder calls that may run at once, each on one thread of its own.
    pattern_encoder_threads: int = field(default=2, metadata={"min": 1, "max": 64})
    # Pattern tier: embeddings of this many recent prompts are kept (LRU, about 1.6 KB each; 0: no cache).
    pattern_embedding_cache_size: int = field(default=4096, metadata={"min": 0})
    # Council tier: the heads that vote (comma-separated names from the heads file; empty skips the tier).
    council_heads: str = "precise,concise,step_by_step,creative,code"
    # Council tier: the whole vote's deadline, seconds; heads not done by then are cancelled.
    council_deadline_s: float = field(default=60.0, metadata={"min": 0.1})
    # Council tier: the winner's score must reach this to answer, dimensionless. An adapter a distillation job
    # made carries its own threshold, calibrated so that at most council_max_error of the answers it lets
    # through were wrong on the job's held-out prompts; the higher of the two applies.
    council_threshold: float = field(default=0.3, metadata={"min": -1.0, "max": 2.0})
    council_max_error: float = field(default=0.02, metadata={"min": 0.001, "max": 0.5})
    # Council tier: after the heads' answers came from an adapter calibrated never to answer, the tier is skipped
    # for this long (seconds), then asked again (an adapter switched in meanwhile is seen by then).
    council_never_recheck_s: float = field(default=60.0, metadata={"min": 0.0})
    council_length_weight: float = field(default=0.2, metadata={"min": 0.0, "max": 1.0})
    council_diversity_weight: float = field(default=0.1, metadata={"min": 0.0, "max": 1.0})
    # Deadline the router gives a head for a whole answer, seconds.
    head_deadline_s: float = field(default=120.0, metadata={"min": 0.1})
    # Traffic log: the Redis stream keeps about this many exchanges, none older than this many days, and about
    # this many MiB (entries over the entry cap, KiB, are logged without their texts); see spiral_common.traffic.
    traffic_log_max_entries: int = field(default=100_000, metadata={"min": 100})
    traffic_log_max_age_days: int = field(default=14, metadata={"min": 1})
    traffic_log_max_mb: int = field(default=128, metadata={"min": 1})
    traffic_log_max_entry_kb: int = field(default=256, metadata={"min": 1})
    # Traffic log: exchanges waiting for the background writer; beyond this an exchange is dropped and counted.
    traffic_log_queue_size: int = field(default=10_000, metadata={"min": 1})
    # The "answered" log line: at most this many per second and tier (the next line says how many were held
    # back; the request metrics stay exact); 0: one line per answer.
    answer_log_per_s: float = field(default=20.0, metadata={"min": 0.0})

    def __post_init__(self) -> None:
        _check(self)
        if not 0.0 < self.pattern_max_error < 1.0:
            raise ConfigError(f"{env_name('pattern_max_error')}={self.pattern_max_error!r}: expected 0 < x < 1")
        if self.track not in ("main", "canary"):
            raise ConfigError(f"{env_name('track')}={self.track!r}: expected 'main' or 'canary'")

    def router_addr(self, track: str) -> Address:
        """The address of the router serving `track` ("main" or "canary")."""
        return self.router_main_addr if track == "main" else self.router_canary_addr

    def router_metrics_addr(self, track: str) -> Address:
        return self.router_main_metrics_addr if track == "main" else self.router_canary_metrics_addr


@dataclass(frozen=True)
class HeadSettings:
    """The head process: llama.cpp heads of one base model, with adapters."""

    head_addr: Address = _addr("127.0.0.1:50061")
    # The head replicas Envoy balances the heads' calls over: comma-separated host:port, each on any host; a
    # host name is resolved by DNS to every address it has (a Kubernetes headless Service). Empty: head_addr.
    head_endpoints: str = ""
    head_metrics_addr: Address = _addr("127.0.0.1:9161")
    # GGUF file of the base model; empty means the embedded SmolLM2-135M-Instruct.
    model_path: str = ""
    # The heads (name, system prompt, sampling, adapter): a JSON file, relative to the repo root.
    heads_file: str = "deploy/heads.json"
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
    # Layers offloaded to the GPU (0 on CPU, -1 for all).
    head_gpu_layers: int = field(default=0, metadata={"min": -1})
    # Where a head gets adapter files: "registry" reads SPIRAL_ADAPTERS_DIR (one box: the trainer's folder);
    # "trainer" pulls each version from the trainer (FetchAdapter, SPIRAL_TRAINER_ADDR) into its own cache,
    # checked against the registry's SHA-256 record and the base model before it is loaded (heads on other hosts).
    head_adapter_source: str = "registry"
    # The pulled adapters' cache; empty means <run_dir>/adapter-cache.
    head_adapter_cache_dir: str = ""
    # Every head converges to the shared record of what each head and track serves this often, seconds (0: only
    # at start). An adapter switch reaches one head replica; the others follow within this time.
    head_adapter_sync_s: float = field(default=5.0, metadata={"min": 0.0})

    def __post_init__(self) -> None:
        _check(self)
        for endpoint in self.head_endpoints.split(","):
            if endpoint.strip():
                parse_address(env_name("head_endpoints"), endpoint.strip())

    @property
    def endpoints(self) -> list[Address]:
        """Every head replica (head_addr alone when head_endpoints is empty)."""
        listed = [Address(e.strip()) for e in self.head_endpoints.split(",") if e.strip()]
        return listed or [self.head_addr]


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer: its job queue, scheduler and distillation."""

    trainer_addr: Address = _addr("127.0.0.1:50071")
    trainer_metrics_addr: Address = _addr("127.0.0.1:9171")
    # The job queue. A worker heartbeats its job every heartbeat_s; a job whose worker is silent for
    # lease_s is taken over by another worker; a job that failed max_attempts times goes to the dead letters.
    trainer_heartbeat_s: float = field(default=5.0, metadata={"min": 0.05})
    trainer_lease_s: float = field(default=60.0, metadata={"min": 0.2})
    trainer_max_attempts: int = field(default=3, metadata={"min": 1})
    # Work files (datasets, adapters before publication); empty means <run_dir>/trainer.
    trainer_work_dir: str = ""
    # Training runs in a network namespace ("unshare"; where the kernel refuses one, jobs refuse to train), or
    # with the network on ("none": the operator allows it, e.g. where a NetworkPolicy cuts the trainer off).
    trainer_sandbox: str = "unshare"
    # The training child's address space, MiB (0: no limit): a runaway run fails alone instead of taking the box.
    trainer_memory_limit_mb: int = field(default=12288, metadata={"min": 0})
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
    # The most of the daily pool the trainer's machine time may take in a day, percent: the rest stays for the
    # cloud tier. Checked at the trainer's start: the share must pay for a minimum run.
    trainer_pool_share_percent: int = field(default=50, metadata={"min": 1, "max": 100})
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
    # Calibration of the new adapter's council threshold: the most held-out prompts every council head answers
    # (each costs one generation per head; the job stops calibrating early rather than overrun its budget).
    distill_calibration_prompts: int = field(default=150, metadata={"min": 0})
    distill_min_improvement: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})

    def __post_init__(self) -> None:
        _check(self)
        if self.trainer_heartbeat_s >= self.trainer_lease_s:
            raise ConfigError(
                f"{env_name('trainer_heartbeat_s')}={self.trainer_heartbeat_s} must be below "
                f"{env_name('trainer_lease_s')}={self.trainer_lease_s}"
            )


@dataclass(frozen=True)
class MinerSettings:
    """The prompt miner: clustering the traffic log into answering patterns."""

    miner_addr: Address = _addr("127.0.0.1:50081")
    miner_metrics_addr: Address = _addr("127.0.0.1:9181")
    # Smallest cluster that can become a pattern, prompts.
    miner_min_cluster_size: int = field(default=5, metadata={"min": 2})
    # Share of a cluster's teacher answers that must agree for it to become a pattern.
    miner_min_agreement: float = field(default=0.8, metadata={"min": 0.5, "max": 1.0})
    # A pattern that nothing matched for this long is retired, seconds (7 days).
    miner_pattern_ttl_s: int = field(default=604_800, metadata={"min": 1})
    # The most prompts one run reads from the traffic log.
    miner_max_prompts: int = field(default=50_000, metadata={"min": 1})
    # A pattern with at least this many bad ratings, making at least miner_retire_bad_share of its
    # ratings, is retired.
    miner_retire_bad_ratings: int = field(default=2, metadata={"min": 1})
    miner_retire_bad_share: float = field(default=0.3, metadata={"min": 0.0, "max": 1.0})
    # ONNX Runtime threads for embedding a run's prompts.
    miner_embed_threads: int = field(default=1, metadata={"min": 1})

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class BudgetSettings:
    """The cost guard's money, shared by the cloud tier and the trainer: integer micro-dollars."""

    # Cloud tier: the most one request may cost, micro-dollars ($0.02).
    per_request_cap_usd_micros: int = field(default=20_000, metadata={"min": 0})
    # Cloud tier and trainer: the daily pool, micro-dollars ($0.10), reset at 00:00 UTC.
    daily_pool_usd_micros: int = field(default=100_000, metadata={"min": 0})
    # A reservation not settled within this many seconds (its caller crashed) is freed.
    budget_reservation_ttl_s: int = field(default=300, metadata={"min": 1})

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class CloudSettings:
    """The cloud tier's providers."""

    # Cloud providers in fall-over order (base URL, model, prices, key variable): a JSON file.
    cloud_providers_file: str = "deploy/cloud_providers.json"
    # A provider call's whole deadline, and the longest silence inside a stream, seconds.
    cloud_timeout_s: float = field(default=60.0, metadata={"min": 0.1})
    cloud_stall_timeout_s: float = field(default=15.0, metadata={"min": 0.1})

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class LimitsSettings:
    """Request limits, enforced by the gateway, the router and the heads."""

    max_prompt_chars: int = field(default=16000, metadata={"min": 1})
    max_tokens_limit: int = field(default=1024, metadata={"min": 1, "max": 2**31 - 1})  # a protobuf int32
    default_max_tokens: int = field(default=256, metadata={"min": 1})
    default_temperature: float = field(default=0.7, metadata={"min": 0.0, "max": 2.0})
    # Messages in one conversation, at the gateway and at gRPC ingress.
    max_messages: int = field(default=256, metadata={"min": 1, "max": MAX_MESSAGES_CEILING})

    def __post_init__(self) -> None:
        _check(self)
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError(
                f"{env_name('default_max_tokens')}={self.default_max_tokens} exceeds "
                f"{env_name('max_tokens_limit')}={self.max_tokens_limit}"
            )


@dataclass(frozen=True)
class ObservabilitySettings:
    """Prometheus, Alertmanager and the Pushgateway (the trainer pushes each job's metrics there)."""

    prometheus_addr: Address = _addr("127.0.0.1:9090", 1)
    alertmanager_addr: Address = _addr("127.0.0.1:9093", 1)
    pushgateway_addr: Address = _addr("127.0.0.1:9091", 1)

    def __post_init__(self) -> None:
        _check(self)


@dataclass(frozen=True)
class Settings:
    """Every knob of the platform: a few platform-wide ones, then one group per service."""

    profile: str = "default"
    # Where rendered configs, logs, pid files and Redis data live.
    run_dir: str = "run/default"
    log_level: str = "INFO"
    # Grace period for in-flight calls on SIGTERM, seconds.
    shutdown_grace_s: float = field(default=30.0, metadata={"min": 0.0})
    # Adapter registry (GGUF LoRA files the trainer publishes and the heads load); empty means <run_dir>/adapters.
    adapters_dir: str = ""
    # Liveness watchdog (deploy/watchdog.py): every interval (0: no watchdog) it asks each service's health with a
    # deadline, and restarts one that was answering and then misses `failures` probes in a row, or that never
    # answers within the start grace.
    liveness_interval_s: float = field(default=5.0, metadata={"min": 0.0})
    liveness_timeout_s: float = field(default=2.0, metadata={"min": 0.1})
    liveness_failures: int = field(default=3, metadata={"min": 1})
    liveness_start_grace_s: float = field(default=300.0, metadata={"min": 0.0})
    # Who may call the client APIs (the gateway's routes and the routers' RouterService): "keys", every request
    # needs a client API key (`make api-key`); "off", a request without one runs as the principal "local" (a
    # request with one still gets its key's limits). The gateway refuses to start off loopback with "off".
    client_auth: str = "off"
    # The asyncio event loop of the routers, the heads and the miner: "uvloop" (libuv's loop, the default) or
    # "asyncio" (the standard library's). The gateway's uvicorn picks uvloop on its own. The trainer keeps the
    # standard library's: its training child is spawned in a process group of its own (process_group=0, no
    # Python between fork and exec), which uvloop's subprocesses do not offer, and its loop is on no hot path.
    event_loop: str = "uvloop"

    redis: RedisSettings = field(default_factory=RedisSettings)
    envoy: EnvoySettings = field(default_factory=EnvoySettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    head: HeadSettings = field(default_factory=HeadSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    miner: MinerSettings = field(default_factory=MinerSettings)
    budget: BudgetSettings = field(default_factory=BudgetSettings)
    cloud: CloudSettings = field(default_factory=CloudSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)

    def __post_init__(self) -> None:
        _check(self)
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"{env_name('log_level')}={self.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")

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
    def head_adapter_cache_path(self) -> Path:
        if not self.head.head_adapter_cache_dir:
            return self.run_path / "adapter-cache"
        path = Path(self.head.head_adapter_cache_dir)
        return path if path.is_absolute() else REPO_ROOT / path

    @property
    def envoy_admin_path(self) -> Path:
        """Envoy's admin socket."""
        socket = self.envoy.envoy_admin_socket
        return Path(socket) if socket else self.run_path / "envoy-admin.sock"

    @property
    def trainer_work_path(self) -> Path:
        if not self.trainer.trainer_work_dir:
            return self.run_path / "trainer"
        path = Path(self.trainer.trainer_work_dir)
        return path if path.is_absolute() else REPO_ROOT / path


def check_gateway_exposure(settings: Settings) -> None:
    """ConfigError when the gateway would listen beyond this machine with client auth off: anyone who can reach
    it could spend the whole cloud budget and rate any answer."""
    host = settings.gateway.gateway_addr.host
    if settings.client_auth == "off" and not _is_loopback(host):
        raise ConfigError(
            f"{env_name('gateway_addr')}={settings.gateway.gateway_addr!r} is not a loopback address and "
            f"{env_name('client_auth')}=off: anyone who can reach it could spend the cloud budget. Set "
            f"{env_name('client_auth')}=keys (and create keys with `make api-key NAME=...`), or bind 127.0.0.1"
        )


def _groups() -> dict[str, type]:
    """Settings' groups: attribute name -> dataclass."""
    return {f.name: GROUP_TYPES[f.type] for f in dataclasses.fields(Settings) if f.type in GROUP_TYPES}


GROUP_TYPES: dict[Any, type] = {
    cls.__name__: cls
    for cls in (
        RedisSettings,
        EnvoySettings,
        GatewaySettings,
        RouterSettings,
        HeadSettings,
        TrainerSettings,
        MinerSettings,
        BudgetSettings,
        CloudSettings,
        LimitsSettings,
        ObservabilitySettings,
    )
}


def field_groups() -> dict[str, str | None]:
    """Every setting's flat name (SPIRAL_<NAME> lower-cased) -> its group in Settings (None: top level)."""
    fields: dict[str, str | None] = {}
    groups = _groups()
    for f in dataclasses.fields(Settings):
        if f.name in groups:
            fields.update({g.name: f.name for g in dataclasses.fields(groups[f.name])})
        else:
            fields[f.name] = None
    return fields


def address_settings() -> list[tuple[str, str]]:
    """Every listener's address setting: (group in Settings, field), e.g. ("head", "head_addr")."""
    return [
        (name, f.name) for name, cls in _groups().items() for f in dataclasses.fields(cls) if "min_port" in f.metadata
    ]


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
    if kind in (Address, "Address"):
        return parse_address(name, raw)
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
    """Build Settings from the profile, the secrets file and the environment (later wins).

    `overrides` are by flat name, whatever the group: `load_settings(council_heads="")`."""
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
    for old, new in _REPLACED.items():
        if old in merged:
            raise ConfigError(f"{old}={merged[old]!r}: this variable was replaced by {new}")

    groups = _groups()
    owner = field_groups()
    kinds = {f.name: f.type for f in dataclasses.fields(Settings)}
    for cls in groups.values():
        kinds.update({f.name: f.type for f in dataclasses.fields(cls)})
    top: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {g: {} for g in groups}

    def put(name: str, value: Any) -> None:
        group = owner[name]
        (top if group is None else grouped[group])[name] = value

    for key, raw in merged.items():
        name = key[len(ENV_PREFIX) :].lower()
        if name in owner:
            put(name, _parse(key, raw, kinds[name]))
    for name, value in overrides.items():
        if name not in owner:
            raise TypeError(f"load_settings() got an unknown setting {name!r}")
        put(name, value)
    return Settings(**top, **{g: groups[g](**v) for g, v in grouped.items()})


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that reproduces `settings` in a child process."""
    env: dict[str, str] = {}
    for name, group in field_groups().items():
        holder = settings if group is None else getattr(settings, group)
        env[env_name(name)] = str(getattr(holder, name))
    return env
