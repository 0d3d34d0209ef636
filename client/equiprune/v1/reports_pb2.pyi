from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_STAGE_UNSPECIFIED: _ClassVar[ReportStage]
    REPORT_STAGE_DENSE: _ClassVar[ReportStage]
    REPORT_STAGE_PRUNED: _ClassVar[ReportStage]
    REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION: _ClassVar[ReportStage]
    REPORT_STAGE_FINETUNED: _ClassVar[ReportStage]
REPORT_STAGE_UNSPECIFIED: ReportStage
REPORT_STAGE_DENSE: ReportStage
REPORT_STAGE_PRUNED: ReportStage
REPORT_STAGE_PRUNED_WITHOUT_RECALIBRATION: ReportStage
REPORT_STAGE_FINETUNED: ReportStage

class GroupMetrics(_message.Message):
    __slots__ = ("group", "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "loss", "reference_accuracy", "reference_loss", "accuracy_drop", "excess_accuracy_gap", "excess_accuracy_gap_ci_low", "excess_accuracy_gap_ci_high", "excess_loss", "sufficient_data")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    EXCESS_LOSS_FIELD_NUMBER: _ClassVar[int]
    SUFFICIENT_DATA_FIELD_NUMBER: _ClassVar[int]
    group: str
    n: int
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    loss: float
    reference_accuracy: float
    reference_loss: float
    accuracy_drop: float
    excess_accuracy_gap: float
    excess_accuracy_gap_ci_low: float
    excess_accuracy_gap_ci_high: float
    excess_loss: float
    sufficient_data: bool
    def __init__(self, group: _Optional[str] = ..., n: _Optional[int] = ..., accuracy: _Optional[float] = ..., accuracy_ci_low: _Optional[float] = ..., accuracy_ci_high: _Optional[float] = ..., loss: _Optional[float] = ..., reference_accuracy: _Optional[float] = ..., reference_loss: _Optional[float] = ..., accuracy_drop: _Optional[float] = ..., excess_accuracy_gap: _Optional[float] = ..., excess_accuracy_gap_ci_low: _Optional[float] = ..., excess_accuracy_gap_ci_high: _Optional[float] = ..., excess_loss: _Optional[float] = ..., sufficient_data: _Optional[bool] = ...) -> None: ...

class OverallMetrics(_message.Message):
    __slots__ = ("n", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "loss", "reference_accuracy", "reference_loss", "accuracy_drop")
    N_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    n: int
    accuracy: float
    accuracy_ci_low: float
    accuracy_ci_high: float
    loss: float
    reference_accuracy: float
    reference_loss: float
    accuracy_drop: float
    def __init__(self, n: _Optional[int] = ..., accuracy: _Optional[float] = ..., accuracy_ci_low: _Optional[float] = ..., accuracy_ci_high: _Optional[float] = ..., loss: _Optional[float] = ..., reference_accuracy: _Optional[float] = ..., reference_loss: _Optional[float] = ..., accuracy_drop: _Optional[float] = ...) -> None: ...

class DisparitySummary(_message.Message):
    __slots__ = ("worst_group", "worst_group_accuracy", "accuracy_parity_gap", "max_excess_accuracy_gap", "max_excess_accuracy_gap_group", "excess_accuracy_gap_spread", "max_pairwise_excess_loss_gap", "tolerance", "tolerance_met", "tolerance_met_with_confidence", "insufficient_groups")
    WORST_GROUP_FIELD_NUMBER: _ClassVar[int]
    WORST_GROUP_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_PARITY_GAP_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCESS_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCESS_ACCURACY_GAP_GROUP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_SPREAD_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRWISE_EXCESS_LOSS_GAP_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_MET_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_MET_WITH_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    INSUFFICIENT_GROUPS_FIELD_NUMBER: _ClassVar[int]
    worst_group: str
    worst_group_accuracy: float
    accuracy_parity_gap: float
    max_excess_accuracy_gap: float
    max_excess_accuracy_gap_group: str
    excess_accuracy_gap_spread: float
    max_pairwise_excess_loss_gap: float
    tolerance: float
    tolerance_met: bool
    tolerance_met_with_confidence: bool
    insufficient_groups: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, worst_group: _Optional[str] = ..., worst_group_accuracy: _Optional[float] = ..., accuracy_parity_gap: _Optional[float] = ..., max_excess_accuracy_gap: _Optional[float] = ..., max_excess_accuracy_gap_group: _Optional[str] = ..., excess_accuracy_gap_spread: _Optional[float] = ..., max_pairwise_excess_loss_gap: _Optional[float] = ..., tolerance: _Optional[float] = ..., tolerance_met: _Optional[bool] = ..., tolerance_met_with_confidence: _Optional[bool] = ..., insufficient_groups: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupReport(_message.Message):
    __slots__ = ("groups", "overall", "summary", "paired", "min_group_size")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PAIRED_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupMetrics]
    overall: OverallMetrics
    summary: DisparitySummary
    paired: bool
    min_group_size: int
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupMetrics, _Mapping]]] = ..., overall: _Optional[_Union[OverallMetrics, _Mapping]] = ..., summary: _Optional[_Union[DisparitySummary, _Mapping]] = ..., paired: _Optional[bool] = ..., min_group_size: _Optional[int] = ...) -> None: ...

