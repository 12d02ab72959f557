"""The stages of the release gate: the ten of the issue, in its order, the hostile-input stage (11), the
Kubernetes manifests' offline validation (12) and the multi-host test (13).

The test stages split `tests/` between them so that every test runs exactly once: stage 7 takes the
tests marked `gate_trainer_job` (the dummy trainer job, wherever it lives); of the others, by path,
stage 1 takes the contract tests, 5 the integration tests but the canary's, 8 `tests/observability`,
9 the canary's, 13 `tests/multihost`, and 3 everything else (so a new test file lands in stage 3 unless it
belongs to one of those). Stages 6 and 10 each start a quick_test platform of their own, with a local OpenAI-compatible
server playing the cloud providers, and stop it when they end.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from deploy.gate.runner import GateContext, Outcome, PreconditionMissing, Stage
from deploy.platform import Platform, free_port_env
from spiral_common.config import load_settings

CONTRACT_TESTS = "tests/unit/common/test_contracts.py"
CANARY_TESTS = "tests/integration/test_canary.py"
MULTIHOST_TESTS = "tests/multihost"
# Stage 7's hook: the pytest marker of the trainer's end-to-end tests (tests/integration/test_evolution.py).
TRAINER_JOB_MARK = "gate_trainer_job"


# -- pytest stages -----------------------------------------------------------------------------------------
def junit_counts(path: Path) -> dict[str, Any]:
    """passed/failed/errors/skipped of a pytest JUnit XML report, the failing tests and the skip reasons."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failing, skips = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(name)
        skipped = case.find("skipped")
        if skipped is not None:
            skips.append(skipped.get("message", ""))
    return {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "failing": failing,
        "skip_reasons": sorted(set(skips)),
    }


def pytest_outcome(returncode: int, counts: dict[str, Any] | None) -> Outcome:
    """A pytest run as a stage: red on any failure, on no test, or when every test was skipped."""
    if counts is None:
        return Outcome("red", f"pytest wrote no report (exit {returncode})")
    numbers = {k: counts[k] for k in ("passed", "failed", "errors", "skipped")}
    shown = {k: v for k, v in numbers.items() if k == "passed" or v}
    ran = numbers["passed"] + numbers["failed"] + numbers["errors"]
    if returncode == 5 or ran + numbers["skipped"] == 0:  # 5: nothing collected (or every test deselected)
        return Outcome("red", "no tests collected", shown)
    if returncode != 0 or numbers["failed"] or numbers["errors"]:
        failing = counts["failing"]
        listed = ", ".join(failing[:3]) + (f" and {len(failing) - 3} more" if len(failing) > 3 else "")
        return Outcome("red", f"pytest exit {returncode}: {listed or 'see the log'}", shown)
    if ran == 0:
        return Outcome("red", "every test was skipped: " + "; ".join(counts["skip_reasons"])[:200], shown)
    note = ("skipped: " + "; ".join(counts["skip_reasons"])[:200]) if numbers["skipped"] else ""
    return Outcome("green", note, shown)


