"""The council tier: specialist heads answer in parallel under a deadline, and a vote picks the winner.

The vote is `spiral_common.council_vote`'s (shared with the trainer, which calibrates thresholds with it). The
winner answers only if its score reaches the threshold: the configured one (SPIRAL_COUNCIL_THRESHOLD), or the
one the winner's adapter was calibrated to by its job, whichever is higher. An adapter whose job found no
threshold it could trust never answers here (its calibrated threshold is infinite): the request goes on to the
cloud.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace

from router_svc.deadline import NO_DEADLINE, time_left_s
from router_svc.heads_client import HeadClient, HeadDone, HeadText
from spiral_common.chat import ChatRequest
from spiral_common.council_vote import vote
from spiral_common.errors import SpiralError

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
    council_threshold: float | None = None  # what the adapter's job calibrated; None: not calibrated
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


def score_candidates(candidates: list[Candidate], *, length_weight: float, diversity_weight: float) -> list[Candidate]:
    """Each candidate with its vote components filled in (see spiral_common.council_vote)."""
    answers = [None if c.error else c.text for c in candidates]
    scores = vote(answers, length_weight=length_weight, diversity_weight=diversity_weight)
    return [
        replace(
            c,
            score=v.score,
            agreement=v.agreement,
            length_penalty=v.length_penalty,
            diversity_bonus=v.diversity_bonus,
        )
        if c.text and not c.error
        else c
        for c, v in zip(candidates, scores, strict=True)
    ]


def threshold_for(configured: float, winner: Candidate | None) -> float:
    """The bar the winner must reach: the configured threshold, raised to its adapter's calibrated one."""
    if winner is None or winner.council_threshold is None:
        return configured
    return max(configured, winner.council_threshold)


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
            council_threshold=done.council_threshold,
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
        threshold = threshold_for(self.threshold, best)
        accepted = best is not None and best.score >= threshold
        if best is not None:
            scored = [replace(c, winner=True) if c is best else c for c in scored]
            best = next(c for c in scored if c.winner)
        return CouncilResult(scored, best, accepted, threshold)


def _since_us(started: float) -> int:
    return int((time.perf_counter() - started) * 1e6)
