"""The router in-process on port 0, with a scripted head in place of the head service."""

from __future__ import annotations

import grpc
import pytest

from router_svc.heads_client import HeadDone, HeadText
from router_svc.server import create_server
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common import errors
from spiral_common.config import load_settings
from spiral_common.logs import REQUEST_ID_HEADER
from tests.helpers import reason_of


class ScriptedHead:
    """Answers every prompt with the same pieces, or fails with a given domain error."""

    def __init__(self, pieces=("Hello", ", ", "world"), error: errors.SpiralError | None = None) -> None:
        self.pieces, self.error, self.requests = pieces, error, []

    async def generate(self, request, *, head, request_id):
        self.requests.append((request, request_id))
        if self.error:
            raise self.error
        for piece in self.pieces:
            yield HeadText(piece)
        yield HeadDone("stop", 11, len(self.pieces), "default", "")


async def _router(head):
    settings = load_settings({"SPIRAL_PROFILE": "quick_test", "SPIRAL_ROUTER_INSTANCE": "canary"})
    runtime = create_server(settings, head, port=0)
    await runtime.start()
    return runtime, grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")


@pytest.fixture
async def router():
    head = ScriptedHead()
    runtime, channel = await _router(head)
    yield router_pb2_grpc.RouterServiceStub(channel), head, channel
    await channel.close()
    await runtime.server.stop(None)


def _ask(text="hi", **params):
    return dict(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(**params),
    )


async def test_orchestrate_answers_with_a_decision_trace(router):
    stub, head, _ = router
    reply = await stub.Orchestrate(router_pb2.OrchestrateRequest(**_ask()), metadata=((REQUEST_ID_HEADER, "req-42"),))
    assert reply.text == "Hello, world"
    assert reply.finish_reason == chat_pb2.FINISH_REASON_STOP
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 3)
    trace = reply.trace
    assert (trace.request_id, trace.tier, trace.router_instance) == ("req-42", router_pb2.TIER_HEAD, "canary")
    assert [(s.tier, s.outcome) for s in trace.steps] == [(router_pb2.TIER_HEAD, router_pb2.TIER_OUTCOME_ANSWERED)]
    assert trace.cost_usd_micros == 0
    assert head.requests[0][1] == "req-42"  # the request id travels on to the head


async def test_stream_yields_deltas_then_one_end_with_trace(router):
    stub, _, _ = router
    events = [e async for e in stub.OrchestrateStream(router_pb2.OrchestrateStreamRequest(**_ask()))]
    assert [e.delta.text for e in events[:-1]] == ["Hello", ", ", "world"]
    assert events[-1].HasField("end")
    assert events[-1].end.trace.tier == router_pb2.TIER_HEAD
    assert events[-1].end.trace.request_id  # generated when the caller sent none


async def test_defaults_are_applied_before_the_head_sees_the_request(router):
    stub, head, _ = router
    await stub.Orchestrate(router_pb2.OrchestrateRequest(**_ask()))
    request, _ = head.requests[0]
    assert request.max_tokens == 32  # quick_test's SPIRAL_DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(
    ("kwargs", "code", "reason"),
    [
        (dict(messages=[]), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_MESSAGES"),
        (_ask(max_tokens=-1), grpc.StatusCode.INVALID_ARGUMENT, "MAX_TOKENS_OUT_OF_RANGE"),
        ({**_ask(), "model": "gpt-4"}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
    ],
)
async def test_bad_requests_are_refused_with_a_reason(router, kwargs, code, reason):
    stub, head, _ = router
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Orchestrate(router_pb2.OrchestrateRequest(**kwargs))
    assert reason_of(caught.value)[:2] == (code, reason)
    assert not head.requests


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.Unavailable("loading", reason="MODEL_NOT_LOADED"), grpc.StatusCode.UNAVAILABLE, "MODEL_NOT_LOADED"),
        (errors.HeadBusy("busy", retry_after_ms=100), grpc.StatusCode.RESOURCE_EXHAUSTED, "HEAD_BUSY"),
    ],
)
async def test_head_failures_reach_the_caller_with_their_reason(error, code, reason):
    runtime, channel = await _router(ScriptedHead(error=error))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router_pb2_grpc.RouterServiceStub(channel).Orchestrate(router_pb2.OrchestrateRequest(**_ask()))
    await channel.close()
    await runtime.server.stop(None)
    assert reason_of(caught.value)[:2] == (code, reason)


async def test_an_unexpected_exception_is_internal_with_a_generic_message():
    runtime, channel = await _router(ScriptedHead(error=RuntimeError("secret detail")))  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await router_pb2_grpc.RouterServiceStub(channel).Orchestrate(router_pb2.OrchestrateRequest(**_ask()))
    await channel.close()
    await runtime.server.stop(None)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details()


async def test_rpcs_of_later_issues_are_unimplemented_naming_what_is_missing(router):
    stub, _, channel = router
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    calls = [
        (stub.Vote(router_pb2.VoteRequest(**_ask())), "council"),
        (stub.SubmitFeedback(router_pb2.SubmitFeedbackRequest(answer_id="x")), "traffic log"),
        (admin.GetBudget(admin_pb2.GetBudgetRequest()), "daily pool"),
        (admin.SetCanaryWeight(admin_pb2.SetCanaryWeightRequest(percent=25)), "canary"),
        (admin.ReloadAdapter(admin_pb2.ReloadAdapterRequest(version="latest")), "hot reload"),
    ]
    for call, missing in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED")
        assert missing in caught.value.details()
