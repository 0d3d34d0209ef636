import datetime

from equiprune.v1 import artifacts_pb2 as _artifacts_pb2
from equiprune.v1 import reports_pb2 as _reports_pb2
from google.protobuf import duration_pb2 as _duration_pb2
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
    JOB_KIND_TRAIN: _ClassVar[JobKind]
    JOB_KIND_EVALUATE: _ClassVar[JobKind]
    JOB_KIND_DIAGNOSE: _ClassVar[JobKind]
    JOB_KIND_PRUNE: _ClassVar[JobKind]
    JOB_KIND_FINETUNE: _ClassVar[JobKind]
    JOB_KIND_PRUNE_AND_FINETUNE: _ClassVar[JobKind]
    JOB_KIND_BUDGET_SEARCH: _ClassVar[JobKind]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class PruningKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNING_KIND_UNSPECIFIED: _ClassVar[PruningKind]
    PRUNING_KIND_UNSTRUCTURED: _ClassVar[PruningKind]
    PRUNING_KIND_N_M: _ClassVar[PruningKind]
    PRUNING_KIND_STRUCTURED: _ClassVar[PruningKind]

class PruningScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNING_SCOPE_UNSPECIFIED: _ClassVar[PruningScope]
    PRUNING_SCOPE_LAYERWISE: _ClassVar[PruningScope]
    PRUNING_SCOPE_GLOBAL: _ClassVar[PruningScope]

class PruningSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRUNING_SCHEDULE_UNSPECIFIED: _ClassVar[PruningSchedule]
    PRUNING_SCHEDULE_ONE_SHOT: _ClassVar[PruningSchedule]
    PRUNING_SCHEDULE_GRADUAL: _ClassVar[PruningSchedule]

class FinetuneMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINETUNE_METHOD_UNSPECIFIED: _ClassVar[FinetuneMethod]
    FINETUNE_METHOD_NAIVE: _ClassVar[FinetuneMethod]
    FINETUNE_METHOD_EQUALIZED_LOSS: _ClassVar[FinetuneMethod]
    FINETUNE_METHOD_CEAG: _ClassVar[FinetuneMethod]
    FINETUNE_METHOD_HELDOUT_CEAG: _ClassVar[FinetuneMethod]
    FINETUNE_METHOD_FAIR_DISTILL: _ClassVar[FinetuneMethod]

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]
JOB_KIND_UNSPECIFIED: JobKind
JOB_KIND_TRAIN: JobKind
JOB_KIND_EVALUATE: JobKind
JOB_KIND_DIAGNOSE: JobKind
JOB_KIND_PRUNE: JobKind
JOB_KIND_FINETUNE: JobKind
JOB_KIND_PRUNE_AND_FINETUNE: JobKind
JOB_KIND_BUDGET_SEARCH: JobKind
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
PRUNING_KIND_UNSPECIFIED: PruningKind
PRUNING_KIND_UNSTRUCTURED: PruningKind
PRUNING_KIND_N_M: PruningKind
PRUNING_KIND_STRUCTURED: PruningKind
PRUNING_SCOPE_UNSPECIFIED: PruningScope
PRUNING_SCOPE_LAYERWISE: PruningScope
PRUNING_SCOPE_GLOBAL: PruningScope
PRUNING_SCHEDULE_UNSPECIFIED: PruningSchedule
PRUNING_SCHEDULE_ONE_SHOT: PruningSchedule
PRUNING_SCHEDULE_GRADUAL: PruningSchedule
FINETUNE_METHOD_UNSPECIFIED: FinetuneMethod
FINETUNE_METHOD_NAIVE: FinetuneMethod
FINETUNE_METHOD_EQUALIZED_LOSS: FinetuneMethod
FINETUNE_METHOD_CEAG: FinetuneMethod
FINETUNE_METHOD_HELDOUT_CEAG: FinetuneMethod
FINETUNE_METHOD_FAIR_DISTILL: FinetuneMethod
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule

class DataOptions(_message.Message):
    __slots__ = ("group_by", "train_split", "eval_split", "constraint_split", "constraint_fraction", "min_group_size", "tolerance")
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SPLIT_FIELD_NUMBER: _ClassVar[int]
    EVAL_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_SPLIT_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    train_split: str
    eval_split: str
    constraint_split: str
    constraint_fraction: float
    min_group_size: int
    tolerance: float
    def __init__(self, group_by: _Optional[_Iterable[str]] = ..., train_split: _Optional[str] = ..., eval_split: _Optional[str] = ..., constraint_split: _Optional[str] = ..., constraint_fraction: _Optional[float] = ..., min_group_size: _Optional[int] = ..., tolerance: _Optional[float] = ...) -> None: ...

