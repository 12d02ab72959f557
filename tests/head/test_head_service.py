"""The head service in-process on port 0, with llama.cpp on the embedded model."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from head_svc.server import build_pool, create_server
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.config import load_settings
from tests.head.serving import BASE, running_head
from tests.helpers import reason_of, wait_until_async


def _request(text: str = "What is the capital of France?", **params) -> head_pb2.GenerateRequest:
    return head_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(**params),
    )


@pytest.fixture
async def head(engine):
    async with running_head(engine, max_concurrent=2) as running:
        yield running


async def _collect(call) -> tuple[str, head_pb2.GenerateEnd]:
    text, end = [], None
    async for message in call:
        if message.HasField("delta"):
            text.append(message.delta.text)
        else:
            end = message.end
    return "".join(text), end


async def test_generation_streams_text_then_usage(head):
    stub, _ = head
    text, end = await _collect(stub.Generate(_request(max_tokens=24, temperature=0)))
    assert text.strip()
    assert end.finish_reason in (chat_pb2.FINISH_REASON_STOP, chat_pb2.FINISH_REASON_LENGTH)
    assert 0 < end.usage.completion_tokens <= 24
    assert end.usage.prompt_tokens > 5
    assert end.head == "precise"  # the first head of deploy/heads.json is the default
    assert 0 < end.first_token_latency_us <= end.total_latency_us


async def test_max_tokens_ends_with_length(head):
    stub, _ = head
    _, end = await _collect(stub.Generate(_request("Count from one to one hundred.", max_tokens=3, temperature=0)))
    assert end.finish_reason == chat_pb2.FINISH_REASON_LENGTH
    assert end.usage.completion_tokens == 3


async def test_stop_sequence_is_not_returned(head):
    stub, _ = head
    full, _ = await _collect(stub.Generate(_request(max_tokens=24, temperature=0)))
    word = full.split()[1]
    text, end = await _collect(stub.Generate(_request(max_tokens=24, temperature=0, stop=[word])))
    assert word not in text
    assert end.finish_reason == chat_pb2.FINISH_REASON_STOP


async def test_client_cancel_stops_the_generation(head):
    stub, pool = head
    call = stub.Generate(_request("Write a long story about the sea.", max_tokens=256, temperature=0.7))
    async for message in call:
        assert message.HasField("delta")
        break
    call.cancel()
    await wait_until_async(lambda: asyncio.sleep(0, result=pool.active == 0), 5, "the head to drop the generation")
    text, end = await _collect(stub.Generate(_request(max_tokens=4, temperature=0)))  # still serving
    assert end.usage.completion_tokens <= 4


async def test_over_the_concurrency_cap_is_resource_exhausted_with_retry_info(head):
    stub, _ = head
    long_calls = [stub.Generate(_request("Tell me a story.", max_tokens=200)) for _ in range(2)]  # start at once
    await wait_until_async(lambda: asyncio.sleep(0, result=head[1].active == 2), 5, "two generations in flight")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(stub.Generate(_request(max_tokens=4)))
    code, reason, _ = reason_of(caught.value)
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "HEAD_BUSY")
    status = status_pb2.Status.FromString(dict(caught.value.trailing_metadata())["grpc-status-details-bin"])
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    for call in long_calls:
        call.cancel()


@pytest.mark.parametrize(
    ("request_", "reason", "field"),
    [
        (head_pb2.GenerateRequest(), "EMPTY_MESSAGES", "messages"),
        (
            head_pb2.GenerateRequest(messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_UNSPECIFIED, content="hi")]),
            "INVALID_ROLE",
            "messages[0].role",
        ),
        (_request(max_tokens=0), "MAX_TOKENS_OUT_OF_RANGE", "params.max_tokens"),
        (_request(temperature=3), "TEMPERATURE_OUT_OF_RANGE", "params.temperature"),
        (_request("x" * 5000), "PROMPT_TOO_LONG", "messages"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(head, request_, reason, field):
    stub, _ = head
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(stub.Generate(request_))
    code, got_reason, metadata = reason_of(caught.value)
    assert (code, got_reason, metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    _, end = await _collect(stub.Generate(_request(max_tokens=2)))  # keeps serving
    assert end.usage.completion_tokens <= 2


async def test_unknown_head_is_not_found(head):
    stub, _ = head
    request = _request(max_tokens=2)
    request.head = "nobody"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _collect(stub.Generate(request))
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.NOT_FOUND, "HEAD_NOT_FOUND")


async def test_a_head_whose_model_is_not_loaded_is_unavailable():
    settings = load_settings({"SPIRAL_PROFILE": "quick_test"})
    runtime = create_server(settings, build_pool(settings), BASE, port=0)
    await runtime.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _collect(head_pb2_grpc.HeadServiceStub(channel).Generate(_request(max_tokens=2)))
    await runtime.server.stop(None)
    assert reason_of(caught.value)[:2] == (grpc.StatusCode.UNAVAILABLE, "MODEL_NOT_LOADED")


async def test_head_info_reports_the_base_model_and_heads(head):
    stub, _ = head
    info = await stub.GetHeadInfo(head_pb2.GetHeadInfoRequest())
    assert info.base_model.sha256 == BASE.sha256
    assert [h.name for h in info.heads] == ["precise", "concise", "step_by_step", "creative", "code"]
    assert info.heads[0].state == head_pb2.LOAD_STATE_READY
    assert info.resident_memory_bytes > 0
