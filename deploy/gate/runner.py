"""The gate's machinery: run stages in order, time them, keep going past a red one, write the summary.

A stage is a function of the shared `GateContext` returning an `Outcome` (green or red, a reason, key
numbers). It raises `PreconditionMissing` when something it needs is absent (another stage's platform
did not start): that stage is skipped with the reason, and the gate goes on. An exception is a red stage
with the exception as its reason. The summary is JSON for machines and Markdown for people.
"""

from __future__ import annotations

import json
import subprocess
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GREEN, RED, SKIPPED = "green", "red", "skipped"


class PreconditionMissing(Exception):
    """A stage cannot run because something it needs is missing; the message says what."""


@dataclass(frozen=True)
class Outcome:
    result: str  # GREEN or RED (SKIPPED comes from PreconditionMissing)
    reason: str = ""  # why red (or, for green, anything worth knowing); one line
    numbers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def judge(cls, failures: list[str], numbers: dict[str, Any], note: str = "") -> Outcome:
        """Green when no check failed; red with every failed check as the reason."""
        return cls(RED, "; ".join(failures), numbers) if failures else cls(GREEN, note, numbers)


@dataclass(frozen=True)
class Stage:
    number: int
    name: str
    what: str
    run: Callable[[GateContext], Outcome]


@dataclass(frozen=True)
class StageResult:
    number: int
    name: str
    what: str
    result: str
    seconds: float
    reason: str
    numbers: dict[str, Any]
    log: str  # path of the stage's log, relative to the repository root


@dataclass
class GateContext:
    """What stages share: the repository, the artifacts folder, the thresholds, and what one stage leaves
    for a later one (`resources`)."""

    root: Path
    artifacts: Path
    thresholds: dict[str, Any]
    python: str
    log: Path | None = None  # the running stage's log file
    resources: dict[str, Any] = field(default_factory=dict)

    def write_log(self, text: str) -> None:
        if self.log is not None:
            with self.log.open("a") as fh:
                fh.write(text if text.endswith("\n") else text + "\n")

    def run_command(self, argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 1800) -> int:
        """Run a command with its output appended to the stage's log; its exit status (124 on timeout)."""
        self.write_log(f"$ {' '.join(argv)}")
        assert self.log is not None
        with self.log.open("a") as fh:
            try:
                return subprocess.run(
                    argv, cwd=self.root, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s
                ).returncode
            except subprocess.TimeoutExpired:
                fh.write(f"timed out after {timeout_s:.0f} s\n")
                return 124


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_stages(
    stages: Iterable[Stage], context: GateContext, *, clock: Callable[[], float] = time.monotonic
) -> list[StageResult]:
    """Run every stage in order, whatever the earlier ones gave; each has its own log under artifacts/gate/."""
    logs = context.artifacts / "gate"
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    for stage in stages:
        context.log = logs / f"{stage.number:02d}-{_slug(stage.name)}.log"
        context.log.write_text(f"# stage {stage.number}: {stage.name} ({stage.what})\n")
        print(f"== gate stage {stage.number}: {stage.name} ...", flush=True)
        started = clock()
        try:
            outcome = stage.run(context)
        except PreconditionMissing as exc:
            outcome = Outcome(SKIPPED, str(exc))
        except Exception as exc:
            context.write_log(traceback.format_exc())
            outcome = Outcome(RED, f"{type(exc).__name__}: {exc}".splitlines()[0])
        seconds = clock() - started
        try:
            log = str(context.log.relative_to(context.root))
        except ValueError:
            log = str(context.log)
        result = StageResult(
            stage.number, stage.name, stage.what, outcome.result, seconds, outcome.reason, outcome.numbers, log
        )
        results.append(result)
        print(f"== gate stage {stage.number}: {stage.name}: {result.result} in {seconds:.1f} s {result.reason}")
        if result.result == RED:
            _print_tail(context.log)
    context.log = None
    return results


def _print_tail(log: Path, lines: int = 40) -> None:
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    print("\n".join(f"   | {line}" for line in tail), flush=True)


def gate_result(results: list[StageResult]) -> str:
    """Red if any stage is red; a skipped stage alone does not make the gate red (its cause is red)."""
    return RED if any(r.result == RED for r in results) else GREEN


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _numbers(numbers: dict[str, Any]) -> str:
    parts = []
    for key, value in numbers.items():
        if isinstance(value, dict):
            parts.append(f"{key}: " + ", ".join(f"{k} {_number(v)}" for k, v in value.items()))
        else:
            parts.append(f"{key} {_number(value)}")
    return "; ".join(parts)


def markdown_summary(results: list[StageResult], total_s: float, commit: str = "") -> str:
    mark = {GREEN: "green", RED: "**RED**", SKIPPED: "skipped"}
    verdict = gate_result(results)
    lines = [
        f"# Release gate: {verdict.upper()}" + (f" ({commit})" if commit else ""),
        "",
        f"{sum(r.result == GREEN for r in results)} green, {sum(r.result == RED for r in results)} red, "
        f"{sum(r.result == SKIPPED for r in results)} skipped; {total_s / 60:.1f} min in all.",
        "",
        "| # | stage | result | time | key numbers | reason |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        reason = r.reason.replace("|", "\\|")
        numbers = _numbers(r.numbers).replace("|", "\\|")
        lines.append(f"| {r.number} | {r.name} | {mark[r.result]} | {r.seconds:.1f} s | {numbers} | {reason} |")
    lines += ["", "Logs: `artifacts/gate/NN-<stage>.log`; thresholds: `deploy/gate/thresholds.toml`."]
    return "\n".join(lines) + "\n"


def write_summary(results: list[StageResult], artifacts: Path, total_s: float, commit: str = "") -> str:
    """Write gate-summary.json and gate-summary.md into `artifacts`; return the Markdown."""
    artifacts.mkdir(parents=True, exist_ok=True)
    summary = {
        "result": gate_result(results),
        "commit": commit,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_s": round(total_s, 1),
        "stages": [asdict(r) | {"seconds": round(r.seconds, 1)} for r in results],
    }
    (artifacts / "gate-summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    markdown = markdown_summary(results, total_s, commit)
    (artifacts / "gate-summary.md").write_text(markdown)
    return markdown
