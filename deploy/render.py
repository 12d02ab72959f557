"""Renders the Envoy and supervisord configs of a profile into its run directory.

`python -m deploy.render` writes <run_dir>/envoy.yaml and <run_dir>/supervisord.conf from the same
Settings the services read, so every address is written in one place (the profile).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import jinja2

from spiral_common import canary, redis_access
from spiral_common.auth import secrets_file
from spiral_common.config import REPO_ROOT, Address, ConfigError, Settings, load_settings, settings_env
from spiral_common.specs import secret

RULES_FILE = REPO_ROOT / "observability" / "rules" / "spiral.rules.yml"
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(
        [str(REPO_ROOT / "envoy"), str(REPO_ROOT / "deploy"), str(REPO_ROOT / "observability")]
    ),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
)


def cluster_type(address: Address) -> str:
    """Envoy's cluster type for an upstream: STATIC for an IP address, STRICT_DNS for a host name."""
    try:
        ipaddress.ip_address(address.host.strip("[]"))
    except ValueError:
        return "STRICT_DNS"
    return "STATIC"


def cluster_type_of(addresses: list[Address]) -> str:
    """One cluster type for several endpoints: STRICT_DNS as soon as one is a host name (it takes IPs too)."""
    return "STATIC" if all(cluster_type(a) == "STATIC" for a in addresses) else "STRICT_DNS"


_TEMPLATES.filters["cluster_type"] = cluster_type
_TEMPLATES.filters["cluster_type_of"] = cluster_type_of


# What every Python service (and the watchdog) exits with on a fatal configuration error: supervisord treats it
# as expected and leaves the program EXITED, since restarting it would fail the same way.
FATAL_CONFIG_EXIT = 2


@dataclass(frozen=True)
class Program:
    name: str
    command: str
    priority: int
    environment: str = ""
    # Exit codes supervisord does not restart (autorestart=unexpected); empty: restart on any exit.
    fatal_exit_codes: tuple[int, ...] = ()


# The read-only calls of the services behind the routers that the public listener serves as well.
PUBLIC_READS = [
    ("/spiral.miner.v1.MinerService/ListPatterns", "miner"),
    ("/spiral.miner.v1.MinerService/MatchPrompt", "miner"),
    ("/spiral.trainer.v1.TrainerService/GetJob", "trainer"),
    ("/spiral.trainer.v1.TrainerService/WatchJob", "trainer"),
    ("/spiral.trainer.v1.TrainerService/ListAdapters", "trainer"),
    ("/spiral.head.v1.HeadService/GetHeadInfo", "head"),
]


def render_envoy(settings: Settings) -> str:
    return _TEMPLATES.get_template("envoy.yaml.j2").render(
        s=settings,
        admin_socket=settings.envoy_admin_path,
        # Router client traffic (and the reflection and health services buf curl / grpcurl use) is split
        # between the main and canary routers by weight; the routers' AdminService is internal only.
        public_router_prefixes=["/spiral.router.v1.RouterService/", "/grpc.reflection.", "/grpc.health.v1."],
        public_reads=PUBLIC_READS,
        # On the internal listener, what needs no token (health, reflection).
        open_prefixes=["/grpc.reflection.", "/grpc.health.v1."],
        router_service="spiral.router.v1.RouterService",
        head_service="spiral.head.v1.HeadService",
        head_endpoints=settings.head.endpoints,
        runtime_prefix=canary.RUNTIME_PREFIX,
        weight=canary.current_weight(settings),
        routers=[
            ("router_main", settings.router.router_main_addr),
            ("router_canary", settings.router.router_canary_addr),
        ],
        direct_routes=[
            ("/spiral.trainer.v1.", "trainer"),
            ("/spiral.miner.v1.", "miner"),
        ],
        clusters=[
            ("trainer", settings.trainer.trainer_addr),
            ("miner", settings.miner.miner_addr),
        ],
    )


def render_prometheus(
    settings: Settings, *, scrape_interval: str = "15s", evaluation_interval: str = "15s", rules_file: Path = RULES_FILE
) -> str:
    return _TEMPLATES.get_template("prometheus.yml.j2").render(
        s=settings,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
        rules_file=rules_file,
        targets=[
            ("spiral-gateway", settings.gateway.gateway_addr, "/metrics"),
            ("spiral-router-main", settings.router.router_main_metrics_addr, "/metrics"),
            ("spiral-router-canary", settings.router.router_canary_metrics_addr, "/metrics"),
            ("spiral-head", settings.head.head_metrics_addr, "/metrics"),
            ("spiral-trainer", settings.trainer.trainer_metrics_addr, "/metrics"),
            ("spiral-miner", settings.miner.miner_metrics_addr, "/metrics"),
            ("spiral-envoy", settings.envoy.envoy_metrics_addr, "/stats/prometheus"),
        ],
    )


