"""The chat completion's JSON, built by hand on the answer's path: the same document (and bytes) as protobuf's
MessageToDict and Starlette's JSONResponse gave before."""

from __future__ import annotations

import json

import orjson
from google.protobuf import json_format

from gateway.routes.openai import _completion, _trace_dict
from spiral.common.v1 import chat_pb2
from spiral.router.v1 import router_pb2

TRACES = [
    router_pb2.DecisionTrace(),
    router_pb2.DecisionTrace(
        request_id="r1",
        tier=router_pb2.TIER_CACHE,
        steps=[
            router_pb2.TierStep(
                tier=router_pb2.TIER_CACHE,
                outcome=router_pb2.TIER_OUTCOME_ANSWERED,
                latency_us=812,
                detail="first answered by council",
            )
        ],
        router_instance="main",
        track=2,
        adapter_version="v7",
        total_latency_us=1_104,
        first_token_latency_us=1_001,
    ),
    router_pb2.DecisionTrace(
        request_id="r2",
        tier=router_pb2.TIER_COUNCIL,
        steps=[
            router_pb2.TierStep(tier=router_pb2.TIER_CACHE, outcome=router_pb2.TIER_OUTCOME_MISSED, latency_us=90),
            router_pb2.TierStep(tier=router_pb2.TIER_PATTERN),  # every field but the tier at its default
            router_pb2.TierStep(tier=99, outcome=42, latency_us=2**40),  # values this gateway's contract lacks
        ],
        cost_usd_micros=1_020,
        candidates=[
            router_pb2.Candidate(head="precise", text="Paris", score=0.75, agreement=0.5, winner=True, latency_us=9),
            router_pb2.Candidate(head="creative", error="timed out", length_penalty=0.1, diversity_bonus=0.2),
        ],
        track=77,
    ),
]


def test_the_trace_is_what_message_to_dict_gives_for_every_field_default_and_unknown_enum_value():
    for trace in TRACES:
        assert _trace_dict(trace) == json_format.MessageToDict(trace, preserving_proto_field_name=True)
        assert json.dumps(_trace_dict(trace)) == json.dumps(
            json_format.MessageToDict(trace, preserving_proto_field_name=True)
        ), "the same keys in the same order"


def test_every_field_of_the_trace_is_written_out():
    """A field added to DecisionTrace or TierStep must be added to `_trace_dict` too (or it would vanish)."""
    handled = {
        "request_id",
        "tier",
        "steps",
        "cost_usd_micros",
        "candidates",
        "router_instance",
        "adapter_version",
        "total_latency_us",
        "first_token_latency_us",
        "track",
    }
    assert set(router_pb2.DecisionTrace.DESCRIPTOR.fields_by_name) == handled
    assert set(router_pb2.TierStep.DESCRIPTOR.fields_by_name) == {"tier", "outcome", "latency_us", "detail"}


def test_the_response_bytes_are_what_json_response_wrote():
    reply = router_pb2.OrchestrateResponse(
        answer_id="a1",
        text='Blue. «Ciel» — "clair" \\ \n\t\u2028 😀',
        finish_reason=chat_pb2.FINISH_REASON_STOP,
        usage=chat_pb2.Usage(prompt_tokens=12, completion_tokens=3),
        trace=TRACES[1],
        model="spiral",
    )
    document = _completion(reply, 1_764_300_000)
    starlette = json.dumps(document, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
    assert orjson.dumps(document) == starlette.encode()
