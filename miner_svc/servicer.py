"""MinerService over gRPC: a few lines per RPC around the miner's core."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from miner_svc.mining import Miner
from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral_common.embedding import SentenceEncoder
from spiral_common.errors import InvalidArgument
from spiral_common.pattern_set import Calibration, Pattern, PatternIndex, PatternStore, is_negated

MAX_PROMPT_CHARS = 16_000


def calibration_proto(calibration: Calibration) -> miner_pb2.PatternSetCalibration:
    return miner_pb2.PatternSetCalibration(
        max_error=calibration.max_error,
        known_precision=calibration.precision_at_threshold,
        known_coverage=calibration.coverage_at_threshold,
        unknown_answered=calibration.unknown_answered,
        precision_with_unknown=calibration.precision_with_unknown,
        unknown_share=calibration.unknown_share,
        known_samples=calibration.known_samples,
        unknown_samples=calibration.unknown_samples,
        fitted_on=calibration.fitted_on,
    )


def pattern_proto(pattern: Pattern) -> miner_pb2.Pattern:
    created = Timestamp()
    created.FromMilliseconds(pattern.created_ms)
    return miner_pb2.Pattern(
        pattern_id=pattern.pattern_id,
        exemplars=pattern.exemplars,
        canonical_answer=pattern.answer,
        target_head=pattern.target_head,
        size=pattern.size,
        agreement=pattern.agreement,
        created_at=created,
        retired=pattern.retired,
        retired_reason=pattern.retired_reason,
        negated=pattern.negated,
    )


class MinerServicer(miner_pb2_grpc.MinerServiceServicer):
    def __init__(self, miner: Miner, store: PatternStore, embedder: SentenceEncoder, threshold: float) -> None:
        self.miner = miner
        self.store = store
        self.embedder = embedder
        self.threshold = threshold
        self._index: PatternIndex | None = None

    async def Mine(self, request: miner_pb2.MineRequest, context: grpc.aio.ServicerContext) -> miner_pb2.MineResponse:
        summary = await self.miner.mine(dry_run=request.dry_run)
        return miner_pb2.MineResponse(
            prompts_read=summary.prompts_read,
            clusters=summary.clusters,
            patterns_published=summary.patterns_published,
            patterns_retired=summary.patterns_retired,
            pattern_set_version=summary.pattern_set_version,
            duration_ms=summary.duration_ms,
            entries_read=summary.entries_read,
            entries_skipped=summary.entries_skipped,
            patterns_new=summary.patterns_new,
            note=summary.note,
            calibrated_precision=summary.calibration.precision_at_threshold,
            calibrated_coverage=summary.calibration.coverage_at_threshold,
            calibration=calibration_proto(summary.calibration),
        )

    async def ListPatterns(
        self, request: miner_pb2.ListPatternsRequest, context: grpc.aio.ServicerContext
    ) -> miner_pb2.ListPatternsResponse:
        patterns = await self.store.load()
        shown = [p for p in patterns.patterns if p.answering and (request.include_retired or not p.retired)]
        return miner_pb2.ListPatternsResponse(
            patterns=[pattern_proto(p) for p in shown],
            pattern_set_version=patterns.version,
            calibration=calibration_proto(patterns.calibration),
        )

    async def MatchPrompt(
        self, request: miner_pb2.MatchPromptRequest, context: grpc.aio.ServicerContext
    ) -> miner_pb2.MatchPromptResponse:
        if not request.prompt.strip():
            raise InvalidArgument("prompt is empty", reason="EMPTY_PROMPT", field="prompt")
        if len(request.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument("prompt is over 16,000 characters", reason="PROMPT_TOO_LONG", field="prompt")
        version = await self.store.current_version()
        if self._index is None or self._index.set.version != version:
            self._index = PatternIndex(await self.store.load(version))
        index = self._index
        vector = await asyncio.to_thread(self.embedder.embed_one, request.prompt)
        found = index.match(vector, is_negated(request.prompt))
        if found is None:
            return miner_pb2.MatchPromptResponse(matched=False, pattern_set_version=index.set.version)
        return miner_pb2.MatchPromptResponse(
            matched=found.confidence >= self.threshold,
            pattern=pattern_proto(found.pattern),
            confidence=found.confidence,
            pattern_set_version=index.set.version,
        )
