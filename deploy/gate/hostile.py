"""The hostile-input stage (gate stage 11): attack a running platform the way a careless or hostile client would.

Three attacks, one after the other, while a probe client keeps asking a cheap question (an arithmetic prompt
the pattern tier answers) and times it:

1. a corpus of known-bad requests (the cases that once stalled, wedged or 500ed the platform, and more:
   deep JSON nesting, NUL bytes, lone surrogates, a 16k-character emoji prompt, regex-shaped prompts, huge
   numbers, wrong content types, unsupported OpenAI fields, bad request ids) sent to the gateway;
2. schemathesis over the gateway's own OpenAPI document, valid and invalid cases for every operation;
3. a Hypothesis fuzz of `RouterService/Orchestrate` over gRPC through Envoy.

Every answer is recorded with its status and time. The report says how many answers were server errors
(5xx, except the documented 503s: nothing could answer, the model is loading), the slowest answer, the
probe's p95 when idle and under attack, how many services restarted, and whether every service was SERVING
afterwards. The stage (deploy/gate/stages.py) judges these against deploy/gate/thresholds.toml.
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import httpx

from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.grpc_service import error_info

# 503s that the README documents: no tier could answer, the model is still loading.
DOCUMENTED_503 = ("NO_TIER_ANSWERED", "MODEL_NOT_LOADED")
# gRPC codes an attacker may get back; anything else (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED...) is a failure.
ALLOWED_GRPC = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
}
PROBE = {"model": "spiral", "messages": [{"role": "user", "content": "What is 12 * 12?"}], "max_tokens": 8}


@dataclass
class Answer:
    attack: str  # corpus, schemathesis, grpc-fuzz
    name: str
    status: str  # HTTP status or gRPC code name
    seconds: float
    bad: bool  # a server error (or an unexpected gRPC code)
    reason: str = ""


@dataclass
class Report:
    answers: list[Answer] = field(default_factory=list)
    probe_idle_ms: list[float] = field(default_factory=list)
    probe_attack_ms: list[float] = field(default_factory=list)
    probe_errors: int = 0
    restarts: int = 0
    not_serving: list[str] = field(default_factory=list)

    def numbers(self) -> dict[str, Any]:
        bad = [a for a in self.answers if a.bad]
        idle, attack = _p95(self.probe_idle_ms), _p95(self.probe_attack_ms)
        return {
            "requests": len(self.answers),
            "by_attack": {k: sum(a.attack == k for a in self.answers) for k in ("corpus", "schemathesis", "grpc")},
            "server_errors": len(bad),
            "worst_s": round(max((a.seconds for a in self.answers), default=0.0), 3),
            "probe_idle_p95_ms": round(idle, 1),
            "probe_attack_p95_ms": round(attack, 1),
            "probe_ratio": round(attack / idle, 2) if idle else 0.0,
            "probe_errors": self.probe_errors,
            "restarts": self.restarts,
            "not_serving": self.not_serving,
        }


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else 0.0)


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("reason") or error.get("code") or "") if isinstance(error, dict) else ""


def http_answer(attack: str, name: str, response: httpx.Response, seconds: float) -> Answer:
    reason = _reason(response)
    bad = response.status_code >= 500 and not (response.status_code == 503 and reason in DOCUMENTED_503)
    return Answer(attack, name, str(response.status_code), round(seconds, 4), bad, reason)


class Probe:
    """A client asking one cheap question every `interval_s`, timing each answer, until stopped (bounded).

    It runs in a process of its own, as a real client would: in this process its timings would also count
    the time it waits for the GIL while the attacks generate their cases."""

    def __init__(self, gateway: str, *, interval_s: float = 0.05, max_requests: int = 20_000) -> None:
        self.gateway, self.interval_s, self.max_requests = gateway, interval_s, max_requests
        self.samples: list[float] = []
        self.errors = 0
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Probe:
        argv = [sys.executable, "-m", "deploy.gate.hostile", "probe", self.gateway]
        argv += [str(self.interval_s), str(self.max_requests)]
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)  # the probe finishes its request in flight and reports
        try:
            out, _ = self._process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            out, _ = self._process.communicate()
        try:
            result = json.loads(out)
            self.samples, self.errors = list(result["samples"]), int(result["errors"])
        except (ValueError, KeyError, TypeError):  # the probe died without its report: the stage says so
            self.samples, self.errors = [], 1


def probe_main(gateway: str, interval_s: float, max_requests: int) -> None:
    """The probe's process: ask until SIGTERM (or `max_requests`), then print the samples as JSON."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    samples: list[float] = []
    errors = 0
    with httpx.Client(base_url=gateway, timeout=30) as client:
        for _ in range(max_requests):
            if stop.is_set():
                break
            started = time.perf_counter()
            try:
                ok = client.post("/v1/chat/completions", json=PROBE).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                samples.append((time.perf_counter() - started) * 1000)
            else:
                errors += 1
            stop.wait(interval_s)
    print(json.dumps({"samples": samples, "errors": errors}))


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """(name, httpx request arguments) for the known-bad requests."""

    def chat(content: Any = "hi", **extra: Any) -> dict[str, Any]:
        body = {"model": "spiral", "messages": [{"role": "user", "content": content}], **extra}
        return {"method": "POST", "url": "/v1/chat/completions", "json": body}

    def raw(body: bytes, content_type: str = "application/json", url: str = "/v1/chat/completions") -> dict:
        return {"method": "POST", "url": url, "content": body, "headers": {"content-type": content_type}}

    junk = "Bearer " + "x" * 8000
    nested = b'{"model": "spiral", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    many_empty = {"model": "spiral", "messages": [{"role": "user", "content": ""}] * 100_000 + [
        {"role": "user", "content": "hi"}]}  # fmt: skip
    cases: list[tuple[str, dict[str, Any]]] = [
        ("130 spaces and an a", chat(" " * 130 + "a")),
        ("100,000 empty messages", {"method": "POST", "url": "/v1/chat/completions", "json": many_empty}),
        ("1.6 MB prompt", chat("x" * 1_600_000)),
        ("max_tokens 3e9", chat(max_tokens=3_000_000_000)),
        ("seed 2**70", chat(seed=2**70)),
        ("999999^64 twelve times", chat("what is " + "*".join(["999999^64"] * 12))),
        ("non-ASCII x-request-id", chat() | {"headers": {"x-request-id": "r\u00e9quest-\u2603".encode()}}),
        ("overlong x-request-id", chat() | {"headers": {"x-request-id": "a" * 10_000}}),
        ("tools", chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])),
        ("tool_choice", chat(tool_choice="auto")),
        ("response_format", chat(response_format={"type": "json_object"})),
        ("logprobs", chat(logprobs=True)),
        ("logit_bias", chat(logit_bias={"1": 100})),
        ("deep JSON nesting", raw(nested)),
        ("NUL bytes", chat("a\x00b\x00" * 100)),
        ("lone surrogate", raw(b'{"model":"spiral","messages":[{"role":"user","content":"\\ud800 hi"}]}')),
        ("16k-character emoji prompt", chat("\U0001f600" * 16_000)),
        ("4k emoji prompt", chat("\U0001f47e" * 3_999)),
        ("regex-shaped prompt", chat("(" * 3000 + "a" + ")*" * 500)),
        ("operators prompt", chat("1+" * 1999 + "1")),
        ("spaces then a question mark", chat(" " * 3998 + "?")),
        ("huge number", raw(b'{"model":"spiral","max_tokens":' + b"9" * 5000 + b',"messages":[]}')),
        ("float max_tokens", chat(max_tokens=1e308)),
        ("negative temperature", chat(temperature=-1)),
        ("NaN temperature", raw(b'{"model":"spiral","temperature":NaN,"messages":[{"role":"user","content":"hi"}]}')),
        ("null messages", raw(b'{"model":"spiral","messages":null}')),
        ("messages as a string", raw(b'{"model":"spiral","messages":"hi"}')),
        ("unknown role", chat() | {"json": {"model": "spiral", "messages": [{"role": "root", "content": "hi"}]}}),
        ("100 stop strings", chat(stop=["x"] * 100)),
        ("content parts", chat([{"type": "text", "text": "hi"}] * 1000)),
        ("image part", chat([{"type": "image_url", "image_url": {"url": "http://127.0.0.1/x.png"}}])),
        ("form body", raw(b"model=spiral&messages=hi", "application/x-www-form-urlencoded")),
        ("text body", raw(b"hello", "text/plain")),
        ("empty body", raw(b"")),
        ("not JSON", raw(b"\xff\xfe\x00garbage")),
        ("unknown model", chat() | {"json": {"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}}),
        ("orchestrate with junk", raw(b'{"messages":[],"max_tokens":-5}', url="/orchestrate")),
        ("feedback for nothing", {"method": "POST", "url": "/feedback", "json": {"answer_id": "x" * 5000}}),
        ("admin without a token", {"method": "POST", "url": "/admin/reload?lora=latest"}),
        ("admin with a junk token", {"method": "GET", "url": "/admin/budget", "headers": {"authorization": junk}}),
        ("path traversal", {"method": "GET", "url": "/../../etc/passwd"}),
        ("huge query string", {"method": "GET", "url": "/v1/models?x=" + "a" * 8000}),
    ]  # fmt: skip
    return cases


def run_corpus(gateway: str, report: Report, log: Callable[[str], None], timeout_s: float) -> None:
    with httpx.Client(base_url=gateway, timeout=timeout_s) as client:
        for name, request in corpus():
            started = time.perf_counter()
            try:
                response = client.request(**request)
                answer = http_answer("corpus", name, response, time.perf_counter() - started)
            except httpx.HTTPError as exc:
                answer = Answer("corpus", name, type(exc).__name__, round(time.perf_counter() - started, 4), True)
            report.answers.append(answer)
            log(json.dumps(asdict(answer)))


def _fuzz_settings(max_examples: int) -> Any:
    """Hypothesis as a generator only: a fixed number of cases, the same ones every run (derandomized, no
    example database, no shrinking), no deadline or health check (the server's time is what is measured)."""
    import hypothesis

    return hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.generate],
    )


