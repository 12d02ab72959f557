"""The Kubernetes manifests rendered from a profile: safe by default, wired to cluster DNS, and secret-free."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.images.requirements import requirements
from deploy.k8s import REDIS_ACL_SECRET, SECRET_NAME, Target, render, write
from spiral_common.config import REPO_ROOT, load_settings

ENVOY = str(Path(sys.executable).parent / "envoy")
WORKLOADS = ("Deployment", "StatefulSet")


def _docs(overlay: str = "cpu", **env: str) -> list[dict]:
    settings = load_settings({"SPIRAL_PROFILE": "default", **env})
    return [doc for docs in render(settings, Target(overlay=overlay)).values() for doc in docs]


def _by_kind(docs: list[dict], *kinds: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in kinds}


def _env(docs: list[dict]) -> dict[str, str]:
    return _by_kind(docs, "ConfigMap")["spiral-settings"]["data"]


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_every_container_is_probed_limited_and_locked_down(overlay):
    workloads = _by_kind(_docs(overlay), *WORKLOADS)
    assert set(workloads) == {
        f"spiral-{n}"
        for n in (
            *("redis", "redis-cache", "envoy", "gateway", "router-main", "router-canary", "head", "trainer", "miner"),
        )
    }
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in container, (name, probe)
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["runAsUser"] >= 10000, name


def test_grpc_services_are_probed_with_the_grpc_health_protocol():
    workloads = _by_kind(_docs(), *WORKLOADS)
    expected = {
        "spiral-router-main": "spiral.router.v1.RouterService",
        "spiral-router-canary": "spiral.router.v1.RouterService",
        "spiral-head": "spiral.head.v1.HeadService",
        "spiral-trainer": "spiral.trainer.v1.TrainerService",
        "spiral-miner": "spiral.miner.v1.MinerService",
    }
    for name, service in expected.items():
        container = workloads[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"]["grpc"]["service"] == service
        assert container["livenessProbe"]["grpc"]["port"] == container["ports"][0]["containerPort"]
    # The head loads its model before its first SERVING: its startup probe waits minutes, not seconds.
    head = workloads["spiral-head"]["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert head["periodSeconds"] * head["failureThreshold"] >= 300


def test_pods_bind_every_interface_and_reach_each_other_by_cluster_dns():
    docs = _docs()
    env = _env(docs)
    assert env["SPIRAL_REDIS_ADDR"] == "spiral-redis.spiral.svc.cluster.local:6390"
    assert env["SPIRAL_ENVOY_ADDR"] == "spiral-envoy.spiral.svc.cluster.local:10000"
    # The routers reach the heads through Envoy's internal listener, which balances over the head pods of the
    # heads' headless Service.
    assert env["SPIRAL_ENVOY_INTERNAL_ADDR"] == "spiral-envoy.spiral.svc.cluster.local:10001"
    assert env["SPIRAL_HEAD_ADDR"] == "spiral-head.spiral.svc.cluster.local:50061"
    head = _by_kind(docs, "Deployment")["spiral-head"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "SPIRAL_HEAD_ADDR", "value": "0.0.0.0:50061"} in head["env"]
    router = _by_kind(docs, "Deployment")["spiral-router-canary"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "SPIRAL_TRACK", "value": "canary"} in router["env"]


def test_envoy_listens_on_every_interface_and_resolves_the_heads_headless_service(tmp_path):
    docs = _docs()
    services = _by_kind(docs, "Service")
    assert services["spiral-head"]["spec"]["clusterIP"] == "None"
    envoy_yaml = _by_kind(docs, "ConfigMap")["spiral-envoy"]["data"]["envoy.yaml"]
    config = yaml.safe_load(envoy_yaml)
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener == {"address": "0.0.0.0", "port_value": 10000}
    assert config["admin"]["address"]["pipe"] == {"path": "/tmp/envoy-admin.sock", "mode": 0o600}  # not over TCP
    head = next(c for c in config["static_resources"]["clusters"] if c["name"] == "head")
    assert head["type"] == "STRICT_DNS"
    endpoint = head["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint == {"address": "spiral-head.spiral.svc.cluster.local", "port_value": 50061}
    (tmp_path / "envoy.yaml").write_text(envoy_yaml)
    result = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(tmp_path / "envoy.yaml"), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_network_policies_deny_by_default_and_let_clients_reach_only_the_gateway():
    policies = _by_kind(_docs(), "NetworkPolicy")
    deny = policies["spiral-default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    open_to_anyone = [
        name for name, p in policies.items() if any("from" not in rule for rule in p["spec"].get("ingress", []))
    ]
    assert open_to_anyone == ["spiral-gateway"]

    def callers(name: str) -> set[str]:
        rules = policies[f"spiral-{name}"]["spec"]["ingress"]
        return {
            peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            for rule in rules
            for peer in rule.get("from", [])
            if "namespaceSelector" not in peer
        }

    assert callers("redis") == {"router-main", "router-canary", "trainer", "miner", "head"}
    assert callers("redis-cache") == {"router-main", "router-canary"}
    assert callers("head") == {"envoy"}
    assert callers("trainer") == {"envoy", "head"}  # the heads pull adapters (FetchAdapter)
    assert callers("envoy") == {"gateway", "router-main", "router-canary", "trainer"}
    # Only the routers leave the cluster (the cloud tier, HTTPS).
    leaving = [n for n, p in policies.items() if any("ipBlock" in str(r) for r in p["spec"].get("egress", []))]
    assert sorted(leaving) == ["spiral-router-canary", "spiral-router-main"]


def test_every_workload_has_a_disruption_budget_and_redis_keeps_its_data():
    docs = _docs()
    budgets = _by_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == set(_by_kind(docs, *WORKLOADS))
    redis = _by_kind(docs, "StatefulSet")["spiral-redis"]["spec"]
    assert redis["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert "--appendonly" in redis["template"]["spec"]["containers"][0]["command"]


def test_money_and_jobs_never_meet_eviction_and_both_redis_servers_need_a_login():
    docs = _docs()
    state = _by_kind(docs, "StatefulSet")["spiral-redis"]["spec"]["template"]["spec"]
    cache = _by_kind(docs, "Deployment")["spiral-redis-cache"]["spec"]["template"]["spec"]
    state_command, cache_command = state["containers"][0]["command"], cache["containers"][0]["command"]
    assert state_command[state_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert cache_command[cache_command.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert cache_command[cache_command.index("--appendonly") + 1] == "no"
    for pod, command in ((state, state_command), (cache, cache_command)):
        acl = command[command.index("--aclfile") + 1]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "redis-acl")
        assert acl.startswith(mount["mountPath"] + "/")
        volume = next(v for v in pod["volumes"] if v["name"] == "redis-acl")
        assert volume["secret"]["secretName"] == REDIS_ACL_SECRET
    assert _env(docs)["SPIRAL_REDIS_CACHE_ADDR"] == "spiral-redis-cache.spiral.svc.cluster.local:6391"


def test_no_secret_value_is_rendered_only_the_secrets_name(tmp_path):
    token = "do-not-render-this-token"
    docs = _docs(SPIRAL_ADMIN_TOKEN=token, MISTRAL_API_KEY=token)
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert token not in json.dumps(docs)
    mounted = {
        v["secret"]["secretName"]
        for w in _by_kind(docs, *WORKLOADS).values()
        for v in w["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert mounted == {SECRET_NAME, REDIS_ACL_SECRET}
    assert _env(docs)["SPIRAL_ENV_FILE"].startswith("/etc/spiral-secrets/")


def test_the_gpu_overlay_gives_heads_and_the_trainer_a_gpu_and_the_cuda_images():
    for overlay, gpus in (("cpu", 0), ("gpu", 1)):
        workloads = _by_kind(_docs(overlay), *WORKLOADS)
        for name, workload in workloads.items():
            container = workload["spec"]["template"]["spec"]["containers"][0]
            wanted = gpus if name in ("spiral-head", "spiral-trainer") else 0
            assert container["resources"]["limits"].get("nvidia.com/gpu", 0) == wanted, (overlay, name)
            assert container["image"].endswith("-cuda") == bool(wanted), (overlay, name)


def test_the_settings_come_from_the_profile():
    env = _env(_docs(SPIRAL_COUNCIL_HEADS="precise,code", SPIRAL_HEAD_ADDR="127.0.0.1:50999"))
    assert env["SPIRAL_COUNCIL_HEADS"] == "precise,code"
    workloads = _by_kind(_docs(SPIRAL_HEAD_ADDR="127.0.0.1:50999"), "Deployment")
    head = workloads["spiral-head"]["spec"]["template"]["spec"]["containers"][0]
    assert head["ports"][0]["containerPort"] == 50999


def test_written_files_are_plain_yaml_documents_kubectl_takes(tmp_path):
    target = Target(overlay="cpu")
    written = write(render(load_settings({}), target), tmp_path, target)
    assert [p.name for p in written][0] == "00-namespace.yaml"  # `kubectl apply -f` goes in name order
    for path in written:
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc)
            assert "&id" not in path.read_text()  # no YAML anchors


def test_an_image_installs_its_roles_groups_and_nothing_else():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    gateway_router = requirements(project, ["gateway", "router"])
    assert not [r for r in gateway_router if r.startswith(("torch", "llama-cpp-python"))]
    assert any(r.startswith("fastapi") for r in gateway_router)
    trainer = requirements(project, ["trainer"])
    assert any(r.startswith("llama-cpp-python") for r in trainer)  # spiral[head], expanded
    assert not [r for r in trainer if r.startswith("spiral[")]


def test_a_head_runs_as_many_llama_cpp_threads_as_its_cpu_limit_not_the_nodes_cores():
    head = _by_kind(_docs(), "Deployment")["spiral-head"]["spec"]["template"]["spec"]["containers"][0]
    threads = {e["name"]: e["value"] for e in head["env"]}["SPIRAL_HEAD_THREADS"]
    assert threads == str(head["resources"]["limits"]["cpu"])
