import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Pattern(_message.Message):
    __slots__ = ("pattern_id", "exemplars", "canonical_answer", "target_head", "size", "agreement", "created_at", "retired", "retired_reason", "negated")
    PATTERN_ID_FIELD_NUMBER: _ClassVar[int]
    EXEMPLARS_FIELD_NUMBER: _ClassVar[int]
    CANONICAL_ANSWER_FIELD_NUMBER: _ClassVar[int]
    TARGET_HEAD_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_REASON_FIELD_NUMBER: _ClassVar[int]
    NEGATED_FIELD_NUMBER: _ClassVar[int]
    pattern_id: str
    exemplars: _containers.RepeatedScalarFieldContainer[str]
    canonical_answer: str
    target_head: str
    size: int
    agreement: float
    created_at: _timestamp_pb2.Timestamp
    retired: bool
    retired_reason: str
    negated: bool
    def __init__(self, pattern_id: _Optional[str] = ..., exemplars: _Optional[_Iterable[str]] = ..., canonical_answer: _Optional[str] = ..., target_head: _Optional[str] = ..., size: _Optional[int] = ..., agreement: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., retired: _Optional[bool] = ..., retired_reason: _Optional[str] = ..., negated: _Optional[bool] = ...) -> None: ...

class MineRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class MineResponse(_message.Message):
    __slots__ = ("prompts_read", "clusters", "patterns_published", "patterns_retired", "pattern_set_version", "duration_ms", "entries_read", "entries_skipped", "patterns_new", "note", "calibrated_precision", "calibrated_coverage", "calibration")
    PROMPTS_READ_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_RETIRED_FIELD_NUMBER: _ClassVar[int]
    PATTERN_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_READ_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_NEW_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_PRECISION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    prompts_read: int
    clusters: int
    patterns_published: int
    patterns_retired: int
    pattern_set_version: int
    duration_ms: int
    entries_read: int
    entries_skipped: int
    patterns_new: int
    note: str
    calibrated_precision: float
    calibrated_coverage: float
    calibration: PatternSetCalibration
    def __init__(self, prompts_read: _Optional[int] = ..., clusters: _Optional[int] = ..., patterns_published: _Optional[int] = ..., patterns_retired: _Optional[int] = ..., pattern_set_version: _Optional[int] = ..., duration_ms: _Optional[int] = ..., entries_read: _Optional[int] = ..., entries_skipped: _Optional[int] = ..., patterns_new: _Optional[int] = ..., note: _Optional[str] = ..., calibrated_precision: _Optional[float] = ..., calibrated_coverage: _Optional[float] = ..., calibration: _Optional[_Union[PatternSetCalibration, _Mapping]] = ...) -> None: ...

class PatternSetCalibration(_message.Message):
    __slots__ = ("max_error", "known_precision", "known_coverage", "unknown_answered", "precision_with_unknown", "unknown_share", "known_samples", "unknown_samples", "fitted_on")
    MAX_ERROR_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PRECISION_FIELD_NUMBER: _ClassVar[int]
    KNOWN_COVERAGE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    PRECISION_WITH_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SHARE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FITTED_ON_FIELD_NUMBER: _ClassVar[int]
    max_error: float
    known_precision: float
    known_coverage: float
    unknown_answered: float
    precision_with_unknown: float
    unknown_share: float
    known_samples: int
    unknown_samples: int
    fitted_on: int
    def __init__(self, max_error: _Optional[float] = ..., known_precision: _Optional[float] = ..., known_coverage: _Optional[float] = ..., unknown_answered: _Optional[float] = ..., precision_with_unknown: _Optional[float] = ..., unknown_share: _Optional[float] = ..., known_samples: _Optional[int] = ..., unknown_samples: _Optional[int] = ..., fitted_on: _Optional[int] = ...) -> None: ...

class ListPatternsRequest(_message.Message):
    __slots__ = ("include_retired",)
    INCLUDE_RETIRED_FIELD_NUMBER: _ClassVar[int]
    include_retired: bool
    def __init__(self, include_retired: _Optional[bool] = ...) -> None: ...

class ListPatternsResponse(_message.Message):
    __slots__ = ("patterns", "pattern_set_version", "calibration")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    PATTERN_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedCompositeFieldContainer[Pattern]
    pattern_set_version: int
    calibration: PatternSetCalibration
    def __init__(self, patterns: _Optional[_Iterable[_Union[Pattern, _Mapping]]] = ..., pattern_set_version: _Optional[int] = ..., calibration: _Optional[_Union[PatternSetCalibration, _Mapping]] = ...) -> None: ...

class MatchPromptRequest(_message.Message):
    __slots__ = ("prompt",)
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    def __init__(self, prompt: _Optional[str] = ...) -> None: ...

class MatchPromptResponse(_message.Message):
    __slots__ = ("matched", "pattern", "confidence", "pattern_set_version")
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    PATTERN_SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    matched: bool
    pattern: Pattern
    confidence: float
    pattern_set_version: int
    def __init__(self, matched: _Optional[bool] = ..., pattern: _Optional[_Union[Pattern, _Mapping]] = ..., confidence: _Optional[float] = ..., pattern_set_version: _Optional[int] = ...) -> None: ...
