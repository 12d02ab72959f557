import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from spiral.common.v1 import track_pb2 as _track_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReloadTarget(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RELOAD_TARGET_UNSPECIFIED: _ClassVar[ReloadTarget]
    RELOAD_TARGET_ALL: _ClassVar[ReloadTarget]
    RELOAD_TARGET_CANARY: _ClassVar[ReloadTarget]
RELOAD_TARGET_UNSPECIFIED: ReloadTarget
RELOAD_TARGET_ALL: ReloadTarget
RELOAD_TARGET_CANARY: ReloadTarget

class ReloadAdapterRequest(_message.Message):
    __slots__ = ("version", "target", "track")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    version: str
    target: ReloadTarget
    track: _track_pb2.Track
    def __init__(self, version: _Optional[str] = ..., target: _Optional[_Union[ReloadTarget, str]] = ..., track: _Optional[_Union[_track_pb2.Track, str]] = ...) -> None: ...

class ReloadAdapterResponse(_message.Message):
    __slots__ = ("version", "previous_version", "heads", "load_latency_us")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    LOAD_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    version: str
    previous_version: str
    heads: _containers.RepeatedScalarFieldContainer[str]
    load_latency_us: int
    def __init__(self, version: _Optional[str] = ..., previous_version: _Optional[str] = ..., heads: _Optional[_Iterable[str]] = ..., load_latency_us: _Optional[int] = ...) -> None: ...

class GetBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBudgetResponse(_message.Message):
    __slots__ = ("day", "pool_usd_micros", "spent_usd_micros", "reserved_usd_micros", "remaining_usd_micros", "per_request_cap_usd_micros", "resets_at")
    DAY_FIELD_NUMBER: _ClassVar[int]
    POOL_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    PER_REQUEST_CAP_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    RESETS_AT_FIELD_NUMBER: _ClassVar[int]
    day: str
    pool_usd_micros: int
    spent_usd_micros: int
    reserved_usd_micros: int
    remaining_usd_micros: int
    per_request_cap_usd_micros: int
    resets_at: _timestamp_pb2.Timestamp
    def __init__(self, day: _Optional[str] = ..., pool_usd_micros: _Optional[int] = ..., spent_usd_micros: _Optional[int] = ..., reserved_usd_micros: _Optional[int] = ..., remaining_usd_micros: _Optional[int] = ..., per_request_cap_usd_micros: _Optional[int] = ..., resets_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetCanaryWeightRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCanaryWeightResponse(_message.Message):
    __slots__ = ("percent",)
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    percent: int
    def __init__(self, percent: _Optional[int] = ...) -> None: ...

class SetCanaryWeightRequest(_message.Message):
    __slots__ = ("percent",)
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    percent: int
    def __init__(self, percent: _Optional[int] = ...) -> None: ...

class SetCanaryWeightResponse(_message.Message):
    __slots__ = ("previous_percent", "percent")
    PREVIOUS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    PERCENT_FIELD_NUMBER: _ClassVar[int]
    previous_percent: int
    percent: int
    def __init__(self, previous_percent: _Optional[int] = ..., percent: _Optional[int] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApiKeyUsage(_message.Message):
    __slots__ = ("name", "daily_usd_micros", "rps", "models", "created_at", "spent_usd_micros", "reserved_usd_micros", "requests")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DAILY_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    RPS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SPENT_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    RESERVED_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    daily_usd_micros: int
    rps: int
    models: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    spent_usd_micros: int
    reserved_usd_micros: int
    requests: int
    def __init__(self, name: _Optional[str] = ..., daily_usd_micros: _Optional[int] = ..., rps: _Optional[int] = ..., models: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., spent_usd_micros: _Optional[int] = ..., reserved_usd_micros: _Optional[int] = ..., requests: _Optional[int] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("day", "keys")
    DAY_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    day: str
    keys: _containers.RepeatedCompositeFieldContainer[ApiKeyUsage]
    def __init__(self, day: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[ApiKeyUsage, _Mapping]]] = ...) -> None: ...
