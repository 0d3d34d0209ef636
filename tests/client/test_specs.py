"""Spec builders: strings to enums, references, unset-vs-default fields, clear refusals."""

from __future__ import annotations

import json

import pytest

from equiprune.client import specs
from equiprune.client.specs import SpecError
from equiprune.v1 import jobs_pb2


def test_prune_and_finetune_spec_maps_every_argument():
    spec = specs.prune_and_finetune_spec(model="art-12ab", dataset="s3://bucket/d.npz", dataset_sha256="AB" * 32,
                                         group_by=["race", "gender"], sparsity=0.9, kind="n-m", scope="global",
                                         schedule="gradual", method="heldout_ceag", epochs=3, lr=0.02, dual_lr=0.05,
                                         tolerance=0.01, min_group_size=20, eval_split="test", gpus=1, workers=2)
    assert spec.kind == jobs_pb2.JOB_KIND_PRUNE_AND_FINETUNE
    assert spec.model.artifact_id == "art-12ab"
    assert spec.dataset.uri.uri == "s3://bucket/d.npz" and spec.dataset.uri.sha256 == "ab" * 32
    assert list(spec.data.group_by) == ["race", "gender"] and spec.data.tolerance == 0.01
    assert spec.data.min_group_size == 20 and spec.data.eval_split == "test"
    assert not spec.data.HasField("train_split")
    assert spec.pruning.kind == jobs_pb2.PRUNING_KIND_N_M and spec.pruning.scope == jobs_pb2.PRUNING_SCOPE_GLOBAL
    assert spec.pruning.schedule == jobs_pb2.PRUNING_SCHEDULE_GRADUAL and spec.pruning.sparsity == 0.9
    assert spec.finetune.method == jobs_pb2.FINETUNE_METHOD_HELDOUT_CEAG
    assert spec.finetune.epochs == 3 and spec.finetune.lr == 0.02 and spec.finetune.dual_lr == 0.05
    assert spec.resources.workers == 2 and spec.resources.gpus_per_worker == 1


def test_unset_options_keep_the_server_defaults():
    spec = specs.prune_and_finetune_spec(model="art-1", dataset="sample:digits", group_by="cohort", sparsity=0.5)
    assert list(spec.data.group_by) == ["cohort"]  # a single string is one attribute, not letters
    for message, names in ((spec.data, ["tolerance", "eval_split", "train_split"]),
                           (spec.finetune, ["lr", "dual_lr", "momentum", "weight_decay"])):
        assert not any(message.HasField(name) for name in names)
    assert spec.finetune.epochs == 0 and not spec.HasField("resources") and not spec.HasField("diagnostics")
    assert spec.finetune.method == jobs_pb2.FINETUNE_METHOD_UNSPECIFIED  # the server's fair default


@pytest.mark.parametrize("call, field, words", [
    (lambda: specs.finetune_spec(model="art-1", dataset="d", group_by="g", method="fancy"), "method", "fancy"),
    (lambda: specs.prune_spec(model="art-1", dataset="d", group_by="g", sparsity=0.5, kind="blocks"), "kind", "n_m"),
    (lambda: specs.evaluate_spec(model="art-1", dataset="d", group_by=[]), "group_by", "required"),
    (lambda: specs.evaluate_spec(model="", dataset="d", group_by="g"), "model", "required"),
    (lambda: specs.evaluate_spec(model="art-1", dataset="d", group_by="g", model_sha256="ab"), "model_sha256", "URI"),
    (lambda: specs.train_spec(dataset="d", architecture="mlp", architecture_kwargs="{"), "architecture_kwargs", "JSON"),
])
def test_bad_arguments_name_their_field(call, field, words):
    # Only what the client alone can know is checked here (names, JSON, references); ranges and
    # defaults are the server's, checked once there (tests/service/test_job_wire.py).
    with pytest.raises(SpecError) as caught:
        call()
    assert caught.value.field == field and words in caught.value.problem
    assert str(caught.value).startswith(f"{field}: ")
    assert isinstance(caught.value, ValueError)


