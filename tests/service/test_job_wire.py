"""The job spec on the wire: proto ↔ engine JobSpec (one generic conversion), and records →
responses, without Ray or gRPC."""

import dataclasses
import typing

import pytest

from equiprune.engine.jobs import JobSpec, check_splits, compression_job
from equiprune.service.errors import InvalidArgument
from equiprune.service.jobs import wire
from equiprune.v1 import artifacts_pb2, jobs_pb2


def _resolve(source, field):
    return source.artifact_id or ("art-from-uri" if source.uri else None)


def _job(spec, splits=("train", "test")):
    return compression_job(spec, splits)


def _spec(**overrides) -> jobs_pb2.JobSpec:
    pb = jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE,
                          model=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000001"),
                          dataset=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000002"),
                          data=jobs_pb2.DataOptions(group_by=["cohort"]),
                          pruning=jobs_pb2.PruningOptions(sparsity=0.9),
                          finetune=jobs_pb2.FinetuneOptions())
    for key, value in overrides.items():
        if value is None:
            pb.ClearField(key)
        else:
            getattr(pb, key).CopyFrom(value) if hasattr(value, "DESCRIPTOR") else setattr(pb, key, value)
    return pb


def _refused(pb, splits=("train", "test")) -> InvalidArgument:
    from equiprune.engine.errors import EngineError

    with pytest.raises(InvalidArgument) as info:
        spec = wire.spec_from_proto(pb, _resolve)
        try:  # what the job plane checks against the dataset's description at create time
            check_splits(spec, splits)
        except EngineError as err:
            raise InvalidArgument(err.problem, field=f"spec.{err.field}") from None
    return info.value


def test_unset_fields_take_the_documented_defaults():
    spec = wire.spec_from_proto(_spec(), _resolve)
    assert spec.finetune.method == "fair_distill" and spec.finetune.epochs == 3 and spec.finetune.lr == 0.01
    assert spec.finetune.weight_decay == 1e-4 and spec.data.tolerance == 0.01 and spec.data.min_group_size == 30
    assert spec.pruning.kind == "unstructured" and spec.pruning.keep_first_and_last is True
    job = _job(spec)
    assert (job.train_split, job.eval_split, job.constraint_split) == ("train", "test", None)
    assert job.pruning.sparsity == 0.9 and job.finetune.method == "fair_distill"
    # Unset sparsity is the engine's default, as in the engine CLI (one default, prune.py); an
    # explicit 0 is a request too (prune nothing), not "unset".
    assert wire.spec_from_proto(_spec(pruning=jobs_pb2.PruningOptions()), _resolve).pruning.sparsity == 0.9
    assert wire.spec_from_proto(_spec(pruning=jobs_pb2.PruningOptions(sparsity=0.0)), _resolve).pruning.sparsity == 0.0


def test_explicit_zero_is_kept_where_zero_is_meaningful():
    spec = wire.spec_from_proto(_spec(finetune=jobs_pb2.FinetuneOptions(weight_decay=0.0, dual_lr=0.0)), _resolve)
    assert spec.finetune.weight_decay == 0.0 and spec.finetune.dual_lr == 0.0
    spec = wire.spec_from_proto(_spec(data=jobs_pb2.DataOptions(group_by=["cohort"], eval_split="")), _resolve)
    assert _job(spec).eval_split is None


