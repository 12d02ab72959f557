"""Generations stop when nobody waits, and the head stops when told: real llama.cpp on the embedded model."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from deploy.platform import grpc_health
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.chat import ChatRequest, Message
from spiral_common.grpc_service import EXIT_MARGIN_S
from tests.head.serving import running_head
from tests.helpers import free_ports, wait_until, wait_until_async

# About 900 tokens: seconds of prompt evaluation on a CPU before the first token.
LONG_PROMPT = "Summarise these notes.\n" + "The sea was calm and the boats came home. " * 85


def _request(text: str, max_tokens: int) -> head_pb2.GenerateRequest:
    return head_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(max_tokens=max_tokens, temperature=0),
    )


@pytest.fixture
async def head(engine):
    async with running_head(engine, max_concurrent=3) as running:
        yield running


async def _first_text(call) -> str:
    async for message in call:
        if message.HasField("delta"):
            return message.delta.text
    return ""


class _SetAfterTokenisation(threading.Event):
    """A cancel flag that reads clear once (the check before the prompt is evaluated), then set."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def is_set(self) -> bool:
        self.reads += 1
        return self.reads > 1


def test_a_cancel_during_prompt_evaluation_stops_it_and_the_engine_serves_on(engine):
    request = ChatRequest(messages=(Message("user", LONG_PROMPT),), max_tokens=16, temperature=0.0, top_p=1.0)
    emitted: list[str] = []
    outcome = engine.generate(request, emitted.append, _SetAfterTokenisation())
    assert (outcome.finish_reason, outcome.completion_tokens, emitted) == ("cancelled", 0, [])
    short = ChatRequest(
        messages=(Message("user", "What is the capital of France?"),), max_tokens=8, temperature=0.0, top_p=1.0
    )
    emitted.clear()
    after = engine.generate(short, emitted.append, threading.Event())
    assert after.finish_reason in ("stop", "length") and "".join(emitted).strip()


async def test_a_cancelled_long_generation_frees_the_engine_for_the_next_request(head):
    stub, pool = head
    run_before = pool.generations_run
    long_call = stub.Generate(_request("Notes. " + LONG_PROMPT, 100))
    await wait_until_async(lambda: asyncio.sleep(0, result=pool.generations_run > run_before), 30, "the long one")
    queued = asyncio.ensure_future(_first_text(stub.Generate(_request("Say hello.", 4))))
    await wait_until_async(lambda: asyncio.sleep(0, result=pool.active == 2), 30, "the short one to queue")
    long_call.cancel()
    assert (await asyncio.wait_for(queued, 60)).strip()  # hang guard, not a timing target
    assert pool.generations_run == run_before + 2


async def test_a_queued_request_whose_caller_left_never_runs(head):
    stub, pool = head
    run_before, dropped_before = pool.generations_run, pool.generations_dropped
    running = stub.Generate(_request("Tell me a long story about the sea.", 200))
    assert await asyncio.wait_for(_first_text(running), 60)
    waiting = stub.Generate(_request("What is the capital of France?", 8))
    await wait_until_async(lambda: asyncio.sleep(0, result=pool.active == 2), 30, "the second one to queue")
    waiting.cancel()
    await wait_until_async(lambda: asyncio.sleep(0, result=pool.active == 1), 30, "the queued one to go")
    running.cancel()
    await wait_until_async(
        lambda: asyncio.sleep(0, result=pool.generations_dropped == dropped_before + 1), 60, "the queued one dropped"
    )
    assert pool.generations_run == run_before + 1  # only the first ever reached the engine
    assert pool.active == 0


def test_sigterm_with_a_generation_running_exits_0_within_the_grace(tmp_path):
    port, metrics_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    grace_s = 1.0
    env = {
        **os.environ,
        "SPIRAL_PROFILE": "quick_test",
        "SPIRAL_HEAD_ADDR": address,
        "SPIRAL_HEAD_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SPIRAL_RUN_DIR": str(tmp_path),
        "SPIRAL_SHUTDOWN_GRACE_S": str(grace_s),
        "SPIRAL_MAX_TOKENS_LIMIT": "900",
    }
    log = (tmp_path / "head.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "head_svc"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: grpc_health(address) == "SERVING", 60, "the head to serve")
        with grpc.insecure_channel(address) as channel:
            stream = head_pb2_grpc.HeadServiceStub(channel).Generate(_request("Tell me a very long story.", 900))
            assert next(stream).HasField("delta")
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # grace + the exit margin + slack for a loaded machine: a hang guard, the number is in bench.stop
            assert process.wait(timeout=grace_s + EXIT_MARGIN_S + 20) == 0
            waited = time.monotonic() - signalled
            with pytest.raises(grpc.RpcError):
                list(stream)  # the generation outlived the grace: cut, not finished
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert waited >= grace_s
    text = (tmp_path / "head.log").read_text()
    assert '"message": "draining"' in text and '"message": "stopped"' in text


async def test_a_prompt_over_the_context_is_refused_on_arrival_not_after_the_queue(head):
    stub, pool = head
    run_before = pool.generations_run
    running = stub.Generate(_request("Tell me a long story about the sea.", 200))
    assert await asyncio.wait_for(_first_text(running), 60)
    too_long = "Count the zeros: " + "0 1 2 3 4 5 6 7 8 9 " * 150  # 3,017 characters, ~1,500 tokens: over 1,024
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(_first_text(stub.Generate(_request(too_long, 8))), 30)  # a hang guard
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context window" in (caught.value.details() or "")
    assert pool.active == 1 and pool.generations_run == run_before + 1  # it never queued nor ran
    running.cancel()
