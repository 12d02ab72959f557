"""The council's vote, and the calibration of its threshold for an adapter.

The vote, for each non-empty answer i among n >= 2 (over lower-cased words):
    agreement_i       = mean over j != i of cosine(word counts of i, word counts of j)          in [0, 1]
    length_penalty_i  = min(1, |words_i - median words| / median words)                         in [0, 1]
    diversity_bonus_i = share of i's distinct words that no other answer uses                   in [0, 1]
    score_i           = agreement_i - length_weight * length_penalty_i + diversity_weight * diversity_bonus_i
The highest score wins (ties go to the answer listed first). Agreement is the evidence: with one answer there
is none, so it scores 0. Empty answers score 0 and take no part in the others' scores.

It lives here, not in the router, because two services use it: the router votes with it, and the trainer's
job runs the same vote over a new adapter's answers to its held-out prompts to calibrate the threshold that
adapter's council answers must reach (`calibrate_threshold`).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"\w+")

# The threshold of an adapter whose job found no threshold it could trust: its council never answers.
NEVER = math.inf


@dataclass(frozen=True)
class VoteScore:
    score: float = 0.0
    agreement: float = 0.0
    length_penalty: float = 0.0
    diversity_bonus: float = 0.0


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def vote(answers: Sequence[str | None], *, length_weight: float, diversity_weight: float) -> list[VoteScore]:
    """Each answer's score (None: the member gave no answer; it scores 0 and takes no part)."""
    words = {i: Counter(_WORD.findall(a.lower())) for i, a in enumerate(answers) if a is not None}
    voters = [i for i, counts in words.items() if counts]
    scores = [VoteScore() for _ in answers]
    if len(voters) < 2:
        return scores
    median_length = statistics.median(sum(words[i].values()) for i in voters) or 1
    for i in voters:
        others = [j for j in voters if j != i]
        agreement = sum(_cosine(words[i], words[j]) for j in others) / len(others)
        length_penalty = min(1.0, abs(sum(words[i].values()) - median_length) / median_length)
        elsewhere = set().union(*(words[j].keys() for j in others))
        diversity_bonus = len(words[i].keys() - elsewhere) / len(words[i])
        score = agreement - length_weight * length_penalty + diversity_weight * diversity_bonus
        scores[i] = VoteScore(score, agreement, length_penalty, diversity_bonus)
    return scores


def winner(answers: Sequence[str | None], scores: Sequence[VoteScore]) -> int | None:
    """The index of the winning answer (the first of equal scores), None when no member answered."""
    valid = [i for i, a in enumerate(answers) if a]
    return max(valid, key=lambda i: scores[i].score, default=None)


@dataclass(frozen=True)
class Calibration:
    """What a job measured of its adapter's council on the held-out prompts."""

    threshold: float  # NEVER when no threshold met the bound
    prompts: int  # held-out prompts the council was run on
    answered: int  # of them, those whose winning score reached the threshold
    right: int  # of those, the ones whose answer matched the teacher's
    max_error: float  # the bound it was calibrated for

    @property
    def coverage(self) -> float:
        return self.answered / self.prompts if self.prompts else 0.0

    @property
    def precision(self) -> float:
        return self.right / self.answered if self.answered else 0.0


def calibrate_threshold(outcomes: Sequence[tuple[float, bool]], max_error: float) -> Calibration:
    """The lowest threshold whose answers are wrong at most `max_error` of the time, from (winning score, right?)
    pairs measured on held-out prompts.

    The error of the answers a threshold lets through is estimated with a uniform prior (wrong + 1) /
    (answered + 2), so that a handful of lucky answers proves nothing: with no mistake at all, at 0.02 it takes
    48 answers. Thresholds are tried from the strictest down, and the scan stops at the first that fails the
    bound (fixed-sequence testing: a lower threshold is never picked because it happened to pass after a
    higher one failed). No threshold passes: NEVER, and the adapter's council defers to the cloud."""
    ordered = sorted(outcomes, key=lambda o: -o[0])
    best = Calibration(NEVER, len(ordered), 0, 0, max_error)
    answered = right = 0
    i = 0
    while i < len(ordered):
        score = ordered[i][0]
        while i < len(ordered) and ordered[i][0] == score:  # a threshold lets through every equal score
            answered += 1
            right += ordered[i][1]
            i += 1
        if (answered - right + 1) / (answered + 2) > max_error:
            break
        best = Calibration(score, len(ordered), answered, right, max_error)
    return best


_METADATA = "spiral.council_"


def to_metadata(calibration: Calibration) -> dict[str, str]:
    """The GGUF metadata an adapter carries its calibration in, as the trainer's `extra_metadata` (strings,
    written under `spiral.`: `spiral.council_threshold`, ...)."""
    return {
        "council_threshold": repr(calibration.threshold),
        "council_prompts": str(calibration.prompts),
        "council_answered": str(calibration.answered),
        "council_right": str(calibration.right),
        "council_max_error": repr(calibration.max_error),
    }


def from_metadata(metadata: dict[str, object]) -> Calibration | None:
    """An adapter's calibration; None when it carries none. ValueError when it carries a broken one."""
    if f"{_METADATA}threshold" not in metadata:
        return None
    threshold = float(str(metadata[f"{_METADATA}threshold"]))
    if math.isnan(threshold):
        raise ValueError("the council threshold is not a number")
    counts = [int(str(metadata.get(f"{_METADATA}{k}", 0))) for k in ("prompts", "answered", "right")]
    if not 0 <= counts[2] <= counts[1] <= counts[0]:
        raise ValueError(f"inconsistent council calibration counts {counts}")
    prompts, answered, right = counts
    return Calibration(threshold, prompts, answered, right, float(str(metadata.get(f"{_METADATA}max_error", 0.0))))
