"""A new user's first requests: the official openai client against the gateway, answered by the local head."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="not-needed-locally", max_retries=0)


def test_models_lists_spiral(client):
    assert [m.id for m in client.models.list()] == ["spiral"]


def test_chat_completion_is_answered_by_the_local_head(client):
    reply = client.chat.completions.create(model="spiral", messages=HELLO, max_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    trace = reply.model_extra["spiral_trace"]
    assert trace["tier"] == "TIER_HEAD"
    assert trace["router_instance"] in ("main", "canary")


def test_streamed_chat_completion_arrives_as_sse_chunks(client):
    stream = client.chat.completions.create(
        model="spiral",
        messages=HELLO,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage]
    assert text.strip()
    assert finishes in (["stop"], ["length"])
    assert len(usage) == 1 and 0 < usage[0].completion_tokens <= 16
    unary = client.chat.completions.create(model="spiral", messages=HELLO, max_tokens=16, temperature=0)
    assert text == unary.choices[0].message.content  # same answer at temperature 0, streamed or not


@pytest.mark.parametrize(
    ("body", "reason", "param"),
    [
        ({"messages": []}, "EMPTY_MESSAGES", "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "INVALID_ROLE", "messages[0].role"),
        ({"messages": HELLO, "max_tokens": 0}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
        ({"messages": HELLO, "max_tokens": 100_000}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
        ({"messages": HELLO, "temperature": 9}, "TEMPERATURE_OUT_OF_RANGE", "temperature"),
        ({"messages": [{"role": "user", "content": "x" * 5000}]}, "PROMPT_TOO_LONG", "messages"),
        ({"messages": HELLO, "stream": True, "max_tokens": -1}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, body, reason, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="spiral", **body)
    error = caught.value.body
    assert (error["code"], error["param"]) == (reason, param)
    assert client.chat.completions.create(model="spiral", messages=HELLO, max_tokens=2).choices  # still serving


def test_malformed_json_is_a_400_with_a_json_body(gateway_url):
    reply = httpx.post(
        f"{gateway_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "MALFORMED_JSON"


def test_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert caught.value.body["code"] == "MODEL_NOT_FOUND"


def test_request_id_travels_from_gateway_to_head(platform, client):
    reply = client.chat.completions.create(
        model="spiral", messages=HELLO, max_tokens=4, extra_headers={"x-request-id": "trace-me-123"}
    )
    assert reply.model_extra["spiral_trace"]["request_id"] == "trace-me-123"
    head_log = platform.run / "logs" / "head.log"
    assert '"request_id": "trace-me-123"' in head_log.read_text()


def test_orchestrate_returns_answer_and_trace(gateway_url):
    reply = httpx.post(f"{gateway_url}/orchestrate", json={"messages": HELLO, "max_tokens": 8}, timeout=30)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] and body["answer_id"]
    assert body["trace"]["tier"] == "TIER_HEAD"
    assert reply.headers["x-request-id"] == body["trace"]["request_id"]


def test_openapi_document_is_published(gateway_url):
    spec = httpx.get(f"{gateway_url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/orchestrate", "/healthz", "/metrics"} <= set(spec["paths"])
