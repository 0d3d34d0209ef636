import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServedModel(_message.Message):
    __slots__ = ("name", "artifact_id", "shadow_artifact_id", "group_by", "reference_accuracy", "reference_overall_accuracy", "tolerance", "create_time", "input_shape")
    class ReferenceAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_OVERALL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    artifact_id: str
    shadow_artifact_id: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    reference_accuracy: _containers.ScalarMap[str, float]
    reference_overall_accuracy: float
    tolerance: float
    create_time: _timestamp_pb2.Timestamp
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., artifact_id: _Optional[str] = ..., shadow_artifact_id: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., reference_accuracy: _Optional[_Mapping[str, float]] = ..., reference_overall_accuracy: _Optional[float] = ..., tolerance: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DeployModelRequest(_message.Message):
    __slots__ = ("name", "artifact_id", "shadow_artifact_id", "group_by", "reference_job_id", "reference_accuracy", "reference_overall_accuracy", "tolerance", "input_shape")
    class ReferenceAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    SHADOW_ARTIFACT_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_OVERALL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    artifact_id: str
    shadow_artifact_id: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    reference_job_id: str
    reference_accuracy: _containers.ScalarMap[str, float]
    reference_overall_accuracy: float
    tolerance: float
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., artifact_id: _Optional[str] = ..., shadow_artifact_id: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., reference_job_id: _Optional[str] = ..., reference_accuracy: _Optional[_Mapping[str, float]] = ..., reference_overall_accuracy: _Optional[float] = ..., tolerance: _Optional[float] = ..., input_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DeployModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ServedModel
    def __init__(self, model: _Optional[_Union[ServedModel, _Mapping]] = ...) -> None: ...

class UndeployModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UndeployModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServedModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServedModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ServedModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ServedModel, _Mapping]]] = ...) -> None: ...

