"""The release gate's own logic: stages in order past a red one, skips, the summary files, the exit status,
how a pytest run and the micro Titanic are judged. Fake stages only: nothing here starts a platform."""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

import deploy.gate.__main__ as gate_main
from deploy.gate import stages
from deploy.gate.runner import (
    GateContext,
    Outcome,
    PreconditionMissing,
    Stage,
    gate_result,
    run_stages,
    write_summary,
)
from deploy.gate.titanic import Record, load_prompts, percentile, report

THRESHOLDS = tomllib.loads((Path(stages.__file__).with_name("thresholds.toml")).read_text())


def _context(tmp_path: Path) -> GateContext:
    return GateContext(root=tmp_path, artifacts=tmp_path / "artifacts", thresholds=THRESHOLDS, python="python")


def _missing(ctx: GateContext) -> Outcome:
    raise PreconditionMissing("the platform did not start")


def _crash(ctx: GateContext) -> Outcome:
    raise RuntimeError("boom\nsecond line")


FAKE_STAGES = [
    Stage(1, "first", "passes", lambda ctx: Outcome("green", numbers={"passed": 3})),
    Stage(2, "second", "fails", lambda ctx: Outcome("red", "2 tests failed", {"failed": 2})),
    Stage(3, "third", "crashes", _crash),
    Stage(4, "fourth", "lacks its platform", _missing),
    Stage(5, "fifth", "still runs", lambda ctx: Outcome("green")),
]


def test_every_stage_runs_in_order_past_red_ones(tmp_path):
    results = run_stages(FAKE_STAGES, _context(tmp_path))
    assert [(r.number, r.result) for r in results] == [
        (1, "green"),
        (2, "red"),
        (3, "red"),
        (4, "skipped"),
        (5, "green"),
    ]
    assert results[2].reason == "RuntimeError: boom"
    assert results[3].reason == "the platform did not start"
    assert "RuntimeError" in (tmp_path / results[2].log).read_text()  # the traceback is in the stage's log
    assert gate_result(results) == "red"
    assert gate_result([results[0], results[3], results[4]]) == "green"  # a skip alone is not red


def test_summary_is_written_as_json_and_markdown(tmp_path):
    results = run_stages(FAKE_STAGES, _context(tmp_path))
    markdown = write_summary(results, tmp_path / "artifacts", 75.0, "abc1234")
    summary = json.loads((tmp_path / "artifacts" / "gate-summary.json").read_text())
    assert summary["result"] == "red" and summary["commit"] == "abc1234" and summary["total_s"] == 75.0
    assert [s["name"] for s in summary["stages"]] == ["first", "second", "third", "fourth", "fifth"]
    assert summary["stages"][1] | {"seconds": 0} == {
        "number": 2,
        "name": "second",
        "what": "fails",
        "result": "red",
        "seconds": 0,
        "reason": "2 tests failed",
        "numbers": {"failed": 2},
        "log": "artifacts/gate/02-second.log",
    }
    assert (tmp_path / "artifacts" / "gate-summary.md").read_text() == markdown
    assert markdown.startswith("# Release gate: RED (abc1234)")
    assert "| 2 | second | **RED** |" in markdown and "| 1 | first | green |" in markdown
    assert "| 4 | fourth | skipped |" in markdown


@pytest.mark.parametrize(("fake", "status"), [(FAKE_STAGES, 1), (FAKE_STAGES[:1], 0)])
def test_the_command_exits_non_zero_when_a_stage_is_red(tmp_path, monkeypatch, capsys, fake, status):
    monkeypatch.setattr(gate_main, "STAGES", fake)
    assert gate_main.main(["--artifacts", str(tmp_path / "out")]) == status
    printed = capsys.readouterr().out
    assert "# Release gate:" in printed  # the Markdown summary is printed
    assert (tmp_path / "out" / "gate-summary.json").exists()


def test_stages_can_be_chosen(tmp_path, monkeypatch):
    monkeypatch.setattr(gate_main, "STAGES", FAKE_STAGES)
    assert gate_main.main(["--artifacts", str(tmp_path), "--stages", "1,5"]) == 0
    assert [s["number"] for s in json.loads((tmp_path / "gate-summary.json").read_text())["stages"]] == [1, 5]


def test_the_gate_has_the_ten_stages_of_the_issue_the_hostile_input_the_kubernetes_and_multi_host_stages():
    assert [s.number for s in stages.STAGES] == list(range(1, 14))