class PruningOptions(_message.Message):
    __slots__ = ("kind", "sparsity", "scope", "schedule", "gradual_steps", "exclude_names", "exclude_types", "keep_first_and_last", "n", "m", "recalibrate_batchnorm")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    GRADUAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NAMES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_TYPES_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIRST_AND_LAST_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    RECALIBRATE_BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    kind: PruningKind
    sparsity: float
    scope: PruningScope
    schedule: PruningSchedule
    gradual_steps: int
    exclude_names: _containers.RepeatedScalarFieldContainer[str]
    exclude_types: _containers.RepeatedScalarFieldContainer[str]
    keep_first_and_last: bool
    n: int
    m: int
    recalibrate_batchnorm: bool
    def __init__(self, kind: _Optional[_Union[PruningKind, str]] = ..., sparsity: _Optional[float] = ..., scope: _Optional[_Union[PruningScope, str]] = ..., schedule: _Optional[_Union[PruningSchedule, str]] = ..., gradual_steps: _Optional[int] = ..., exclude_names: _Optional[_Iterable[str]] = ..., exclude_types: _Optional[_Iterable[str]] = ..., keep_first_and_last: _Optional[bool] = ..., n: _Optional[int] = ..., m: _Optional[int] = ..., recalibrate_batchnorm: _Optional[bool] = ...) -> None: ...

class FinetuneOptions(_message.Message):
    __slots__ = ("method", "epochs", "batch_size", "lr", "momentum", "weight_decay", "dual_lr", "replay_size", "lr_schedule", "augment_hflip", "seed", "checkpoint_every_steps", "calibrate_outputs", "max_multiplier", "distill_alpha")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    DUAL_LR_FIELD_NUMBER: _ClassVar[int]
    REPLAY_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    AUGMENT_HFLIP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    DISTILL_ALPHA_FIELD_NUMBER: _ClassVar[int]
    method: FinetuneMethod
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    dual_lr: float
    replay_size: int
    lr_schedule: LrSchedule
    augment_hflip: bool
    seed: int
    checkpoint_every_steps: int
    calibrate_outputs: bool
    max_multiplier: float
    distill_alpha: float
    def __init__(self, method: _Optional[_Union[FinetuneMethod, str]] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., dual_lr: _Optional[float] = ..., replay_size: _Optional[int] = ..., lr_schedule: _Optional[_Union[LrSchedule, str]] = ..., augment_hflip: _Optional[bool] = ..., seed: _Optional[int] = ..., checkpoint_every_steps: _Optional[int] = ..., calibrate_outputs: _Optional[bool] = ..., max_multiplier: _Optional[float] = ..., distill_alpha: _Optional[float] = ...) -> None: ...

