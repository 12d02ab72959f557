"""How fast the head lets go: client cancel to an idle engine, and SIGTERM to exit with a generation running.

`python -m bench.stop` starts a head in-process (`create_server` on port 0, the embedded model) and asks for
a long prompt with a large max_tokens, cancels it after 0.5 s (inside the prompt's evaluation), and times how
long until a tiny request that was queued behind it gets its first text. For comparison it also times the
long prompt's evaluation when nobody cancels (what a cancel used to wait for). Then it starts
`python -m head_svc` as a child with a short grace, sends SIGTERM while a long generation streams, and times
the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc

from deploy.platform import free_ports, grpc_health
from head_svc.server import build_pool, create_server
from spiral.common.v1 import chat_pb2
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.config import load_settings
from spiral_common.llama_engine import LlamaEngine
from spiral_common.model_files import embedded_model_path

LONG_PROMPT = "Summarise the following notes in one line.\n" + "The sea was calm and the boats came home. " * 90


def _request(text: str, max_tokens: int) -> head_pb2.GenerateRequest:
    return head_pb2.GenerateRequest(
        messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, content=text)],
        params=chat_pb2.GenerationParams(max_tokens=max_tokens, temperature=0),
    )


async def _first_message_s(stub: head_pb2_grpc.HeadServiceStub, request: head_pb2.GenerateRequest) -> float:
    started = time.perf_counter()
    call = stub.Generate(request)
    async for _ in call:
        break
    elapsed = time.perf_counter() - started
    call.cancel()
    return elapsed


async def cancel_to_idle(cancel_after_s: float) -> tuple[float, float]:
    """(seconds from cancel to the next request's first text, seconds to the long prompt's first text)."""
    settings = load_settings(
        {"SPIRAL_PROFILE": "quick_test", "SPIRAL_HEAD_MAX_CONCURRENT": "4", "SPIRAL_MAX_TOKENS_LIMIT": "1024"}
    )
    pool = build_pool(settings)
    runtime = create_server(settings, pool, head_pb2.BaseModel(path="embedded"), port=0)
    await runtime.start()
    engine = LlamaEngine(embedded_model_path(), context_tokens=2048, threads=0, gpu_layers=0)
    await pool.load(lambda: engine)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = head_pb2_grpc.HeadServiceStub(channel)
        await _first_message_s(stub, _request("Hi", 1))  # warm
        uncancelled = await _first_message_s(stub, _request("Notes (a). " + LONG_PROMPT, 512))
        long_call = stub.Generate(_request("Notes (b). " + LONG_PROMPT, 512))
        tiny = asyncio.ensure_future(_first_message_s(stub, _request("Hi", 4)))  # queued behind the long one
        await asyncio.sleep(cancel_after_s)
        long_call.cancel()
        cancelled_at = time.perf_counter()
        await asyncio.wait_for(tiny, 60)
        idle_s = time.perf_counter() - cancelled_at
    await runtime.server.stop(None)
    return idle_s, uncancelled


def sigterm_to_exit(grace_s: float) -> float:
    """Seconds from SIGTERM to the exit of `python -m head_svc` while a long generation streams."""
    port, metrics_port = free_ports(2)
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as run_dir:
        env = {
            **os.environ,
            "SPIRAL_PROFILE": "quick_test",
            "SPIRAL_HEAD_ADDR": address,
            "SPIRAL_HEAD_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "SPIRAL_RUN_DIR": run_dir,
            "SPIRAL_SHUTDOWN_GRACE_S": str(grace_s),
            "SPIRAL_MAX_TOKENS_LIMIT": "1024",
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "head_svc"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while grpc_health(address) != "SERVING":
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the head did not start")
                time.sleep(0.2)
            with grpc.insecure_channel(address) as channel:
                stream = head_pb2_grpc.HeadServiceStub(channel).Generate(_request("Tell me a very long story.", 900))
                next(stream)
                signalled = time.perf_counter()
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=grace_s + 60)
                return time.perf_counter() - signalled
        finally:
            if process.poll() is None:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cancel-after", type=float, default=0.5, help="seconds before the client cancels")
    parser.add_argument("--grace", type=float, default=2.0, help="SPIRAL_SHUTDOWN_GRACE_S for the SIGTERM run")
    args = parser.parse_args()
    idle_s, uncancelled_s = asyncio.run(cancel_to_idle(args.cancel_after))
    print(f"long prompt, first text when not cancelled: {uncancelled_s * 1000:.0f} ms")
    print(f"cancel after {args.cancel_after} s -> next request's first text: {idle_s * 1000:.0f} ms")
    exit_s = sigterm_to_exit(args.grace)
    print(f"SIGTERM with a generation streaming (grace {args.grace} s) -> exit: {exit_s * 1000:.0f} ms")


if __name__ == "__main__":
    main()