def _schemathesis_case(
    case: Any, name: str, gateway: str, report: Report, log: Callable[[str], None], timeout_s: float
) -> None:
    started = time.perf_counter()
    try:
        response = case.call(base_url=gateway, timeout=timeout_s)
        seconds = time.perf_counter() - started
        reason = ""
        try:
            reason = str(json.loads(response.text).get("error", {}).get("reason", ""))
        except (ValueError, AttributeError):
            pass
        status = response.status_code
        bad = status >= 500 and not (status == 503 and reason in DOCUMENTED_503)
        answer = Answer("schemathesis", name, str(status), round(seconds, 4), bad, reason)
    except Exception as exc:  # a transport error is the server's failure to answer
        answer = Answer("schemathesis", name, type(exc).__name__, round(time.perf_counter() - started, 4), True)
    report.answers.append(answer)
    if answer.bad:
        log(json.dumps(asdict(answer) | {"case": case.as_curl_command()[:2000]}))


def _attacker(
    name: str, gateway: str, report: Report, log: Callable[[str], None], timeout_s: float
) -> Callable[[Any], None]:
    def attack(case: Any) -> None:
        _schemathesis_case(case, name, gateway, report, log, timeout_s)

    return attack


def run_schemathesis(
    gateway: str, report: Report, log: Callable[[str], None], *, max_examples: int, timeout_s: float
) -> None:
    """Every operation of the gateway's OpenAPI document, valid and invalid cases (schemathesis' generators)."""
    import hypothesis
    import schemathesis
    from schemathesis.openapi import from_dict

    spec = httpx.get(f"{gateway}/openapi.json", timeout=30).json()
    settings = _fuzz_settings(max_examples)
    for result in from_dict(spec).get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            name = f"{operation.method.upper()} {operation.path} {mode.value}"
            attack = settings(hypothesis.given(case=operation.as_strategy(generation_mode=mode))(
                _attacker(name, gateway, report, log, timeout_s)))  # fmt: skip
            try:
                attack()
            except (hypothesis.errors.Unsatisfiable, hypothesis.errors.FailedHealthCheck) as exc:
                # An operation with nothing to vary (no parameters, no body) has no invalid cases to make.
                log(f"schemathesis: {name}: no cases ({type(exc).__name__})")
        log(f"schemathesis: {operation.method.upper()} {operation.path} done, {len(report.answers)} answers so far")