def test_the_trainer_stage_is_red_until_a_test_is_marked_for_it(tmp_path):
    context = replace(_context(tmp_path), python=sys.executable, log=tmp_path / "stage.log")
    (tmp_path / "artifacts" / "gate").mkdir(parents=True)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gate_trainer_job: stage 7\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_other.py").write_text("def test_other():\n    pass\n")
    outcome = stages.trainer_job(context)
    assert outcome.result == "red" and outcome.reason.startswith("not built")
    (tmp_path / "tests" / "test_job.py").write_text(
        "import pytest\n\n\n@pytest.mark.gate_trainer_job\ndef test_job():\n    pass\n"
    )
    assert stages.trainer_job(context) == Outcome("green", "", {"passed": 1})


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="{errors}"
failures="{failures}" skipped="{skipped}" tests="{tests}" time="1.0">{cases}</testsuite></testsuites>"""


def _junit(tmp_path: Path, cases: list[str]) -> dict:
    body = "".join(
        f'<testcase classname="tests.t" name="test_{i}">'
        + {"pass": "", "fail": '<failure message="no"/>', "skip": '<skipped message="needs prometheus"/>'}[c]
        + "</testcase>"
        for i, c in enumerate(cases)
    )
    path = tmp_path / "report.xml"
    path.write_text(
        JUNIT.format(errors=0, failures=cases.count("fail"), skipped=cases.count("skip"), tests=len(cases), cases=body)
    )
    return stages.junit_counts(path)


def test_a_pytest_stage_is_judged_from_its_report(tmp_path):
    green = stages.pytest_outcome(0, _junit(tmp_path, ["pass", "pass", "skip"]))
    assert (green.result, green.numbers) == ("green", {"passed": 2, "skipped": 1})
    assert "needs prometheus" in green.reason
    red = stages.pytest_outcome(1, _junit(tmp_path, ["pass", "fail"]))
    assert red.result == "red" and "tests.t::test_1" in red.reason
    all_skipped = stages.pytest_outcome(0, _junit(tmp_path, ["skip", "skip"]))
    assert all_skipped.result == "red" and all_skipped.reason.startswith("every test was skipped")
    assert stages.pytest_outcome(5, _junit(tmp_path, [])).result == "red"
    assert stages.pytest_outcome(2, None).result == "red"


def _record(
    kind: str, run: str, tier: str, passed: bool = True, ms: float = 5.0, cost: int = 0, expected: str = ""
) -> Record:
    expected = expected or ("cache" if run == "repeat" else "")
    return Record("p", kind, run, tier, expected, passed, ms, ms, cost, "answer")


def test_the_titanic_report_gates_hit_ratios_quality_latency_and_cost():
    limits = THRESHOLDS["titanic"]
    good = [
        _record("pattern", "first", "pattern"),
        _record("local", "first", "local", passed=False, ms=9000),
        _record("long", "first", "cloud", cost=30),
        _record("local", "repeat", "cache"),
        _record("long", "repeat", "cache"),
    ]
    failures, body = report(good, limits)
    assert failures == []
    assert body["tiers"]["cache"]["hit_ratio"] == 0.4 and body["cost_usd_micros"] == 30
    assert body["tiers"]["local"]["quality"] == 0.0  # recorded; min_quality_local is 0
    bad = good[:3] + [_record("local", "repeat", "local"), _record("long", "repeat", "error")]
    failures, body = report(bad, limits)
    assert body["errors"] == 1
    assert any(f.startswith("cache hit ratio 0.0") for f in failures)
    assert any("requests failed" in f for f in failures)
    # A first answer cut at max_tokens is not cached: its repeat must come from another tier, not the cache.
    truncated = [*good[:3], _record("local", "repeat", "local", expected="not cache")]
    assert report(truncated, limits)[0] == []
    served = [*good[:3], _record("local", "repeat", "cache", expected="not cache")]
    assert any("truncated answers came back from the cache" in f for f in report(served, limits)[0])


def test_the_titanic_prompt_set_loads():
    prompts, max_tokens = load_prompts()
    assert max_tokens > 0 and {p.kind for p in prompts} == {"pattern", "local", "long"}
    assert all(p.reference for p in prompts if p.kind != "pattern")  # the fake cloud can answer each
    assert min(len(p.text) for p in prompts if p.kind == "long") > 1024  # over the quick_test context


def test_percentile_is_nearest_rank():
    assert percentile([], 95) == 0.0
    assert percentile([3.0], 50) == 3.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
