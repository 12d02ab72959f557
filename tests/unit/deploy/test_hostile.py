"""The hostile-input stage's bookkeeping: which answers count as server errors, and when the stage is red."""

from __future__ import annotations

import httpx

from deploy.gate.hostile import Answer, Report, corpus, http_answer, judge

LIMITS = {
    "max_server_errors": 0,
    "max_answer_s": 60.0,
    "max_probe_ratio": 4.0,
    "min_probe_bound_ms": 0.0,
    "max_restarts": 0,
}


def _response(status: int, reason: str = "") -> httpx.Response:
    return httpx.Response(status, json={"error": {"reason": reason}} if reason else {})


def test_a_documented_503_is_an_answer_and_any_other_5xx_is_a_server_error():
    assert not http_answer("corpus", "x", _response(503, "NO_TIER_ANSWERED"), 0.1).bad
    assert http_answer("corpus", "x", _response(503, "SOMETHING"), 0.1).bad
    assert http_answer("corpus", "x", _response(500), 0.1).bad
    assert not http_answer("corpus", "x", _response(413, "REQUEST_TOO_LARGE"), 0.1).bad


def _report(**fields) -> Report:
    report = Report(probe_idle_ms=[5.0] * 20, probe_attack_ms=[6.0] * 20)
    report.answers = [Answer("corpus", "ok", "400", 0.01, False)]
    for key, value in fields.items():
        setattr(report, key, value)
    return report


def test_a_quiet_attack_is_green_and_each_failure_is_named():
    assert judge(_report(), LIMITS) == []
    slow_probe = _report(probe_attack_ms=[50.0] * 20)
    broken = _report(restarts=1, not_serving=["head"])
    broken.answers.append(Answer("grpc", "Orchestrate", "INTERNAL", 61.0, True))
    assert [f.split()[0] for f in judge(slow_probe, LIMITS)] == ["probe"]
    failures = " | ".join(judge(broken, LIMITS))
    assert "1 server errors" in failures and "slowest answer 61.0 s" in failures
    assert "1 services restarted" in failures and "not SERVING after the attack: head" in failures


def test_the_corpus_holds_the_issue_s_cases_and_every_request_is_well_formed():
    cases = dict(corpus())
    for name in ("130 spaces and an a", "100,000 empty messages", "1.6 MB prompt", "seed 2**70", "tools"):
        assert name in cases
    assert all({"method", "url"} <= set(request) for request in cases.values())
