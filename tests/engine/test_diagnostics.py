"""Tests for per-group diagnostics: exact checks against dense Hessians on tiny models."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from equiprune.engine.diagnostics import (
    DiagnosticsConfig,
    diagnose,
    predict_excess_loss,
)
from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError
from equiprune.engine.groups import GroupedData
from equiprune.engine.pruning.masks import apply_masks

GROUP_NAMES = ("a", "b", "c", "empty")
GROUP_SIZES = (9, 6, 5, 0)


# --------------------------------------------------------------------------- fixtures


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def make_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    # Non-trivial running statistics, so eval mode visibly differs from train mode.
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(16, 3, 6, 6) * 2 + 0.5)
    return model


def grouped(inputs_shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> GroupedData:
    gen = torch.Generator().manual_seed(seed)
    groups = torch.cat([torch.full((n,), g, dtype=torch.int64) for g, n in enumerate(GROUP_SIZES)])
    n = groups.numel()
    inputs = torch.randn((n, *inputs_shape), generator=gen, dtype=dtype)
    labels = torch.randint(0, 3, (n,), generator=gen)
    return GroupedData(inputs, labels, groups, GROUP_NAMES)


@pytest.fixture
def mlp_data() -> GroupedData:
    return grouped((4,), torch.float64)


@pytest.fixture
def cnn_data() -> GroupedData:
    return grouped((3, 6, 6), torch.float32)


def group_samples(data: GroupedData, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    members = data.groups == g
    return data.inputs[members], data.labels[members]


def exact_hessian(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().flatten() for n in names])

    def loss(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [s.numel() for s in shapes])
        state = {n: p.view(s) for n, p, s in zip(names, pieces, shapes)}
        return F.cross_entropy(functional_call(model, state, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


ALL_MLP = ["0.weight", "0.bias", "2.weight", "2.bias"]


# --------------------------------------------------------------------------- exact values


def test_loss_and_gradient_norm_are_exact(mlp_data):
    model = make_mlp()
    result = diagnose(model, mlp_data, DiagnosticsConfig(probes=2, power_iterations=2, batch_size=4))
    for g, diag in enumerate(result.groups[:3]):
        x, y = group_samples(mlp_data, g)
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grad_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))
        assert diag.n == GROUP_SIZES[g]
        assert diag.loss == pytest.approx(loss.item(), rel=1e-12)
        assert diag.grad_norm == pytest.approx(grad_norm, rel=1e-10)
    assert result.overall.n == sum(GROUP_SIZES)
    assert result.overall.loss == pytest.approx(mean_loss(model, mlp_data.inputs, mlp_data.labels), rel=1e-12)


def test_hutchinson_trace_is_within_a_few_standard_errors_of_the_exact_trace(mlp_data):
    model = make_mlp()
    config = DiagnosticsConfig(probes=120, power_iterations=1, batch_size=32, include_overall=False)
    result = diagnose(model, mlp_data, config)
    for g, diag in enumerate(result.groups[:3]):
        hessian = exact_hessian(model, ALL_MLP, *group_samples(mlp_data, g))
        exact = float(hessian.trace())
        # Rademacher probes: Var(vᵀHv) = 2·Σ_{i≠j} H_ij², so the reported error is checkable too.
        off_diagonal = float(hessian.square().sum() - hessian.diagonal().square().sum())
        expected_stderr = math.sqrt(2 * off_diagonal / 120)
        assert diag.hessian_trace_stderr == pytest.approx(expected_stderr, rel=0.35)
        assert abs(diag.hessian_trace - exact) <= 4 * diag.hessian_trace_stderr


def test_power_iteration_finds_the_dominant_eigenvalue(mlp_data):
    model = make_mlp()
    config = DiagnosticsConfig(probes=1, power_iterations=200, power_tolerance=1e-9, include_overall=False)
    result = diagnose(model, mlp_data, config)
    for g, diag in enumerate(result.groups[:3]):
        eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, ALL_MLP, *group_samples(mlp_data, g)))
        dominant = float(eigenvalues[eigenvalues.abs().argmax()])
        assert diag.top_eigenvalue == pytest.approx(dominant, rel=1e-4)
        assert 2 <= diag.power_iterations_used < 200


def test_power_iteration_stops_early_and_reports_iterations(mlp_data):
    model = make_mlp()
    loose = diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=50, power_tolerance=0.5))
    strict = diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=7, power_tolerance=0.0))
    assert all(d.power_iterations_used < 50 for d in loose.groups[:3])
    assert all(d.power_iterations_used == 7 for d in strict.groups[:3])


def test_boundary_proxies_match_a_manual_computation(mlp_data):
    model = make_mlp()
    result = diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=1, batch_size=4))
    for g, diag in enumerate(result.groups[:3]):
        x, _ = group_samples(mlp_data, g)
        with torch.no_grad():
            logits = model(x)
        probs = torch.softmax(logits, 1)
        sorted_p = probs.sort(1, descending=True).values
        sorted_z = logits.sort(1, descending=True).values
        assert diag.mean_uncertainty == pytest.approx(float((1 - (probs**2).sum(1)).mean()), rel=1e-12)
        assert diag.mean_margin == pytest.approx(float((sorted_p[:, 0] - sorted_p[:, 1]).mean()), rel=1e-12)
        assert diag.mean_logit_margin == pytest.approx(float((sorted_z[:, 0] - sorted_z[:, 1]).mean()), rel=1e-12)


def test_a_parameter_subset_diagnoses_only_that_block(mlp_data):
    model = make_mlp()
    names = ["2.weight"]
    config = DiagnosticsConfig(probes=2, power_iterations=300, power_tolerance=1e-9, parameters=tuple(names))
    result = diagnose(model, mlp_data, config)
    assert result.parameters == ("2.weight",) and result.num_parameters == 15
    x, y = group_samples(mlp_data, 0)
    weight = model[2].weight
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y), [weight])
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, names, x, y))
    assert result.groups[0].grad_norm == pytest.approx(float(grad.norm()), rel=1e-10)
    assert result.groups[0].top_eigenvalue == pytest.approx(float(eigenvalues[eigenvalues.abs().argmax()]), rel=1e-4)


# --------------------------------------------------------------------------- Taylor prediction


def pruned_model_and_masks(scale: float) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """An MLP whose to-be-pruned weights have size `scale`, so w_P = scale·u for a fixed u."""
    model = make_mlp()
    gen = torch.Generator().manual_seed(7)
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight"):
                drop = torch.rand(param.shape, generator=gen) < 0.3
                direction = torch.randn(param.shape, generator=gen, dtype=param.dtype)
                param[drop] = scale * direction[drop]
                masks[name] = ~drop
    return model, masks


def taylor_errors(data: GroupedData, scale: float) -> tuple[list[float], list[float], list]:
    model, masks = pruned_model_and_masks(scale)
    config = DiagnosticsConfig(probes=1, power_iterations=200, power_tolerance=1e-9, include_overall=False)
    predictions = predict_excess_loss(model, data, masks, config)
    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks)
    errors, first_order_errors = [], []
    for g, prediction in enumerate(predictions[:3]):
        x, y = group_samples(data, g)
        exact = mean_loss(pruned, x, y) - mean_loss(model, x, y)
        assert prediction.predicted == pytest.approx(prediction.first_order + prediction.second_order, rel=1e-12)
        errors.append(abs(prediction.predicted - exact))
        first_order_errors.append(abs(prediction.first_order - exact))
    return errors, first_order_errors, predictions


def test_taylor_prediction_matches_the_exact_loss_change_to_third_order(mlp_data):
    errors, first_order_errors, predictions = taylor_errors(mlp_data, 0.02)
    double_errors, _, _ = taylor_errors(mlp_data, 0.04)
    for err, first_err, double_err, prediction in zip(errors, first_order_errors, double_errors, predictions):
        assert err < 2e-3 * abs(prediction.predicted)
        assert err < 0.1 * first_err  # the second-order term (and its sign) matters
        # Doubling w_P multiplies an O(‖w_P‖³) remainder by about 8 (more if the cubic term
        # happens to be small); a wrong second-order sign or factor would leave an O(‖w_P‖²)
        # remainder, multiplied by about 4.
        assert double_err / err > 6.0
        assert prediction.predicted <= prediction.upper_bound


def test_prediction_reuses_diagnostics_with_one_pass_per_group(mlp_data):
    model, masks = pruned_model_and_masks(0.05)
    config = DiagnosticsConfig(probes=2, power_iterations=30, batch_size=4)
    diagnostics = diagnose(model, mlp_data, config)
    forwards = []
    handle = model.register_forward_pre_hook(lambda module, args: forwards.append(args[0].shape[0]))
    predictions = predict_excess_loss(model, mlp_data, masks, diagnostics=diagnostics)
    handle.remove()
    assert diagnostics.predict_excess_loss(model, mlp_data, masks) == predictions
    assert sum(forwards) == len(mlp_data)
    assert [p.group for p in predictions] == list(GROUP_NAMES)
    empty = predictions[3]
    assert empty.n == 0 and empty.predicted is None and empty.upper_bound is None
    json.dumps([p.to_dict() for p in predictions], allow_nan=False)


def test_prediction_with_nothing_pruned_is_zero(mlp_data):
    model = make_mlp()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()}
    for prediction in predict_excess_loss(model, mlp_data, masks, DiagnosticsConfig(probes=1, power_iterations=2))[:3]:
        assert prediction.pruned_norm == 0.0
        assert prediction.predicted == 0.0 and prediction.upper_bound == 0.0


def test_prediction_refuses_a_model_pruned_in_place(mlp_data):
    model, masks = pruned_model_and_masks(0.05)
    diagnostics = diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=2))
    apply_masks(model, masks)
    with pytest.raises(InvalidModelError) as err:
        predict_excess_loss(model, mlp_data, masks, diagnostics=diagnostics)
    assert err.value.field == "model"


def test_prediction_refuses_other_data(mlp_data):
    model, masks = pruned_model_and_masks(0.05)
    diagnostics = diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=2))
    other = mlp_data.subset(torch.arange(len(mlp_data)) != 0)
    with pytest.raises(InvalidDatasetError):
        predict_excess_loss(model, other, masks, diagnostics=diagnostics)


@pytest.mark.parametrize(
    ("masks", "field"),
    [
        ({"nope": torch.ones(3, dtype=torch.bool)}, "masks.nope"),
        ({"0.weight": torch.ones(5, 4, dtype=torch.bool)}, "masks.0.weight"),
        ({"2.weight": torch.ones(4, 5, dtype=torch.bool)}, "masks.2.weight"),
        ({"2.weight": torch.ones(3, 5)}, "masks.2.weight"),
    ],
)
def test_prediction_rejects_bad_masks(mlp_data, masks, field):
    model = make_mlp()
    config = DiagnosticsConfig(probes=1, power_iterations=2, parameters=("2.weight", "2.bias"))
    diagnostics = diagnose(model, mlp_data, config)
    with pytest.raises(InvalidConfigError) as err:
        predict_excess_loss(model, mlp_data, masks, diagnostics=diagnostics)
    assert err.value.field == field


# --------------------------------------------------------------------------- cost and side effects


def test_each_pass_reads_only_the_groups_own_samples_once(cnn_data):
    model = make_cnn()
    row_group = {float(x): int(g) for x, g in zip(cnn_data.inputs[:, 0, 0, 0], cnn_data.groups)}
    calls: dict[int, list[int]] = {}

    def record(module, args):
        groups_in_batch = {row_group[float(v)] for v in args[0][:, 0, 0, 0]}
        key = groups_in_batch.pop() if len(groups_in_batch) == 1 else -1  # -1: all data (overall)
        calls.setdefault(key, []).append(args[0].shape[0])

    handle = model.register_forward_pre_hook(record)
    config = DiagnosticsConfig(probes=5, power_iterations=4, power_tolerance=0.0, batch_size=4, include_overall=False)
    result = diagnose(model, cnn_data, config)
    handle.remove()
    assert -1 not in calls and 3 not in calls
    for g in range(3):
        passes = 1 + result.groups[g].power_iterations_used  # probes share pass 0
        batches = math.ceil(GROUP_SIZES[g] / 4)
        assert len(calls[g]) == batches * passes
        assert sum(calls[g]) == GROUP_SIZES[g] * passes


def test_the_model_is_left_exactly_as_it_was(cnn_data):
    model = make_cnn()
    model.train()
    model[3].eval()  # a mixed state must come back module by module
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = diagnose(model, cnn_data, DiagnosticsConfig(probes=2, power_iterations=2, batch_size=8))
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    # Eval mode was used: the loss equals the eval-mode loss, not a train-mode (batch-stat) one.
    x, y = group_samples(cnn_data, 0)
    model.eval()
    assert result.groups[0].loss == pytest.approx(mean_loss(model, x, y), rel=1e-5)


def test_results_are_deterministic_given_the_seed(cnn_data):
    model = make_cnn()
    first = diagnose(model, cnn_data, DiagnosticsConfig(probes=3, power_iterations=3, seed=5)).to_dict()
    again = diagnose(model, cnn_data, DiagnosticsConfig(probes=3, power_iterations=3, seed=5)).to_dict()
    other = diagnose(model, cnn_data, DiagnosticsConfig(probes=3, power_iterations=3, seed=6)).to_dict()
    assert first == again
    assert first["groups"][0]["hessian_trace"] != other["groups"][0]["hessian_trace"]
    assert first["groups"][0]["loss"] == other["groups"][0]["loss"]


def test_empty_groups_are_reported_with_nulls_and_json_stays_valid(cnn_data):
    result = diagnose(make_cnn(), cnn_data, DiagnosticsConfig(probes=2, power_iterations=2))
    empty = result.group("empty")
    assert empty.n == 0
    assert all(v is None for k, v in empty.to_dict().items() if k not in ("group", "n"))
    text = json.dumps(result.to_dict(), allow_nan=False)
    assert json.loads(text)["groups"][3]["hessian_trace"] is None
    assert result.overall.hessian_trace is not None


def test_single_probe_has_no_standard_error(mlp_data):
    result = diagnose(make_mlp(), mlp_data, DiagnosticsConfig(probes=1, power_iterations=1))
    assert result.groups[0].hessian_trace_stderr is None and result.groups[0].hessian_trace is not None


# --------------------------------------------------------------------------- input validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"probes": 0}, "diagnostics.probes"),
        ({"probes": 2.0}, "diagnostics.probes"),
        ({"probes": True}, "diagnostics.probes"),
        ({"power_iterations": 0}, "diagnostics.power_iterations"),
        ({"power_tolerance": -1e-3}, "diagnostics.power_tolerance"),
        ({"power_tolerance": float("nan")}, "diagnostics.power_tolerance"),
        ({"batch_size": 0}, "diagnostics.batch_size"),
        ({"seed": -1}, "diagnostics.seed"),
        ({"parameters": ()}, "diagnostics.parameters"),
        ({"parameters": "0.weight"}, "diagnostics.parameters"),
        ({"parameters": ("a", "a")}, "diagnostics.parameters"),
        ({"include_overall": 1}, "diagnostics.include_overall"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(InvalidConfigError) as err:
        DiagnosticsConfig(**kwargs)
    assert err.value.field == field


def test_config_accepts_a_list_of_names_and_serialises():
    config = DiagnosticsConfig(parameters=["0.weight"])
    assert config.parameters == ("0.weight",)
    assert json.loads(json.dumps(config.to_dict()))["parameters"] == ["0.weight"]


def test_unknown_parameter_names_are_rejected(mlp_data):
    with pytest.raises(InvalidConfigError) as err:
        diagnose(make_mlp(), mlp_data, DiagnosticsConfig(parameters=("0.weight", "9.weight")))
    assert err.value.field == "diagnostics.parameters" and "9.weight" in err.value.problem


def test_labels_outside_the_classes_are_rejected(mlp_data):
    bad = GroupedData(mlp_data.inputs, mlp_data.labels + 3, mlp_data.groups, mlp_data.group_names)
    with pytest.raises(InvalidDatasetError) as err:
        diagnose(make_mlp(), bad, DiagnosticsConfig(probes=1, power_iterations=1))
    assert err.value.field == "dataset.labels"


def test_a_model_without_class_logits_is_rejected(mlp_data):
    model = nn.Sequential(nn.Linear(4, 1), nn.Flatten(0)).double()
    with pytest.raises(InvalidModelError):
        diagnose(model, mlp_data, DiagnosticsConfig(probes=1, power_iterations=1))
