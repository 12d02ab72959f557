"""One distillation run in its own process: train, export, evaluate. `python -m trainer_svc.train_child SPEC`.

The worker starts it with networking disabled where the kernel allows (see trainer_svc/sandbox.py) and kills
it to cancel; it never needs the network: the model is a local GGUF, the Hugging Face libraries run offline.
It reads a spec (JSON, written by the worker), prints one JSON line per event on stdout (`progress`, then
`result`), and writes the adapter to the spec's `out_path`. It publishes nothing: that is the worker's step.

Evaluation: the new adapter and the current one (or the base model) answer every held-out prompt in
llama.cpp, greedily, under the first head's system prompt, exactly as a head would serve them. A prompt scores
its answer's token F1 against the teacher's (SQuAD-style: lower-cased, punctuation and articles dropped; an
exact match scores 1). The adapter's score is the mean; exact matches are counted too.

Calibration: the new adapter's council is run on the held-out prompts as the router runs it (every council
head answers under its own system prompt and sampling, the same vote picks a winner), and the threshold the
adapter carries is the lowest winning score whose answers matched the teacher's (exactly, after the same
normalisation) often enough for SPIRAL_COUNCIL_MAX_ERROR (spiral_common/council_vote.calibrate_threshold). It
runs on at most SPIRAL_DISTILL_CALIBRATION_PROMPTS prompts and stops early rather than overrun the budget.
"""

from __future__ import annotations

import os
import resource

# Before any Hugging Face import: nothing is ever downloaded.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import string  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

_ARTICLES = re.compile(r"\b(a|an|the)\b")
REWRITE_RESERVE_S = 15.0  # calibration stops this long before the deadline: the adapter is written again after


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def answer_tokens(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in string.punctuation or ch == "_")
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = answer_tokens(prediction), answer_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def evaluate(spec: dict[str, Any], adapter_path: str | None, engine: Any) -> dict[str, float]:
    from spiral_common.chat import ChatRequest, Message

    handle = engine.load_adapter(Path(adapter_path)) if adapter_path else None
    system = spec["system_prompts"][0] if spec["system_prompts"] else None
    f1_total, exact = 0.0, 0
    try:
        for prompt, reference in spec["heldout"]:
            messages = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
            request = ChatRequest(messages, max_tokens=spec["eval_max_tokens"], temperature=0.0, top_p=1.0, seed=0)
            pieces: list[str] = []
            engine.generate(request, pieces.append, threading.Event(), handle)
            answer = "".join(pieces).strip()
            f1_total += token_f1(answer, reference)
            exact += answer_tokens(answer) == answer_tokens(reference)
    finally:
        if handle is not None:
            engine.free_adapter(handle)
    n = len(spec["heldout"])
    return {"score": f1_total / n, "exact_match": exact / n}


def calibrate_council(spec: dict[str, Any], adapter_path: str, engine: Any, stop_at: float) -> Any:
    """The adapter's council threshold (a council_vote.Calibration); None with fewer than two council heads
    (a council of one never answers) or no time left for a single prompt."""
    from spiral_common.chat import ChatRequest, Message
    from spiral_common.council_vote import calibrate_threshold, vote, winner

    members = spec.get("council") or []
    prompts = spec["heldout"][: spec.get("calibration_prompts", 0)]
    if len(members) < 2 or not prompts:
        return None
    handle = engine.load_adapter(Path(adapter_path))
    outcomes: list[tuple[float, bool]] = []
    try:
        for i, (prompt, reference) in enumerate(prompts):
            if time.monotonic() >= stop_at:
                break
            answers: list[str | None] = []
            for j, member in enumerate(members):
                messages = (Message("system", member["system_prompt"]), Message("user", prompt))
                request = ChatRequest(
                    messages,
                    max_tokens=spec["eval_max_tokens"],
                    temperature=member["temperature"],
                    top_p=member["top_p"],
                    seed=i * len(members) + j,
                )
                pieces: list[str] = []
                engine.generate(request, pieces.append, threading.Event(), handle)
                answers.append("".join(pieces).strip())
            scores = vote(answers, length_weight=spec["council_length_weight"],
                          diversity_weight=spec["council_diversity_weight"])  # fmt: skip
            best = winner(answers, scores)
            if best is None:  # nobody answered: the council would not have either
                outcomes.append((-math.inf, False))
                continue
            outcomes.append((scores[best].score, answer_tokens(answers[best] or "") == answer_tokens(reference)))
    finally:
        engine.free_adapter(handle)
    if not outcomes:
        return None
    return calibrate_threshold(outcomes, spec["council_max_error"])


