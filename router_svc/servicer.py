"""RouterService and AdminService over gRPC: proto in, core, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from router_svc.orchestrator import Answer, Orchestrator, Trace
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.chat import Limits, validate_chat
from spiral_common.errors import NotImplementedYet
from spiral_common.logs import request_id_var
from spiral_common.protoconv import FINISH_TO_PROTO, messages_from_proto, params_from_proto, usage_to_proto

_TIER = {
    "cache": router_pb2.TIER_CACHE,
    "pattern": router_pb2.TIER_PATTERN,
    "head": router_pb2.TIER_HEAD,
    "council": router_pb2.TIER_COUNCIL,
    "cloud": router_pb2.TIER_CLOUD,
}
_OUTCOME = {
    "answered": router_pb2.TIER_OUTCOME_ANSWERED,
    "missed": router_pb2.TIER_OUTCOME_MISSED,
    "failed": router_pb2.TIER_OUTCOME_FAILED,
    "skipped": router_pb2.TIER_OUTCOME_SKIPPED,
    "refused": router_pb2.TIER_OUTCOME_REFUSED,
}


def trace_to_proto(trace: Trace) -> router_pb2.DecisionTrace:
    return router_pb2.DecisionTrace(
        request_id=trace.request_id,
        tier=_TIER.get(trace.tier, router_pb2.TIER_UNSPECIFIED),
        steps=[
            router_pb2.TierStep(
                tier=_TIER[s.tier], outcome=_OUTCOME[s.outcome], latency_us=s.latency_us, detail=s.detail
            )
            for s in trace.steps
        ],
        cost_usd_micros=trace.cost_usd_micros,
        router_instance=trace.router_instance,
        adapter_version=trace.adapter_version,
        total_latency_us=trace.total_latency_us,
        first_token_latency_us=trace.first_token_latency_us,
    )


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, orchestrator: Orchestrator, limits: Limits) -> None:
        self.orchestrator = orchestrator
        self.limits = limits

    def _chat(self, request: router_pb2.OrchestrateRequest | router_pb2.OrchestrateStreamRequest):  # type: ignore[no-untyped-def]
        return validate_chat(
            messages_from_proto(request.messages), params_from_proto(request.params), self.limits, model=request.model
        )

    async def Orchestrate(
        self, request: router_pb2.OrchestrateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.OrchestrateResponse:
        answer = await self.orchestrator.answer(self._chat(request), request_id_var.get())
        return router_pb2.OrchestrateResponse(
            answer_id=answer.answer_id,
            text=answer.text,
            finish_reason=FINISH_TO_PROTO[answer.finish_reason],
            usage=usage_to_proto(answer.prompt_tokens, answer.completion_tokens),
            trace=trace_to_proto(answer.trace),
            model=answer.model,
        )

    async def OrchestrateStream(
        self, request: router_pb2.OrchestrateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[router_pb2.OrchestrateStreamResponse]:
        async for item in self.orchestrator.stream(self._chat(request), request_id_var.get()):
            if isinstance(item, Answer):
                yield router_pb2.OrchestrateStreamResponse(
                    end=router_pb2.StreamEnd(
                        answer_id=item.answer_id,
                        finish_reason=FINISH_TO_PROTO[item.finish_reason],
                        usage=usage_to_proto(item.prompt_tokens, item.completion_tokens),
                        trace=trace_to_proto(item.trace),
                        model=item.model,
                    )
                )
            else:
                yield router_pb2.OrchestrateStreamResponse(delta=router_pb2.TextDelta(text=item))

    async def Vote(self, request: router_pb2.VoteRequest, context: grpc.aio.ServicerContext) -> router_pb2.VoteResponse:
        raise NotImplementedYet("Vote", "the council of five specialist heads (the cascade issue)")

    async def SubmitFeedback(
        self, request: router_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitFeedbackResponse:
        raise NotImplementedYet("SubmitFeedback", "the traffic log that feedback attaches to (the cascade issue)")


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    async def ReloadAdapter(
        self, request: admin_pb2.ReloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadAdapterResponse:
        raise NotImplementedYet("ReloadAdapter", "the adapter registry and LoRA hot reload (the heads issue)")

    async def GetBudget(
        self, request: admin_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetBudgetResponse:
        raise NotImplementedYet("GetBudget", "the cost guard's daily pool in Redis (the cascade issue)")

    async def GetCanaryWeight(
        self, request: admin_pb2.GetCanaryWeightRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetCanaryWeightResponse:
        raise NotImplementedYet("GetCanaryWeight", "the live canary knob (the Envoy canary issue)")

    async def SetCanaryWeight(
        self, request: admin_pb2.SetCanaryWeightRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetCanaryWeightResponse:
        raise NotImplementedYet("SetCanaryWeight", "the live canary knob (the Envoy canary issue)")
