"""The head tier: one local head answers alone, streamed as it generates (a council of one has no vote)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from router_svc.heads_client import HeadClient, HeadDone, HeadText
from router_svc.tiers.base import CascadeRequest, Pass, TierResult
from spiral_common.enums import Outcome, Tier
from spiral_common.errors import CONTEXT_OVERFLOW, InvalidArgument, Unavailable


class HeadTier:
    tier = Tier.HEAD

    def __init__(self, heads: HeadClient, head: str) -> None:
        self.heads = heads
        self.head = head

    async def answer(self, request: CascadeRequest) -> AsyncIterator[str | TierResult | Pass]:
        pieces: list[str] = []
        done: HeadDone | None = None
        try:
            async for event in self.heads.generate(
                request.chat,
                head=self.head,
                request_id=request.request_id,
                head_sampling=True,
                timeout_s=request.time_left_s(),
            ):
                if isinstance(event, HeadText):
                    pieces.append(event.text)
                    yield event.text
                else:
                    done = event
        except InvalidArgument as exc:
            if exc.reason != CONTEXT_OVERFLOW:
                raise
            # The head counted the prompt before generating: too long for it, maybe not for the cloud.
            yield Pass(Outcome.SKIPPED, "context overflow", reason=CONTEXT_OVERFLOW, message=exc.message)
            return
        if done is None:
            raise Unavailable("the head closed the stream without an end event", reason="HEAD_STREAM_TRUNCATED")
        yield TierResult(
            Tier.HEAD,
            "".join(pieces),
            done.finish_reason,
            done.prompt_tokens,
            done.completion_tokens,
            done.adapter_version,
            detail=self.head,
            teacher=f"head:{self.head}",
            streamed=True,
        )
