"""The prompt miner on a labelled data set: cluster quality, pattern-head precision and coverage, and latency.

`make bench-miner` (python -m bench.miner) reads ../shared/data/banking77/train.csv (real customer queries,
77 intents), splits it 80/20 at random, and mines the 80 % as if it were traffic whose teacher answer is
the intent label. It reports:
  - the clusters' purity and adjusted Rand index against the true intents (noise points count as their own
    singleton clusters for ARI; purity is over clustered points, with the clustered share beside it);
  - the pattern head on the held-out 20 %: coverage (share answered at confidence >= 0.50) and precision;
  - for scale, a plain 10-nearest-neighbour vote over all training embeddings (no mining), at the coverage
    where its precision first drops below the target, and its accuracy at full coverage;
  - latency of the pattern tier (embed one prompt + match) with the mined set and with 10,000 random
    patterns of 16 vectors each, and of embedding and matching alone; numpy's BLAS on one thread, as the
    router runs it.
Then the leave-intents-out protocol (`unseen_intents`): for each seed of `--intent-seeds` (0 1 2), a random
80 % of the intents are known; the same 80/20 prompt split as above, and the miner mines the training
prompts of the known intents only; the held-out prompts of every intent are then matched, so those of the
unseen 20 % are out of scope (any local answer to them is wrong). It reports per seed and on average:
in-scope coverage and precision, the share of out-of-scope prompts answered locally, overall precision, and
beside them the miner's own published estimates. The answering rule is the router's: confidence >=
max(SPIRAL_PATTERN_THRESHOLD, 1 - SPIRAL_PATTERN_MAX_ERROR). Tuning decisions were made on seeds 100-102
(`--intent-seeds 100 101 102`); the reported seeds are 0-2.
Raw results go to artifacts/bench-miner.json. `--seed` picks another split; `--embeddings-cache F.npy`
reuses the data set's embeddings between runs (embedding 10,000 prompts takes ~2 minutes here).
Targets (issues): precision >= 97 % at coverage >= 80 %; pattern tier p95 <= 10 ms; unseen intents:
out-of-scope answered <= 1 %, in-scope precision >= 97 %, in-scope coverage >= 85 %.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from miner_svc.mining import Example, MinerConfig, MiningInput, mine_patterns
from spiral_common.embedding import DIMENSIONS, SentenceEncoder, single_threaded_blas
from spiral_common.pattern_set import Calibration, Pattern, PatternIndex, PatternSet, is_negated

TARGET_PRECISION = 0.97  # the target, for the baseline's operating point
OTHER_BOUNDS = (0.005, 0.01, 0.05, 0.1)  # the unseen-intents protocol also reports these max_error values
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "banking77" / "train.csv"


def purity_and_ari(labels: np.ndarray, truth: list[str]) -> tuple[float, float, float]:
    from sklearn.metrics import adjusted_rand_score

    clustered = labels >= 0
    majority = 0
    for label in set(labels[clustered].tolist()):
        majority += Counter(t for t, lab in zip(truth, labels, strict=True) if lab == label).most_common(1)[0][1]
    purity = majority / max(int(clustered.sum()), 1)
    singletons = np.where(clustered, labels, -1 - np.arange(len(labels)))
    return purity, float(adjusted_rand_score(truth, singletons)), float(clustered.mean())


def knn_baseline(train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str], k: int = 10):
    codes = {label: i for i, label in enumerate(sorted(set(train_labels)))}
    train_codes = np.array([codes[label] for label in train_labels])
    shares, right = [], []
    for vector, label in zip(test, test_labels, strict=True):
        sims = train @ vector
        top = np.argpartition(-sims, k)[:k]
        votes = np.bincount(train_codes[top], minlength=len(codes))
        shares.append(votes.max() / k)
        right.append(int(np.argmax(votes)) == codes.get(label, -1))
    share_of, is_right = np.array(shares), np.array(right)
    accuracy = float(is_right.mean())
    curve = []
    for cut in sorted(set(share_of.tolist()), reverse=True):
        answered = share_of >= cut
        curve.append((cut, float(answered.mean()), float(is_right[answered].mean())))
    return accuracy, curve


def synthetic_set(count: int, rng: np.random.Generator) -> PatternSet:
    """`count` random patterns with 16 vectors each, for the latency of a large index."""
    vectors = rng.standard_normal((count * 16, DIMENSIONS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.repeat(np.arange(count, dtype=np.int32), 16)
    centroids = vectors.reshape(count, 16, DIMENSIONS).mean(1)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    patterns = [Pattern(f"p{i}", f"answer {i}", [], 16, 1.0, bool(i % 5 == 0), 0, 0) for i in range(count)]
    return PatternSet(1, patterns, centroids.astype(np.float32), vectors, owners, Calibration())


def tier_latency(encoder: SentenceEncoder, index: PatternIndex, prompts: list[str]) -> tuple[float, float]:
    times = []
    for prompt in prompts:
        started = time.perf_counter()
        index.match(encoder.embed_one(prompt), is_negated(prompt))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def min_confidence(config: MinerConfig) -> float:
    """The router's rule for a mined answer (before abstention, the plain threshold)."""
    return float(getattr(config, "min_confidence", config.threshold))


