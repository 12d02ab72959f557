"""The council tier: specialist heads answer in parallel under a deadline, and a vote picks the winner.

The vote, for each non-empty candidate i among n >= 2 (over lower-cased words):
    agreement_i       = mean over j != i of cosine(word counts of i, word counts of j)          in [0, 1]
    length_penalty_i  = min(1, |words_i - median words| / median words)                         in [0, 1]
    diversity_bonus_i = share of i's distinct words that no other candidate uses                in [0, 1]
    score_i           = agreement_i - length_weight * length_penalty_i + diversity_weight * diversity_bonus_i
The highest score wins (ties go to the head listed first); it answers only if its score reaches the
threshold. Agreement is the evidence: with one candidate there is none, so it scores 0. Empty answers
score 0 and take no part in the others' scores.
"""

from __future__ import annotations

import asyncio
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, replace

from router_svc.deadline import NO_DEADLINE, time_left_s
from router_svc.heads_client import HeadClient, HeadDone, HeadText
from spiral_common.chat import ChatRequest
from spiral_common.errors import SpiralError

_WORD = re.compile(r"\w+")


# A head call's errors that mean its replica is gone (a cut stream, a reset), not that the head refused.
HEAD_WENT_AWAY = frozenset({"HEAD_UNAVAILABLE", "HEAD_STREAM_TRUNCATED"})


@dataclass(frozen=True)
class Candidate:
    head: str
    text: str
    latency_us: int
    adapter_version: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""  # why the head gave no answer (an error reason, or DEADLINE_EXCEEDED)
    score: float = 0.0
    agreement: float = 0.0
    length_penalty: float = 0.0
    diversity_bonus: float = 0.0
    winner: bool = False


@dataclass(frozen=True)
class CouncilResult:
    candidates: list[Candidate]  # in the council's head order
    winner: Candidate | None
    accepted: bool
    threshold: float


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


def score_candidates(candidates: list[Candidate], *, length_weight: float, diversity_weight: float) -> list[Candidate]:
    """Each candidate with its vote components filled in (see the module docstring)."""
    words = {i: Counter(_WORD.findall(c.text.lower())) for i, c in enumerate(candidates) if not c.error}
    voters = [i for i, counts in words.items() if counts]
    if len(voters) < 2:
        return candidates
    median_length = statistics.median(sum(words[i].values()) for i in voters) or 1
    scored = list(candidates)
    for i in voters:
        others = [j for j in voters if j != i]
        agreement = sum(_cosine(words[i], words[j]) for j in others) / len(others)
        length_penalty = min(1.0, abs(sum(words[i].values()) - median_length) / median_length)
        elsewhere = set().union(*(words[j].keys() for j in others))
        diversity_bonus = len(words[i].keys() - elsewhere) / len(words[i])
        score = agreement - length_weight * length_penalty + diversity_weight * diversity_bonus
        scored[i] = replace(
            candidates[i],
            score=score,
            agreement=agreement,
            length_penalty=length_penalty,
            diversity_bonus=diversity_bonus,
        )
    return scored


class Council:
    def __init__(
        self,
        heads: HeadClient,
        members: list[str],
        *,
        deadline_s: float,
        threshold: float,
        length_weight: float,
        diversity_weight: float,
    ) -> None:
        self.heads = heads
        self.members = members
        self.deadline_s = deadline_s
        self.threshold = threshold
        self.length_weight = length_weight
        self.diversity_weight = diversity_weight

    async def _ask(self, head: str, chat: ChatRequest, request_id: str, timeout_s: float) -> Candidate:
        """One member's answer. A head replica that went away mid-answer (its host died: the stream was cut
        after its first token, which Envoy never retries) costs that answer only: the member is asked once more,
        in the time left, and Envoy sends the call to another replica."""
        started = time.perf_counter()
        candidate = await self._ask_once(head, chat, request_id, timeout_s)
        left_s = timeout_s - (time.perf_counter() - started)
        if candidate.error in HEAD_WENT_AWAY and left_s > 0:
            candidate = replace(await self._ask_once(head, chat, request_id, left_s), latency_us=_since_us(started))
        return candidate

    async def _ask_once(self, head: str, chat: ChatRequest, request_id: str, timeout_s: float) -> Candidate:
        started = time.perf_counter()
        pieces: list[str] = []
        done: HeadDone | None = None
        try:
            async for event in self.heads.generate(
                chat, head=head, request_id=request_id, head_sampling=True, timeout_s=timeout_s
            ):
                if isinstance(event, HeadText):
                    pieces.append(event.text)
                else:
                    done = event
        except SpiralError as exc:
            return Candidate(head, "", _since_us(started), error=exc.reason)
        if done is None:
            return Candidate(head, "", _since_us(started), error="HEAD_STREAM_TRUNCATED")
        return Candidate(
            head,
            "".join(pieces).strip(),
            _since_us(started),
            done.adapter_version,
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
        )

    async def run(self, chat: ChatRequest, request_id: str, deadline: float = NO_DEADLINE) -> CouncilResult:
        """Ask every member at once; cancel those not done by the council's deadline (or the caller's, when
        that comes first); vote among the answers."""
        started = time.perf_counter()
        timeout_s = time_left_s(deadline, self.deadline_s)
        tasks = [asyncio.create_task(self._ask(head, chat, request_id, timeout_s)) for head in self.members]
        try:
            await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()  # stragglers (and everything, if our caller went away) stop generating
        candidates = [
            task.result()
            if task.done() and not task.cancelled()
            else Candidate(head, "", _since_us(started), error="DEADLINE_EXCEEDED")
            for head, task in zip(self.members, tasks, strict=True)
        ]
        scored = score_candidates(candidates, length_weight=self.length_weight, diversity_weight=self.diversity_weight)
        valid = [c for c in scored if not c.error and c.text]
        best = max(valid, key=lambda c: c.score, default=None)  # max keeps the first of equal scores
        accepted = best is not None and best.score >= self.threshold
        if best is not None:
            scored = [replace(c, winner=True) if c is best else c for c in scored]
            best = next(c for c in scored if c.winner)
        return CouncilResult(scored, best, accepted, self.threshold)


def _since_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