def test_prune_spec_allows_n_m_without_sparsity():
    spec = specs.prune_spec(model="art-1", dataset="d", group_by="g", kind="n:m", n=2, m=4)
    assert spec.pruning.kind == jobs_pb2.PRUNING_KIND_N_M and spec.pruning.n == 2 and spec.pruning.m == 4


def test_train_spec_carries_architecture_kwargs():
    spec = specs.train_spec(dataset="sample:digits", architecture="small_cnn",
                            architecture_kwargs='{"num_classes": 10, "channels": [16, 32]}', epochs=20, lr=0.05)
    assert spec.kind == jobs_pb2.JOB_KIND_TRAIN and not spec.HasField("model")
    kwargs = json.loads(spec.train.architecture_kwargs)  # JSON text on the wire
    assert kwargs["num_classes"] == 10 and list(kwargs["channels"]) == [16, 32]
    assert spec.train.epochs == 20 and spec.train.lr == 0.05


def test_budget_and_diagnose_specs():
    budget = specs.budget_spec(model="art-1", dataset="d", group_by="g", low=0.3, high=0.9, require_confidence=True,
                               method="naive", epochs=1)
    assert budget.kind == jobs_pb2.JOB_KIND_BUDGET_SEARCH and budget.budget.low == 0.3
    assert budget.budget.require_confidence and not budget.budget.HasField("resolution")
    assert budget.finetune.method == jobs_pb2.FINETUNE_METHOD_NAIVE and budget.pruning.sparsity == 0
    assert not specs.budget_spec(model="art-1", dataset="d", group_by="g").HasField("finetune")
    diagnose = specs.diagnose_spec(model="art-1", dataset="d", group_by="g", probes=4)
    assert diagnose.kind == jobs_pb2.JOB_KIND_DIAGNOSE and diagnose.diagnostics.probes == 4
    assert not diagnose.HasField("pruning")
    assert specs.diagnose_spec(model="art-1", dataset="d", group_by="g", sparsity=0.5).pruning.sparsity == 0.5


def test_enum_names_accept_short_full_and_numeric_forms():
    methods = specs.FINETUNE_METHODS
    assert methods.value("CEAG", "m") == methods.value("FINETUNE_METHOD_CEAG", "m") == jobs_pb2.FINETUNE_METHOD_CEAG
    assert methods.value("heldout-ceag", "m") == jobs_pb2.FINETUNE_METHOD_HELDOUT_CEAG
    assert methods.value(2, "m") == jobs_pb2.FINETUNE_METHOD_EQUALIZED_LOSS
    assert methods.choices() == ["naive", "equalized_loss", "ceag", "heldout_ceag", "fair_distill"]
    assert specs.JOB_KINDS.name(jobs_pb2.JOB_KIND_BUDGET_SEARCH) == "budget_search"
    with pytest.raises(SpecError):
        methods.value("x_ceag", "method")
    with pytest.raises(SpecError):
        methods.value(0, "method")  # UNSPECIFIED is not a choice


def test_output_calibration_can_be_turned_off_and_is_otherwise_left_to_the_server():
    spec = specs.prune_and_finetune_spec(model="art-1", dataset="art-2", group_by="race", sparsity=0.9)
    assert not spec.finetune.HasField("calibrate_outputs")
    spec = specs.prune_and_finetune_spec(model="art-1", dataset="art-2", group_by="race", sparsity=0.9,
                                         calibrate_outputs=False)
    assert spec.finetune.HasField("calibrate_outputs") and spec.finetune.calibrate_outputs is False


def test_unset_settings_are_left_to_the_server_and_ranges_checked_there():
    spec = specs.prune_spec(model="art-1", dataset="d", group_by="g")
    assert not spec.pruning.sparsity and not spec.pruning.kind  # the server's defaults: 0.9, unstructured
    assert specs.prune_spec(model="art-1", dataset="d", group_by="g", sparsity=1.5).pruning.sparsity == 1.5
    with pytest.raises(SpecError) as caught:
        specs.prune_spec(model="art-1", dataset="d", group_by="g", n="two")
    assert caught.value.field == "n"
