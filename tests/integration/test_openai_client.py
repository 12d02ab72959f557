"""A new user's first requests: the official openai client against the gateway, answered by the local head."""

from __future__ import annotations

import httpx
import openai
import pytest

from spiral_common.auth import operator_token

pytestmark = pytest.mark.integration

HELLO = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(gateway_url):
    return openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="not-needed-locally", max_retries=0)


def test_models_lists_spiral(client):
    assert [m.id for m in client.models.list()] == ["spiral"]


def test_chat_completion_is_answered_locally_by_the_council(client):
    reply = client.chat.completions.create(model="spiral", messages=HELLO, max_tokens=16, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    trace = reply.model_extra["spiral_trace"]
    # No cloud keys here: an accepted vote answers, or else the best local answer serves as the fallback.
    assert trace["tier"] in ("TIER_COUNCIL", "TIER_LOCAL_FALLBACK", "TIER_CACHE")
    assert trace["track"] in ("TRACK_MAIN", "TRACK_CANARY")
    assert trace["router_instance"] == trace["track"].removeprefix("TRACK_").lower()  # the deprecated twin
    if trace["tier"] in ("TIER_COUNCIL", "TIER_LOCAL_FALLBACK"):
        assert [c["head"] for c in trace["candidates"]] == ["precise", "concise", "creative"]


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
    assert text == unary.choices[0].message.content  # the same request, streamed or not, has the same answer


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


def test_orchestrate_returns_answer_and_trace_and_takes_feedback(gateway_url):
    reply = httpx.post(f"{gateway_url}/orchestrate", json={"messages": HELLO, "max_tokens": 8}, timeout=60)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["text"] and body["answer_id"]
    assert body["trace"]["tier"] in ("TIER_COUNCIL", "TIER_LOCAL_FALLBACK", "TIER_CACHE")
    assert reply.headers["x-request-id"] == body["trace"]["request_id"]
    rated = httpx.post(f"{gateway_url}/feedback", json={"answer_id": body["answer_id"], "rating": "good"})
    assert rated.json() == {"recorded": True}
    unknown = httpx.post(f"{gateway_url}/feedback", json={"answer_id": "nope", "rating": "good"})
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "ANSWER_NOT_FOUND")


def test_the_pattern_head_answers_arithmetic_exactly(client):
    reply = client.chat.completions.create(model="spiral", messages=[{"role": "user", "content": "What is 12*12?"}])
    assert reply.choices[0].message.content == "12*12 = 144"
    assert reply.model_extra["spiral_trace"]["tier"] == "TIER_PATTERN"


def test_vote_shows_every_candidate(gateway_url):
    reply = httpx.post(f"{gateway_url}/vote", json={"messages": HELLO, "max_tokens": 8}, timeout=60)
    assert reply.status_code == 200, reply.text
    heads = sorted(c["head"] for c in reply.json()["candidates"])
    assert heads == ["concise", "creative", "precise"]


def test_admin_budget_needs_the_token(platform, gateway_url):
    assert httpx.get(f"{gateway_url}/admin/budget").status_code == 401
    token = operator_token(platform.settings)
    budget = httpx.get(f"{gateway_url}/admin/budget", headers={"authorization": f"Bearer {token}"}).json()
    # The trainer's jobs (test_evolution) pay from the same pool: spend is whatever the session has used.
    assert budget["pool_usd_micros"] == "100000" and 0 <= int(budget["spent_usd_micros"]) <= 100000


def test_openapi_document_is_published(gateway_url):
    spec = httpx.get(f"{gateway_url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/orchestrate", "/healthz", "/metrics"} <= set(spec["paths"])