def run_grpc_fuzz(
    envoy: str, report: Report, log: Callable[[str], None], *, max_examples: int, timeout_s: float
) -> None:
    """Orchestrate over gRPC through Envoy with arbitrary messages and parameters (Hypothesis)."""
    import hypothesis
    from hypothesis import strategies as st

    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
    message = st.builds(chat_pb2.ChatMessage, role=st.integers(0, 5), content=text)
    params = st.fixed_dictionaries(
        {},
        optional={
            "max_tokens": st.integers(-(2**31), 2**31 - 1),
            "temperature": st.floats(width=32, allow_nan=True, allow_infinity=True),
            "top_p": st.floats(width=32, allow_nan=True, allow_infinity=True),
            "seed": st.integers(-(2**63), 2**63 - 1),
            "stop": st.lists(text, max_size=8),
        },
    )
    channel = grpc.insecure_channel(envoy)
    stub = router_pb2_grpc.RouterServiceStub(channel)

    @_fuzz_settings(max_examples)
    @hypothesis.given(messages=st.lists(message, max_size=6), params=params, model=st.sampled_from(["", "spiral", "x"]))
    def attack(messages: list[chat_pb2.ChatMessage], params: dict[str, Any], model: str) -> None:
        request = router_pb2.OrchestrateRequest(
            messages=messages, params=chat_pb2.GenerationParams(**params), model=model
        )
        started = time.perf_counter()
        try:
            stub.Orchestrate(request, timeout=timeout_s)
            code, reason = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            info = error_info(exc)  # type: ignore[arg-type]
            reason = info.reason if info else ""
        seconds = time.perf_counter() - started
        bad = code not in ALLOWED_GRPC and not (code == grpc.StatusCode.UNAVAILABLE and reason in DOCUMENTED_503)
        answer = Answer("grpc", "Orchestrate", code.name, round(seconds, 4), bad, reason)
        report.answers.append(answer)
        if bad:
            log(json.dumps(asdict(answer) | {"request": str(request)[:2000]}))

    try:
        attack()
    finally:
        channel.close()


