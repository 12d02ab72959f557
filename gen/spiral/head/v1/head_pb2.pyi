from spiral.common.v1 import chat_pb2 as _chat_pb2
from spiral.common.v1 import track_pb2 as _track_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOAD_STATE_UNSPECIFIED: _ClassVar[LoadState]
    LOAD_STATE_LOADING: _ClassVar[LoadState]
    LOAD_STATE_READY: _ClassVar[LoadState]
    LOAD_STATE_FAILED: _ClassVar[LoadState]
LOAD_STATE_UNSPECIFIED: LoadState
LOAD_STATE_LOADING: LoadState
LOAD_STATE_READY: LoadState
LOAD_STATE_FAILED: LoadState

class GenerateRequest(_message.Message):
    __slots__ = ("head", "messages", "params", "track")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    head: str
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    params: _chat_pb2.GenerationParams
    track: str
    def __init__(self, head: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_chat_pb2.GenerationParams, _Mapping]] = ..., track: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "end")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    delta: GenerateDelta
    end: GenerateEnd
    def __init__(self, delta: _Optional[_Union[GenerateDelta, _Mapping]] = ..., end: _Optional[_Union[GenerateEnd, _Mapping]] = ...) -> None: ...

class GenerateDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class GenerateEnd(_message.Message):
    __slots__ = ("finish_reason", "usage", "head", "adapter_version", "first_token_latency_us", "total_latency_us", "council_threshold")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    COUNCIL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    finish_reason: _chat_pb2.FinishReason
    usage: _chat_pb2.Usage
    head: str
    adapter_version: str
    first_token_latency_us: int
    total_latency_us: int
    council_threshold: float
    def __init__(self, finish_reason: _Optional[_Union[_chat_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., head: _Optional[str] = ..., adapter_version: _Optional[str] = ..., first_token_latency_us: _Optional[int] = ..., total_latency_us: _Optional[int] = ..., council_threshold: _Optional[float] = ...) -> None: ...

class GetHeadInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BaseModel(_message.Message):
    __slots__ = ("path", "sha256", "size_bytes", "context_tokens")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size_bytes: int
    context_tokens: int
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., context_tokens: _Optional[int] = ...) -> None: ...

class HeadStatus(_message.Message):
    __slots__ = ("name", "adapter_version", "state", "queue_depth", "in_flight", "canary_adapter_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    CANARY_ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    adapter_version: str
    state: LoadState
    queue_depth: int
    in_flight: int
    canary_adapter_version: str
    def __init__(self, name: _Optional[str] = ..., adapter_version: _Optional[str] = ..., state: _Optional[_Union[LoadState, str]] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., canary_adapter_version: _Optional[str] = ...) -> None: ...

class GetHeadInfoResponse(_message.Message):
    __slots__ = ("base_model", "heads", "max_concurrent_requests", "resident_memory_bytes")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    base_model: BaseModel
    heads: _containers.RepeatedCompositeFieldContainer[HeadStatus]
    max_concurrent_requests: int
    resident_memory_bytes: int
    def __init__(self, base_model: _Optional[_Union[BaseModel, _Mapping]] = ..., heads: _Optional[_Iterable[_Union[HeadStatus, _Mapping]]] = ..., max_concurrent_requests: _Optional[int] = ..., resident_memory_bytes: _Optional[int] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("version", "heads", "canary_only", "track")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    CANARY_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    version: str
    heads: _containers.RepeatedScalarFieldContainer[str]
    canary_only: bool
    track: _track_pb2.Track
    def __init__(self, version: _Optional[str] = ..., heads: _Optional[_Iterable[str]] = ..., canary_only: _Optional[bool] = ..., track: _Optional[_Union[_track_pb2.Track, str]] = ...) -> None: ...

class LoadAdapterResponse(_message.Message):
    __slots__ = ("version", "heads", "load_latency_us", "previous_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    LOAD_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    heads: _containers.RepeatedScalarFieldContainer[str]
    load_latency_us: int
    previous_version: str
    def __init__(self, version: _Optional[str] = ..., heads: _Optional[_Iterable[str]] = ..., load_latency_us: _Optional[int] = ..., previous_version: _Optional[str] = ...) -> None: ...
