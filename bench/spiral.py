"""The spiral's bill: the whole loop on banking77 traffic with unseen intents, and what it costs against all-cloud.

`make bench-spiral` (python -m bench.spiral) reads ../shared/data/banking77/train.csv in place and:
  1. splits it: a random 80 % of the intents (--intent-seed) are known; each known intent's prompts are cut
     into a training share (--train-share, replayed as traffic) and held-out test prompts; every prompt of the
     unseen 20 % is an out-of-scope test prompt (any local answer to it is wrong);
  2. starts a whole platform (deploy.platform.Platform, default profile, free ports, its own run directory)
     whose cloud providers are a stand-in teacher (FakeCloud) answering each prompt with its intent label;
     the council is off while teaching (SPIRAL_COUNCIL_HEADS=""), so the teacher answers all the traffic;
  3. replays the training traffic through the gateway (`POST /v1/chat/completions`, --concurrency clients),
     mines it (MinerService/Mine on the miner's port, with the operator's token), runs one distillation
     (TrainerService/SubmitJob with --budget-s, followed to its end as `make evolution-once` does) and promotes
     its adapter on both tracks through the admin path `make promote` uses (AdminService/ReloadAdapter,
     deploy.promote.GrpcPlatform);
  4. replays every test prompt with the council still off: the cheap tiers (cache, patterns) answer what they
     can, the teacher the rest;
  5. restarts the platform on the same run directory and Redis with every tier on, loads the promoted adapter
     again (the heads start from heads.json), and asks the council a random sample of the prompts the cheap
     tiers missed (--council-sample prompts, or fewer when --council-time-s runs out; a fresh seed per prompt
     keeps step 4's cached cloud answers out). Missed prompts outside the sample count as cloud answers, at the
     cost step 4 measured; an estimate that applies the sample's council rate to every miss is printed beside.
It prints, and writes to artifacts/bench-spiral.json: the share answered by each tier, each tier's precision
against the teacher (answer == intent label), in-scope and out-of-scope prompts answered locally, and cost per
1,000 test requests against all-cloud (every test prompt billed at the mean cost of the teacher's answers while
teaching). Targets (issue #16): >= 85 % of in-scope answered locally, <= 1 % of out-of-scope answered locally,
cost per 1,000 >= 85 % below all-cloud.
Smaller runs: --intents N (a random N of the 77 intents), --train-per-intent, --test-per-intent.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import random
import shutil
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.miner import DEFAULT_DATA
from deploy.gate.fake_cloud import FakeCloud, providers_json
from deploy.platform import Platform, free_port_env
from deploy.promote import GrpcPlatform
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from spiral_common.auth import bearer, operator_token
from spiral_common.config import Settings, load_settings
from spiral_common.enums import BOTH_TRACKS
from trainer_svc.evolution_once import describe

CLOUD = "TIER_CLOUD"
TARGETS = {"in_scope_local": 0.85, "out_of_scope_local": 0.01, "cost_saving": 0.85}
FINAL_JOB_STATES = (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_CANCELLED)
WARM_PROMPT = "bench-spiral: is the new pattern set loaded?"


@dataclass(frozen=True)
class Prompt:
    text: str
    label: str  # the intent: what the teacher answers
    in_scope: bool  # its intent is one of the known (taught) ones


@dataclass(frozen=True)
class Split:
    known: list[str]
    unseen: list[str]
    train: list[Prompt]
    test: list[Prompt]


@dataclass
class Answer:
    """One test prompt's answer: which tier gave it, whether it was right, what it cost."""

    text: str
    label: str
    in_scope: bool
    tier: str
    answer: str
    cost_usd_micros: int
    latency_ms: float

    @property
    def local(self) -> bool:
        return self.tier not in (CLOUD, "error")

    @property
    def right(self) -> bool:
        return self.answer.strip() == self.label