def run(
    gateway: str,
    envoy: str,
    *,
    limits: dict[str, Any],
    log: Callable[[str], None],
    processes: Callable[[], dict[str, int]],
    serving: Callable[[], list[str]],
) -> Report:
    """The whole stage against a running platform: `processes` gives each program's pid, `serving` the names
    of the checks that are not SERVING."""
    report = Report()
    before = processes()
    with Probe(gateway) as idle:
        time.sleep(limits["probe_idle_s"])
    report.probe_idle_ms = idle.samples
    with Probe(gateway) as probe:
        run_corpus(gateway, report, log, limits["max_answer_s"])
        run_schemathesis(
            gateway, report, log, max_examples=limits["schemathesis_examples"], timeout_s=limits["max_answer_s"]
        )
        run_grpc_fuzz(envoy, report, log, max_examples=limits["grpc_examples"], timeout_s=limits["max_answer_s"])
    report.probe_attack_ms, report.probe_errors = probe.samples, idle.errors + probe.errors
    after = processes()
    report.restarts = sum(1 for name, pid in before.items() if after.get(name) != pid)
    report.not_serving = serving()
    return report


def judge(report: Report, limits: dict[str, Any]) -> list[str]:
    numbers = report.numbers()
    failures = []
    if numbers["server_errors"] > limits["max_server_errors"]:
        failures.append(f"{numbers['server_errors']} server errors")
    if numbers["worst_s"] > limits["max_answer_s"]:
        failures.append(f"slowest answer {numbers['worst_s']} s > {limits['max_answer_s']} s")
    bound = max(limits["max_probe_ratio"] * numbers["probe_idle_p95_ms"], limits["min_probe_bound_ms"])
    if numbers["probe_attack_p95_ms"] > bound:
        failures.append(
            f"probe p95 under attack {numbers['probe_attack_p95_ms']} ms > {bound:.1f} ms "
            f"(idle {numbers['probe_idle_p95_ms']} ms)"
        )
    if numbers["restarts"] > limits["max_restarts"]:
        failures.append(f"{numbers['restarts']} services restarted")
    if numbers["not_serving"]:
        failures.append("not SERVING after the attack: " + ", ".join(numbers["not_serving"]))
    return failures


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    probe_main(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]))
