"""`make k8s-validate`: renders both overlays and checks them offline, and lints every Containerfile.

kubernetes-validate checks each manifest against the OpenAPI schema of a pinned Kubernetes version, strictly
(an unknown field is an error); checkov runs its Kubernetes policies (a finding is fixed in deploy/k8s.py or
skipped there with its reason, as a `checkov.io/skip<n>` annotation); hadolint lints deploy/images/. Prints a
human summary, then one JSON line (the gate's stage 12 reads it); exits 1 on any failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deploy.k8s import OVERLAYS, Target, render, write
from spiral_common.config import REPO_ROOT, load_settings

# The Kubernetes version the manifests are validated against (kubernetes-validate carries its schemas).
KUBERNETES_VERSION = "1.34.0"
CHECKOV = Path(os.environ.get("SPIRAL_CHECKOV", REPO_ROOT / ".venv-checkov" / "bin" / "checkov"))
CONTAINERFILES = sorted((REPO_ROOT / "deploy" / "images").glob("*.Containerfile"))


def _tool(name: str) -> str:
    """A tool installed beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def kubernetes_validate(files: list[Path]) -> tuple[list[str], dict[str, Any]]:
    argv = [_tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", "--quiet", *map(str, files)]
    result = subprocess.run(argv, capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR")]
    failures = errors or ([f"kubernetes-validate exit {result.returncode}"] if result.returncode else [])
    resources = sum(len([d for d in f.read_text().split("\n---\n") if "kind:" in d]) for f in files)
    return failures, {"kubernetes_version": KUBERNETES_VERSION, "resources": resources}


def checkov(folder: Path) -> tuple[list[str], dict[str, Any]]:
    if not CHECKOV.exists():
        return [f"checkov is not installed at {CHECKOV} (make k8s-validate installs it)"], {}
    argv = [str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--skip-download", "-o", "json"]
    result = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "LOG_LEVEL": "ERROR"})
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        return [f"checkov exit {result.returncode}: {(result.stderr or result.stdout)[-300:]}"], {}
    summary = report["summary"]
    results = report.get("results", {})
    failures = [
        f"checkov {c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results.get("failed_checks", [])
    ]
    if summary.get("parsing_errors"):
        failures.append(f"checkov could not parse {summary['parsing_errors']} files")
    skipped = sorted(
        {f"{c['check_id']}: {c['check_result'].get('suppress_comment', '')}" for c in results.get("skipped_checks", [])}
    )
    numbers = {"passed": summary["passed"], "failed": summary["failed"], "skipped": summary["skipped"]}
    return failures, {**numbers, "skip_reasons": skipped}


def hadolint(files: list[Path]) -> tuple[list[str], dict[str, Any]]:
    result = subprocess.run([_tool("hadolint"), *map(str, files)], capture_output=True, text=True)
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    failures = findings or ([f"hadolint exit {result.returncode}: {result.stderr[-300:]}"] if result.returncode else [])
    return failures, {"containerfiles": len(files)}


def main() -> int:
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="spiral-k8s-") as tmp:
        files: list[Path] = []
        for overlay in OVERLAYS:
            target = Target(overlay=overlay)
            files += write(render(settings, target), Path(tmp) / overlay, target)
        checks = {
            "kubernetes-validate": kubernetes_validate(files),
            "checkov": checkov(Path(tmp)),
            "hadolint": hadolint(CONTAINERFILES),
        }
    failures = [f for found, _ in checks.values() for f in found]
    numbers = {name: found_numbers for name, (_, found_numbers) in checks.items()}
    for name, (found, found_numbers) in checks.items():
        print(f"{name}: {'ok' if not found else f'{len(found)} failures'} {json.dumps(found_numbers)}")
        for failure in found:
            print(f"  {failure}")
    print(json.dumps({"failures": failures, "numbers": numbers}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
