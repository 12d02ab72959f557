"""RouterService and AdminService over gRPC: proto in, core, proto out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from router_svc.cache import AdapterVersions
from router_svc.cascade import Answer, Cascade, vote
from router_svc.council import Candidate, Council
from router_svc.deadline import deadline_after
from router_svc.heads_client import HeadClient
from router_svc.metrics import RouterMetrics
from router_svc.tiers.base import Trace
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common import canary
from spiral_common.api_keys import LOCAL, ApiKey, ApiKeyStore, ClientAuth, KeyRateLimiter, RequestCounts, utc_day
from spiral_common.auth import matches, presented_token
from spiral_common.budget import BudgetLedger, key_scope
from spiral_common.chat import ChatRequest, Limits, validate_chat
from spiral_common.config import Settings
from spiral_common.enums import tracks_to_switch
from spiral_common.errors import KeyRateLimited, Unauthenticated
from spiral_common.logs import request_id_var
from spiral_common.protoconv import FINISH_TO_PROTO, messages_from_proto, params_from_proto, usage_to_proto
from spiral_common.traffic import TrafficLog

log = logging.getLogger(__name__)
_RATING = {router_pb2.RATING_GOOD: "good", router_pb2.RATING_BAD: "bad"}


def candidate_to_proto(c: Candidate) -> router_pb2.Candidate:
    return router_pb2.Candidate(
        head=c.head,
        text=c.text,
        score=c.score,
        agreement=c.agreement,
        length_penalty=c.length_penalty,
        diversity_bonus=c.diversity_bonus,
        winner=c.winner,
        latency_us=c.latency_us,
        adapter_version=c.adapter_version,
        error=c.error,
    )


def trace_to_proto(trace: Trace) -> router_pb2.DecisionTrace:
    return router_pb2.DecisionTrace(
        request_id=trace.request_id,
        tier=trace.tier.proto if trace.tier else router_pb2.TIER_UNSPECIFIED,
        steps=[
            router_pb2.TierStep(tier=s.tier.proto, outcome=s.outcome.proto, latency_us=s.latency_us, detail=s.detail)
            for s in trace.steps
        ],
        cost_usd_micros=trace.cost_usd_micros,
        candidates=[candidate_to_proto(c) for c in trace.candidates],
        router_instance=trace.track.label,  # deprecated twin of `track`, kept for old clients
        track=trace.track.proto,
        adapter_version=trace.adapter_version,
        total_latency_us=trace.total_latency_us,
        first_token_latency_us=trace.first_token_latency_us,
    )


def _deadline(context: grpc.aio.ServicerContext) -> float:
    """The caller's deadline (its grpc-timeout) as a time.monotonic() instant; infinity when it set none."""
    return deadline_after(context.time_remaining())


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    """The client RPCs; each call is from an API key (`authorization: Bearer sk-spiral-...`) or, with client
    auth off, from "local"."""

    def __init__(
        self,
        cascade: Cascade,
        council: Council,
        traffic: TrafficLog,
        limits: Limits,
        metrics: RouterMetrics,
        clients: ClientAuth,
        rate: KeyRateLimiter,
    ) -> None:
        self.metrics = metrics
        self.cascade = cascade
        self.council = council
        self.traffic = traffic
        self.limits = limits
        self.clients = clients
        self.rate = rate

    async def _client(self, context: grpc.aio.ServicerContext) -> ApiKey:
        """The caller's key, once it is known and within its rate (the request is then counted)."""
        key = (await self.clients.principal(context.invocation_metadata())).key
        try:
            await self.rate.admit(key)
        except KeyRateLimited as exc:
            self.metrics.key_refusals.labels(key.name, exc.reason).inc()
            raise
        self.metrics.key_requests.labels(key.name).inc()
        return key

    def _chat(
        self, request: router_pb2.OrchestrateRequest | router_pb2.OrchestrateStreamRequest | router_pb2.VoteRequest
    ) -> ChatRequest:
        model = getattr(request, "model", "")
        return validate_chat(
            messages_from_proto(request.messages), params_from_proto(request.params), self.limits, model=model
        )

    async def Orchestrate(
        self, request: router_pb2.OrchestrateRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.OrchestrateResponse:
        client = await self._client(context)
        answer = await self.cascade.answer(self._chat(request), request_id_var.get(), _deadline(context), client)
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
        client = await self._client(context)
        async for item in self.cascade.stream(self._chat(request), request_id_var.get(), _deadline(context), client):
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
        await self._client(context)
        result, trace = await vote(
            self.council,
            self._chat(request),
            request_id_var.get(),
            self.cascade.track,
            self.metrics,
            _deadline(context),
        )
        return router_pb2.VoteResponse(
            candidates=[candidate_to_proto(c) for c in sorted(result.candidates, key=lambda c: -c.score)],
            accepted=result.accepted,
            threshold=result.threshold,
            trace=trace_to_proto(trace),
        )

    async def SubmitFeedback(
        self, request: router_pb2.SubmitFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.SubmitFeedbackResponse:
        rater = await self.clients.principal(context.invocation_metadata(), admin_ok=True)
        rating = _RATING.get(request.rating, "")
        track = await self.traffic.feedback(
            request.answer_id, rating, request.comment, rater=rater.key.name, admin=rater.admin
        )
        self.metrics.feedback.labels(rating, track).inc()
        return router_pb2.SubmitFeedbackResponse(recorded=True)


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Operator calls; each needs `authorization: Bearer <SPIRAL_ADMIN_TOKEN>` in the metadata."""

    def __init__(
        self,
        ledger: BudgetLedger,
        admin_token: str,
        per_request_cap_usd_micros: int,
        heads: HeadClient,
        adapter_versions: AdapterVersions,
        settings: Settings,
        keys: ApiKeyStore,
        counts: RequestCounts,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.counts = counts
        self.ledger = ledger
        self.heads = heads
        self.adapter_versions = adapter_versions
        self.admin_token = admin_token
        self.per_request_cap_usd_micros = per_request_cap_usd_micros

    def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if not self.admin_token:
            raise Unauthenticated("admin calls are disabled: SPIRAL_ADMIN_TOKEN is not set", reason="ADMIN_DISABLED")
        token = presented_token(context.invocation_metadata())
        if not matches(token, self.admin_token):
            # Logged without the token: a near-miss in a log is a leaked secret.
            log.warning("admin call refused", extra={"peer": context.peer(), "had_token": bool(token)})
            raise Unauthenticated("a valid admin bearer token is required", reason="BAD_ADMIN_TOKEN")

    async def ReloadAdapter(
        self, request: admin_pb2.ReloadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ReloadAdapterResponse:
        self._authorize(context)
        legacy = request.target == admin_pb2.RELOAD_TARGET_CANARY
        tracks = tracks_to_switch(request.track, legacy_canary_only=legacy)
        switch = await self.heads.load_adapter(
            request.version or "latest", tracks=tracks, request_id=request_id_var.get()
        )
        # The cache key names the adapter version: answers of the old adapter are never served again.
        await self.adapter_versions.set(switch.version, tuple(t.label for t in tracks))
        return admin_pb2.ReloadAdapterResponse(
            version=switch.version,
            previous_version=switch.previous_version,
            heads=switch.heads,
            load_latency_us=switch.load_latency_us,
        )

    async def GetBudget(
        self, request: admin_pb2.GetBudgetRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetBudgetResponse:
        self._authorize(context)
        status = await self.ledger.status()
        resets_at = Timestamp()
        resets_at.FromDatetime(status.resets_at)
        return admin_pb2.GetBudgetResponse(
            day=status.day,
            pool_usd_micros=status.pool_usd_micros,
            spent_usd_micros=status.spent_usd_micros,
            reserved_usd_micros=status.reserved_usd_micros,
            remaining_usd_micros=status.remaining_usd_micros,
            per_request_cap_usd_micros=self.per_request_cap_usd_micros,
            resets_at=resets_at,
        )

    async def GetCanaryWeight(
        self, request: admin_pb2.GetCanaryWeightRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.GetCanaryWeightResponse:
        self._authorize(context)
        return admin_pb2.GetCanaryWeightResponse(percent=canary.current_weight(self.settings))

    async def SetCanaryWeight(
        self, request: admin_pb2.SetCanaryWeightRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.SetCanaryWeightResponse:
        self._authorize(context)
        previous = await asyncio.to_thread(canary.set_weight, self.settings, request.percent)
        log.info("canary weight set", extra={"percent": request.percent, "previous_percent": previous})
        return admin_pb2.SetCanaryWeightResponse(previous_percent=previous, percent=request.percent)

    async def ListApiKeys(
        self, request: admin_pb2.ListApiKeysRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.ListApiKeysResponse:
        self._authorize(context)
        keys = [*await self.keys.list(), ApiKey(LOCAL)]
        status = await self.ledger.status([key_scope(k.name) for k in keys])
        await self.counts.flush()  # this router's counts of keys without a rate, so that they are exact here
        requests = await self.keys.requests_on(utc_day())
        reply = admin_pb2.ListApiKeysResponse(day=status.day)
        for key in keys:
            spent, reserved = status.scopes[key_scope(key.name)]
            usage = reply.keys.add(
                name=key.name,
                rps=key.rps,
                models=key.models,
                spent_usd_micros=spent,
                reserved_usd_micros=reserved,
                requests=requests.get(key.name, 0),
            )
            if key.daily_usd_micros is not None:
                usage.daily_usd_micros = key.daily_usd_micros
            if key.created_ms:
                usage.created_at.FromMilliseconds(key.created_ms)
        return reply
