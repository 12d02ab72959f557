"""Hostile and odd requests at the gateway: each is refused with its 4xx and reason before the router is called."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.schemas import MAX_CONTENT_PARTS
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2, router_pb2_grpc
from spiral_common.chat import MAX_MESSAGES_CEILING
from spiral_common.config import load_settings

HELLO = [{"role": "user", "content": "hello"}]
CHAT = "/v1/chat/completions"


class CountingRouter(router_pb2_grpc.RouterServiceServicer):
    """Answers "hi" and remembers every call, so a test can tell that a refused request never reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, dict[str, str]]] = []

    def _record(self, rpc, request, context) -> None:
        self.calls.append((rpc, request, dict(context.invocation_metadata())))

    def Orchestrate(self, request, context):
        self._record("Orchestrate", request, context)
        return router_pb2.OrchestrateResponse(
            answer_id="a1", text="hi", model="spiral", finish_reason=chat_pb2.FINISH_REASON_STOP
        )

    def Vote(self, request, context):
        self._record("Vote", request, context)
        return router_pb2.VoteResponse()


@pytest.fixture(scope="module")
def router():
    servicer = CountingRouter()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


def _client(port: int, **overrides):
    app = create_app(load_settings({}, envoy_addr=f"127.0.0.1:{port}", **overrides), CollectorRegistry())
    return TestClient(app)


@pytest.fixture(scope="module")
def client(router):
    _, port = router
    with _client(port) as client:
        yield client


@pytest.fixture
def refused(client, router):
    """Posts a body that must be refused: checks the status and reason, and that the router saw no call."""
    servicer, _ = router

    def post(body, status: int, reason: str, path: str = CHAT, **kwargs):
        before = len(servicer.calls)
        reply = client.post(path, json=body, **kwargs) if body is not None else client.post(path, **kwargs)
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert (error["code"], error["reason"]) == (reason, reason)
        assert error["request_id"] == reply.headers["x-request-id"]
        assert len(servicer.calls) == before, "a refused request reached the router"
        return error

    return post


def _chat(**fields) -> dict:
    return {"model": "spiral", "messages": HELLO, **fields}


# -- size ----------------------------------------------------------------------------------------------


def test_the_issues_100000_empty_messages_are_refused_by_size_before_parsing(refused):
    messages = [{"role": "user", "content": ""}] * 100_000 + [{"role": "user", "content": "hi"}]
    error = refused(_chat(messages=messages), 413, "REQUEST_TOO_LARGE")
    assert error["metadata"] == {"limit": str(1024 * 1024)}
    assert error["type"] == "invalid_request_error"


def test_a_large_body_under_a_raised_cap_is_still_refused_by_message_count(router):
    servicer, port = router
    messages = [{"role": "user", "content": ""}] * 100_000 + [{"role": "user", "content": "hi"}]
    before = len(servicer.calls)
    with _client(port, gateway_max_body_bytes=8 * 1024 * 1024) as client:
        reply = client.post(CHAT, json=_chat(messages=messages))
    assert reply.status_code == 400
    assert reply.json()["error"]["reason"] == "TOO_MANY_MESSAGES"
    assert reply.json()["error"]["metadata"] == {"field": "messages", "limit": str(MAX_MESSAGES_CEILING)}
    assert len(servicer.calls) == before


def test_a_1_6_mb_prompt_is_refused_by_its_content_length(refused):
    refused(_chat(messages=[{"role": "user", "content": "x" * 1_600_000}]), 413, "REQUEST_TOO_LARGE")


def test_a_chunked_body_over_the_cap_is_cut_off(refused):
    def chunks():
        yield b'{"model": "spiral", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    refused(None, 413, "REQUEST_TOO_LARGE", content=chunks(), headers={"content-type": "application/json"})


def test_the_body_cap_covers_the_native_routes_too(refused):
    refused({"messages": [{"role": "user", "content": "x" * 1_100_000}]}, 413, "REQUEST_TOO_LARGE", "/orchestrate")


def test_257_messages_are_too_many(refused):
    error = refused(_chat(messages=HELLO * 257), 400, "TOO_MANY_MESSAGES")
    assert (error["param"], error["metadata"]["limit"]) == ("messages", "256")


def test_a_prompt_over_max_prompt_chars_is_refused_at_the_gateway(refused):
    refused(_chat(messages=[{"role": "user", "content": "x" * 16_001}]), 400, "PROMPT_TOO_LONG")


def test_too_many_content_parts_and_stop_sequences_are_refused(refused):
    parts = [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS + 1)
    error = refused(_chat(messages=[{"role": "user", "content": parts}]), 400, "TOO_MANY_CONTENT_PARTS")
    assert error["param"] == "messages[0].content"
    refused(_chat(stop=["a", "b", "c", "d", "e"]), 400, "INVALID_STOP")