@pytest.mark.parametrize("pb, field", [
    (_spec(kind=jobs_pb2.JOB_KIND_UNSPECIFIED), "spec.kind"),
    (_spec(pruning=jobs_pb2.PruningOptions(sparsity=1.5)), "spec.pruning.sparsity"),
    (_spec(pruning=None), "spec.pruning"),
    (_spec(finetune=jobs_pb2.FinetuneOptions(lr=-1)), "spec.finetune.lr"),
    (_spec(finetune=jobs_pb2.FinetuneOptions(method=99)), "spec.finetune.method"),
    (_spec(data=jobs_pb2.DataOptions()), "spec.data.group_by"),
    (_spec(data=jobs_pb2.DataOptions(group_by=["cohort"], tolerance=2.0)), "spec.data.tolerance"),
    (_spec(data=jobs_pb2.DataOptions(group_by=["cohort"], eval_split="validation")), "spec.data.eval_split"),
    (_spec(dataset=None), "spec.dataset"),
    (_spec(resources=jobs_pb2.Resources(workers=-1)), "spec.resources.workers"),
    (_spec(kind=jobs_pb2.JOB_KIND_EVALUATE), "spec.pruning"),
    (_spec(kind=jobs_pb2.JOB_KIND_PRUNE), "spec.finetune"),
    (_spec(kind=jobs_pb2.JOB_KIND_PRUNE, finetune=None, resources=jobs_pb2.Resources(workers=2)), "spec.resources.workers"),
    (_spec(kind=jobs_pb2.JOB_KIND_TRAIN, train=jobs_pb2.TrainOptions()), "spec.train.architecture"),
])
def test_bad_specs_are_refused_naming_the_field(pb, field):
    err = _refused(pb)
    assert err.field == field, str(err)
    assert str(err).startswith(field + ": ")


def test_budget_search_with_n_m_is_refused():
    pb = _spec(kind=jobs_pb2.JOB_KIND_BUDGET_SEARCH, pruning=jobs_pb2.PruningOptions(kind=jobs_pb2.PRUNING_KIND_N_M))
    assert _refused(pb).field == "spec.pruning.kind"


def test_spec_round_trips_through_proto():
    spec = wire.spec_from_proto(_spec(), _resolve)
    again = wire.spec_from_proto(wire.spec_to_proto(spec), _resolve)
    assert again == spec
    assert JobSpec.from_dict(spec.to_dict()) == spec


def test_architecture_kwargs_keep_integers():
    pb = jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_TRAIN, dataset=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000002"),
                          train=jobs_pb2.TrainOptions(architecture="small_cnn"))
    pb.train.architecture_kwargs = '{"num_classes": 10, "channels": [16, 32], "dropout": 0.5}'
    spec = wire.spec_from_proto(pb, _resolve)
    assert spec.train.architecture_kwargs == {"num_classes": 10, "channels": [16, 32], "dropout": 0.5}
    assert isinstance(spec.train.architecture_kwargs["num_classes"], int)


def test_reports_parse_into_proto_leaving_unknown_values_unset():
    report = {"groups": [{"group": "a", "n": 5, "accuracy": 0.8, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.96,
                          "loss": 0.5, "excess_accuracy_gap": None, "sufficient_data": False}],
              "overall": {"n": 5, "accuracy": 0.8, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.96, "loss": 0.5},
              "summary": {"worst_group": None, "tolerance_met": None, "insufficient_groups": ["a"]},
              "paired": False, "min_group_size": 30}
    pb = wire._stage_report({"stage": "pruned", "split": "test", "report": report})
    group = pb.report.groups[0]
    assert group.accuracy == 0.8 and not group.HasField("excess_accuracy_gap") and not group.sufficient_data
    assert not pb.report.summary.HasField("tolerance_met") and list(pb.report.summary.insufficient_groups) == ["a"]


def test_budget_search_needs_no_sparsity_of_its_own():
    pb = _spec(kind=jobs_pb2.JOB_KIND_BUDGET_SEARCH, finetune=None, pruning=jobs_pb2.PruningOptions())
    spec = wire.spec_from_proto(pb, _resolve)
    assert spec.budget.low == 0.1 and spec.budget.high == 0.95 and spec.budget.tolerance == spec.data.tolerance


@pytest.mark.parametrize("train, field", [
    (jobs_pb2.TrainOptions(architecture="no_such_net"), "spec.train.architecture"),
    (jobs_pb2.TrainOptions(architecture="mlp", epochs=-5), "spec.train.epochs"),
    (jobs_pb2.TrainOptions(architecture="mlp", lr=0.0), "spec.train.lr"),
])
def test_train_specs_are_checked_at_create_time(train, field):
    pb = jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_TRAIN, dataset=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000002"),
                          train=train)
    assert _refused(pb).field == field


