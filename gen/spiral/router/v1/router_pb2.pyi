from spiral.common.v1 import chat_pb2 as _chat_pb2
from spiral.common.v1 import track_pb2 as _track_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_UNSPECIFIED: _ClassVar[Tier]
    TIER_CACHE: _ClassVar[Tier]
    TIER_PATTERN: _ClassVar[Tier]
    TIER_HEAD: _ClassVar[Tier]
    TIER_COUNCIL: _ClassVar[Tier]
    TIER_CLOUD: _ClassVar[Tier]
    TIER_LOCAL_FALLBACK: _ClassVar[Tier]

class TierOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIER_OUTCOME_UNSPECIFIED: _ClassVar[TierOutcome]
    TIER_OUTCOME_ANSWERED: _ClassVar[TierOutcome]
    TIER_OUTCOME_MISSED: _ClassVar[TierOutcome]
    TIER_OUTCOME_FAILED: _ClassVar[TierOutcome]
    TIER_OUTCOME_SKIPPED: _ClassVar[TierOutcome]
    TIER_OUTCOME_REFUSED: _ClassVar[TierOutcome]

class Rating(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RATING_UNSPECIFIED: _ClassVar[Rating]
    RATING_GOOD: _ClassVar[Rating]
    RATING_BAD: _ClassVar[Rating]
TIER_UNSPECIFIED: Tier
TIER_CACHE: Tier
TIER_PATTERN: Tier
TIER_HEAD: Tier
TIER_COUNCIL: Tier
TIER_CLOUD: Tier
TIER_LOCAL_FALLBACK: Tier
TIER_OUTCOME_UNSPECIFIED: TierOutcome
TIER_OUTCOME_ANSWERED: TierOutcome
TIER_OUTCOME_MISSED: TierOutcome
TIER_OUTCOME_FAILED: TierOutcome
TIER_OUTCOME_SKIPPED: TierOutcome
TIER_OUTCOME_REFUSED: TierOutcome
RATING_UNSPECIFIED: Rating
RATING_GOOD: Rating
RATING_BAD: Rating

class TierStep(_message.Message):
    __slots__ = ("tier", "outcome", "latency_us", "detail")
    TIER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    tier: Tier
    outcome: TierOutcome
    latency_us: int
    detail: str
    def __init__(self, tier: _Optional[_Union[Tier, str]] = ..., outcome: _Optional[_Union[TierOutcome, str]] = ..., latency_us: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("head", "text", "score", "agreement", "length_penalty", "diversity_bonus", "winner", "latency_us", "adapter_version", "error")
    HEAD_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    LENGTH_PENALTY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_BONUS_FIELD_NUMBER: _ClassVar[int]
    WINNER_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    head: str
    text: str
    score: float
    agreement: float
    length_penalty: float
    diversity_bonus: float
    winner: bool
    latency_us: int
    adapter_version: str
    error: str
    def __init__(self, head: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., agreement: _Optional[float] = ..., length_penalty: _Optional[float] = ..., diversity_bonus: _Optional[float] = ..., winner: _Optional[bool] = ..., latency_us: _Optional[int] = ..., adapter_version: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class DecisionTrace(_message.Message):
    __slots__ = ("request_id", "tier", "steps", "cost_usd_micros", "candidates", "router_instance", "adapter_version", "total_latency_us", "first_token_latency_us", "track")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ROUTER_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    TRACK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tier: Tier
    steps: _containers.RepeatedCompositeFieldContainer[TierStep]
    cost_usd_micros: int
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    router_instance: str
    adapter_version: str
    total_latency_us: int
    first_token_latency_us: int
    track: _track_pb2.Track
    def __init__(self, request_id: _Optional[str] = ..., tier: _Optional[_Union[Tier, str]] = ..., steps: _Optional[_Iterable[_Union[TierStep, _Mapping]]] = ..., cost_usd_micros: _Optional[int] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., router_instance: _Optional[str] = ..., adapter_version: _Optional[str] = ..., total_latency_us: _Optional[int] = ..., first_token_latency_us: _Optional[int] = ..., track: _Optional[_Union[_track_pb2.Track, str]] = ...) -> None: ...

class OrchestrateRequest(_message.Message):
    __slots__ = ("messages", "params", "model")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    params: _chat_pb2.GenerationParams
    model: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_chat_pb2.GenerationParams, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class OrchestrateResponse(_message.Message):
    __slots__ = ("answer_id", "text", "finish_reason", "usage", "trace", "model")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    text: str
    finish_reason: _chat_pb2.FinishReason
    usage: _chat_pb2.Usage
    trace: DecisionTrace
    model: str
    def __init__(self, answer_id: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[_chat_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., trace: _Optional[_Union[DecisionTrace, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class OrchestrateStreamRequest(_message.Message):
    __slots__ = ("messages", "params", "model")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    params: _chat_pb2.GenerationParams
    model: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_chat_pb2.GenerationParams, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class OrchestrateStreamResponse(_message.Message):
    __slots__ = ("delta", "end")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    delta: TextDelta
    end: StreamEnd
    def __init__(self, delta: _Optional[_Union[TextDelta, _Mapping]] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("answer_id", "finish_reason", "usage", "trace", "model")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    finish_reason: _chat_pb2.FinishReason
    usage: _chat_pb2.Usage
    trace: DecisionTrace
    model: str
    def __init__(self, answer_id: _Optional[str] = ..., finish_reason: _Optional[_Union[_chat_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_chat_pb2.Usage, _Mapping]] = ..., trace: _Optional[_Union[DecisionTrace, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...

class VoteRequest(_message.Message):
    __slots__ = ("messages", "params")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_chat_pb2.ChatMessage]
    params: _chat_pb2.GenerationParams
    def __init__(self, messages: _Optional[_Iterable[_Union[_chat_pb2.ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_chat_pb2.GenerationParams, _Mapping]] = ...) -> None: ...

class VoteResponse(_message.Message):
    __slots__ = ("candidates", "accepted", "threshold", "trace")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    accepted: bool
    threshold: float
    trace: DecisionTrace
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., accepted: _Optional[bool] = ..., threshold: _Optional[float] = ..., trace: _Optional[_Union[DecisionTrace, _Mapping]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("answer_id", "rating", "comment")
    ANSWER_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    answer_id: str
    rating: Rating
    comment: str
    def __init__(self, answer_id: _Optional[str] = ..., rating: _Optional[_Union[Rating, str]] = ..., comment: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("recorded",)
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    def __init__(self, recorded: _Optional[bool] = ...) -> None: ...