class StageReport(_message.Message):
    __slots__ = ("stage", "split", "report")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    stage: ReportStage
    split: str
    report: GroupReport
    def __init__(self, stage: _Optional[_Union[ReportStage, str]] = ..., split: _Optional[str] = ..., report: _Optional[_Union[GroupReport, _Mapping]] = ...) -> None: ...

class SweepPoint(_message.Message):
    __slots__ = ("sparsity", "tolerance_met", "report")
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_MET_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    sparsity: float
    tolerance_met: bool
    report: GroupReport
    def __init__(self, sparsity: _Optional[float] = ..., tolerance_met: _Optional[bool] = ..., report: _Optional[_Union[GroupReport, _Mapping]] = ...) -> None: ...

class BudgetShortfall(_message.Message):
    __slots__ = ("sparsity", "group", "n", "excess_accuracy_gap", "excess_accuracy_gap_ci_high", "tolerance", "judged_with_confidence", "suggestions")
    SPARSITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_ACCURACY_GAP_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    JUDGED_WITH_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    sparsity: float
    group: str
    n: int
    excess_accuracy_gap: float
    excess_accuracy_gap_ci_high: float
    tolerance: float
    judged_with_confidence: bool
    suggestions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sparsity: _Optional[float] = ..., group: _Optional[str] = ..., n: _Optional[int] = ..., excess_accuracy_gap: _Optional[float] = ..., excess_accuracy_gap_ci_high: _Optional[float] = ..., tolerance: _Optional[float] = ..., judged_with_confidence: _Optional[bool] = ..., suggestions: _Optional[_Iterable[str]] = ...) -> None: ...

class GroupDiagnostics(_message.Message):
    __slots__ = ("group", "n", "loss", "gradient_norm", "hessian_trace", "hessian_trace_stderr", "hessian_top_eigenvalue", "mean_uncertainty", "mean_margin", "mean_logit_margin", "predicted_excess_loss", "measured_excess_loss", "measured_excess_loss_after_recalibration")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_TRACE_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_TRACE_STDERR_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_TOP_EIGENVALUE_FIELD_NUMBER: _ClassVar[int]
    MEAN_UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    MEAN_MARGIN_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGIT_MARGIN_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_EXCESS_LOSS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_EXCESS_LOSS_FIELD_NUMBER: _ClassVar[int]
    MEASURED_EXCESS_LOSS_AFTER_RECALIBRATION_FIELD_NUMBER: _ClassVar[int]
    group: str
    n: int
    loss: float
    gradient_norm: float
    hessian_trace: float
    hessian_trace_stderr: float
    hessian_top_eigenvalue: float
    mean_uncertainty: float
    mean_margin: float
    mean_logit_margin: float
    predicted_excess_loss: float
    measured_excess_loss: float
    measured_excess_loss_after_recalibration: float
    def __init__(self, group: _Optional[str] = ..., n: _Optional[int] = ..., loss: _Optional[float] = ..., gradient_norm: _Optional[float] = ..., hessian_trace: _Optional[float] = ..., hessian_trace_stderr: _Optional[float] = ..., hessian_top_eigenvalue: _Optional[float] = ..., mean_uncertainty: _Optional[float] = ..., mean_margin: _Optional[float] = ..., mean_logit_margin: _Optional[float] = ..., predicted_excess_loss: _Optional[float] = ..., measured_excess_loss: _Optional[float] = ..., measured_excess_loss_after_recalibration: _Optional[float] = ...) -> None: ...

class DiagnosticsSummary(_message.Message):
    __slots__ = ("groups", "rank_correlation", "rank_correlation_after_recalibration", "prediction_note")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    RANK_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    RANK_CORRELATION_AFTER_RECALIBRATION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_NOTE_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[GroupDiagnostics]
    rank_correlation: float
    rank_correlation_after_recalibration: float
    prediction_note: str
    def __init__(self, groups: _Optional[_Iterable[_Union[GroupDiagnostics, _Mapping]]] = ..., rank_correlation: _Optional[float] = ..., rank_correlation_after_recalibration: _Optional[float] = ..., prediction_note: _Optional[str] = ...) -> None: ...