def test_evaluate_checks_its_data_options():
    pb = _spec(kind=jobs_pb2.JOB_KIND_EVALUATE, pruning=None, finetune=None,
               data=jobs_pb2.DataOptions(group_by=["cohort"], tolerance=5.0))
    assert _refused(pb).field == "spec.data.tolerance"


def test_fair_distill_settings_travel_from_the_wire_to_the_engine_and_back():
    pb = _spec(finetune=jobs_pb2.FinetuneOptions(method=jobs_pb2.FINETUNE_METHOD_FAIR_DISTILL, calibrate_outputs=False,
                                                 max_multiplier=0.5, distill_alpha=0.7))
    spec = wire.spec_from_proto(pb, _resolve)
    job = _job(spec)
    assert (job.finetune.calibrate_outputs, job.finetune.max_multiplier, job.finetune.distill_alpha) == (False, 0.5, 0.7)
    assert not job.finetune.needs_constraint_split  # nothing held out: the primal step sees every training row
    back = wire.spec_to_proto(spec)
    assert back.finetune.calibrate_outputs is False and back.finetune.distill_alpha == pytest.approx(0.7)
    unset = _job(wire.spec_from_proto(_spec(), _resolve)).finetune
    assert unset.method == "fair_distill" and unset.calibrate_outputs and unset.needs_constraint_split


@pytest.mark.parametrize("text, fragment", [("[1, 2]", "must be a JSON object"), ("[object Object]", "not a JSON object"),
                                            ("[" * 3000, "not a JSON object"),  # too deep to parse: not INTERNAL
                                            ('{"a": "' + "x" * 5000 + '"}', "at most 4096 bytes")])
def test_architecture_kwargs_that_are_not_a_json_object_are_refused_loudly(text, fragment):
    pb = jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_TRAIN, dataset=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000002"),
                          train=jobs_pb2.TrainOptions(architecture="small_cnn", architecture_kwargs=text))
    err = _refused(pb)
    assert err.field == "spec.train.architecture_kwargs" and fragment in str(err)


def _sections():
    hints = typing.get_type_hints(JobSpec)
    for name in ("data", "pruning", "finetune", "diagnostics", "budget", "train", "resources"):
        config = next(a for a in typing.get_args(hints[name]) or (hints[name],) if a is not type(None))
        yield name, getattr(jobs_pb2.JobSpec(), name).__class__, config


@pytest.mark.parametrize("name, message, config", list(_sections()), ids=[s[0] for s in _sections()])
def test_every_proto_field_has_its_engine_field_and_the_same_default(name, message, config):
    """The contract of the one conversion: same names; an unset message is the config's defaults."""
    engine_fields = {f.name for f in dataclasses.fields(config)}
    for fd in message.DESCRIPTOR.fields:
        assert fd.name in engine_fields, f"{message.DESCRIPTOR.name}.{fd.name} has no {config.__name__} field"
    required = {"train": {"architecture": "mlp"}}.get(name, {})
    from_wire = wire.message_to_config(wire.config_to_message(dataclasses.asdict(config(**required)), message), config, name)
    assert from_wire == config(**required)


def test_a_field_the_server_does_not_know_is_refused_not_dropped():
    from google.protobuf import struct_pb2

    old = struct_pb2.Struct()
    old.update({"num_classes": 10})  # what an old client put in TrainOptions field 2
    train = jobs_pb2.TrainOptions.FromString(b"\x12" + bytes([old.ByteSize()]) + old.SerializeToString())
    pb = jobs_pb2.JobSpec(kind=jobs_pb2.JOB_KIND_TRAIN, dataset=artifacts_pb2.ArtifactRef(artifact_id="art-0000000000000002"),
                          train=jobs_pb2.TrainOptions(architecture="mlp"))
    pb.train.MergeFrom(train)
    from equiprune.service.rpc.ingress import refuse_unknown_fields

    request = jobs_pb2.CreateJobRequest(spec=pb)
    with pytest.raises(InvalidArgument) as caught:
        refuse_unknown_fields(request)
    assert caught.value.field == "spec.train" and "field number 2" in str(caught.value) and "reserved" in str(caught.value)
    refuse_unknown_fields(jobs_pb2.CreateJobRequest(spec=_spec()))  # a request without one passes