def unseen_intents(rows: list[dict], vectors: np.ndarray, split_seed: int, intent_seed: int) -> dict:
    """The leave-intents-out protocol for one intent split (see the module's docstring)."""
    order = np.random.default_rng(split_seed).permutation(len(rows))
    cut = int(len(rows) * 0.8)
    intents = sorted({r["category"] for r in rows})
    rng = np.random.default_rng(intent_seed)
    known = {intents[i] for i in rng.permutation(len(intents))[: round(len(intents) * 0.8)]}
    train = [i for i in order[:cut] if rows[i]["category"] in known]
    test = order[cut:]
    config = MinerConfig()
    examples = [Example(rows[i]["text"], rows[i]["category"]) for i in train]
    started = time.perf_counter()
    mined, _ = mine_patterns(MiningInput(examples, vectors[train]), PatternSet.empty(), config, 0)
    mine_s = time.perf_counter() - started
    index = PatternIndex(mined)
    matches = [(i, index.match(vectors[i], is_negated(rows[i]["text"]))) for i in test]
    calibration = vars(mined.calibration)
    return {
        "intent_seed": intent_seed,
        "known_intents": len(known),
        "train_prompts": len(train),
        **answered_at(matches, rows, known, min_confidence(config)),
        "other_bounds": {
            str(bound): answered_at(matches, rows, known, max(config.threshold, 1.0 - bound)) for bound in OTHER_BOUNDS
        },
        "mine_s": round(mine_s, 1),
        "published_estimates": {
            k: calibration.get(k)
            for k in ("precision_at_threshold", "coverage_at_threshold", "unknown_answered", "precision_with_unknown")
        },
    }


def answered_at(matches: list, rows: list[dict], known: set[str], cut_at: float) -> dict:
    """In-scope coverage and precision, out-of-scope answered and overall precision at confidence >= cut_at."""
    counts: Counter[str] = Counter()
    for i, match in matches:
        scope = "in" if rows[i]["category"] in known else "out"
        counts[scope] += 1
        if match and match.confidence >= cut_at:
            counts[f"{scope}_answered"] += 1
            counts[f"{scope}_right"] += match.pattern.answer == rows[i]["category"]
    answered = counts["in_answered"] + counts["out_answered"]
    return {
        "in_scope_prompts": counts["in"],
        "out_of_scope_prompts": counts["out"],
        "in_scope_coverage": round(counts["in_answered"] / max(counts["in"], 1), 4),
        "in_scope_precision": round(counts["in_right"] / max(counts["in_answered"], 1), 4),
        "out_of_scope_answered": round(counts["out_answered"] / max(counts["out"], 1), 4),
        "overall_precision": round(counts["in_right"] / max(answered, 1), 4),
    }


def unseen_intents_table(results: list[dict]) -> dict:
    keys = ("in_scope_coverage", "in_scope_precision", "out_of_scope_answered", "overall_precision")
    other = {
        bound: {k: round(statistics.mean(r["other_bounds"][bound][k] for r in results), 4) for k in keys}
        for bound in results[0]["other_bounds"]
    }
    return {
        "per_seed": results,
        "mean": {k: round(statistics.mean(r[k] for r in results), 4) for k in keys},
        "mean_at_other_bounds": other,
    }


def load_vectors(rows: list[dict], cache: Path | None) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    if cache and cache.exists():
        vectors = np.load(cache)
    else:
        vectors = SentenceEncoder(threads=int(os.environ.get("BENCH_THREADS", "2"))).embed([r["text"] for r in rows])
        if cache:
            np.save(cache, vectors)
    return vectors, time.perf_counter() - started