def split_intents(rows: list[dict], args: argparse.Namespace) -> Split:
    """The leave-intents-out split (bench.miner's protocol: a seeded 80 % of the intents known)."""
    rng = random.Random(args.intent_seed)
    by_intent: dict[str, list[str]] = {}
    for row in rows:
        by_intent.setdefault(row["category"], []).append(row["text"])
    intents = sorted(by_intent)
    if args.intents:
        intents = sorted(rng.sample(intents, min(args.intents, len(intents))))
    rng.shuffle(intents)
    cut = round(len(intents) * 0.8)
    known, unseen = sorted(intents[:cut]), sorted(intents[cut:])
    train: list[Prompt] = []
    test: list[Prompt] = []
    for intent in known:
        texts = rng.sample(by_intent[intent], len(by_intent[intent]))
        share = round(len(texts) * args.train_share)
        train += [Prompt(t, intent, True) for t in texts[:share][: args.train_per_intent or None]]
        test += [Prompt(t, intent, True) for t in texts[share:][: args.test_per_intent or None]]
    for intent in unseen:
        texts = rng.sample(by_intent[intent], len(by_intent[intent]))
        test += [Prompt(t, intent, False) for t in texts[: args.test_per_intent or None]]
    rng.shuffle(train)
    rng.shuffle(test)
    return Split(known, unseen, train, test)


# -- talking to the platform -------------------------------------------------------------------------------
async def ask_all(
    url: str, prompts: list[Prompt], concurrency: int, *, seed_base: int = 0, time_limit_s: float = 0.0
) -> list[Answer]:
    """Each prompt once through the gateway, `concurrency` in flight; with `time_limit_s`, no prompt starts after
    it (those are left out of the result). `seed_base` gives each prompt a seed of its own (0: none)."""
    semaphore = asyncio.Semaphore(concurrency)
    deadline = time.monotonic() + time_limit_s if time_limit_s else float("inf")
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:

        async def ask(i: int, prompt: Prompt) -> Answer | None:
            async with semaphore:
                if time.monotonic() > deadline:
                    return None
                body: dict = {"model": "spiral", "messages": [{"role": "user", "content": prompt.text}],
                              "max_tokens": 16, "temperature": 0}  # fmt: skip
                if seed_base:
                    body["seed"] = seed_base + i
                started = time.perf_counter()
                try:
                    reply = await client.post(url, json=body)
                    reply.raise_for_status()
                    data = reply.json()
                except (httpx.HTTPError, ValueError) as exc:
                    print(f"  error on {prompt.text!r}: {exc}", flush=True)
                    return Answer(prompt.text, prompt.label, prompt.in_scope, "error", "", 0, 0.0)
                trace = data.get("spiral_trace", {})
                return Answer(
                    prompt.text,
                    prompt.label,
                    prompt.in_scope,
                    trace.get("tier", "TIER_UNSPECIFIED"),
                    data["choices"][0]["message"]["content"],
                    int(trace.get("cost_usd_micros", 0)),
                    (time.perf_counter() - started) * 1000,
                )

        answers = await asyncio.gather(*(ask(i, p) for i, p in enumerate(prompts)))
    return [a for a in answers if a is not None]


def mine(settings: Settings, token: str) -> dict:
    # On the miner's own port: a full-size run may mine for longer than Envoy lets a silent stream live
    # (SPIRAL_ENVOY_STREAM_IDLE_TIMEOUT_S), and Mine checks the token there alike.
    with grpc.insecure_channel(str(settings.miner.miner_addr)) as channel:
        reply = miner_pb2_grpc.MinerServiceStub(channel).Mine(
            miner_pb2.MineRequest(), metadata=bearer(token), timeout=3600
        )
    return {
        "prompts_read": reply.prompts_read,
        "clusters": reply.clusters,
        "patterns_published": reply.patterns_published,
        "pattern_set_version": reply.pattern_set_version,
        "duration_s": round(reply.duration_ms / 1000, 1),
        "calibrated_precision": round(reply.calibrated_precision, 4),
        "calibrated_coverage": round(reply.calibrated_coverage, 4),
        "note": reply.note,
    }


