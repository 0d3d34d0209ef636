"""The compression workflow end to end on small real data (scikit-learn digits)."""

import json

import pytest
import torch
from torch import nn

from equiprune.engine.budget import BudgetConfig, search_budget
from equiprune.engine.cli import main as cli_main
from equiprune.engine.demo_data import digits_group_dataset
from equiprune.engine.diagnostics import DiagnosticsConfig
from equiprune.engine.errors import InvalidConfigError, UnsupportedOperationError
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.models.io import load_model, save_exported, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.engine.models.sparse import load_sparse
from equiprune.engine.pipeline import CompressionJob, run_compression, write_outputs
from equiprune.engine.prune import PruningConfig
from equiprune.engine.report import build_report
from equiprune.engine.evaluation import evaluate

SPEC = ArchitectureSpec("mlp", {"num_classes": 10, "in_features": 64, "hidden": [64, 32]})


@pytest.fixture(scope="module")
def digits():
    return digits_group_dataset()


@pytest.fixture(scope="module")
def dense_path(digits, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(SPEC)
    train = digits.select(("cohort",), split="train")
    finetune(model, {}, train, FinetuneConfig(method="naive", epochs=8, lr=0.05))
    path = tmp_path_factory.mktemp("dense") / "dense.safetensors"
    save_safetensors(model, SPEC, path)
    return path


def job(**overrides):
    base = dict(group_by=("cohort",), pruning=PruningConfig(sparsity=0.8),
                finetune=FinetuneConfig(method="ceag", epochs=1, dual_lr=0.1), min_group_size=10)
    return CompressionJob(**{**base, **overrides})


def test_full_workflow_reports_every_stage_and_writes_artifacts(digits, dense_path, tmp_path):
    loaded = load_model(dense_path)
    events = []
    result = run_compression(loaded, digits, job(diagnostics=DiagnosticsConfig(probes=2, power_iterations=3)),
                             on_progress=lambda phase, payload: events.append(phase))
    assert {"evaluate_dense", "diagnose", "prune", "finetune", "finetune_step", "done"} <= set(events)
    assert result.pruning.sparsity.prunable_sparsity == pytest.approx(0.8, abs=0.005)
    for stage in (result.dense, result.pruned, result.finetuned):
        assert stage.train.overall.n == 1348 and stage.eval.overall.n == 449
    assert result.pruned_without_recalibration is None  # an MLP has no BatchNorm to recalibrate
    assert result.dense.eval.summary.max_excess_accuracy_gap is None  # no reference for the dense model
    assert result.finetuned.eval.group("minority").excess_accuracy_gap is not None
    assert set(result.prediction["predicted_excess_loss"]) == {"majority", "minority"}
    assert set(result.prediction) == {"predicted_excess_loss", "before_recalibration"}
    assert result.finetune.epochs[-1].multipliers.keys() == {"majority", "minority"}
    as_json = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert as_json["job"]["pruning"]["sparsity"] == 0.8 and as_json["job"]["finetune"]["method"] == "ceag"

    written = write_outputs(result, loaded, tmp_path, digits.select(("cohort",), split="train").inputs[:2])
    assert set(written) == {"model", "sparse_model", "report"}
    state, spec = load_sparse(written["sparse_model"])
    assert spec == SPEC
    for name, tensor in result.module.state_dict().items():
        assert torch.equal(state[name], tensor)
    reloaded = load_model(written["model"])
    test = digits.select(("cohort",), split="test")
    assert evaluate(reloaded.module, test).accuracy() == pytest.approx(result.finetuned.eval.overall.accuracy)
    assert json.loads(open(written["report"]).read())["finetuned"]["eval"]["overall"]["n"] == 449


@pytest.mark.parametrize("training", [False, True])
def test_exported_program_is_pruned_and_finetuned_in_its_own_mode(digits, tmp_path, training):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    save_exported(model, torch.randn(2, 1, 8, 8), tmp_path / "m.pt2", training=training)
    loaded = load_model(tmp_path / "m.pt2")
    result = run_compression(loaded, digits, job(finetune=FinetuneConfig(method="naive", epochs=1)))
    mode = "train" if training else "eval"
    assert any(f"exported in {mode} mode" in note for note in result.notes)
    assert any("BatchNorm statistics were not re-estimated" in note for note in result.notes)
    assert result.finetune.mode_fixed
    # Only the middle linear layer is prunable: first and last stay dense.
    assert list(result.masks) == ["4.weight"]
    assert result.pruning.sparsity.prunable_sparsity == pytest.approx(0.8, abs=0.01)
    written = write_outputs(result, loaded, tmp_path / "out", torch.randn(2, 1, 8, 8))
    again = load_model(written["model"])
    assert again.format == "exported" and again.exported_training is training
    assert int((dict(again.module.named_parameters())["4.weight"] == 0).sum()) == int((~result.masks["4.weight"]).sum())


def test_structured_pruning_of_an_exported_program_is_refused(digits, tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    save_exported(model, torch.randn(2, 1, 8, 8), tmp_path / "m.pt2", training=False)
    with pytest.raises(UnsupportedOperationError) as err:
        run_compression(load_model(tmp_path / "m.pt2"), digits,
                        job(pruning=PruningConfig(kind="structured", sparsity=0.5), finetune=None))
    assert err.value.field == "pruning.kind"


def test_structured_pruning_shrinks_and_ships_as_pt2(digits, dense_path, tmp_path):
    loaded = load_model(dense_path)
    result = run_compression(loaded, digits, job(pruning=PruningConfig(kind="structured", sparsity=0.5),
                                                 finetune=FinetuneConfig(method="naive", epochs=1)))
    assert result.pruning.params_after < 0.85 * result.pruning.params_before
    assert result.pruning.macs_after < result.pruning.macs_before
    layers = [m for m in result.module.modules() if isinstance(m, nn.Linear)]
    assert layers[0].out_features == 64  # keep_first_and_last: the first layer keeps its outputs
    assert layers[1].out_features == 16  # the middle layer lost half its 32 outputs
    written = write_outputs(result, loaded, tmp_path, torch.randn(2, 1, 8, 8))
    assert written["model"].endswith("model.pt2") and "sparse_model" not in written
    shrunk = load_model(written["model"]).module
    assert sum(p.numel() for p in shrunk.parameters()) == result.pruning.params_after


def test_gradual_schedule_trains_between_steps_and_hits_the_target(digits, dense_path):
    events = []
    result = run_compression(load_model(dense_path), digits,
                             job(pruning=PruningConfig(sparsity=0.9, schedule="gradual", gradual_steps=3),
                                 finetune=FinetuneConfig(method="naive", epochs=1)),
                             on_progress=lambda phase, payload: events.append((phase, payload.get("prune_step"))))
    assert {step for phase, step in events if phase == "gradual_prune_step"} == {1, 2}
    assert result.pruning.sparsity.prunable_sparsity == pytest.approx(0.9, abs=0.005)
    assert result.finetuned.train.overall.accuracy > result.pruned.train.overall.accuracy - 0.05


def test_heldout_variant_without_a_constraint_split_says_where_it_came_from(digits, dense_path):
    result = run_compression(load_model(dense_path), digits,
                             job(finetune=FinetuneConfig(method="heldout_ceag", epochs=1)))
    assert any("carved from the training split" in note for note in result.notes)


def test_the_fair_default_distils_from_the_dense_model_and_calibrates_on_held_out_data(digits, dense_path):
    result = run_compression(load_model(dense_path), digits,
                             job(finetune=FinetuneConfig(method="fair_distill", epochs=1)))
    assert result.finetune.calibration is not None and result.finetune.calibration["applied"]
    assert any("fitted output offsets on the constraint split" in note for note in result.notes)
    assert any("carved from the training split" in note for note in result.notes)
    assert result.finetuned.train.overall.accuracy > result.pruned.train.overall.accuracy


def test_bad_job_settings_name_the_field():
    with pytest.raises(InvalidConfigError) as err:
        CompressionJob(group_by=())
    assert err.value.field == "job.group_by"
    with pytest.raises(InvalidConfigError) as err:
        PruningConfig(kind="n_m", schedule="gradual")
    assert err.value.field == "pruning.schedule"


def _report_with_gap(gap: float):
    """A two-group report whose minority ψ_g is `gap` (paired, 100 + 100 samples)."""
    from equiprune.engine.evaluation import Evaluation

    groups = torch.tensor([0] * 100 + [1] * 100)
    dense = torch.ones(200, dtype=torch.bool)
    current = dense.clone()
    current[100:100 + int(round(2 * gap * 100))] = False  # ψ_minority = Δ_minority/2
    mk = lambda c: Evaluation(c, torch.zeros(200), torch.ones(200), groups, ("majority", "minority"))
    return build_report(mk(current), mk(dense), tolerance=0.05)


def test_budget_search_bisects_to_the_last_safe_sparsity():
    seen = []

    def probe(sparsity):  # the gap grows with sparsity and crosses 5 % at 0.8
        seen.append(sparsity)
        return _report_with_gap(max(0.0, (sparsity - 0.6) * 0.25))

    result = search_budget(probe, BudgetConfig(tolerance=0.05, low=0.5, high=0.95, resolution=0.02, max_probes=10))
    assert result.best_sparsity is not None and 0.78 <= result.best_sparsity <= 0.82  # ψ is quantised to 0.005
    assert [p.sparsity for p in result.frontier] == sorted(seen)
    assert all(p.met == (p.max_excess_accuracy_gap <= 0.05) for p in result.frontier)
    nothing = search_budget(lambda s: _report_with_gap(0.2), BudgetConfig(tolerance=0.05))
    # 0.1 broke it, and so did every halving down to 1 %: 0.05, 0.025, 0.0125.
    assert nothing.best_sparsity is None and [p.sparsity for p in nothing.frontier] == [0.0125, 0.025, 0.05, 0.1]
    assert nothing.shortfall.group == "minority" and nothing.shortfall.sparsity == 0.0125
    with pytest.raises(InvalidConfigError) as err:
        BudgetConfig(low=0.9, high=0.5)
    assert err.value.field == "budget.high"


def test_cli_reports_bad_input_with_the_field(dense_path, tmp_path, capsys, digits):
    from equiprune.engine.dataset import save_dataset

    data = tmp_path / "d.npz"
    save_dataset(digits, data)
    code = cli_main(["compress", "--model", str(dense_path), "--dataset", str(data), "--group-by", "nationality",
                     "--out", str(tmp_path / "o")])
    assert code == 2
    assert "dataset.group_by" in capsys.readouterr().err


def test_cli_compress_writes_artifacts_and_prints_the_table_or_json(dense_path, tmp_path, capsys, digits):
    from equiprune.engine.dataset import save_dataset

    data = tmp_path / "d.npz"
    save_dataset(digits, data)
    common = ["compress", "--model", str(dense_path), "--dataset", str(data), "--group-by", "cohort",
              "--sparsity", "0.8", "--method", "naive", "--epochs", "1", "--min-group-size", "10"]
    assert cli_main([*common, "--out", str(tmp_path / "table")]) == 0
    table = capsys.readouterr().out
    assert "minority" in table and "max ψ_g" in table and "measured sparsity of prunable weights: 0.800" in table
    assert cli_main([*common, "--out", str(tmp_path / "json"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["measured_sparsity"] == pytest.approx(0.8, abs=0.005)
    assert {f["role"] for f in payload["files"]} == {"model", "sparse_model", "report"}
    assert (tmp_path / "json" / "model.sparse.safetensors").stat().st_size < (tmp_path / "json" / "model.safetensors").stat().st_size


def test_a_datasets_constraint_split_is_used_and_never_trained_on(digits, dense_path):
    import numpy as np

    from equiprune.engine.dataset import dataset_from_arrays, dataset_to_arrays

    arrays = dataset_to_arrays(digits)
    split = arrays["split"].copy()
    train_rows = np.flatnonzero(split == 0)
    split[train_rows[::5]] = 2  # every fifth training row becomes a constraint row
    arrays["split"], arrays["split__names"] = split, np.array(["train", "test", "constraint"])
    data = dataset_from_arrays(arrays)
    result = run_compression(load_model(dense_path), data, job(finetune=FinetuneConfig(method="heldout_ceag", epochs=1)))
    assert not any("carved" in note for note in result.notes)
    n_train = int((split == 0).sum())
    assert result.finetuned.train.overall.n == n_train
    assert result.finetune.epochs[-1].samples == n_train


def test_heldout_carving_happens_before_gradual_training(digits, dense_path):
    events = []
    result = run_compression(load_model(dense_path), digits,
                             job(pruning=PruningConfig(sparsity=0.8, schedule="gradual", gradual_steps=2),
                                 finetune=FinetuneConfig(method="heldout_ceag", epochs=1)),
                             on_progress=lambda phase, payload: events.append((phase, payload)))
    carved = result.finetuned.train.overall.n
    assert carved < 1348
    between = [p for phase, p in events if phase == "gradual_prune_step"]
    assert between and all(p["steps_per_epoch"] == -(-carved // 128) for p in between)


@pytest.mark.parametrize("kwargs, field", [
    ({"device": "gpu"}, "job.device"),
    ({"tolerance": 2.0}, "job.tolerance"),
    ({"eval_batch_size": 0}, "job.eval_batch_size"),
])
def test_job_settings_are_validated_with_their_field(kwargs, field):
    with pytest.raises(InvalidConfigError) as err:
        job(**kwargs)
    assert err.value.field == field


def test_budget_refuses_undecidable_probes_and_nm(dense_path, tmp_path, capsys, digits):
    from equiprune.engine.dataset import save_dataset

    current, reference = _evaluations_all_small()
    with pytest.raises(InvalidConfigError) as err:
        search_budget(lambda s: build_report(current, reference, tolerance=0.05, min_group_size=30),
                      BudgetConfig(tolerance=0.05))
    assert err.value.field == "job.min_group_size"
    data = tmp_path / "d.npz"
    save_dataset(digits, data)
    code = cli_main(["budget", "--model", str(dense_path), "--dataset", str(data), "--group-by", "cohort",
                     "--kind", "n_m", "--out", str(tmp_path / "b")])
    assert code == 2 and "pruning.kind" in capsys.readouterr().err


def _evaluations_all_small():
    """A current/reference pair in which every group is below min_group_size=30."""
    from equiprune.engine.evaluation import Evaluation

    groups = torch.tensor([0] * 5 + [1] * 5)
    ev = Evaluation(torch.ones(10, dtype=torch.bool), torch.zeros(10), torch.ones(10), groups, ("a", "b"))
    return ev, ev


def test_finetuning_an_already_pruned_model_keeps_its_zeros(digits, dense_path):
    pruned = run_compression(load_model(dense_path), digits, CompressionJob(
        group_by=("cohort",), pruning=PruningConfig(sparsity=0.7), finetune=None)).module
    zeros = {name: p == 0 for name, p in pruned.named_parameters() if p.dim() > 1 and bool((p == 0).any())}
    assert zeros, "the pruned model has zero weights"
    loaded = load_model(dense_path)
    loaded.module.load_state_dict(pruned.state_dict())
    result = run_compression(loaded, digits, CompressionJob(
        group_by=("cohort",), pruning=None, finetune=FinetuneConfig(method="naive", epochs=1, lr=0.05)))
    params = dict(result.module.named_parameters())
    for name, was_zero in zeros.items():
        assert bool((params[name][was_zero] == 0).all()), f"{name}: a pruned weight grew back"
    assert any(bool((params[name][~was_zero] != pruned.state_dict()[name][~was_zero]).any()) for name in zeros)


def test_each_report_is_announced_as_soon_as_it_exists(digits, dense_path):
    calls = []
    run_compression(load_model(dense_path), digits, CompressionJob(
        group_by=("cohort",), pruning=PruningConfig(sparsity=0.8),
        finetune=FinetuneConfig(method="naive", epochs=1)), on_progress=lambda phase, payload: calls.append((phase, payload)))
    stages = [payload["stage"] for phase, payload in calls if phase == "report"]
    assert stages == ["dense", "pruned", "finetuned"], stages  # an MLP has no BatchNorm to recalibrate
    phases = [phase for phase, _ in calls]
    assert phases.index("report") < phases.index("prune") and phases.index("finetune") < len(phases) - 1
    pruned = next(p for phase, p in calls if phase == "report" and p["stage"] == "pruned")
    assert pruned["reports"].eval.summary.max_excess_accuracy_gap is not None
