"""HeadService over gRPC: proto in, HeadPool, proto out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from head_svc.heads import Delta, HeadPool
from head_svc.memory import resident_bytes
from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.chat import Limits, validate_chat
from spiral_common.enums import Track, tracks_to_switch
from spiral_common.errors import InvalidArgument
from spiral_common.protoconv import FINISH_TO_PROTO, messages_from_proto, params_from_proto, usage_to_proto
from spiral_common.serving import ServingRecord

_LOAD_STATE = {
    "loading": head_pb2.LOAD_STATE_LOADING,
    "ready": head_pb2.LOAD_STATE_READY,
    "failed": head_pb2.LOAD_STATE_FAILED,
}


def _track(word: str) -> Track:
    """The track a generation serves, from the request's word ("main" when empty)."""
    try:
        return Track.from_label(word or Track.MAIN.label)
    except ValueError:
        raise InvalidArgument(
            f"track must be main or canary, got {word!r}", reason="BAD_TRACK", field="track"
        ) from None


class HeadServicer(head_pb2_grpc.HeadServiceServicer):
    def __init__(
        self, pool: HeadPool, limits: Limits, base_model: head_pb2.BaseModel, serving: ServingRecord | None = None
    ) -> None:
        self.pool = pool
        self.limits = limits
        self.base_model = base_model
        self.serving = serving  # where a switch is recorded for the other head replicas to follow

    async def Generate(
        self, request: head_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[head_pb2.GenerateResponse]:
        spec = self.pool.spec(request.head)
        # Sampling the caller leaves unset takes the head's own settings.
        limits = replace(self.limits, default_temperature=spec.temperature, default_top_p=spec.top_p)
        chat = validate_chat(messages_from_proto(request.messages), params_from_proto(request.params), limits)
        async for event in self.pool.generate(spec.name, chat, _track(request.track)):
            if isinstance(event, Delta):
                yield head_pb2.GenerateResponse(delta=head_pb2.GenerateDelta(text=event.text))
            else:
                yield head_pb2.GenerateResponse(
                    end=head_pb2.GenerateEnd(
                        finish_reason=FINISH_TO_PROTO[event.outcome.finish_reason],
                        usage=usage_to_proto(event.outcome.prompt_tokens, event.outcome.completion_tokens),
                        head=event.head,
                        adapter_version=event.adapter_version,
                        first_token_latency_us=event.first_token_latency_us,
                        total_latency_us=event.total_latency_us,
                        council_threshold=event.council_threshold,
                    )
                )

    async def GetHeadInfo(
        self, request: head_pb2.GetHeadInfoRequest, context: grpc.aio.ServicerContext
    ) -> head_pb2.GetHeadInfoResponse:
        state = _LOAD_STATE[self.pool.state]
        return head_pb2.GetHeadInfoResponse(
            base_model=self.base_model,
            heads=[
                head_pb2.HeadStatus(
                    name=name,
                    state=state,
                    queue_depth=self.pool.queue_depth,
                    in_flight=min(self.pool.active, 1),
                    adapter_version=self.pool.adapter_version(name, Track.MAIN),
                    canary_adapter_version=self.pool.adapter_version(name, Track.CANARY),
                )
                for name in self.pool.heads
            ],
            max_concurrent_requests=self.pool.max_concurrent,
            resident_memory_bytes=resident_bytes(),
        )

    async def LoadAdapter(
        self, request: head_pb2.LoadAdapterRequest, context: grpc.aio.ServicerContext
    ) -> head_pb2.LoadAdapterResponse:
        started = time.perf_counter()
        tracks = tracks_to_switch(request.track, legacy_canary_only=request.canary_only)
        version, heads, previous = await self.pool.load_adapter(request.version, list(request.heads), tracks=tracks)
        if self.serving is not None:
            await self.serving.record({f"{head}/{track.label}": version for head in heads for track in tracks})
        return head_pb2.LoadAdapterResponse(
            version=version,
            heads=heads,
            load_latency_us=int((time.perf_counter() - started) * 1e6),
            previous_version=previous,
        )
