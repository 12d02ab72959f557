"""MinerService over gRPC. Mining is its own issue: every RPC says so."""

from __future__ import annotations

import grpc

from spiral.miner.v1 import miner_pb2, miner_pb2_grpc
from spiral_common.errors import NotImplementedYet

_MISSING = "prompt embedding, clustering and pattern publishing (the prompt miner issue)"


class MinerServicer(miner_pb2_grpc.MinerServiceServicer):
    async def Mine(self, request: miner_pb2.MineRequest, context: grpc.aio.ServicerContext) -> miner_pb2.MineResponse:
        raise NotImplementedYet("Mine", _MISSING)

    async def ListPatterns(
        self, request: miner_pb2.ListPatternsRequest, context: grpc.aio.ServicerContext
    ) -> miner_pb2.ListPatternsResponse:
        raise NotImplementedYet("ListPatterns", _MISSING)

    async def MatchPrompt(
        self, request: miner_pb2.MatchPromptRequest, context: grpc.aio.ServicerContext
    ) -> miner_pb2.MatchPromptResponse:
        raise NotImplementedYet("MatchPrompt", _MISSING)
