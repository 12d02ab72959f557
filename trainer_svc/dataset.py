"""The distillation dataset: what the traffic log's teachers said, de-duplicated and split by prompt.

A teacher answer is an exchange the router marked as teaching (`spiral_common.traffic.teacher_answer`): the
cloud's answer or a council answer the vote accepted; answers a head gave alone are the student's own, and a
council answer below the threshold (served as a local fallback) was rejected, so neither is learned from. Only
single-turn prompts are used (the user's text; the heads' system prompts are applied at training time), and
only answers that ended naturally (finish `stop`: a truncated answer would teach truncation). An answer with
any bad feedback is left out; among several answers to the same prompt, one with good feedback wins, then the
cloud's over a council's, then the newest. Prompts are compared case- and whitespace-insensitively.

The held-out split is chosen by a hash of the prompt, so a prompt is in the same split every night and the
held-out scores of successive adapters compare.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from redis.asyncio import Redis

from spiral.traffic.v1.traffic_pb2 import TrafficExchange
from spiral_common.errors import FailedPrecondition
from spiral_common.traffic import Rating, read_entries, single_turn, teacher_answer

_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    teacher: str
    rating: str  # "good", "" (none)


@dataclass(frozen=True)
class Dataset:
    train: list[Example]
    heldout: list[Example]
    exchanges_read: int
    left_out_bad_feedback: int

    @property
    def size(self) -> int:
        return len(self.train) + len(self.heldout)


def normalise(prompt: str) -> str:
    return _SPACE.sub(" ", prompt).strip().casefold()


def _heldout(prompt_key: str, fraction: float) -> bool:
    digest = hashlib.sha256(prompt_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


async def read_traffic(
    redis: Redis, stream: str, *, batch: int = 1000
) -> tuple[list[TrafficExchange], dict[str, set[str]]]:
    """Every exchange in the traffic log, oldest first, and the ratings given to each answer id (a damaged
    entry is skipped, not fatal)."""
    exchanges: list[TrafficExchange] = []
    ratings: dict[str, set[str]] = {}
    async for _entry_id, entry in read_entries(redis, stream, batch=batch):
        if isinstance(entry, TrafficExchange):
            exchanges.append(entry)
        elif isinstance(entry, Rating):
            ratings.setdefault(entry.answer_id, set()).add(entry.rating)
    return exchanges, ratings


def build_dataset(
    exchanges: list[TrafficExchange],
    ratings: dict[str, set[str]],
    *,
    min_examples: int,
    max_examples: int,
    heldout_fraction: float,
    max_heldout: int,
) -> Dataset:
    best: dict[str, tuple[tuple[int, int, int], Example]] = {}
    bad = 0
    for exchange in exchanges:
        prompt = single_turn(exchange)
        taught = teacher_answer(exchange)
        if prompt is None or taught is None:
            continue
        rated = ratings.get(exchange.answer_id, set())
        if "bad" in rated:
            bad += 1
            continue
        rating = "good" if "good" in rated else ""
        answer, teacher = taught
        # Preference: good feedback, then a cloud teacher, then the newest.
        rank = (rating == "good", not teacher.startswith("council"), exchange.ts_ms)
        key = normalise(prompt)
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, Example(prompt, answer.strip(), teacher, rating))
    if len(best) < min_examples:
        raise FailedPrecondition(
            f"the traffic log holds {len(best)} distinct prompts with a teacher answer; distillation needs at "
            f"least {min_examples} (SPIRAL_DISTILL_MIN_EXAMPLES)",
            reason="DATASET_TOO_SMALL",
            examples=str(len(best)),
            needed=str(min_examples),
        )
    # The newest max_examples prompts, in a stable order.
    keys = sorted(best, key=lambda k: best[k][0][2], reverse=True)[:max_examples]
    train: list[Example] = []
    heldout: list[Example] = []
    for key in sorted(keys):
        (heldout if _heldout(key, heldout_fraction) and len(heldout) < max_heldout else train).append(best[key][1])
    if not heldout:  # a tiny log can hash every prompt into train: hold out one anyway
        heldout.append(train.pop())
    if not train:
        train.append(heldout.pop())
    return Dataset(train, heldout, len(exchanges), bad)
