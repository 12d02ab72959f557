"""The council tier: the specialist heads answer in parallel and vote; an answer below the threshold is not
vouched for, so it is kept only as the request's fallback (served if no later tier answers, never taught).

An adapter whose distillation job found no threshold it could trust (calibrated "never") cannot answer here
whatever its heads say, so once its answers are seen the tier stops asking for SPIRAL_COUNCIL_NEVER_RECHECK_S
(60 s) and passes requests straight on (SKIPPED, `COUNCIL_CALIBRATED_NEVER`): five generations per request
spent only to be overruled would stall every cheap-tier miss on a CPU box. Then it asks again, so an adapter
switched in meanwhile is seen within that time. A router serves one track, so one memo is enough.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable

from router_svc.council import Candidate, Council
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import CascadeRequest, Pass, TierResult
from spiral_common.enums import Outcome, Tier
from spiral_common.errors import CONTEXT_OVERFLOW


def _result(
    tier: Tier, winner: Candidate, detail: str, candidates: tuple[Candidate, ...], teacher: str = ""
) -> TierResult:
    return TierResult(
        tier,
        winner.text,
        winner.finish_reason,
        winner.prompt_tokens,
        winner.completion_tokens,
        winner.adapter_version,
        detail=detail,
        teacher=teacher,
        cacheable=tier is Tier.COUNCIL,  # a fallback is served once, never stored
        candidates=candidates,
    )


class CouncilTier:
    tier = Tier.COUNCIL

    def __init__(
        self,
        council: Council,
        metrics: RouterMetrics,
        *,
        never_recheck_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.council = council
        self.metrics = metrics
        self.never_recheck_s = never_recheck_s
        self.clock = clock
        # (adapter version, until when it is not asked) after its answers showed a "never" calibration.
        self._never: tuple[str, float] | None = None

    def _note_calibration(self, candidates: tuple[Candidate, ...]) -> None:
        answered = [c for c in candidates if not c.error and c.text]
        if answered and all(c.council_threshold is not None and math.isinf(c.council_threshold) for c in answered):
            self._never = (answered[0].adapter_version, self.clock() + self.never_recheck_s)
        elif answered:
            self._never = None

    async def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        if not self.council.members:
            yield Pass(Outcome.SKIPPED, "no council heads configured", reason="NO_COUNCIL")
            return
        if self._never is not None and self.clock() < self._never[1]:
            yield Pass(
                Outcome.SKIPPED,
                f"adapter {self._never[0]} is calibrated never to answer in council",
                reason="COUNCIL_CALIBRATED_NEVER",
            )
            return
        result = await self.council.run(request.chat, request.request_id, request.deadline)
        candidates = tuple(result.candidates)
        self._note_calibration(candidates)
        winner = result.winner
        if winner is None:
            if candidates and all(c.error == CONTEXT_OVERFLOW for c in candidates):
                # Every head counted the prompt before generating: too long for them, maybe not for the cloud.
                yield Pass(
                    Outcome.SKIPPED,
                    "context overflow",
                    reason=CONTEXT_OVERFLOW,
                    message="the prompt and max_tokens exceed the heads' context window",
                )
                return
            yield Pass(Outcome.FAILED, "no head answered", reason="NO_HEAD_ANSWERED", candidates=candidates)
            return
        self.metrics.council_agreement.observe(winner.agreement)
        if result.accepted:
            yield _result(
                Tier.COUNCIL, winner, f"{winner.head} ({winner.score:.2f})", candidates, f"council:{winner.head}"
            )
            return
        detail = f"best {winner.head} {winner.score:.2f} < {result.threshold:.2f}"
        if winner.council_threshold is not None and result.threshold == winner.council_threshold:
            detail += f" (calibrated for adapter {winner.adapter_version})"
        request.fallback = _result(Tier.LOCAL_FALLBACK, winner, detail, candidates)
        yield Pass(Outcome.FAILED, detail, reason="BELOW_THRESHOLD", candidates=candidates)
