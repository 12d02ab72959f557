"""The native API: /orchestrate (answer and decision trace), /vote (the council alone) and /feedback."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from google.protobuf import json_format

from gateway.convert import checked_chat
from gateway.schemas import FeedbackBody, OrchestrateBody, VoteBody
from gateway.state import CallTimeout, ChatLimits, ClientMetadata, Stubs
from spiral.router.v1 import router_pb2

RATINGS = {"good": router_pb2.RATING_GOOD, "bad": router_pb2.RATING_BAD}

router = APIRouter()


@router.post("/orchestrate", summary="Answer through the cascade; the reply carries the decision trace")
async def orchestrate(
    body: OrchestrateBody, stubs: Stubs, metadata: ClientMetadata, limits: ChatLimits, timeout: CallTimeout
) -> JSONResponse:
    chat = checked_chat(body.messages, body, limits)
    reply = await stubs.router.Orchestrate(
        router_pb2.OrchestrateRequest(messages=chat.messages, params=chat.params, model=body.model),
        metadata=metadata,
        timeout=timeout,
    )
    return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))


@router.post("/vote", summary="Run the council alone; every candidate with its score, best first")
async def vote(
    body: VoteBody, stubs: Stubs, metadata: ClientMetadata, limits: ChatLimits, timeout: CallTimeout
) -> JSONResponse:
    chat = checked_chat(body.messages, body, limits)
    reply = await stubs.router.Vote(
        router_pb2.VoteRequest(messages=chat.messages, params=chat.params), metadata=metadata, timeout=timeout
    )
    return JSONResponse(json_format.MessageToDict(reply, preserving_proto_field_name=True))


@router.post("/feedback", summary="Rate an earlier answer by its answer_id (good or bad)")
async def feedback(body: FeedbackBody, stubs: Stubs, metadata: ClientMetadata) -> JSONResponse:
    reply = await stubs.router.SubmitFeedback(
        router_pb2.SubmitFeedbackRequest(
            answer_id=body.answer_id.removeprefix("chatcmpl-"), rating=RATINGS[body.rating], comment=body.comment
        ),
        metadata=metadata,
    )
    return JSONResponse({"recorded": reply.recorded})
