"""The phases of one mining step, in the order `mining.mine_patterns()` runs them (pure CPU, no I/O).

keep alive -> cluster and group answers -> merge each group with the earlier patterns -> absorb stragglers
-> group what is left as counter-evidence -> retire -> assemble the set (calibration: `calibration.py`).

The phases share two values: a `Window` (the run's prompts, read only) and a `Draft` (the pattern set under
construction, which the phases grow and edit in place).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from spiral_common.pattern_set import (
    Calibration,
    Pattern,
    PatternIndex,
    PatternSet,
    answer_codes,
    answer_key,
    is_negated,
    vote,
)

if TYPE_CHECKING:  # mining.py imports this module
    from miner_svc.mining import Example, MinerConfig

BRUTE_FORCE_LIMIT = 3000
REDUCED_DIMENSIONS = 32
MIN_SAMPLES = 2  # HDBSCAN's density smoothing: 2 keeps clusters small and pure (purity 0.92 vs 0.58 at 5)
EXEMPLARS = 5  # example prompts kept per pattern, for people


@dataclass(frozen=True)
class Window:
    """The run's prompts as the phases read them: one row per example, with its vector, answer key
    (`answer_key` of its teacher answer) and polarity (`is_negated` of its prompt)."""

    examples: list[Example]
    vectors: np.ndarray
    keys: list[str]
    negated: np.ndarray

    @classmethod
    def of(cls, examples: list[Example], vectors: np.ndarray) -> Window:
        keys = [answer_key(e.answer) for e in examples]
        negated = np.array([is_negated(e.prompt) for e in examples], dtype=bool)
        return cls(examples, vectors, keys, negated)

    def take(self, rows: np.ndarray) -> Window:
        """The window of `rows` alone (renumbered from 0)."""
        return Window(
            [self.examples[i] for i in rows], self.vectors[rows], [self.keys[i] for i in rows], self.negated[rows]
        )


@dataclass(frozen=True)
class Group:
    """Window rows that share one answer key and one polarity: one pattern's worth of evidence."""

    members: np.ndarray  # window rows
    negated: bool
    answering: bool  # False: counter-evidence, a pattern that votes but never answers
    agreement: float  # the share of its cluster that gave this answer (0 for stragglers)


@dataclass
class Draft:
    """The pattern set under construction: patterns (the earlier run's first, copied) and their evidence
    rows, kept as chunks: vectors, the pattern each belongs to, and the window row it came from (-1: an
    earlier run). Counts what this run added and retired."""

    patterns: list[Pattern]
    vectors: list[np.ndarray]
    owners: list[np.ndarray]
    sources: list[np.ndarray]
    carried: np.ndarray  # the earlier run's centroids: row i is patterns[i]
    new: int = 0  # answering patterns added
    retired: int = 0  # answering patterns retired

    @classmethod
    def of(cls, existing: PatternSet) -> Draft:
        return cls(
            patterns=[replace(p) for p in existing.patterns],
            vectors=[existing.vectors],
            owners=[existing.owners],
            sources=[np.full(len(existing.owners), -1)],
            carried=existing.centroids,
        )

    def add_evidence(self, vectors: np.ndarray, owners: np.ndarray, sources: np.ndarray) -> None:
        self.vectors.append(vectors)
        self.owners.append(owners)
        self.sources.append(sources)


def keep_alive(
    draft: Draft, existing: PatternSet, window: Window, hits: Counter[str], threshold: float, now_ms: int
) -> None:
    """Stamp `now_ms` as last matched on every earlier pattern that a window prompt matches at the router's
    `threshold`, or that answered traffic in the window (`hits`: pattern id -> answers)."""
    if len(existing.active()) and len(window.examples):
        index = PatternIndex(existing)
        for vector, negated in zip(window.vectors, window.negated, strict=True):
            match = index.match(vector, bool(negated))
            if match and match.confidence >= threshold:
                match.pattern.last_matched_ms = now_ms  # index shares the existing set: copy below
        for old, new in zip(existing.patterns, draft.patterns, strict=True):
            new.last_matched_ms = max(new.last_matched_ms, old.last_matched_ms)
    for pattern in draft.patterns:
        if hits.get(pattern.pattern_id):
            pattern.last_matched_ms = now_ms