class Instance(_message.Message):
    __slots__ = ("values", "groups")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    groups: _containers.ScalarMap[str, str]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., groups: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "instances")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    model: str
    instances: _containers.RepeatedCompositeFieldContainer[Instance]
    def __init__(self, model: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[Instance, _Mapping]]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("prediction_id", "predicted_class", "probabilities", "shadow_class")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    SHADOW_CLASS_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    predicted_class: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    shadow_class: int
    def __init__(self, prediction_id: _Optional[str] = ..., predicted_class: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., shadow_class: _Optional[int] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("prediction_id", "label")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    label: int
    def __init__(self, prediction_id: _Optional[str] = ..., label: _Optional[int] = ...) -> None: ...

class ReportOutcomesRequest(_message.Message):
    __slots__ = ("outcomes",)
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    outcomes: _containers.RepeatedCompositeFieldContainer[Outcome]
    def __init__(self, outcomes: _Optional[_Iterable[_Union[Outcome, _Mapping]]] = ...) -> None: ...

class ReportOutcomesResponse(_message.Message):
    __slots__ = ("joined", "unknown", "duplicate", "late", "invalid")
    JOINED_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    joined: int
    unknown: int
    duplicate: int
    late: int
    invalid: int
    def __init__(self, joined: _Optional[int] = ..., unknown: _Optional[int] = ..., duplicate: _Optional[int] = ..., late: _Optional[int] = ..., invalid: _Optional[int] = ...) -> None: ...

class EvaluationRecord(_message.Message):
    __slots__ = ("time", "groups", "label", "predicted_class", "confidence")
    class GroupsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    groups: _containers.ScalarMap[str, str]
    label: int
    predicted_class: int
    confidence: float
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., groups: _Optional[_Mapping[str, str]] = ..., label: _Optional[int] = ..., predicted_class: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class RecordEvaluationsRequest(_message.Message):
    __slots__ = ("model", "records")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    records: _containers.RepeatedCompositeFieldContainer[EvaluationRecord]
    def __init__(self, model: _Optional[str] = ..., records: _Optional[_Iterable[_Union[EvaluationRecord, _Mapping]]] = ...) -> None: ...

class RecordEvaluationsResponse(_message.Message):
    __slots__ = ("recorded", "late")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    LATE_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    late: int
    def __init__(self, recorded: _Optional[int] = ..., late: _Optional[int] = ...) -> None: ...

class GroupWindowMetrics(_message.Message):
    __slots__ = ("group", "predictions", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "error_rate", "mean_confidence", "mean_boundary_proxy", "reference_accuracy", "accuracy_drop", "excess_accuracy_gap", "shadow_agreement", "shadow_n", "sufficient_data")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MEAN_BOUNDARY_PROXY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    SHADOW_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_N_FIELD_NUMBER: _ClassVar[int]
    SUFFICIENT_DATA_FIELD_NUMBER: _ClassVar[int]
    group: str
    predictions: int
    n: int
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    error_rate: float
    mean_confidence: float
    mean_boundary_proxy: float
    reference_accuracy: float
    accuracy_drop: float
    excess_accuracy_gap: float
    shadow_agreement: float
    shadow_n: int
    sufficient_data: bool
    def __init__(self, group: _Optional[str] = ..., predictions: _Optional[int] = ..., n: _Optional[int] = ..., accuracy: _Optional[float] = ..., accuracy_ci_low: _Optional[float] = ..., accuracy_ci_high: _Optional[float] = ..., error_rate: _Optional[float] = ..., mean_confidence: _Optional[float] = ..., mean_boundary_proxy: _Optional[float] = ..., reference_accuracy: _Optional[float] = ..., accuracy_drop: _Optional[float] = ..., excess_accuracy_gap: _Optional[float] = ..., shadow_agreement: _Optional[float] = ..., shadow_n: _Optional[int] = ..., sufficient_data: _Optional[bool] = ...) -> None: ...

class WindowMetrics(_message.Message):
    __slots__ = ("window_seconds", "groups", "overall", "max_excess_accuracy_gap", "max_excess_accuracy_gap_group", "accuracy_parity_gap")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCESS_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCESS_ACCURACY_GAP_GROUP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_PARITY_GAP_FIELD_NUMBER: _ClassVar[int]
    window_seconds: int
    groups: _containers.RepeatedCompositeFieldContainer[GroupWindowMetrics]
    overall: GroupWindowMetrics
    max_excess_accuracy_gap: float
    max_excess_accuracy_gap_group: str
    accuracy_parity_gap: float
    def __init__(self, window_seconds: _Optional[int] = ..., groups: _Optional[_Iterable[_Union[GroupWindowMetrics, _Mapping]]] = ..., overall: _Optional[_Union[GroupWindowMetrics, _Mapping]] = ..., max_excess_accuracy_gap: _Optional[float] = ..., max_excess_accuracy_gap_group: _Optional[str] = ..., accuracy_parity_gap: _Optional[float] = ...) -> None: ...

class GetModelMetricsRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class MonitorTotals(_message.Message):
    __slots__ = ("predictions", "outcomes_joined", "outcomes_unknown", "outcomes_duplicate", "outcomes_late", "outcomes_invalid", "evaluation_records")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_JOINED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_LATE_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_INVALID_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_RECORDS_FIELD_NUMBER: _ClassVar[int]
    predictions: int
    outcomes_joined: int
    outcomes_unknown: int
    outcomes_duplicate: int
    outcomes_late: int
    outcomes_invalid: int
    evaluation_records: int
    def __init__(self, predictions: _Optional[int] = ..., outcomes_joined: _Optional[int] = ..., outcomes_unknown: _Optional[int] = ..., outcomes_duplicate: _Optional[int] = ..., outcomes_late: _Optional[int] = ..., outcomes_invalid: _Optional[int] = ..., evaluation_records: _Optional[int] = ...) -> None: ...

class GetModelMetricsResponse(_message.Message):
    __slots__ = ("model", "windows", "totals", "min_count")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    model: ServedModel
    windows: _containers.RepeatedCompositeFieldContainer[WindowMetrics]
    totals: MonitorTotals
    min_count: int
    def __init__(self, model: _Optional[_Union[ServedModel, _Mapping]] = ..., windows: _Optional[_Iterable[_Union[WindowMetrics, _Mapping]]] = ..., totals: _Optional[_Union[MonitorTotals, _Mapping]] = ..., min_count: _Optional[int] = ...) -> None: ...
