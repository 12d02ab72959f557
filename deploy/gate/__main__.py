"""`python -m deploy.gate` (`make gate`, `make test`): the release gate.

Runs every stage in order (a red stage does not stop the others), writes artifacts/gate-summary.json and
artifacts/gate-summary.md (stage, result, time, key numbers), prints the Markdown summary and exits 1 if
any stage is red. Each stage's output goes to artifacts/gate/NN-<stage>.log; the micro Titanic writes
artifacts/titanic.json. Every threshold is in deploy/gate/thresholds.toml.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from deploy.gate.runner import RED, GateContext, gate_result, run_stages, write_summary
from deploy.gate.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = Path(__file__).with_name("thresholds.toml")


def commit(root: Path) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", help="comma-separated stage numbers to run (default: all ten), e.g. 1,2,4")
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts")
    parser.add_argument("--thresholds", type=Path, default=THRESHOLDS)
    args = parser.parse_args(argv)
    chosen = {int(n) for n in args.stages.split(",")} if args.stages else {s.number for s in STAGES}
    stages = [s for s in STAGES if s.number in chosen]
    context = GateContext(
        root=ROOT,
        artifacts=args.artifacts.resolve(),
        thresholds=tomllib.loads(args.thresholds.read_text()),
        python=sys.executable,
    )
    started = time.monotonic()
    results = run_stages(stages, context)
    markdown = write_summary(results, context.artifacts, time.monotonic() - started, commit(ROOT))
    print()
    print(markdown)
    return 1 if gate_result(results) == RED else 0


if __name__ == "__main__":
    sys.exit(main())