class BudgetTooSmall(Exception):
    """The time budget cannot fit a training run: retrying cannot help."""


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from spiral_common.council_vote import to_metadata
    from spiral_common.llama_engine import LlamaEngine
    from trainer_svc.lora import LoraOptions, export_gguf_lora, load_base_model, train_adapter

    started = time.monotonic()
    deadline = started + spec["time_budget_s"]
    torch.set_num_threads(spec.get("threads") or os.cpu_count() or 1)
    emit("progress", stage="train", step=0, total_steps=spec["total_steps"], loss=0.0, eta_ms=0)
    base = load_base_model(Path(spec["model_path"]), quantize_4bit=spec["quantization"] == "nf4")
    # Training stops in time to export and evaluate within the job's budget.
    train_budget = deadline - time.monotonic() - spec["eval_reserve_s"]
    if train_budget <= 0:
        raise BudgetTooSmall(
            f"the time budget ({spec['time_budget_s']} s) leaves no time to train after loading the model and "
            f"reserving {spec['eval_reserve_s']:.0f} s to export and evaluate"
        )
    options = LoraOptions(
        rank=spec["rank"],
        alpha=spec["alpha"],
        target_modules=tuple(spec["target_modules"]),
        learning_rate=spec["learning_rate"],
        max_steps=spec["total_steps"],
        batch_size=spec["batch_size"],
        time_budget_s=train_budget,
        system_prompts=tuple(spec["system_prompts"]),
        # A tenth of the planned run (at least 10 steps): a shorter window's mean loss is too noisy to pick by.
        checkpoint_every=max(10, spec["total_steps"] // 10),
        top_layers=spec.get("top_layers", 0),
        lr_schedule=spec.get("lr_schedule", "constant"),
        seed=spec.get("seed", 0),
    )
    train_started = time.monotonic()

    def progress(step: int, loss: float) -> None:
        per_step = (time.monotonic() - train_started) / step
        left = min(per_step * (spec["total_steps"] - step), max(train_budget - (time.monotonic() - train_started), 0))
        eta_ms = int((left + spec["eval_reserve_s"]) * 1000)
        emit("progress", stage="train", step=step, total_steps=spec["total_steps"], loss=loss, eta_ms=eta_ms)

    result = train_adapter(base, [tuple(pair) for pair in spec["train"]], options, progress_callback=progress)
    del base
    emit("progress", stage="export", step=result.steps, total_steps=spec["total_steps"], loss=result.losses[-1])
    out_path = Path(spec["out_path"])
    export_gguf_lora(result, out_path, extra_metadata=spec.get("metadata", {}))

    emit("progress", stage="evaluate", step=result.steps, total_steps=spec["total_steps"], loss=result.losses[-1])
    # The adapter is checked the way the heads will use it: llama.cpp loads it over the same GGUF.
    engine = LlamaEngine(Path(spec["model_path"]), context_tokens=spec.get("eval_context_tokens", 1024),
                         threads=spec.get("threads", 0), gpu_layers=0)  # fmt: skip
    new = evaluate(spec, str(out_path), engine)
    current = evaluate(spec, spec.get("current_adapter_path"), engine)
    emit("progress", stage="evaluate", step=result.steps, total_steps=spec["total_steps"], loss=result.losses[-1])
    calibration = calibrate_council(spec, str(out_path), engine, stop_at=deadline - REWRITE_RESERVE_S)
    # Written again with its score and council threshold, which the registry lists (a few seconds).
    metadata = {**spec.get("metadata", {}), "eval_score": f"{new['score']:.4f}"}
    if calibration is not None:
        metadata |= to_metadata(calibration)
    export_gguf_lora(result, out_path, extra_metadata=metadata)
    return {
        "steps": result.steps,
        "best_step": result.best_step,
        "final_loss": result.losses[-1],
        "train_seconds": result.train_seconds,
        "stopped_by_time_budget": result.stopped_by_time_budget,
        "eval_score_new": new["score"],
        "eval_exact_new": new["exact_match"],
        "eval_score_current": current["score"],
        "eval_exact_current": current["exact_match"],
        "council_calibration": None if calibration is None else dataclasses.asdict(calibration),
        "adapter_path": str(out_path),
    }


def limit_resources(memory_limit_mb: int) -> None:
    """The child's own limits, set before it loads anything: no core dumps (they would hold the training data),
    and an address space cap so that a runaway run fails alone (MemoryError) instead of taking the box."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit_mb:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str]) -> int:
    from trainer_svc.distill import PARENT_PID_ENV, die_with_parent

    if PARENT_PID_ENV in os.environ:
        die_with_parent(int(os.environ[PARENT_PID_ENV]))
    spec = json.loads(Path(argv[1]).read_text())
    limit_resources(int(spec.get("memory_limit_mb", 0)))
    try:
        emit("result", **run(spec))
    except Exception as exc:  # reported to the worker as the attempt's error
        emit("error", error=f"{type(exc).__name__}: {exc}", permanent=isinstance(exc, BudgetTooSmall))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