def distill(settings: Settings, token: str, budget_s: int) -> dict:
    """One distillation job, as `make evolution-once` submits it (through Envoy's internal listener: SubmitJob is
    not on the public one), polled to its end."""
    with grpc.insecure_channel(str(settings.envoy.envoy_internal_addr)) as channel:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        request = trainer_pb2.SubmitJobRequest(kind=trainer_pb2.JOB_KIND_DISTILL, time_budget_s=budget_s)
        job = stub.SubmitJob(request, metadata=bearer(token), timeout=30).job
        deadline = time.monotonic() + budget_s + 1800  # loading, evaluating and exporting come on top
        last = ""
        while job.state not in FINAL_JOB_STATES:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench.spiral: job {job.job_id} not done after {budget_s + 1800} s: {describe(job)}")
            time.sleep(5)
            job = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(token), timeout=30).job
            if describe(job) != last:
                last = describe(job)
                print(f"  {last}", flush=True)
    r = job.result
    return {
        "state": trainer_pb2.JobState.Name(job.state),
        "error": job.error,
        "adapter_version": r.adapter_version,
        "published": r.published,
        "eval_score_new": round(r.eval_score_new, 4),
        "eval_score_current": round(r.eval_score_current, 4),
        "cost_usd_micros": r.cost_usd_micros,
        "duration_s": round(r.duration_ms / 1000, 1),
        # The council threshold the job calibrated for its adapter (infinite: the adapter's council never answers).
        "council_calibration": {
            "threshold": r.council_calibration.threshold,
            "prompts": r.council_calibration.prompts,
            "coverage": round(r.council_calibration.coverage, 4),
            "precision": round(r.council_calibration.precision, 4),
            "max_error": r.council_calibration.max_error,
        }
        if r.HasField("council_calibration")
        else None,
    }


def promote(settings: Settings, token: str, version: str) -> None:
    """The adapter on both tracks, through the admin call `make promote` makes when the canary holds."""
    admin = GrpcPlatform(settings, token)
    try:
        admin.reload(version, BOTH_TRACKS)
    finally:
        admin.channel.close()


def pattern_versions(settings: Settings) -> list[float]:
    """The pattern set version each router matches against (its spiral_pattern_set_version gauge)."""
    versions = []
    for track in ("main", "canary"):
        address = settings.router.router_metrics_addr(track)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            families = text_string_to_metric_families(reply.read().decode())
            versions += [s.value for f in families for s in f.samples if s.name == "spiral_pattern_set_version"]
    return versions


async def load_patterns(settings: Settings, version: int, timeout_s: float = 300.0) -> None:
    """Ask each router directly until both match against `version`: a router loads a new set on the request
    path, and Envoy sends the canary too few requests for the replay to be sure to reach it."""
    from spiral.common.v1 import chat_pb2
    from spiral.router.v1 import router_pb2, router_pb2_grpc

    deadline = time.monotonic() + timeout_s
    seed = 0
    while min(pattern_versions(settings), default=0) < version:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench.spiral: the routers did not load pattern set {version} in {timeout_s:.0f} s")
        for track in ("main", "canary"):
            seed += 1
            async with grpc.aio.insecure_channel(str(settings.router.router_addr(track))) as channel:
                request = router_pb2.OrchestrateRequest(
                    messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=WARM_PROMPT)],
                    params=chat_pb2.GenerationParams(max_tokens=4, seed=seed),
                )
                await router_pb2_grpc.RouterServiceStub(channel).Orchestrate(request, timeout=120)
        await asyncio.sleep(1.0)