# -- integers that do not fit the protos ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason", "param"),
    [
        ({"max_tokens": 3_000_000_000}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
        ({"max_completion_tokens": 2**40}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
        ({"max_tokens": -(2**63)}, "MAX_TOKENS_OUT_OF_RANGE", "max_tokens"),
        ({"seed": 2**70}, "SEED_OUT_OF_RANGE", "seed"),
        ({"seed": -(2**70)}, "SEED_OUT_OF_RANGE", "seed"),
        ({"n": 2**70}, "UNSUPPORTED_FIELD", "n"),
        ({"temperature": 1e308}, "TEMPERATURE_OUT_OF_RANGE", "temperature"),
    ],
)
def test_out_of_range_numbers_are_a_400_naming_the_field(refused, fields, reason, param):
    assert refused(_chat(**fields), 400, reason)["param"] == param


def test_the_native_routes_check_the_same_ranges(refused):
    body = {"messages": HELLO, "seed": 2**70}
    refused(body, 400, "SEED_OUT_OF_RANGE", "/orchestrate")
    refused({"messages": HELLO, "max_tokens": 3_000_000_000}, 400, "MAX_TOKENS_OUT_OF_RANGE", "/vote")


def test_a_number_of_thousands_of_digits_is_a_400_not_a_500(refused):
    body = b'{"model": "spiral", "messages": [], "seed": ' + b"9" * 5000 + b"}"
    refused(None, 400, "MALFORMED_JSON", content=body, headers={"content-type": "application/json"})


# -- fields Spiral does not implement -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]),
        ("tool_choice", "required"),
        ("functions", [{"name": "get_weather", "parameters": {}}]),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
        ("top_logprobs", 3),
        ("logit_bias", {"50256": -100}),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("parallel_tool_calls", True),
        ("reasoning_effort", "high"),
        ("web_search_options", {}),
        ("some_future_field", 1),
    ],
)
def test_an_unsupported_field_is_refused_naming_it(refused, field, value):
    error = refused(_chat(**{field: value}), 400, "UNSUPPORTED_FIELD")
    assert error["param"] == field
    assert field in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("logprobs", True), ("n", 2), ("frequency_penalty", 0.5), ("presence_penalty", -1.0), ("store", True)],
)
def test_a_field_set_to_anything_but_its_no_op_value_is_unsupported(refused, field, value):
    assert refused(_chat(**{field: value}), 400, "UNSUPPORTED_FIELD")["param"] == field


def test_a_tool_call_in_a_message_is_unsupported(refused):
    message = {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function"}]}
    error = refused(_chat(messages=[*HELLO, message]), 400, "UNSUPPORTED_FIELD")
    assert error["param"] == "messages[1].tool_calls"


def test_the_native_routes_refuse_unknown_fields_as_unsupported(refused):
    refused({"messages": HELLO, "tools": []}, 400, "UNSUPPORTED_FIELD", "/orchestrate")


def test_the_ignored_fields_and_no_op_values_are_accepted(client, router):
    servicer, _ = router
    body = _chat(
        messages=[{"role": "user", "content": "hello", "name": "ada"}],
        user="u-1",
        metadata={"team": "a"},
        service_tier="auto",
        n=1,
        frequency_penalty=0,
        presence_penalty=0.0,
        logprobs=False,
        store=False,
    )
    reply = client.post(CHAT, json=body)
    assert reply.status_code == 200, reply.text
    rpc, request, _ = servicer.calls[-1]
    assert rpc == "Orchestrate"
    assert [m.content for m in request.messages] == ["hello"]


def test_unset_sampling_fields_stay_unset_for_the_router(client, router):
    servicer, _ = router
    assert client.post(CHAT, json=_chat(seed=7)).status_code == 200
    _, request, _ = servicer.calls[-1]
    assert request.params.seed == 7
    assert not request.params.HasField("max_tokens") and not request.params.HasField("temperature")


def test_developer_messages_reach_the_router_as_system(client, router):
    servicer, _ = router
    messages = [{"role": "developer", "content": "be brief"}, *HELLO]
    assert client.post(CHAT, json=_chat(messages=messages)).status_code == 200
    _, request, _ = servicer.calls[-1]
    assert [m.role for m in request.messages] == [chat_pb2.ROLE_SYSTEM, chat_pb2.ROLE_USER]


# -- x-request-id ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    ["café".encode(), b"\xff\xfe", ("a" * 129).encode(), b"has space", b"semi;colon", b"<script>"],
    ids=["non-ascii", "not-utf8", "overlong", "space", "semicolon", "markup"],
)
def test_an_unsafe_request_id_is_replaced_and_the_reply_says_so(client, router, sent):
    servicer, _ = router
    reply = client.post(CHAT, json=_chat(), headers={"x-request-id": sent})
    assert reply.status_code == 200
    fresh = reply.headers["x-request-id"]
    assert fresh.encode() != sent and 1 <= len(fresh) <= 128
    assert reply.headers["x-spiral-request-id-replaced"] == "1"
    assert servicer.calls[-1][2]["x-request-id"] == fresh


def test_a_safe_request_id_is_kept_and_not_marked(client, router):
    servicer, _ = router
    sent = "Req-1.2:3_" + "a" * 118  # 128 characters of the safe set
    reply = client.post(CHAT, json=_chat(), headers={"x-request-id": sent})
    assert reply.headers["x-request-id"] == sent
    assert "x-spiral-request-id-replaced" not in reply.headers
    assert servicer.calls[-1][2]["x-request-id"] == sent


def test_an_unsafe_request_id_on_a_refused_request_is_replaced_too(refused):
    refused(_chat(tools=[]), 400, "UNSUPPORTED_FIELD", headers={"x-request-id": "café".encode()})


# -- the rest of the body's errors -------------------------------------------------------------------------


def test_an_unknown_path_answers_the_same_json_error_body(client):
    reply = client.post("/v1/completions", json={})
    assert reply.status_code == 404
    assert reply.json()["error"]["reason"] == "NOT_FOUND"


def test_malformed_json_is_still_malformed_json(refused):
    refused(None, 400, "MALFORMED_JSON", content=b"{", headers={"content-type": "application/json"})


def test_the_openapi_schema_lists_the_accepted_fields_and_no_others(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ChatCompletionRequest"]
    assert schema["additionalProperties"] is False
    assert {"user", "metadata", "logprobs"} <= set(schema["properties"])
    assert "tools" not in schema["properties"]
    assert json.dumps(schema)  # serialisable, as schemathesis reads it
