import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_KIND_UNSPECIFIED: _ClassVar[JobKind]
    JOB_KIND_DISTILL: _ClassVar[JobKind]
    JOB_KIND_MINE: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_WAITING_BUDGET: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class JobStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STAGE_UNSPECIFIED: _ClassVar[JobStage]
    JOB_STAGE_DATASET: _ClassVar[JobStage]
    JOB_STAGE_TRAIN: _ClassVar[JobStage]
    JOB_STAGE_EXPORT: _ClassVar[JobStage]
    JOB_STAGE_EVALUATE: _ClassVar[JobStage]
    JOB_STAGE_PUBLISH: _ClassVar[JobStage]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_DISTILL: JobKind
JOB_KIND_MINE: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_WAITING_BUDGET: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
JOB_STAGE_UNSPECIFIED: JobStage
JOB_STAGE_DATASET: JobStage
JOB_STAGE_TRAIN: JobStage
JOB_STAGE_EXPORT: JobStage
JOB_STAGE_EVALUATE: JobStage
JOB_STAGE_PUBLISH: JobStage

class JobProgress(_message.Message):
    __slots__ = ("stage", "step", "total_steps", "loss", "eta_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ETA_MS_FIELD_NUMBER: _ClassVar[int]
    stage: JobStage
    step: int
    total_steps: int
    loss: float
    eta_ms: int
    def __init__(self, stage: _Optional[_Union[JobStage, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., eta_ms: _Optional[int] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("adapter_version", "eval_score_new", "eval_score_current", "published", "cost_usd_micros", "duration_ms", "council_calibration")
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EVAL_SCORE_NEW_FIELD_NUMBER: _ClassVar[int]
    EVAL_SCORE_CURRENT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    COST_USD_MICROS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    COUNCIL_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    adapter_version: str
    eval_score_new: float
    eval_score_current: float
    published: bool
    cost_usd_micros: int
    duration_ms: int
    council_calibration: CouncilCalibration
    def __init__(self, adapter_version: _Optional[str] = ..., eval_score_new: _Optional[float] = ..., eval_score_current: _Optional[float] = ..., published: _Optional[bool] = ..., cost_usd_micros: _Optional[int] = ..., duration_ms: _Optional[int] = ..., council_calibration: _Optional[_Union[CouncilCalibration, _Mapping]] = ...) -> None: ...

class CouncilCalibration(_message.Message):
    __slots__ = ("threshold", "prompts", "coverage", "precision", "max_error")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    prompts: int
    coverage: float
    precision: float
    max_error: float
    def __init__(self, threshold: _Optional[float] = ..., prompts: _Optional[int] = ..., coverage: _Optional[float] = ..., precision: _Optional[float] = ..., max_error: _Optional[float] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "kind", "state", "created_at", "started_at", "finished_at", "attempt", "error", "progress", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: JobKind
    state: JobState
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    attempt: int
    error: str
    progress: JobProgress
    result: JobResult
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[_Union[JobKind, str]] = ..., state: _Optional[_Union[JobState, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempt: _Optional[int] = ..., error: _Optional[str] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("kind", "time_budget_s")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_S_FIELD_NUMBER: _ClassVar[int]
    kind: JobKind
    time_budget_s: int
    def __init__(self, kind: _Optional[_Union[JobKind, str]] = ..., time_budget_s: _Optional[int] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("version", "base_model_sha256", "job_id", "eval_score", "created_at", "size_bytes", "council_calibration")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COUNCIL_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    version: str
    base_model_sha256: str
    job_id: str
    eval_score: float
    created_at: _timestamp_pb2.Timestamp
    size_bytes: int
    council_calibration: CouncilCalibration
    def __init__(self, version: _Optional[str] = ..., base_model_sha256: _Optional[str] = ..., job_id: _Optional[str] = ..., eval_score: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., size_bytes: _Optional[int] = ..., council_calibration: _Optional[_Union[CouncilCalibration, _Mapping]] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters",)
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    def __init__(self, adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ...) -> None: ...

class FetchAdapterRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class AdapterRecord(_message.Message):
    __slots__ = ("adapter", "sha256")
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    adapter: Adapter
    sha256: str
    def __init__(self, adapter: _Optional[_Union[Adapter, _Mapping]] = ..., sha256: _Optional[str] = ...) -> None: ...

class FetchAdapterResponse(_message.Message):
    __slots__ = ("record", "chunk")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    record: AdapterRecord
    chunk: bytes
    def __init__(self, record: _Optional[_Union[AdapterRecord, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
