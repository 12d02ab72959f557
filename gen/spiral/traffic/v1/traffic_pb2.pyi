from spiral.common.v1 import chat_pb2 as _chat_pb2
from spiral.common.v1 import track_pb2 as _track_pb2
from spiral.router.v1 import router_pb2 as _router_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrafficExchange(_message.Message):
    __slots__ = ("schema_version", "answer_id", "request_id", "track", "model", "messages", "params", "tier", "answer", "finish_reason", "teaches", "teacher", "cost_usd_micros", "latencies_us", "adapter_version", "ts_ms", "pattern_id")
    class LatenciesUsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TEACHES_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    COST_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_US_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    PATTERN_ID_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    answer_id: str
    request_id: str
    track: _track_pb2.Track
    model: str
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    params: _chat_pb2.GenerationParams
    tier: _router_pb2.Tier
    answer: str
    finish_reason: _chat_pb2.FinishReason
    teaches: bool
    teacher: str
    cost_usd_micros: int
    latencies_us: _containers.ScalarMap[str, int]
    adapter_version: str
    ts_ms: int
    pattern_id: str
    def __init__(self, schema_version: _Optional[int] = ..., answer_id: _Optional[str] = ..., request_id: _Optional[str] = ..., track: _Optional[_Union[_track_pb2.Track, str]] = ..., model: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_chat_pb2.GenerationParams, _Mapping]] = ..., tier: _Optional[_Union[_router_pb2.Tier, str]] = ..., answer: _Optional[str] = ..., finish_reason: _Optional[_Union[_chat_pb2.FinishReason, str]] = ..., teaches: _Optional[bool] = ..., teacher: _Optional[str] = ..., cost_usd_micros: _Optional[int] = ..., latencies_us: _Optional[_Mapping[str, int]] = ..., adapter_version: _Optional[str] = ..., ts_ms: _Optional[int] = ..., pattern_id: _Optional[str] = ...) -> None: ...
