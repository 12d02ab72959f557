"""The micro Titanic (gate stage 6): a fixed prompt set through the whole cascade, measured per tier.

Every prompt of `titanic_prompts.json` goes through the gateway with the official `openai` client (so
gateway -> Envoy -> router -> cache / pattern head / council of heads / cloud), one at a time; then every
prompt the cache may keep (kinds `local` and `long`) goes again, unchanged. For each answering tier it
records the share of requests it answered, end-to-end latency p50/p95 (client side) and the router's own
(decision trace), the cloud cost in micro-dollars, and answer quality:

- pattern prompts: answered by the pattern head, containing every `expect` string (case-insensitive);
- local prompts: answered locally or by the cloud, containing one of `expect`;
- long prompts (over the local context window): answered by the cloud, containing one of `expect`;
- repeated prompts: answered by the cache with exactly the text of the first answer when that answer ended
  naturally (finish reason "stop"); a truncated first answer ("length") is never cached, so its repeat must
  come from another tier.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import openai

PROMPTS_FILE = Path(__file__).with_name("titanic_prompts.json")
# The trace's tier -> the Titanic's: the council, its below-threshold fallback and a single streamed head are
# all "local".
TIERS = {
    "TIER_CACHE": "cache",
    "TIER_PATTERN": "pattern",
    "TIER_COUNCIL": "local",
    "TIER_HEAD": "local",
    "TIER_LOCAL_FALLBACK": "local",
    "TIER_CLOUD": "cloud",
}
CACHEABLE = ("local", "long")


@dataclass(frozen=True)
class TitanicPrompt:
    id: str
    kind: str  # "pattern", "local" or "long"
    text: str
    expect: tuple[str, ...]
    reference: str = ""  # what the fake cloud answers


@dataclass
class Record:
    id: str
    kind: str
    run: str  # "first" or "repeat"
    tier: str  # "cache", "pattern", "local", "cloud", or "error"
    expected_tier: str  # what the tier must be, or "local|cloud"
    passed: bool  # the quality check of module docstring
    latency_ms: float
    router_latency_ms: float
    cost_usd_micros: int
    answer: str
    error: str = ""
    finish_reason: str = ""


def load_prompts(path: Path = PROMPTS_FILE) -> tuple[list[TitanicPrompt], int]:
    """(the prompts, max_tokens for every request)."""
    spec = json.loads(path.read_text())
    prompts = [
        TitanicPrompt(
            id=p["id"],
            kind=p["kind"],
            text=p["prompt"] + p.get("padding", "") * p.get("padding_times", 0),
            expect=tuple(p["expect"]),
            reference=p.get("reference", ""),
        )
        for p in spec["prompts"]
    ]
    kinds = {p.kind for p in prompts} - {"pattern", "local", "long"}
    if kinds:
        raise ValueError(f"{path}: unknown prompt kinds {sorted(kinds)}")
    return prompts, int(spec["max_tokens"])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a small sample; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _quality(prompt: TitanicPrompt, text: str) -> bool:
    lowered = text.lower()
    found = [e.lower() in lowered for e in prompt.expect]
    return all(found) if prompt.kind == "pattern" else any(found)


def ask(client: openai.OpenAI, prompt: TitanicPrompt, max_tokens: int, run: str, first: Record | None) -> Record:
    expected = {"pattern": "pattern", "local": "local|cloud", "long": "cloud"}[prompt.kind]
    if first is not None:
        expected = "cache" if first.finish_reason == "stop" else "not cache"
    started = time.perf_counter()
    try:
        reply = client.chat.completions.create(
            model="spiral", messages=[{"role": "user", "content": prompt.text}], max_tokens=max_tokens
        )
    except openai.APIError as exc:
        latency = (time.perf_counter() - started) * 1e3
        return Record(prompt.id, prompt.kind, run, "error", expected, False, latency, 0.0, 0, "", str(exc)[:300])
    latency = (time.perf_counter() - started) * 1e3
    trace = (reply.model_extra or {}).get("spiral_trace", {})
    text = reply.choices[0].message.content or ""
    if first is None:
        passed = _quality(prompt, text)
    else:
        passed = text == first.answer if expected == "cache" else _quality(prompt, text)
    return Record(
        id=prompt.id,
        kind=prompt.kind,
        run=run,
        tier=TIERS.get(trace.get("tier", ""), trace.get("tier", "unknown")),
        expected_tier=expected,
        passed=passed,
        latency_ms=round(latency, 2),
        router_latency_ms=round(int(trace.get("total_latency_us", 0)) / 1e3, 2),
        cost_usd_micros=int(trace.get("cost_usd_micros", 0)),
        answer=text,
        finish_reason=reply.choices[0].finish_reason or "",
    )


def run_titanic(gateway_url: str, prompts: list[TitanicPrompt], max_tokens: int) -> list[Record]:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused-locally", max_retries=0, timeout=180)
    records = [ask(client, p, max_tokens, "first", None) for p in prompts]
    firsts = {r.id: r for r in records}
    records += [ask(client, p, max_tokens, "repeat", firsts[p.id]) for p in prompts if p.kind in CACHEABLE]
    return records


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 3) if whole else 1.0


def report(records: list[Record], limits: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(failed checks, the report written as artifacts/titanic.json)."""
    total = len(records)
    tiers: dict[str, Any] = {}
    for tier in ("cache", "pattern", "local", "cloud"):
        answered = [r for r in records if r.tier == tier]
        tiers[tier] = {
            "answers": len(answered),
            "hit_ratio": _ratio(len(answered), total),
            "p50_ms": round(percentile([r.latency_ms for r in answered], 50), 1),
            "p95_ms": round(percentile([r.latency_ms for r in answered], 95), 1),
            "router_p50_ms": round(percentile([r.router_latency_ms for r in answered], 50), 1),
            "router_p95_ms": round(percentile([r.router_latency_ms for r in answered], 95), 1),
            "quality": _ratio(sum(r.passed for r in answered), len(answered)),
        }
    pattern = [r for r in records if r.kind == "pattern"]
    repeats = [r for r in records if r.run == "repeat" and r.expected_tier == "cache"]
    truncated = [r for r in records if r.run == "repeat" and r.expected_tier == "not cache"]
    long = [r for r in records if r.kind == "long" and r.run == "first"]
    local = [r for r in records if r.kind == "local" and r.run == "first"]
    errors = [r for r in records if r.tier == "error"]
    hits = {
        "pattern": _ratio(sum(r.tier == "pattern" for r in pattern), len(pattern)),
        "cache": _ratio(sum(r.tier == "cache" for r in repeats), len(repeats)),
        "cloud": _ratio(sum(r.tier == "cloud" for r in long), len(long)),
        "local_prompts_answered_locally": _ratio(sum(r.tier == "local" for r in local), len(local)),
        "truncated_answers_repeated": len(truncated),
    }
    cost = sum(r.cost_usd_micros for r in records)
    failures = []
    if len(errors) > limits["max_errors"]:
        failures.append(f"{len(errors)} requests failed ({errors[0].id}: {errors[0].error[:120]})")
    served_truncated = [r.id for r in truncated if r.tier == "cache"]
    if served_truncated:
        failures.append(f"truncated answers came back from the cache: {', '.join(served_truncated)}")
    for kind in ("pattern", "cache", "cloud"):
        if hits[kind] < limits[f"min_{kind}_hit_ratio"]:
            failures.append(f"{kind} hit ratio {hits[kind]} < {limits[f'min_{kind}_hit_ratio']}")
    for tier, numbers in tiers.items():
        if numbers["answers"] and numbers["quality"] < limits[f"min_quality_{tier}"]:
            failures.append(f"{tier} quality {numbers['quality']} < {limits[f'min_quality_{tier}']}")
        if numbers["p95_ms"] > limits[f"max_p95_ms_{tier}"]:
            failures.append(f"{tier} p95 {numbers['p95_ms']} ms > {limits[f'max_p95_ms_{tier}']} ms")
    if cost > limits["max_cost_usd_micros"]:
        failures.append(f"cloud cost {cost} micro-dollars > {limits['max_cost_usd_micros']}")
    body = {
        "requests": total,
        "errors": len(errors),
        "tiers": tiers,
        "hit_ratios": hits,
        "cost_usd_micros": cost,
        "quality": _ratio(sum(r.passed for r in records), total),
        "thresholds": limits,
        "failures": failures,
        "records": [asdict(r) | {"answer": r.answer[:200]} for r in records],
    }
    return failures, body