# -- the numbers -------------------------------------------------------------------------------------------
def summarise(answers: list[Answer], cloud_cost: float, estimate: dict | None = None) -> dict:
    """Shares per tier, precision per tier, local answers by scope and the bill, for one set of answers."""
    n = len(answers)
    in_scope = [a for a in answers if a.in_scope]
    out_scope = [a for a in answers if not a.in_scope]
    tiers: dict[str, dict] = {}
    for tier, count in sorted(Counter(a.tier for a in answers).items()):
        mine_ = [a for a in answers if a.tier == tier]
        tiers[tier] = {
            "answers": count,
            "share": round(count / n, 4),
            "precision": round(sum(a.right for a in mine_) / count, 4),
            "in_scope": sum(a.in_scope for a in mine_),
            "out_of_scope": sum(not a.in_scope for a in mine_),
        }
    spent = sum(a.cost_usd_micros for a in answers)
    per_1000 = 1000 * spent / max(n, 1)
    all_cloud = 1000 * cloud_cost
    local = [a for a in answers if a.local]
    return {
        "requests": n,
        "tiers": tiers,
        "in_scope_local": round(sum(a.local for a in in_scope) / max(len(in_scope), 1), 4),
        "out_of_scope_local": round(sum(a.local for a in out_scope) / max(len(out_scope), 1), 4),
        "local_precision": round(sum(a.right for a in local) / max(len(local), 1), 4),
        "cost_per_1000_usd_micros": round(per_1000, 1),
        "all_cloud_per_1000_usd_micros": round(all_cloud, 1),
        "cost_saving": round(1 - per_1000 / all_cloud, 4) if all_cloud else 0.0,
    }


def council_estimate(cheap: list[Answer], sampled: list[Answer]) -> list[Answer]:
    """Every cheap-tier miss given the council's rate on the sample, per scope: the sample's answers stand for
    the misses of their scope in proportion (a miss outside the sample borrows a sampled answer of its scope)."""
    by_scope = {scope: [a for a in sampled if a.in_scope == scope] for scope in (True, False)}
    estimated, used = [], Counter[bool]()
    for answer in cheap:
        pool = by_scope[answer.in_scope]
        if answer.tier != CLOUD or not pool:
            estimated.append(answer)
            continue
        stand_in = pool[used[answer.in_scope] % len(pool)]
        used[answer.in_scope] += 1
        estimated.append(Answer(**{**asdict(stand_in), "text": answer.text, "label": answer.label}))
    return estimated


def table(report: dict) -> str:
    measured, rows = report["measured"], []
    rows.append("| tier | share of test prompts | precision vs teacher | in-scope | out-of-scope |")
    rows.append("|---|---|---|---|---|")
    for tier, t in measured["tiers"].items():
        rows.append(
            f"| {tier.removeprefix('TIER_').lower()} | {100 * t['share']:.1f} % | {100 * t['precision']:.1f} % | "
            f"{t['in_scope']} | {t['out_of_scope']} |"
        )
    rows.append("")
    rows.append("| measure | measured | estimate (council rate on every miss) | target |")
    rows.append("|---|---|---|---|")
    est = report.get("estimated") or {}

    def pct(d: dict, key: str) -> str:
        return f"{100 * d[key]:.1f} %" if key in d else "-"

    rows.append(f"| in-scope answered locally | {pct(measured, 'in_scope_local')} | {pct(est, 'in_scope_local')} | "
                f">= {100 * TARGETS['in_scope_local']:.0f} % |")  # fmt: skip
    rows.append(f"| out-of-scope answered locally | {pct(measured, 'out_of_scope_local')} | "
                f"{pct(est, 'out_of_scope_local')} | <= {100 * TARGETS['out_of_scope_local']:.0f} % |")  # fmt: skip
    rows.append(
        f"| precision of local answers | {pct(measured, 'local_precision')} | {pct(est, 'local_precision')} | |"
    )
    rows.append(
        f"| cost per 1,000 requests (micro-USD) | {measured['cost_per_1000_usd_micros']:.0f} | "
        f"{est.get('cost_per_1000_usd_micros', '-')} | all-cloud {measured['all_cloud_per_1000_usd_micros']:.0f} |"
    )
    rows.append(f"| cost below all-cloud | {pct(measured, 'cost_saving')} | {pct(est, 'cost_saving')} | "
                f">= {100 * TARGETS['cost_saving']:.0f} % |")  # fmt: skip
    return "\n".join(rows)