def cluster_prompts(vectors: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """HDBSCAN labels (-1: noise) over unit vectors; euclidean on unit vectors orders like cosine.

    Up to BRUTE_FORCE_LIMIT prompts, exact pairwise distances (fast, quadratic memory); above, a 32-component
    PCA and a k-d tree (in 384 dimensions a tree is ten times slower than brute force; in 32 it is fast, and
    cluster purity on banking77 is the same).
    """
    if len(vectors) < max(min_cluster_size, 2):
        return np.full(len(vectors), -1)
    from sklearn.cluster import HDBSCAN

    data = vectors.astype(np.float64)
    algorithm = "brute"
    if len(vectors) > BRUTE_FORCE_LIMIT:
        from sklearn.decomposition import PCA

        data = PCA(REDUCED_DIMENSIONS, random_state=0).fit_transform(data)
        data /= np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
        algorithm = "kd_tree"
    options = dict(min_cluster_size=min_cluster_size, min_samples=MIN_SAMPLES, algorithm=algorithm, copy=True)
    labels = HDBSCAN(**options).fit_predict(data)
    if labels.max() < 0:  # HDBSCAN never returns its root as a cluster unless asked: one dense group alone
        labels = HDBSCAN(**options, allow_single_cluster=True).fit_predict(data)
    return labels


def answer_groups(window: Window, config: MinerConfig) -> tuple[list[Group], int]:
    """Cluster each polarity's prompts apart and split every cluster by answer. A cluster of at least
    `min_cluster_size` whose most common answer reaches `min_agreement` gives that answer an answering group;
    every other answer it holds (or all of them, below agreement) is counter-evidence. Gives the groups,
    negated ones last, and the number of clusters."""
    groups: list[Group] = []
    clusters = 0
    for polarity in (False, True):
        rows = np.flatnonzero(window.negated == polarity)
        labels = cluster_prompts(window.vectors[rows], config.min_cluster_size)
        for label in sorted(set(labels.tolist()) - {-1}):
            members = rows[labels == label]
            clusters += 1
            counts = Counter(window.keys[i] for i in members)
            top_key, agreeing = counts.most_common(1)[0]
            dense = len(members) >= config.min_cluster_size and agreeing / len(members) >= config.min_agreement
            for key in counts:
                chosen = np.asarray([i for i in members if window.keys[i] == key])
                groups.append(Group(chosen, polarity, dense and key == top_key, counts[key] / len(members)))
    return groups, clusters


def merge_group(draft: Draft, window: Window, group: Group, config: MinerConfig, now_ms: int) -> None:
    """Fold a group into the draft: it refreshes the earlier pattern it sits on (centroid cosine >=
    `merge_similarity`, same polarity and role, same answer), else becomes a new pattern. An answering group
    retires as superseded the earlier answering patterns there that teach another answer. Its vectors (at
    most `max_vectors_per_pattern`, spread over it) become the pattern's evidence."""
    chosen = group.members
    centroid = _unit(window.vectors[chosen].mean(0))
    nearest_first = chosen[np.argsort(-(window.vectors[chosen] @ centroid))]
    exemplars = list(dict.fromkeys(window.examples[i].prompt for i in nearest_first))[:EXEMPLARS]
    answer = Counter(window.examples[i].answer for i in chosen).most_common(1)[0][0]
    target = _merge_target(draft, group, centroid, window.keys[chosen[0]], config.merge_similarity)
    if target is None:
        draft.patterns.append(
            Pattern(
                pattern_id=uuid.uuid4().hex[:12],
                answer=answer,
                exemplars=exemplars,
                size=len(chosen),
                agreement=round(group.agreement, 4),
                negated=group.negated,
                created_ms=now_ms,
                last_matched_ms=now_ms,
                answering=group.answering,
            )
        )
        target = len(draft.patterns) - 1
        draft.new += group.answering
    else:
        old = draft.patterns[target]
        total = old.size + len(chosen)
        old.agreement = round((old.agreement * old.size + group.agreement * len(chosen)) / total, 4)
        old.size, old.last_matched_ms, old.answer = total, now_ms, answer
        old.exemplars = list(dict.fromkeys(exemplars + old.exemplars))[:EXEMPLARS]
    take = chosen[_spread(window.vectors[chosen], config.max_vectors_per_pattern)]
    draft.add_evidence(window.vectors[take], np.full(len(take), target, dtype=np.int32), take)


def _merge_target(draft: Draft, group: Group, centroid: np.ndarray, key: str, merge_similarity: float) -> int | None:
    """The earlier live pattern of the group's polarity and role, close to its centroid, that teaches its
    answer (the last such, in pattern order); retires the close ones that teach another, when it answers."""
    if not len(draft.carried):
        return None
    target = None
    for i in np.flatnonzero(draft.carried @ centroid >= merge_similarity):
        old = draft.patterns[int(i)]
        if old.retired or old.negated != group.negated or old.answering != group.answering:
            continue
        if answer_key(old.answer) == key:
            target = int(i)
        elif group.answering:  # the traffic now teaches another answer here
            old.retired, old.retired_reason = True, "superseded"
            draft.retired += 1
    return target


def absorb_stragglers(draft: Draft, window: Window, absorb_similarity: float) -> np.ndarray:
    """Give each window prompt that no group took to the pattern its neighbours vote for, when that pattern's
    answer is its own (vote share >= 0.5, best similarity >= `absorb_similarity`): HDBSCAN leaves a third of
    the prompts as noise, and a pattern's region should cover its consistent stragglers too. Gives the
    prompts left over."""
    taken = set(np.concatenate(draft.sources).tolist())
    rest = np.asarray([i for i in range(len(window.examples)) if i not in taken], dtype=int)
    matrix = np.concatenate(draft.vectors).astype(np.float32)
    row_owner = np.concatenate(draft.owners)
    patterns = draft.patterns
    live = np.array([not patterns[o].retired for o in row_owner], dtype=bool)
    answering = np.array([patterns[o].answering for o in row_owner], dtype=bool)
    if not len(rest) or not live.any():
        return rest
    codes = answer_codes([answer_key(patterns[o].answer) for o in row_owner])
    row_negated = np.array([patterns[o].negated for o in row_owner], dtype=bool)
    chosen_rows, chosen_owners = [], []
    for i, all_sims in zip(rest, similarity_rows(window.vectors[rest], matrix), strict=True):
        sims = np.where(live & (row_negated == window.negated[i]), all_sims, -np.inf)
        result = vote(sims, codes, answering)
        if result is None:
            continue
        best, (share, top, _) = result
        owner = int(row_owner[best])
        if answer_key(patterns[owner].answer) == window.keys[i] and share >= 0.5 and top >= absorb_similarity:
            chosen_rows.append(i)
            chosen_owners.append(owner)
    if chosen_rows:
        draft.add_evidence(
            window.vectors[chosen_rows], np.asarray(chosen_owners, dtype=np.int32), np.asarray(chosen_rows)
        )
        for owner in chosen_owners:
            patterns[owner].size += 1
    return np.setdiff1d(rest, np.asarray(chosen_rows, dtype=int))


def straggler_groups(window: Window, stragglers: np.ndarray) -> list[Group]:
    """What no pattern explains is counter-evidence: the stragglers grouped by polarity (negated last) and
    answer key."""
    groups = []
    for polarity in (False, True):
        by_key: dict[str, list[int]] = {}
        for i in stragglers:
            if window.negated[i] == polarity:
                by_key.setdefault(window.keys[i], []).append(int(i))
        groups += [Group(np.asarray(members), polarity, False, 0.0) for members in by_key.values()]
    return groups


def retire_failing(draft: Draft, ratings: dict[str, tuple[int, int]], config: MinerConfig, now_ms: int) -> None:
    """Retire the live patterns that feedback condemns (answering ones with >= `retire_bad_ratings` bad
    ratings making >= `retire_bad_share` of `ratings`: pattern id -> (good, bad)) or that nothing matched
    for `pattern_ttl_s`."""
    for pattern in draft.patterns:
        if pattern.retired:
            continue
        good, bad = ratings.get(pattern.pattern_id, (0, 0))
        if pattern.answering and bad >= config.retire_bad_ratings and bad >= config.retire_bad_share * (good + bad):
            pattern.retired, pattern.retired_reason = True, "bad_feedback"
        elif now_ms - pattern.last_matched_ms > config.pattern_ttl_s * 1000:
            pattern.retired, pattern.retired_reason = True, "stale"
        else:
            continue
        draft.retired += pattern.answering


def assemble(
    draft: Draft, calibration: Calibration, model: str, max_vectors_per_pattern: int, now_ms: int
) -> tuple[PatternSet, np.ndarray]:
    """The draft as a pattern set (version unset, carrying `calibration` as given) and, for each of its
    vectors, the window row it came from (-1: an earlier run). Retired counter-evidence is dropped (nobody
    lists it); retired patterns stay, listed, without vectors. Each pattern's vectors are capped at
    `max_vectors_per_pattern` (a refreshed pattern gathers new ones every run), centroids recomputed."""
    patterns = draft.patterns
    all_vectors = np.concatenate(draft.vectors).astype(np.float32)
    all_owners = np.concatenate(draft.owners).astype(np.int32)
    all_sources = np.concatenate(draft.sources)
    kept_patterns = [i for i, p in enumerate(patterns) if p.answering or not p.retired]
    keep = np.zeros(len(all_owners), dtype=bool)
    renumber = np.full(len(patterns), -1, dtype=np.int32)
    centroids = np.zeros((len(kept_patterns), all_vectors.shape[1]), np.float32)
    for new_index, i in enumerate(kept_patterns):
        renumber[i] = new_index
        rows = np.flatnonzero(all_owners == i)
        if not len(rows):
            continue
        centroids[new_index] = _unit(all_vectors[rows].mean(0))
        if patterns[i].retired:
            continue
        rows = rows[_spread(all_vectors[rows], max_vectors_per_pattern)]
        keep[rows] = True
        centroids[new_index] = _unit(all_vectors[rows].mean(0))
    result = PatternSet(
        version=0,
        patterns=[patterns[i] for i in kept_patterns],
        centroids=centroids,
        vectors=all_vectors[keep],
        owners=renumber[all_owners[keep]],
        calibration=calibration,
        model=model,
        mined_ms=now_ms,
    )
    return result, all_sources[keep]


def similarity_rows(queries: np.ndarray, matrix: np.ndarray, chunk: int = 512) -> Iterator[np.ndarray]:
    """Rows of queries @ matrix.T, computed a chunk of queries at a time (one matrix product per chunk)."""
    for start in range(0, len(queries), chunk):
        yield from queries[start : start + chunk] @ matrix.T


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _spread(vectors: np.ndarray, limit: int) -> np.ndarray:
    """Indices of at most `limit` rows that cover the cluster (farthest-point sampling from the centroid)."""
    if len(vectors) <= limit:
        return np.arange(len(vectors))
    chosen = [int(np.argmax(vectors @ _unit(vectors.mean(0))))]
    nearest = vectors @ vectors[chosen[0]]
    while len(chosen) < limit:
        nxt = int(np.argmin(nearest))
        chosen.append(nxt)
        nearest = np.maximum(nearest, vectors @ vectors[nxt])
    return np.asarray(chosen)
