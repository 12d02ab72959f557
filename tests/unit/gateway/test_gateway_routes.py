"""The gateway's HTTP answers, against a small in-process router on port 0: SSE chunks, errors, request ids."""

from __future__ import annotations

import json
import time
from concurrent import futures

import grpc
import pytest
from fastapi.testclient import TestClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc
from spiral_common.config import load_settings

HELLO = [{"role": "user", "content": "hello"}]


class Router(router_pb2_grpc.RouterServiceServicer):
    """Answers "hello" in two deltas; "fail first" and "fail later" fail before and after the first token."""

    def __init__(self) -> None:
        self.request_ids: list[str] = []
        self.time_remaining: list[float | None] = []  # each Orchestrate's deadline, as the router saw it

    def Orchestrate(self, request, context):
        self.request_ids.append(dict(context.invocation_metadata()).get("x-request-id", ""))
        self.time_remaining.append(context.time_remaining())
        if request.messages[-1].content == "take your time":
            gave_up = time.monotonic() + 10
            while context.is_active() and time.monotonic() < gave_up:  # until the caller's deadline
                time.sleep(0.01)
        return router_pb2.OrchestrateResponse(
            answer_id="a1", text="hi", model="spiral", finish_reason=chat_pb2.FINISH_REASON_LENGTH
        )

    def OrchestrateStream(self, request, context):
        text = request.messages[-1].content
        if text == "fail first":
            context.abort(grpc.StatusCode.UNAVAILABLE, "no head")
        yield router_pb2.OrchestrateStreamResponse(delta=router_pb2.TextDelta(text="hi "))
        if text == "fail later":
            context.abort(grpc.StatusCode.INTERNAL, "boom")
        yield router_pb2.OrchestrateStreamResponse(delta=router_pb2.TextDelta(text="there"))
        yield router_pb2.OrchestrateStreamResponse(
            end=router_pb2.StreamEnd(
                answer_id="s1",
                finish_reason=chat_pb2.FINISH_REASON_STOP,
                usage=chat_pb2.Usage(prompt_tokens=2, completion_tokens=3),
            )
        )


class Admin(admin_pb2_grpc.AdminServiceServicer):
    def GetCanaryWeight(self, request, context):
        if dict(context.invocation_metadata()).get("authorization") != "Bearer secret":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")
        return admin_pb2.GetCanaryWeightResponse(percent=5)


class Health(health_pb2_grpc.HealthServicer):
    def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.fixture(scope="module")
def router():
    servicer = Router()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(Admin(), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=None)


@pytest.fixture(scope="module")
def client(router):
    _, port = router
    # The stand-in router answers on both of Envoy's listeners: the public one and the internal one (admin).
    settings = load_settings({}, envoy_addr=f"127.0.0.1:{port}", envoy_internal_addr=f"127.0.0.1:{port}")
    app = create_app(settings, CollectorRegistry())
    with TestClient(app) as client:
        yield client


def _events(response) -> list:
    lines = [line for line in response.text.split("\n\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [line.removeprefix("data: ") for line in lines]


def test_a_streamed_answer_is_role_deltas_finish_usage_then_done(client):
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "spiral", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    *chunks, done = _events(reply)
    assert done == "[DONE]"
    role, first, second, finish, usage = (json.loads(chunk) for chunk in chunks)
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert first["choices"][0]["delta"]["content"] + second["choices"][0]["delta"]["content"] == "hi there"
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["spiral_answer_id"] == "s1"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert len({chunk["id"] for chunk in (role, first, finish, usage)}) == 1


def test_an_error_before_the_first_token_is_a_plain_http_error(client):
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "spiral", "messages": [{"role": "user", "content": "fail first"}], "stream": True},
    )
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "UNAVAILABLE"


def test_an_error_after_the_first_token_is_the_last_sse_event(client):
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "spiral", "messages": [{"role": "user", "content": "fail later"}], "stream": True},
    )
    assert reply.status_code == 200
    *_, last = _events(reply)
    assert json.loads(last)["error"]["code"] == "INTERNAL"


def test_the_request_id_reaches_the_router_and_comes_back(client, router):
    servicer, _ = router
    reply = client.post(
        "/v1/chat/completions", json={"model": "spiral", "messages": HELLO}, headers={"x-request-id": "req-42"}
    )
    assert reply.status_code == 200
    assert reply.headers["x-request-id"] == "req-42"
    assert reply.json()["choices"][0]["finish_reason"] == "length"
    assert servicer.request_ids[-1] == "req-42"


def test_a_bad_role_is_a_400_naming_the_field(client):
    reply = client.post(
        "/v1/chat/completions", json={"model": "spiral", "messages": [{"role": "robot", "content": "x"}]}
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "messages[0].role"


def test_admin_calls_pass_the_bearer_token_on(client):
    assert client.get("/admin/canary").status_code == 401
    reply = client.get("/admin/canary", headers={"authorization": "Bearer secret"})
    assert reply.json() == {"percent": 5}


def test_healthz_reports_the_router_serving_and_metrics_count_by_route(client):
    assert client.get("/healthz").json() == {"status": "ok", "router": "SERVING"}
    metrics = client.get("/metrics").text
    assert 'gateway_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics


def test_every_call_to_the_router_carries_the_gateways_deadline(router, client):
    servicer, _ = router
    assert client.post("/v1/chat/completions", json={"model": "spiral", "messages": HELLO}).status_code == 200
    remaining = servicer.time_remaining[-1]
    # SPIRAL_GATEWAY_REQUEST_TIMEOUT_S, 180 s by default (grpc-timeout is rounded up on the wire)
    assert remaining is not None and 170 < remaining <= 181


def test_a_router_past_the_deadline_is_a_504_deadline_exceeded(router):
    _, port = router
    settings = load_settings({"SPIRAL_GATEWAY_REQUEST_TIMEOUT_S": "1"}, envoy_addr=f"127.0.0.1:{port}")
    with TestClient(create_app(settings, CollectorRegistry())) as short:
        reply = short.post(
            "/v1/chat/completions",
            json={"model": "spiral", "messages": [{"role": "user", "content": "take your time"}]},
        )
    assert reply.status_code == 504
    assert reply.json()["error"]["reason"] == "DEADLINE_EXCEEDED"