# -- the run -----------------------------------------------------------------------------------------------
def platform_env(run: Path, providers: Path, budget_s: int) -> dict[str, str]:
    return {
        "SPIRAL_PROFILE": "default",
        **os.environ,
        "SPIRAL_RUN_DIR": str(run),
        "SPIRAL_CLOUD_PROVIDERS_FILE": str(providers),
        "SPIRAL_DAILY_POOL_USD_MICROS": "100000000",  # the bill is measured, never capped
        "SPIRAL_DISTILL_MIN_RUN_S": str(min(120, budget_s)),
        "SPIRAL_DISTILL_EVAL_MAX_TOKENS": "16",  # an intent label is a few tokens
        # Enough held-out prompts for the council's calibration to mean something (48 right answers and no
        # wrong one are the least that passes SPIRAL_COUNCIL_MAX_ERROR=0.02), 150 of them calibrated.
        "SPIRAL_DISTILL_MAX_HELDOUT": "200",
        # bench-distill's recipe, the best measured on this box (docs/benchmarks.md, "The nightly spiral").
        "SPIRAL_DISTILL_LEARNING_RATE": "2e-3",
        "SPIRAL_DISTILL_BATCH_SIZE": "8",
        "SPIRAL_DISTILL_EPOCHS": "1",
        "SPIRAL_DISTILL_MAX_STEPS": "100000",
        "SPIRAL_DISTILL_TOP_LAYERS": "12",
        **free_port_env(),
    }