def _secret_file(directory: Path, name: str, value: str) -> Path | None:
    """Write a receiver secret to a 0600 file Alertmanager reads (so it never sits in a config)."""
    if not value:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return path


def render_alertmanager(
    settings: Settings,
    secrets_env: dict[str, str],
    *,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> str:
    directory = settings.run_path / "secrets"
    return _TEMPLATES.get_template("alertmanager.yml.j2").render(
        s=settings,
        group_wait=group_wait,
        group_interval=group_interval,
        repeat_interval=repeat_interval,
        slack_url_file=_secret_file(directory, "slack_api_url", secret("SLACK_WEBHOOK_URL", secrets_env)),
        slack_channel=secret("SLACK_CHANNEL", secrets_env) or "#spiral-alerts",
        pagerduty_key_file=_secret_file(
            directory, "pagerduty_routing_key", secret("PAGERDUTY_ROUTING_KEY", secrets_env)
        ),
        pagerduty_url=secret("PAGERDUTY_URL", secrets_env) or "https://events.pagerduty.com/v2/enqueue",
    )


def _supervisor_env(values: dict[str, str]) -> str:
    """supervisord's KEY="value" list: backslashes and quotes escaped, % doubled (it expands %(name)s)."""

    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'

    return ",".join(f"{key}={quote(value)}" for key, value in values.items())


# Each Redis server's ACL file (in the run directory; the keys of the Kubernetes Secret `spiral-redis-acl`).
REDIS_ACL_FILES = {redis_access.Instance.STATE: "redis.acl", redis_access.Instance.CACHE: "redis-cache.acl"}


def programs(settings: Settings, python: str) -> list[Program]:
    run = settings.run_path
    promoter = (
        [Program("promoter", f"{python} -m deploy.promote --every {settings.envoy.promotion_interval_s}", 70)]
        if settings.envoy.promotion_interval_s
        else []
    )
    watchdog = (
        [Program("watchdog", f"{python} -m deploy.watchdog", 80, fatal_exit_codes=(FATAL_CONFIG_EXIT,))]
        if settings.liveness_interval_s
        else []
    )
    fatal = (FATAL_CONFIG_EXIT,)
    envoy = shutil.which("envoy", path=str(Path(python).parent)) or shutil.which("envoy") or "envoy"
    redis = shutil.which("redis-server") or "redis-server"
    redis_addr, cache_addr = settings.redis.redis_addr, settings.redis.redis_cache_addr
    observability = settings.observability
    return [
        Program(
            "redis",
            f"{redis} --bind {redis_addr.host} --port {redis_addr.port} --dir {run}/redis "
            f"--aclfile {run}/redis.acl --appendonly yes --save '' --daemonize no --protected-mode yes "
            # Money, jobs and training data: never evicted; a write beyond the cap is refused instead.
            f"--maxmemory {settings.redis.redis_max_memory_mb}mb --maxmemory-policy noeviction",
            10,
        ),
        Program(
            "redis-cache",
            f"{redis} --bind {cache_addr.host} --port {cache_addr.port} --dir {run}/redis-cache "
            f"--aclfile {run}/redis-cache.acl --appendonly no --save '' --daemonize no --protected-mode yes "
            # The routers' answers only: the least recently used go first; a restart starts it empty.
            f"--maxmemory {settings.redis.redis_cache_max_memory_mb}mb --maxmemory-policy allkeys-lru",
            10,
        ),
        Program("head", f"{python} -m head_svc", 20, fatal_exit_codes=fatal),
        Program("router-main", f"{python} -m router_svc", 30, _supervisor_env({"SPIRAL_TRACK": "main"}), fatal),
        Program("router-canary", f"{python} -m router_svc", 30, _supervisor_env({"SPIRAL_TRACK": "canary"}), fatal),
        Program("trainer", f"{python} -m trainer_svc", 30, fatal_exit_codes=fatal),
        Program("miner", f"{python} -m miner_svc", 30, fatal_exit_codes=fatal),
        Program(
            "envoy",
            # A dynamic base id lets several Envoys (a test run beside `make up`) share the machine.
            f"{envoy} -c {run}/envoy.yaml --log-level warn --use-dynamic-base-id --base-id-path {run}/envoy.base-id",
            40,
        ),
        Program("gateway", f"{python} -m gateway", 50, fatal_exit_codes=fatal),
        Program(
            "prometheus",
            f"{shutil.which('prometheus') or 'prometheus'} --config.file={run}/prometheus.yml "
            f"--storage.tsdb.path={run}/prometheus --web.listen-address={observability.prometheus_addr} "
            "--storage.tsdb.retention.time=15d",  # no --web.enable-lifecycle: no one may stop it over HTTP
            60,
        ),
        Program(
            "alertmanager",
            f"{shutil.which('prometheus-alertmanager') or 'prometheus-alertmanager'} "
            f"--config.file={run}/alertmanager.yml --storage.path={run}/alertmanager "
            f"--web.listen-address={observability.alertmanager_addr} --cluster.listen-address=",
            60,
        ),
        Program(
            "pushgateway",
            f"{shutil.which('prometheus-pushgateway') or 'prometheus-pushgateway'} "
            f"--web.listen-address={observability.pushgateway_addr}",
            60,
        ),
        *promoter,
        *watchdog,
    ]


def render_supervisord(settings: Settings, python: str, secrets_file: Path | None = None) -> str:
    env = settings_env(settings)
    if secrets_file is not None:
        env["SPIRAL_ENV_FILE"] = str(secrets_file)  # the path only: secrets never enter this file
    env.pop("SPIRAL_TRACK")  # set per router program
    return _TEMPLATES.get_template("supervisord.conf.j2").render(
        s=settings,
        run=settings.run_path,
        root=REPO_ROOT,
        environment=_supervisor_env({"PYTHONUNBUFFERED": "1", **env}),
        programs=programs(settings, python),
        stop_wait_s=int(settings.shutdown_grace_s) + 5,
        # A start counts once the process has run 3 s; five failed starts (15 s of back-off) leave it FATAL.
        start_s=3,
        start_retries=5,
    )


def ensure_secrets_file(settings: Settings, environ: dict[str, str] | None = None) -> Path:
    """The env file the services read secrets from: SPIRAL_ENV_FILE if set, else one in the run
    directory, created (mode 0600) with a random admin token, service token and Redis users' passwords on first
    use; a file of our own from before one of them gets it appended."""
    env = os.environ if environ is None else environ
    path = secrets_file(settings, env)
    if env.get("SPIRAL_ENV_FILE"):
        return path
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "# Secrets of this platform (mode 0600). Add MISTRAL_API_KEY= and OPENAI_API_KEY= for the cloud.\n"
            )
            fh.write(f"SPIRAL_ADMIN_TOKEN={secrets.token_urlsafe(32)}\n")
    if "SPIRAL_SERVICE_TOKEN=" not in path.read_text():
        with path.open("a") as fh:
            fh.write(f"SPIRAL_SERVICE_TOKEN={secrets.token_urlsafe(32)}\n")
    missing = [v for v in map(redis_access.password_variable, redis_access.USERS) if f"{v}=" not in path.read_text()]
    if missing:
        with path.open("a") as fh:
            fh.writelines(f"{variable}={secrets.token_urlsafe(32)}\n" for variable in missing)
    return path


