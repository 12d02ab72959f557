"""How the router reaches the heads: a small interface and its gRPC implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

import grpc

from spiral.head.v1 import head_pb2, head_pb2_grpc
from spiral_common.auth import bearer
from spiral_common.chat import ChatRequest
from spiral_common.enums import Track
from spiral_common.grpc_service import error_from_rpc
from spiral_common.logs import REQUEST_ID_HEADER
from spiral_common.protoconv import FINISH_FROM_PROTO, messages_to_proto, params_to_proto


@dataclass(frozen=True)
class HeadText:
    text: str


@dataclass(frozen=True)
class HeadDone:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    head: str
    adapter_version: str
    council_threshold: float | None = None  # the adapter's calibrated council threshold; None: not calibrated


@dataclass(frozen=True)
class AdapterSwitch:
    version: str
    previous_version: str
    heads: list[str]
    load_latency_us: int


class HeadClient(Protocol):
    def generate(
        self,
        request: ChatRequest,
        *,
        head: str,
        request_id: str,
        head_sampling: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[HeadText | HeadDone]:
        """Stream a head's answer. With head_sampling, sampling the caller left unset takes the head's own.
        With timeout_s (the caller's time left), the call takes no longer than that nor than the client's
        own deadline."""
        ...

    async def load_adapter(self, version: str, *, tracks: tuple[Track, ...], request_id: str) -> AdapterSwitch:
        """Switch the heads' `tracks` (both, or the canary alone) to an adapter version ("latest", a version,
        or "none")."""
        ...


class GrpcHeadClient:
    """Streams generations from a head service; upstream failures become domain errors."""

    def __init__(
        self, channel: grpc.aio.Channel, deadline_s: float, track: Track = Track.MAIN, service_token: str = ""
    ) -> None:
        self._stub = head_pb2_grpc.HeadServiceStub(channel)
        self._deadline_s = deadline_s
        self._track = track  # the track whose adapter this router's generations use on the heads
        # Every call presents it: Envoy's internal listener lets no call without a credential through, and
        # LoadAdapter changes what is served, so the heads ask who calls.
        self._service_token = service_token

    async def load_adapter(self, version: str, *, tracks: tuple[Track, ...], request_id: str) -> AdapterSwitch:
        canary_only = tuple(tracks) == (Track.CANARY,)
        request = head_pb2.LoadAdapterRequest(version=version, track=Track.CANARY.proto if canary_only else None)
        request.canary_only = canary_only  # the deprecated twin, for heads older than `track`
        try:
            reply = await self._stub.LoadAdapter(
                request,
                metadata=((REQUEST_ID_HEADER, request_id), *bearer(self._service_token)),
                timeout=60,
            )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "head") from exc
        return AdapterSwitch(reply.version, reply.previous_version, list(reply.heads), reply.load_latency_us)

    async def generate(
        self,
        request: ChatRequest,
        *,
        head: str,
        request_id: str,
        head_sampling: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[HeadText | HeadDone]:
        sampling = request.requested if head_sampling else request
        call = self._stub.Generate(
            head_pb2.GenerateRequest(
                head=head,
                track=self._track.label,
                messages=messages_to_proto(request.messages),
                params=params_to_proto(
                    max_tokens=request.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    stop=request.stop,
                    seed=request.seed,
                ),
            ),
            metadata=((REQUEST_ID_HEADER, request_id), *bearer(self._service_token)),
            # Sent as grpc-timeout: the head stops on its own when the time is up.
            timeout=self._deadline_s if timeout_s is None else min(self._deadline_s, timeout_s),
        )
        try:
            async for message in call:
                if message.HasField("delta"):
                    yield HeadText(message.delta.text)
                else:
                    end = message.end
                    yield HeadDone(
                        FINISH_FROM_PROTO.get(end.finish_reason, "stop"),
                        end.usage.prompt_tokens,
                        end.usage.completion_tokens,
                        end.head,
                        end.adapter_version,
                        end.council_threshold if end.HasField("council_threshold") else None,
                    )
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc, "head") from exc
        finally:
            call.cancel()  # no-op once finished; stops the head's generation if our caller went away