def run(
    data: Path, seed: int, latency_queries: int, cache: Path | None = None, intent_seeds: tuple[int, ...] = (0, 1, 2)
) -> dict:
    rows = list(csv.DictReader(data.open()))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    cut = int(len(rows) * 0.8)
    train = [rows[i] for i in order[:cut]]
    test = [rows[i] for i in order[cut:]]
    vectors, embed_s = load_vectors(rows, cache)
    train_vectors, test_vectors = vectors[order[:cut]], vectors[order[cut:]]

    config = MinerConfig()
    examples = [Example(r["text"], r["category"]) for r in train]
    started = time.perf_counter()
    mined, summary = mine_patterns(MiningInput(examples, train_vectors), PatternSet.empty(), config, 0)
    mine_s = time.perf_counter() - started

    # Cluster quality: label each training prompt with its cluster as mined (per polarity, as the miner does).
    from miner_svc.phases import cluster_prompts

    negated = np.array([is_negated(r["text"]) for r in train])
    labels = np.full(len(train), -1)
    offset = 0
    for polarity in (False, True):
        idx = np.flatnonzero(negated == polarity)
        sub = cluster_prompts(train_vectors[idx], config.min_cluster_size)
        labels[idx] = np.where(sub >= 0, sub + offset, -1)
        offset += int(sub.max()) + 1 if len(sub) else 0
    purity, ari, clustered = purity_and_ari(labels, [r["category"] for r in train])

    index = PatternIndex(mined)
    answered = right = 0
    for row, vector in zip(test, test_vectors, strict=True):
        match = index.match(vector, is_negated(row["text"]))
        if match and match.confidence >= min_confidence(config):
            answered += 1
            right += match.pattern.answer == row["category"]
    coverage = answered / len(test)
    precision = right / max(answered, 1)

    knn_accuracy, curve = knn_baseline(
        train_vectors, [r["category"] for r in train], test_vectors, [r["category"] for r in test]
    )
    knn_at_target = max((c for c in curve if c[2] >= TARGET_PRECISION), key=lambda c: c[1], default=None)

    unseen = unseen_intents_table([unseen_intents(rows, vectors, seed, s) for s in intent_seeds])

    single_threaded_blas()  # as the router runs
    prompts = [r["text"] for r in test[:latency_queries]]
    mined_p50, mined_p95 = tier_latency(encoder_one := SentenceEncoder(threads=1), index, prompts)
    big = PatternIndex(synthetic_set(10_000, rng))
    big_p50, big_p95 = tier_latency(encoder_one, big, prompts)
    embed_times = []
    for prompt in prompts:
        t = time.perf_counter()
        encoder_one.embed_one(prompt)
        embed_times.append((time.perf_counter() - t) * 1000)
    embed_times.sort()
    match_times = []
    for vector, row in zip(test_vectors[:latency_queries], test, strict=False):
        t = time.perf_counter()
        big.match(vector, is_negated(row["text"]))
        match_times.append((time.perf_counter() - t) * 1000)
    match_times.sort()

    return {
        "data": str(data),
        "train_prompts": len(train),
        "held_out_prompts": len(test),
        "embed_s": round(embed_s, 1),
        "mine_s": round(mine_s, 1),
        "clusters": summary.clusters,
        "patterns": summary.patterns_published,
        "clustered_share": round(clustered, 3),
        "purity": round(purity, 3),
        "adjusted_rand_index": round(ari, 3),
        "calibration": vars(mined.calibration),
        "unseen_intents": unseen,
        "pattern_head_coverage": round(coverage, 3),
        "pattern_head_precision": round(precision, 3),
        "knn10_accuracy_full_coverage": round(knn_accuracy, 3),
        "knn10_at_target": {
            "min_vote_share": knn_at_target[0],
            "coverage": round(knn_at_target[1], 3),
            "precision": round(knn_at_target[2], 3),
        }
        if knn_at_target
        else None,
        "tier_latency_ms_mined": {"p50": round(mined_p50, 2), "p95": round(mined_p95, 2)},
        "tier_latency_ms_10000_patterns": {"p50": round(big_p50, 2), "p95": round(big_p95, 2)},
        "embed_only_ms": {
            "p50": round(statistics.median(embed_times), 2),
            "p95": round(embed_times[int(len(embed_times) * 0.95) - 1], 2),
        },
        "match_only_ms_10000_patterns": {
            "p50": round(statistics.median(match_times), 2),
            "p95": round(match_times[int(len(match_times) * 0.95) - 1], 2),
        },
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-queries", type=int, default=500)
    parser.add_argument("--embeddings-cache", type=Path, help="a .npy file to reuse the data set's embeddings")
    parser.add_argument("--json", type=Path, default=Path("artifacts/bench-miner.json"))
    parser.add_argument("--intent-seeds", type=int, nargs="+", default=[0, 1, 2], help="leave-intents-out splits")
    parser.add_argument(
        "--unseen-only", action="store_true", help="only the leave-intents-out protocol (no clusters, no latency)"
    )
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"bench.miner: no data file {args.data} (pass --data)")
    if args.unseen_only:
        rows = list(csv.DictReader(args.data.open()))
        vectors, _ = load_vectors(rows, args.embeddings_cache)
        result = {
            "unseen_intents": unseen_intents_table(
                [unseen_intents(rows, vectors, args.seed, s) for s in args.intent_seeds]
            )
        }
    else:
        result = run(args.data, args.seed, args.latency_queries, args.embeddings_cache, tuple(args.intent_seeds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