def run_pytest(
    ctx: GateContext,
    label: str,
    paths: list[str],
    ignore: tuple[str, ...] = (),
    marks: str = f"not {TRAINER_JOB_MARK}",
) -> Outcome:
    report = ctx.artifacts / "gate" / f"{label}.xml"
    report.unlink(missing_ok=True)
    argv = [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", "-m", marks, *paths]
    argv += [f"--ignore={path}" for path in ignore]
    returncode = ctx.run_command(argv)
    return pytest_outcome(returncode, junit_counts(report) if report.exists() else None)


# -- 1. contracts --------------------------------------------------------------------------------------------
def previous_release(ctx: GateContext) -> str:
    """The newest release tag before HEAD, or HEAD~1 when there is none."""
    pattern = ctx.thresholds["contracts"]["release_tag_pattern"]
    found = subprocess.run(
        ["git", "describe", "--tags", "--abbrev=0", "--match", pattern, "HEAD^"],
        cwd=ctx.root,
        capture_output=True,
        text=True,
    )
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "HEAD~1"


def contracts(ctx: GateContext) -> Outcome:
    against = previous_release(ctx)
    env = {**os.environ, "SPIRAL_BREAKING_AGAINST": against}
    failures = []
    if ctx.run_command(["bash", "scripts/check-proto.sh"], env=env) != 0:
        failures.append(f"buf lint or buf breaking against {against} failed")
    tests = run_pytest(ctx, "01-contracts", [CONTRACT_TESTS])
    if tests.result != "green":
        failures.append(f"generated code: {tests.reason}")
    return Outcome.judge(failures, {"breaking_against": against, **tests.numbers})


# -- 2. code -------------------------------------------------------------------------------------------------
def code(ctx: GateContext) -> Outcome:
    tools = Path(ctx.python).parent
    failures = []
    if ctx.run_command([str(tools / "ruff"), "check", "."]) != 0:
        failures.append("ruff check")
    if ctx.run_command([str(tools / "ruff"), "format", "--check", "."]) != 0:
        failures.append("ruff format --check")
    mypy = ctx.run_command([ctx.python, "-m", "mypy"])  # packages and options: [tool.mypy] in pyproject.toml
    assert ctx.log is not None
    summary = re.findall(r"^(?:Success: no issues found|Found \d+ errors?) .*$", ctx.log.read_text(), re.M)
    if mypy != 0:
        failures.append(f"mypy: {summary[-1] if summary else f'exit {mypy}'}")
    files = re.search(r"in (\d+) source files?", summary[-1]) if summary else None
    # Which package may import which: the contracts are [tool.importlinter] in pyproject.toml.
    lint_imports = ctx.run_command([str(tools / "lint-imports")])
    contracts = re.findall(r"^Contracts: (\d+) kept, (\d+) broken\.$", ctx.log.read_text(), re.M)
    if lint_imports != 0:
        kept_broken = f"{contracts[-1][0]} contracts kept, {contracts[-1][1]} broken" if contracts else ""
        failures.append(f"lint-imports: {kept_broken or f'exit {lint_imports}'}")
    numbers = {
        "mypy_files": int(files[1]) if files else 0,
        "import_contracts_kept": int(contracts[-1][0]) if contracts else 0,
    }
    return Outcome.judge(failures, numbers)


# -- 3, 5, 7, 8, 9. tests ------------------------------------------------------------------------------------
def unit_tests(ctx: GateContext) -> Outcome:
    ignore = ("tests/integration", "tests/observability", MULTIHOST_TESTS, CONTRACT_TESTS)
    return run_pytest(ctx, "03-unit", ["tests"], ignore)


def integration_tests(ctx: GateContext) -> Outcome:
    return run_pytest(ctx, "05-integration", ["tests/integration"], (CANARY_TESTS,))


def trainer_job(ctx: GateContext) -> Outcome:
    outcome = run_pytest(ctx, "07-trainer", ["tests"], marks=TRAINER_JOB_MARK)
    if outcome.reason == "no tests collected":
        return Outcome("red", f"not built: this stage runs the tests marked {TRAINER_JOB_MARK}, and none is")
    return outcome


def alert_drill(ctx: GateContext) -> Outcome:
    return run_pytest(ctx, "08-alert-drill", ["tests/observability"])


def canary(ctx: GateContext) -> Outcome:
    return run_pytest(ctx, "09-canary", [CANARY_TESTS])


# -- 4. loader -----------------------------------------------------------------------------------------------
def loader(ctx: GateContext) -> Outcome:
    limit = ctx.thresholds["loader"]["max_load_s"]
    return run_reporting_module(ctx, "deploy.gate.loader", "--max-load-s", str(limit))


def run_reporting_module(ctx: GateContext, module: str, *args: str) -> Outcome:
    """Runs `python -m module args` and judges the report it prints as its last line (JSON with `failures`
    and `numbers`)."""
    argv = [ctx.python, "-m", module, *args]
    ctx.write_log(f"$ {' '.join(argv)}")
    result = subprocess.run(argv, cwd=ctx.root, capture_output=True, text=True, timeout=600)
    ctx.write_log(result.stdout + result.stderr)
    lines = result.stdout.strip().splitlines()
    if not lines:
        return Outcome("red", f"{module} printed nothing (exit {result.returncode})")
    report = json.loads(lines[-1])
    return Outcome.judge(report["failures"], report["numbers"])


# -- the gate's platforms (stages 6 and 10) ------------------------------------------------------------------
@contextmanager
def gate_platform(ctx: GateContext, env: dict[str, str] | None = None) -> Iterator[Platform]:
    """A quick_test platform on free ports whose cloud providers are a local fake, for one stage: stopped when
    the stage ends, so the stages between 6 and 10 have the box to themselves. Once it failed to start,
    later stages are skipped rather than wait for it again."""
    failed = ctx.resources.get("platform_failed")
    if failed:
        raise PreconditionMissing(f"the gate's platform did not start in an earlier stage: {failed}")
    with ExitStack() as stack:
        try:
            platform = _start_platform(ctx, stack, env or {})
        except Exception as exc:
            ctx.resources["platform_failed"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        yield platform


def _start_platform(ctx: GateContext, stack: ExitStack, extra_env: dict[str, str]) -> Platform:
    from deploy.gate.fake_cloud import FakeCloud, providers_json  # a local stand-in for the paid providers
    from deploy.gate.titanic import load_prompts

    prompts, _ = load_prompts()
    cloud = FakeCloud(answers={p.text: p.reference for p in prompts if p.reference})
    cloud.start()
    stack.callback(cloud.stop)
    run = Path(tempfile.mkdtemp(prefix="spiral-gate-"))
    stack.callback(shutil.rmtree, run, ignore_errors=True)
    (run / "providers.json").write_text(json.dumps(providers_json(cloud)))
    secrets = run / "secrets.env"
    secrets.touch(mode=0o600)
    secrets.write_text(
        f"SPIRAL_ADMIN_TOKEN=gate-{os.urandom(8).hex()}\nSPIRAL_SERVICE_TOKEN=gate-service-{os.urandom(8).hex()}\n"
        "FAKE_CLOUD_KEY=local-fake\n"
    )
    env = {
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_RUN_DIR": str(run),
        "SPIRAL_CLOUD_PROVIDERS_FILE": str(run / "providers.json"),
        **free_port_env(),
        **extra_env,
    }
    platform = Platform(load_settings(env), python=ctx.python)
    stack.callback(platform.stop)  # also after a start that failed half-way
    ctx.write_log(f"starting the gate's platform in {run}")
    platform.start(timeout_s=180)
    return platform


# -- 6. micro Titanic ----------------------------------------------------------------------------------------
def titanic(ctx: GateContext) -> Outcome:
    from deploy.gate.titanic import load_prompts, report, run_titanic

    limits = ctx.thresholds["titanic"]
    prompts, max_tokens = load_prompts()
    with gate_platform(ctx) as platform:
        gateway = f"http://{platform.settings.gateway.gateway_addr}"
        records = run_titanic(gateway, prompts, max_tokens)
    failures, body = report(records, limits)
    (ctx.artifacts / "titanic.json").write_text(json.dumps(body, indent=2) + "\n")
    for record in records:
        ctx.write_log(json.dumps(record.__dict__))
    numbers: dict[str, Any] = {"requests": body["requests"], "errors": body["errors"]}
    for tier, values in body["tiers"].items():
        if values["answers"]:
            numbers[tier] = {
                "hit": values["hit_ratio"],
                "p50_ms": values["p50_ms"],
                "p95_ms": values["p95_ms"],
                "quality": values["quality"],
            }
    numbers["cost_usd_micros"] = body["cost_usd_micros"]
    return Outcome.judge(failures, numbers, "artifacts/titanic.json")


# -- 10. bench smoke -----------------------------------------------------------------------------------------
def bench_smoke(ctx: GateContext) -> Outcome:
    from deploy.gate.load import PROMPT, cache_request, grpc_load, rest_load

    limits = ctx.thresholds["bench_smoke"]
    with gate_platform(ctx) as platform:
        s = platform.settings
        url = f"http://{s.gateway.gateway_addr}/v1/chat/completions"
        # Prime the REST path's cache entry first: eight wrk connections missing at once would each ask the council.
        body = {
            "model": "spiral",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 16,
            "temperature": 0,
        }
        primed = httpx.post(url, json=body, timeout=180)
        primed.raise_for_status()
        finish = primed.json()["choices"][0]["finish_reason"]
        if finish != "stop":  # only natural stops are cached: the load would measure the council, not hits
            return Outcome.judge([f"the primed answer ended with {finish!r}, so it was not cached"], {}, "")
        duration, callers = limits["duration_s"], limits["concurrency"]
        grpc = asyncio.run(grpc_load(s.envoy.envoy_addr, cache_request, duration, callers))
        rest = rest_load(url, duration, 8)
    ctx.write_log(json.dumps({"grpc_cache_hit_via_envoy": grpc, "rest_cache_hit_via_gateway": rest}, indent=2))
    failures = []
    numbers: dict[str, Any] = {
        "grpc": {"rps": round(grpc["requests_per_s"]), "p50_ms": grpc["p50_ms"], "p95_ms": grpc["p95_ms"]}
    }
    if grpc["errors"] > limits["max_errors"]:
        failures.append(f"gRPC: {grpc['errors']} errors")
    if grpc["p95_ms"] > limits["max_p95_ms_grpc"]:
        failures.append(f"gRPC cache hit p95 {grpc['p95_ms']:.1f} ms > {limits['max_p95_ms_grpc']} ms")
    if grpc["requests_per_s"] < limits["min_requests_per_s_grpc"]:
        failures.append(f"gRPC {grpc['requests_per_s']:.0f} requests/s < {limits['min_requests_per_s_grpc']}")
    note = ""
    if "skipped" in rest:
        note = f"REST part skipped: {rest['skipped']}"
    else:
        numbers["rest"] = {"rps": round(rest["requests_per_s"]), "p50_ms": rest["p50_ms"], "p95_ms": rest["p95_ms"]}
        if rest["errors"] > limits["max_errors"]:
            failures.append(f"REST: {rest['errors']} errors")
        if rest["p95_ms"] > limits["max_p95_ms_rest"]:
            failures.append(f"REST cache hit p95 {rest['p95_ms']:.1f} ms > {limits['max_p95_ms_rest']} ms")
        if rest["requests_per_s"] < limits["min_requests_per_s_rest"]:
            failures.append(f"REST {rest['requests_per_s']:.0f} requests/s < {limits['min_requests_per_s_rest']}")
    return Outcome.judge(failures, numbers, note)


# -- 11. hostile input --------------------------------------------------------------------------------------
def hostile_input(ctx: GateContext) -> Outcome:
    from deploy.gate import hostile

    limits = ctx.thresholds["hostile"]
    # Short answers keep the stage's generations cheap; the limits under attack are the platform's own.
    env = {"SPIRAL_MAX_TOKENS_LIMIT": str(limits["max_tokens_limit"]), "SPIRAL_DEFAULT_MAX_TOKENS": "8"}
    with gate_platform(ctx, env) as platform:
        report = hostile.run(
            f"http://{platform.settings.gateway.gateway_addr}",
            str(platform.settings.envoy.envoy_addr),
            limits=limits,
            log=ctx.write_log,
            processes=lambda: {name: p["pid"] for name, p in platform.processes().items()},
            serving=lambda: [c.name for c in platform.checks() if not c.ok],
        )
    numbers = report.numbers()
    (ctx.artifacts / "hostile.json").write_text(
        json.dumps({"numbers": numbers, "answers": [a.__dict__ for a in report.answers]}, indent=1) + "\n"
    )
    return Outcome.judge(hostile.judge(report, limits), numbers, "artifacts/hostile.json")


# -- 12. Kubernetes manifests and images -------------------------------------------------------------------
def kubernetes(ctx: GateContext) -> Outcome:
    """Both overlays rendered and validated offline, every Containerfile linted (deploy/k8s_validate.py)."""
    return run_reporting_module(ctx, "deploy.k8s_validate")


# -- 13. Several hosts ---------------------------------------------------------------------------------------
def multihost(ctx: GateContext) -> Outcome:
    """The mesh across network namespaces on this machine (`make test-multihost`; needs root)."""
    return run_pytest(ctx, "13-multihost", [MULTIHOST_TESTS])


STAGES = (
    Stage(1, "contracts", "buf lint, buf breaking against the previous release, generated code up to date", contracts),
    Stage(2, "code", "ruff check, ruff format --check, mypy, lint-imports (import contracts)", code),
    Stage(3, "unit tests", "tests/ but integration and observability: unit and in-process gRPC tests", unit_tests),
    Stage(4, "loader", "base model and every registered adapter load within the memory cap", loader),
    Stage(5, "integration", "tests/integration on the quick_test profile of the real mesh", integration_tests),
    Stage(6, "micro Titanic", "fixed prompts through the whole cascade: latency, hit ratios, cost, quality", titanic),
    Stage(7, "dummy trainer job", "tests marked gate_trainer_job: a tiny distillation job end to end", trainer_job),
    Stage(8, "alert drill", "tests/observability: real Prometheus, Alertmanager, Pushgateway", alert_drill),
    Stage(9, "canary", "split and health gating through Envoy (tests/integration/test_canary.py)", canary),
    Stage(10, "bench smoke", "cache-hit path latency at a short duration", bench_smoke),
    Stage(11, "hostile input", "a corpus of bad requests, schemathesis and a gRPC fuzz, with a probe", hostile_input),
    Stage(
        12, "kubernetes", "both overlays: kubernetes-validate (strict), checkov; hadolint on deploy/images/", kubernetes
    ),
    Stage(
        13, "multi-host", "Redis, Envoy, routers, trainer, two heads on network namespaces (tests/multihost)", multihost
    ),
)