class DiagnosticsOptions(_message.Message):
    __slots__ = ("probes", "power_iterations", "samples_per_group", "seed")
    PROBES_FIELD_NUMBER: _ClassVar[int]
    POWER_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    probes: int
    power_iterations: int
    samples_per_group: int
    seed: int
    def __init__(self, probes: _Optional[int] = ..., power_iterations: _Optional[int] = ..., samples_per_group: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class BudgetOptions(_message.Message):
    __slots__ = ("low", "high", "resolution", "max_probes", "require_confidence")
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_PROBES_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    low: float
    high: float
    resolution: float
    max_probes: int
    require_confidence: bool
    def __init__(self, low: _Optional[float] = ..., high: _Optional[float] = ..., resolution: _Optional[float] = ..., max_probes: _Optional[int] = ..., require_confidence: _Optional[bool] = ...) -> None: ...

class TrainOptions(_message.Message):
    __slots__ = ("architecture", "architecture_kwargs", "epochs", "lr", "seed")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_KWARGS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    architecture_kwargs: str
    epochs: int
    lr: float
    seed: int
    def __init__(self, architecture: _Optional[str] = ..., architecture_kwargs: _Optional[str] = ..., epochs: _Optional[int] = ..., lr: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("workers", "cpus_per_worker", "gpus_per_worker")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    workers: int
    cpus_per_worker: int
    gpus_per_worker: int
    def __init__(self, workers: _Optional[int] = ..., cpus_per_worker: _Optional[int] = ..., gpus_per_worker: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("kind", "model", "dataset", "data", "pruning", "finetune", "diagnostics", "budget", "train", "resources")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PRUNING_FIELD_NUMBER: _ClassVar[int]
    FINETUNE_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    kind: JobKind
    model: _artifacts_pb2.ArtifactRef
    dataset: _artifacts_pb2.ArtifactRef
    data: DataOptions
    pruning: PruningOptions
    finetune: FinetuneOptions
    diagnostics: DiagnosticsOptions
    budget: BudgetOptions
    train: TrainOptions
    resources: Resources
    def __init__(self, kind: _Optional[_Union[JobKind, str]] = ..., model: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., dataset: _Optional[_Union[_artifacts_pb2.ArtifactRef, _Mapping]] = ..., data: _Optional[_Union[DataOptions, _Mapping]] = ..., pruning: _Optional[_Union[PruningOptions, _Mapping]] = ..., finetune: _Optional[_Union[FinetuneOptions, _Mapping]] = ..., diagnostics: _Optional[_Union[DiagnosticsOptions, _Mapping]] = ..., budget: _Optional[_Union[BudgetOptions, _Mapping]] = ..., train: _Optional[_Union[TrainOptions, _Mapping]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "step", "total_steps", "epoch", "epochs", "metrics", "group_multipliers", "report", "message")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class GroupMultipliersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GROUP_MULTIPLIERS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    step: int
    total_steps: int
    epoch: int
    epochs: int
    metrics: _containers.ScalarMap[str, float]
    group_multipliers: _containers.ScalarMap[str, float]
    report: _reports_pb2.StageReport
    message: str
    def __init__(self, phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., epochs: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., group_multipliers: _Optional[_Mapping[str, float]] = ..., report: _Optional[_Union[_reports_pb2.StageReport, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message", "field")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ...) -> None: ...

class OutputArtifact(_message.Message):
    __slots__ = ("role", "artifact")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    role: str
    artifact: _artifacts_pb2.Artifact
    def __init__(self, role: _Optional[str] = ..., artifact: _Optional[_Union[_artifacts_pb2.Artifact, _Mapping]] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("outputs", "reports", "diagnostics", "sweep", "best_sparsity", "measured_sparsity", "parameters_before", "parameters_after", "notes", "budget_shortfall")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSTICS_FIELD_NUMBER: _ClassVar[int]
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    BEST_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    MEASURED_SPARSITY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_AFTER_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SHORTFALL_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[OutputArtifact]
    reports: _containers.RepeatedCompositeFieldContainer[_reports_pb2.StageReport]
    diagnostics: _reports_pb2.DiagnosticsSummary
    sweep: _containers.RepeatedCompositeFieldContainer[_reports_pb2.SweepPoint]
    best_sparsity: float
    measured_sparsity: float
    parameters_before: int
    parameters_after: int
    notes: _containers.RepeatedScalarFieldContainer[str]
    budget_shortfall: _reports_pb2.BudgetShortfall
    def __init__(self, outputs: _Optional[_Iterable[_Union[OutputArtifact, _Mapping]]] = ..., reports: _Optional[_Iterable[_Union[_reports_pb2.StageReport, _Mapping]]] = ..., diagnostics: _Optional[_Union[_reports_pb2.DiagnosticsSummary, _Mapping]] = ..., sweep: _Optional[_Iterable[_Union[_reports_pb2.SweepPoint, _Mapping]]] = ..., best_sparsity: _Optional[float] = ..., measured_sparsity: _Optional[float] = ..., parameters_before: _Optional[int] = ..., parameters_after: _Optional[int] = ..., notes: _Optional[_Iterable[str]] = ..., budget_shortfall: _Optional[_Union[_reports_pb2.BudgetShortfall, _Mapping]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "state", "done", "request_id", "create_time", "start_time", "end_time", "progress", "error", "result", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    state: JobState
    done: bool
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    progress: Progress
    error: JobError
    result: JobResult
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., done: _Optional[bool] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ..., attempt: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("sequence", "time", "state", "progress")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    time: _timestamp_pb2.Timestamp
    state: JobState
    progress: Progress
    def __init__(self, sequence: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    request_id: str
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateJobResponse(_message.Message):
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

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "kind", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    kind: JobKind
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., kind: _Optional[_Union[JobKind, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

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

class WaitJobRequest(_message.Message):
    __slots__ = ("job_id", "timeout")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    timeout: _duration_pb2.Duration
    def __init__(self, job_id: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class WaitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "after_sequence")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after_sequence: int
    def __init__(self, job_id: _Optional[str] = ..., after_sequence: _Optional[int] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("event", "done")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    event: JobEvent
    done: bool
    def __init__(self, event: _Optional[_Union[JobEvent, _Mapping]] = ..., done: _Optional[bool] = ...) -> None: ...