def run(args: argparse.Namespace) -> dict:
    rows = list(csv.DictReader(args.data.open()))
    split = split_intents(rows, args)
    out_of_scope = sum(not p.in_scope for p in split.test)
    print(f"{len(split.known)} known intents, {len(split.unseen)} unseen; {len(split.train)} training prompts, "
          f"{len(split.test)} test prompts ({out_of_scope} out of scope)", flush=True)  # fmt: skip
    report: dict = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "known_intents": split.known,
        "unseen_intents": split.unseen,
        "train_prompts": len(split.train),
        "test_prompts": len(split.test),
        "load_average_start": os.getloadavg(),
    }
    cloud = FakeCloud(answers={p.text: p.label for p in split.train + split.test})  # the teacher knows every intent
    cloud.start()
    run_dir = Path(tempfile.mkdtemp(prefix="spiral-bench-spiral-"))
    providers = run_dir / "providers.json"
    providers.write_text(json.dumps(providers_json(cloud)))
    secrets = run_dir / "secrets.env"
    secrets.touch(mode=0o600)
    secrets.write_text(
        f"SPIRAL_ADMIN_TOKEN=bench-{os.urandom(8).hex()}\nSPIRAL_SERVICE_TOKEN=bench-service-{os.urandom(8).hex()}\n"
        "FAKE_CLOUD_KEY=bench\n"
    )
    env = platform_env(run_dir, providers, args.budget_s)
    teaching = Platform(load_settings({**env, "SPIRAL_COUNCIL_HEADS": ""}))  # the teacher answers everything
    serving = Platform(load_settings(env))
    settings = serving.settings
    token = operator_token(settings)
    url = f"http://{settings.gateway.gateway_addr}/v1/chat/completions"
    phases: dict[str, float] = {}
    try:
        # 1. Teach: the traffic, then the miner and one distillation, then promotion.
        started = time.monotonic()
        teaching.start(timeout_s=300)
        phases["start_teaching_platform_s"] = time.monotonic() - started
        started = time.monotonic()
        taught = asyncio.run(ask_all(url, split.train, args.concurrency))
        phases["teach_s"] = time.monotonic() - started
        report["teaching_tiers"] = dict(Counter(a.tier for a in taught))
        cloud_costs = [a.cost_usd_micros for a in taught if a.tier == CLOUD]
        cloud_cost = sum(cloud_costs) / max(len(cloud_costs), 1)
        report["teaching_cost_usd_micros"] = sum(cloud_costs)
        print(f"taught {len(taught)} prompts in {phases['teach_s']:.0f} s: {report['teaching_tiers']}; "
              f"a cloud answer costs {cloud_cost:.1f} micro-USD", flush=True)  # fmt: skip

        started = time.monotonic()
        report["mine"] = mine(settings, token)
        phases["mine_s"] = time.monotonic() - started
        print(f"mined: {report['mine']}", flush=True)

        started = time.monotonic()
        report["distill"] = distill(settings, token, args.budget_s)
        phases["distill_s"] = time.monotonic() - started
        print(f"distilled: {report['distill']}", flush=True)
        version = report["distill"]["adapter_version"]
        if version:
            promote(settings, token, version)
            print(f"promoted adapter {version} on main and canary", flush=True)
        else:
            print("no adapter was registered: the base model serves", flush=True)

        # 2. The cheap tiers on every test prompt (the council is still off: a miss goes to the cloud).
        if report["mine"]["pattern_set_version"]:
            asyncio.run(load_patterns(settings, report["mine"]["pattern_set_version"]))
        started = time.monotonic()
        cheap = asyncio.run(ask_all(url, split.test, args.concurrency))
        phases["cheap_tiers_s"] = time.monotonic() - started
        print(f"cheap tiers on {len(cheap)} test prompts in {phases['cheap_tiers_s']:.0f} s: "
              f"{dict(Counter(a.tier for a in cheap))}", flush=True)  # fmt: skip
        teaching.stop()

        # 3. Every tier on: the council on a sample of what the cheap tiers missed.
        started = time.monotonic()
        serving.start(timeout_s=300)
        if version:
            promote(settings, token, version)  # the heads start from heads.json: load the promoted adapter again
        phases["start_serving_platform_s"] = time.monotonic() - started
        misses = [Prompt(a.text, a.label, a.in_scope) for a in cheap if a.tier == CLOUD]
        sample = random.Random(args.intent_seed).sample(misses, min(args.council_sample, len(misses)))
        started = time.monotonic()
        council = asyncio.run(
            ask_all(url, sample, args.council_concurrency, seed_base=1_000_000, time_limit_s=args.council_time_s)
        )
        phases["council_s"] = time.monotonic() - started
        per_prompt = phases["council_s"] / max(len(council), 1)
        print(f"council sample: {len(council)} of {len(misses)} misses in {phases['council_s']:.0f} s "
              f"({per_prompt:.1f} s a prompt): {dict(Counter(a.tier for a in council))}", flush=True)  # fmt: skip
        report["council_sample"] = {"asked": len(council), "misses": len(misses), "s_per_prompt": round(per_prompt, 1),
                                    "tiers": dict(Counter(a.tier for a in council))}  # fmt: skip
    finally:
        for platform in (teaching, serving):
            platform.stop()
        cloud.stop()
        if not args.keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)

    by_text = {a.text: a for a in council}
    final = [by_text.get(a.text, a) if a.tier == CLOUD else a for a in cheap]
    report["measured"] = summarise(final, cloud_cost)
    report["estimated"] = summarise(council_estimate(cheap, council), cloud_cost) if council else None
    report["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
    report["load_average_end"] = os.getloadavg()
    report["answers"] = [asdict(a) for a in final]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="banking77 train.csv (read in place)")
    parser.add_argument("--intent-seed", type=int, default=0, help="which 80 %% of the intents are known")
    parser.add_argument("--intents", type=int, default=0, help="use a random N of the intents (0: all)")
    parser.add_argument("--train-share", type=float, default=0.8, help="share of a known intent's prompts taught")
    parser.add_argument("--train-per-intent", type=int, default=0, help="at most N taught per intent (0: all)")
    parser.add_argument("--test-per-intent", type=int, default=0, help="at most N test prompts per intent (0: all)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients replaying traffic and cheap-tier tests")
    parser.add_argument("--budget-s", type=int, default=900, help="the distillation's time budget")
    parser.add_argument("--council-sample", type=int, default=40, help="cheap-tier misses asked of the council")
    parser.add_argument("--council-time-s", type=float, default=600.0, help="no council prompt starts after this")
    parser.add_argument("--council-concurrency", type=int, default=2)
    parser.add_argument("--keep-run-dir", action="store_true", help="keep the platform's run directory and logs")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-spiral.json"))
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"bench.spiral: no data file {args.data} (pass --data)")
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    summary = {k: v for k, v in report.items() if k not in ("answers", "known_intents", "unseen_intents")}
    print(json.dumps(summary, indent=2, default=str))
    print(table(report))


if __name__ == "__main__":
    main()