def render_redis_acls(settings: Settings, secrets_file: Path) -> None:
    """Write each Redis server's ACL file (users by their password's SHA-256) into the run directory."""
    passwords = redis_access.passwords_from({"SPIRAL_ENV_FILE": str(secrets_file)})
    missing = [redis_access.password_variable(user) for user, password in passwords.items() if not password]
    if missing:
        raise ConfigError(f"{secrets_file} has no {', '.join(missing)}: every Redis user needs a password")
    for instance, name in REDIS_ACL_FILES.items():
        _write_private(
            settings.run_path / name, redis_access.acl_file(settings.redis.redis_prefix, passwords, instance)
        )


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (alertmanager.yml holds the receivers' keys; the rest say how to
    reach and drive the platform)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file from before, made with wider rights
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def render_all(settings: Settings, python: str = sys.executable) -> Path:
    """Write envoy.yaml and supervisord.conf into the run directory; return the directory. The run directory
    and what is in it are its owner's alone (0700 directories, 0600 files; supervisord starts every service
    with umask 077, so Redis's data and every log are made so too)."""
    run = settings.run_path
    for directory in (run, run / "logs", run / "redis", run / "redis-cache"):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
    secrets_file = ensure_secrets_file(settings)
    render_redis_acls(settings, secrets_file)
    _write_private(run / "envoy.yaml", render_envoy(settings))
    _write_private(run / "prometheus.yml", render_prometheus(settings))
    _write_private(run / "alertmanager.yml", render_alertmanager(settings, {"SPIRAL_ENV_FILE": str(secrets_file)}))
    _write_private(run / "supervisord.conf", render_supervisord(settings, python, secrets_file))
    # supervisord opens its own log before it applies the umask: made here, private, for it to append to.
    os.close(os.open(run / "logs" / "supervisord.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    (run / "logs" / "supervisord.log").chmod(0o600)
    return run


if __name__ == "__main__":
    print(render_all(load_settings()))
