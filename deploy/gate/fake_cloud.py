"""A local OpenAI-compatible server that plays the paid cloud providers in the gate, the tests and the benches.

Each model name gets a behaviour the test controls: answer (with a delay), fail with HTTP 500,
break the stream mid-way, or stall. Usage is reported like the real APIs do (`include_usage`).
`answers` maps a prompt (the last message's content) to the text to answer it with, whatever the model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from deploy.platform import free_ports


@dataclass
class Behaviour:
    mode: str = "answer"  # "answer", "error", "break", "stall"
    text: str = "The cloud says hello."
    delay_s: float = 0.0
    prompt_tokens: int = 20
    finish: str = ""  # the finish reason to send ("" = stop, or length at max_tokens); e.g. "content_filter"


@dataclass
class FakeCloud:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):  # type: ignore[no-untyped-def]
            body = await request.json()
            self.requests.append(body)
            behaviour = self.behaviours.get(body["model"], Behaviour())
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
            if behaviour.mode == "error":
                return JSONResponse({"error": {"message": "upstream exploded", "type": "server_error"}}, 500)
            text = self.answers.get(body["messages"][-1]["content"], behaviour.text)
            words = text.split(" ")[: body.get("max_tokens") or None]
            if not body.get("stream") and behaviour.mode == "answer":  # a plain JSON completion, as the APIs do
                usage = {"prompt_tokens": behaviour.prompt_tokens, "completion_tokens": len(words)}
                natural = "length" if len(words) == body.get("max_tokens") else "stop"
                choice = {"index": 0, "message": {"role": "assistant", "content": " ".join(words)}}
                return JSONResponse(
                    {
                        "id": "cmpl-fake",
                        "object": "chat.completion",
                        "created": 0,
                        "model": body["model"],
                        "choices": [choice | {"finish_reason": behaviour.finish or natural}],
                        "usage": usage | {"total_tokens": sum(usage.values())},
                    }
                )

            async def events():  # type: ignore[no-untyped-def]
                def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
                    payload = {
                        "id": "cmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }
                    if usage:
                        payload["usage"] = usage
                    return f"data: {json.dumps(payload)}\n\n"

                yield chunk({"role": "assistant", "content": ""})
                for i, word in enumerate(words):
                    yield chunk({"content": word if i == 0 else " " + word})
                    if behaviour.mode == "break" and i == 1:
                        raise ConnectionResetError("the provider dropped the stream")
                    if behaviour.mode == "stall" and i == 1:
                        await asyncio.sleep(3600)
                natural = "length" if len(words) == body.get("max_tokens") else "stop"
                yield chunk({}, behaviour.finish or natural)
                usage = {"prompt_tokens": behaviour.prompt_tokens, "completion_tokens": len(words)}
                yield chunk({}, usage=usage | {"total_tokens": sum(usage.values())})
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        return app

    def start(self) -> None:
        (self.port,) = free_ports(1)
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("timed out after 10s waiting for the fake cloud to start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def providers_json(cloud: FakeCloud, prices: tuple[int, int] = (1_000_000, 2_000_000)) -> dict:
    """Two providers in the platform's file format, both played by `cloud` (models "primary", "secondary")."""
    return {
        "providers": [
            {
                "name": name,
                "base_url": cloud.base_url,
                "model": name,
                "api_key_env": "FAKE_CLOUD_KEY",
                "input_usd_micros_per_million_tokens": prices[0],
                "output_usd_micros_per_million_tokens": prices[1],
            }
            for name in ("primary", "secondary")
        ]
    }
