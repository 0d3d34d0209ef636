"""Pruning: selection, magnitude and N:M masks, cubic schedule, structured pruning, counts, BN."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, UnsupportedOperationError
from equiprune.engine.pruning.batchnorm import recalibrate_batchnorm
from equiprune.engine.pruning.counting import count_macs, count_parameters
from equiprune.engine.pruning.magnitude import magnitude_masks
from equiprune.engine.pruning.masks import apply_masks, mask_gradients, measure_sparsity
from equiprune.engine.pruning.nm import nm_masks
from equiprune.engine.pruning.schedule import cubic_sparsity, gradual_magnitude_prune
from equiprune.engine.pruning.selection import prunable_parameters
from equiprune.engine.pruning.structured import ensure_structured_supported, prune_channels


class Block(nn.Module):
    """A ResNet basic block: the residual add ties the channels of conv2 to the block's input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block = Block(16)
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 30)
        self.fc3 = nn.Linear(30, 20)
        self.head = nn.Linear(20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(torch.relu(self.fc3(x)))


CNN_CONVS = ["conv1.weight", "block.conv1.weight", "block.conv2.weight", "conv3.weight"]


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


@pytest.fixture
def mlp() -> MLP:
    torch.manual_seed(1)
    return MLP()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


# --- selection -------------------------------------------------------------------------------


def test_selection_keeps_first_conv_and_last_linear(cnn, mlp):
    assert prunable_parameters(cnn) == ["block.conv1.weight", "block.conv2.weight", "conv3.weight"]
    assert prunable_parameters(cnn, keep_first_and_last=False) == CNN_CONVS + ["fc.weight"]
    assert prunable_parameters(mlp) == ["fc2.weight", "fc3.weight"]


def test_selection_excludes_by_name_and_type_including_contents(cnn):
    assert prunable_parameters(cnn, exclude_names=["block.conv2"]) == ["block.conv1.weight", "conv3.weight"]
    assert prunable_parameters(cnn, exclude_names=["block"]) == ["conv3.weight"]
    assert prunable_parameters(cnn, exclude_names=["*.conv1"]) == ["block.conv2.weight", "conv3.weight"]
    assert prunable_parameters(cnn, exclude_types=["Block"]) == ["conv3.weight"]
    assert prunable_parameters(cnn, exclude_types=["Conv2d"], keep_first_and_last=False) == ["fc.weight"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"exclude_names": ["nothing*"]}, "pruning.exclude_names"),
        ({"exclude_names": ["bn1"]}, "pruning.exclude_names"),  # a module, but no prunable layer in it
        ({"exclude_names": "block"}, "pruning.exclude_names"),
        ({"exclude_types": ["Conv3d"]}, "pruning.exclude_types"),
        ({"exclude_types": ["BatchNorm2d"]}, "pruning.exclude_types"),
    ],
)
def test_selection_rejects_exclusions_that_exclude_nothing(cnn, kwargs, field):
    with pytest.raises(InvalidConfigError) as err:
        prunable_parameters(cnn, **kwargs)
    assert err.value.field == field


# --- magnitude -------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.97])
def test_layerwise_sparsity_is_exact_per_tensor(cnn, sparsity):
    params = prunable_parameters(cnn)
    dense = copy.deepcopy(cnn.state_dict())
    apply_masks(cnn, magnitude_masks(cnn, params, sparsity, scope="layerwise"))
    report = measure_sparsity(cnn, params)
    weights = dict(cnn.named_parameters())
    for name in params:
        numel = weights[name].numel()
        assert report.per_parameter[name] * numel == half_up(sparsity * numel)
    # Kept-dense layers are untouched.
    assert torch.equal(cnn.conv1.weight, dense["conv1.weight"])
    assert torch.equal(cnn.fc.weight, dense["fc.weight"])


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8, 0.95])
def test_global_sparsity_is_exact_over_the_union(cnn, sparsity):
    params = prunable_parameters(cnn)
    apply_masks(cnn, magnitude_masks(cnn, params, sparsity, scope="global"))
    report = measure_sparsity(cnn, params)
    assert report.prunable_zeros == half_up(sparsity * report.prunable_total)
    # Global scope lets layers differ; the smallest weights of the union went first.
    kept = torch.cat([p.detach().abs().flatten() for n, p in cnn.named_parameters() if n in params])
    assert kept[kept > 0].min() > 0


def test_pruned_weights_are_the_smallest(mlp):
    params = prunable_parameters(mlp)
    weights = {n: p.detach().clone() for n, p in mlp.named_parameters()}
    for scope in ("layerwise", "global"):
        masks = magnitude_masks(mlp, params, 0.6, scope=scope)
        if scope == "layerwise":
            for name in params:
                w = weights[name].abs()
                assert w[~masks[name]].max() <= w[masks[name]].min()
        else:
            pruned = torch.cat([weights[n].abs()[~masks[n]] for n in params])
            kept = torch.cat([weights[n].abs()[masks[n]] for n in params])
            assert pruned.max() <= kept.min()


def test_ties_are_broken_by_position():
    layer = nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    model = nn.Sequential(layer)
    first = magnitude_masks(model, ["0.weight"], 0.4)["0.weight"]
    again = magnitude_masks(model, ["0.weight"], 0.4)["0.weight"]
    assert torch.equal(first, again)
    assert first.flatten().tolist() == [False] * 4 + [True] * 6


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_masks_are_monotone_with_rising_sparsity(cnn, scope):
    params = prunable_parameters(cnn)
    masks = None
    for sparsity in (0.2, 0.5, 0.7, 0.9):
        new = magnitude_masks(cnn, params, sparsity, scope=scope, current_masks=masks)
        if masks is not None:
            for name in params:
                assert not (new[name] & ~masks[name]).any(), "a pruned weight came back"
        masks = new
    # A lower target never revives what is already pruned.
    lower = magnitude_masks(cnn, params, 0.3, scope=scope, current_masks=masks)
    assert all(torch.equal(lower[n], masks[n]) for n in params)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sparsity": 1.0}, "pruning.sparsity"),
        ({"sparsity": -0.1}, "pruning.sparsity"),
        ({"sparsity": True}, "pruning.sparsity"),
        ({"sparsity": "0.5"}, "pruning.sparsity"),
        ({"sparsity": 0.5, "scope": "per-channel"}, "pruning.scope"),
        ({"sparsity": 0.5, "params": ["fc2.bogus"]}, "pruning.parameters"),
        ({"sparsity": 0.5, "current_masks": {"fc2.weight": torch.ones(3, dtype=torch.bool)}},
         "pruning.current_masks"),
        ({"sparsity": 0.5, "current_masks": {"fc1.weight": torch.ones(32, 12, dtype=torch.bool)}},
         "pruning.current_masks"),
    ],
)
def test_magnitude_rejects_bad_config(mlp, kwargs, field):
    params = kwargs.pop("params", ["fc2.weight"])
    with pytest.raises(InvalidConfigError) as err:
        magnitude_masks(mlp, params, **kwargs)
    assert err.value.field == field


# --- N:M -------------------------------------------------------------------------------------


def test_nm_keeps_the_n_largest_of_every_m(cnn, mlp):
    for model in (cnn, mlp):
        params = prunable_parameters(model, keep_first_and_last=False)
        result = nm_masks(model, params, n=2, m=4)
        weights = dict(model.named_parameters())
        for name, mask in result.masks.items():
            groups = mask.reshape(-1, 4)
            assert (groups.sum(dim=1) == 2).all()
            w = weights[name].detach().abs().reshape(-1, 4)
            kept_min = torch.where(groups, w, torch.full_like(w, math.inf)).min(dim=1).values
            dropped_max = torch.where(groups, torch.full_like(w, -math.inf), w).max(dim=1).values
            assert (dropped_max <= kept_min).all()
        assert set(result.masks) | set(result.skipped) == set(params)
    # conv1 flattens to 3*3*3 = 27 inputs per output channel and fc3 to 30: not multiples of 4.
    assert nm_masks(cnn, CNN_CONVS).skipped == ("conv1.weight",)
    assert nm_masks(mlp, ["fc1.weight", "fc2.weight", "fc3.weight"]).skipped == ("fc3.weight",)


def test_nm_other_patterns_and_serialisation(mlp):
    result = nm_masks(mlp, ["fc2.weight"], n=1, m=8)
    assert (result.masks["fc2.weight"].reshape(-1, 8).sum(dim=1) == 1).all()
    assert json.loads(json.dumps(result.to_dict())) == {
        "n": 1, "m": 8, "masked_parameters": ["fc2.weight"], "skipped": []
    }


@pytest.mark.parametrize(
    ("n", "m", "field"),
    [(0, 4, "pruning.n"), (4, 4, "pruning.n"), (5, 4, "pruning.n"), (2.0, 4, "pruning.n"), (2, "4", "pruning.m")],
)
def test_nm_rejects_bad_n_m(mlp, n, m, field):
    with pytest.raises(InvalidConfigError) as err:
        nm_masks(mlp, ["fc2.weight"], n=n, m=m)
    assert err.value.field == field


# --- cubic schedule and gradual pruning ------------------------------------------------------


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 10, 0.9) == 0.0
    assert cubic_sparsity(5, 10, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(0, 10, 0.9, initial=0.2) == pytest.approx(0.2)
    values = [cubic_sparsity(t, 15, 0.95) for t in range(16)]
    assert values == sorted(values)
    # The science brief's form s(t) = s_f (1 - (1 - t/T)^3) when starting dense.
    assert all(v == pytest.approx(0.95 * (1 - (1 - t / 15) ** 3)) for t, v in enumerate(values))


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((11, 10, 0.9), "pruning.step"),
        ((0, 0, 0.9), "pruning.steps"),
        ((1, 10, 1.0), "pruning.sparsity"),
        ((1, 10, 0.5, 0.6), "pruning.initial_sparsity"),
    ],
)
def test_cubic_schedule_rejects_bad_config(args, field):
    with pytest.raises(InvalidConfigError) as err:
        cubic_sparsity(*args)
    assert err.value.field == field


def _masked_sgd_steps(model, masks, data, steps=3):
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    inputs, labels = data
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        mask_gradients(model, masks)
        optimiser.step()
        apply_masks(model, masks)


def test_gradual_pruning_trains_between_rising_steps(mlp):
    params = prunable_parameters(mlp)
    generator = torch.Generator().manual_seed(3)
    data = (torch.randn(32, 12, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    calls: list[tuple[int, float]] = []

    def train_between(step, masks):
        calls.append((step, measure_sparsity(mlp, params).prunable_sparsity))
        _masked_sgd_steps(mlp, masks, data)
        # Masks held through SGD with momentum and weight decay.
        for name, p in mlp.named_parameters():
            if name in masks:
                assert (p[~masks[name]] == 0).all()

    masks = gradual_magnitude_prune(mlp, params, 0.8, steps=4, scope="layerwise", train_between=train_between)
    assert [step for step, _ in calls] == [1, 2, 3]
    measured = [s for _, s in calls]
    assert measured == sorted(measured) and measured[0] > 0
    for (step, sparsity) in calls:
        assert sparsity == pytest.approx(cubic_sparsity(step, 4, 0.8), abs=1e-3)
    weights = dict(mlp.named_parameters())
    for name in params:
        assert measure_sparsity(mlp, [name]).prunable_zeros == half_up(0.8 * weights[name].numel())
        assert torch.equal(masks[name], weights[name] != 0)


def test_momentum_revives_pruned_weights_unless_masks_are_enforced(mlp):
    params = prunable_parameters(mlp)
    generator = torch.Generator().manual_seed(4)
    data = (torch.randn(32, 12, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    masks = magnitude_masks(mlp, params, 0.7)
    apply_masks(mlp, masks)
    unmasked = copy.deepcopy(mlp)

    _masked_sgd_steps(mlp, masks, data, steps=5)
    assert all(torch.equal(dict(mlp.named_parameters())[n] != 0, masks[n]) for n in params)

    optimiser = torch.optim.SGD(unmasked.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        optimiser.zero_grad()
        nn.functional.cross_entropy(unmasked(data[0]), data[1]).backward()
        optimiser.step()
    revived = sum(int((dict(unmasked.named_parameters())[n][~masks[n]] != 0).sum()) for n in params)
    assert revived > 0


# --- structured ------------------------------------------------------------------------------


def test_structured_pruning_shrinks_a_copy(cnn, images):
    cnn.train()
    before = copy.deepcopy(cnn.state_dict())
    example = images[:1]
    result = prune_channels(cnn, example, 0.5)

    assert result.params_after < result.params_before == count_parameters(cnn)
    assert result.macs_after < result.macs_before == count_macs(cnn, example)
    assert result.params_after == count_parameters(result.module)
    assert result.module.conv1.out_channels < 16 and result.module.conv3.out_channels < 24
    assert result.module.fc.out_features == 5
    assert result.module.training and result.module.block.bn1.training
    # The input model is untouched: same tensors, same running stats, same mode.
    assert all(torch.equal(before[k], v) for k, v in cnn.state_dict().items())
    assert cnn.conv1.out_channels == 16 and cnn.training
    assert result.module(images[:4]).shape == cnn(images[:4]).shape == (4, 5)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["ignored_layers"] == ["fc"] and 0 < record["param_reduction"] < 1


def test_structured_pruning_of_an_mlp_with_l2_and_ignored_layers(mlp, cnn, images):
    mlp.fc1.requires_grad_(False)  # tracing follows grad_fn: frozen or no_grad must not hide layers
    with torch.no_grad():
        result = prune_channels(mlp, torch.randn(1, 12), 0.25, importance="l2")
    assert result.module.fc1.out_features == 24 and result.module.head.out_features == 3
    assert result.module(torch.randn(2, 12)).shape == (2, 3)
    assert not result.module.fc1.weight.requires_grad and result.module.fc2.weight.requires_grad

    kept = prune_channels(cnn, images[:1], 0.5, ignored_layers=["conv1"])
    # conv1's channels are tied to the residual block, so the whole group keeps its width.
    assert kept.module.conv1.out_channels == 16 and kept.module.block.conv2.out_channels == 16
    assert kept.module.block.conv1.out_channels == 8
    assert kept.ignored_layers == ("fc", "conv1")


def test_structured_pruning_that_removes_nothing_is_refused():
    model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(UnsupportedOperationError) as err:
        prune_channels(model, torch.randn(1, 12), 0.5, ignored_layers=["0"])  # every layer kept
    assert err.value.field == "pruning.ratio"
    # torch_pruning rounds the removed count up: 5 % of 8 channels still removes one.
    assert prune_channels(model, torch.randn(1, 12), 0.05).module[0].out_features == 7
    unchanged = prune_channels(model, torch.randn(1, 12), 0.0)
    assert unchanged.params_after == unchanged.params_before and unchanged.module is not model


def test_structured_pruning_refuses_an_exported_module(cnn, images):
    program = torch.export.export(cnn.eval(), (images[:2],))
    for exported in (program, program.module()):
        with pytest.raises(UnsupportedOperationError) as err:
            ensure_structured_supported(exported)
        assert err.value.field == "pruning.kind"
        assert "eager model" in err.value.problem
    with pytest.raises(UnsupportedOperationError):
        prune_channels(program.module(), images[:2], 0.5)
    ensure_structured_supported(cnn)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": 1.0}, "pruning.ratio"),
        ({"ratio": -0.5}, "pruning.ratio"),
        ({"ratio": 0.5, "importance": "taylor"}, "pruning.importance"),
        ({"ratio": 0.5, "ignored_layers": ["no_such_layer"]}, "pruning.ignored_layers"),
    ],
)
def test_structured_pruning_rejects_bad_config(cnn, images, kwargs, field):
    with pytest.raises(InvalidConfigError) as err:
        prune_channels(cnn, images[:1], **kwargs)
    assert err.value.field == field


# --- counting --------------------------------------------------------------------------------


def test_counts_are_exact_and_leave_the_model_alone(cnn, images):
    layer = nn.Linear(4, 3)
    assert count_parameters(layer) == 15
    assert count_macs(layer, torch.randn(1, 4)) == 12
    conv = nn.Conv2d(3, 16, 3, padding=1)
    assert count_macs(conv, torch.randn(2, 3, 8, 8)) == 2 * 16 * 27 * 64

    cnn.train()
    stats = copy.deepcopy(cnn.state_dict())
    global_hooks = len(torch.nn.modules.module._global_forward_hooks)
    macs = count_macs(cnn, images[:1])
    assert macs > 0 and cnn.training
    assert all(torch.equal(stats[k], v) for k, v in cnn.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in cnn.modules())
    assert len(torch.nn.modules.module._global_forward_hooks) == global_hooks
    exported = torch.export.export(copy.deepcopy(cnn).eval(), (images[:1],)).module()
    assert count_macs(exported, images[:1]) == macs
    # A graph exported in train mode updates BatchNorm buffers when called; counting must not.
    trained = torch.export.export(copy.deepcopy(cnn).train(), (images[:2],)).module()
    buffers = {k: v.clone() for k, v in trained.state_dict().items()}
    assert count_macs(trained, images[:2]) == 2 * macs
    assert all(torch.equal(buffers[k], v) for k, v in trained.state_dict().items())


# --- BatchNorm recalibration -----------------------------------------------------------------


def test_recalibration_reestimates_stats_but_keeps_weights_and_modes(cnn, images):
    cnn.block.bn2.momentum = 0.05
    cnn.eval()
    cnn.block.train()  # mixed modes must come back exactly as they were
    weights = {n: p.detach().clone() for n, p in cnn.named_parameters()}
    old_mean = cnn.bn1.running_mean.clone()

    assert recalibrate_batchnorm(cnn, images, batch_size=16) == 4

    assert all(torch.equal(weights[n], p) for n, p in cnn.named_parameters())
    assert not torch.equal(old_mean, cnn.bn1.running_mean)
    # Four equal batches averaged with equal weight: the running mean is the data's mean.
    with torch.no_grad():
        expected = cnn.conv1(images).mean(dim=(0, 2, 3))
    torch.testing.assert_close(cnn.bn1.running_mean, expected, rtol=1e-4, atol=1e-5)
    assert int(cnn.bn1.num_batches_tracked) == 4
    assert cnn.bn1.momentum == 0.1 and cnn.block.bn2.momentum == 0.05
    assert not cnn.training and not cnn.bn1.training and cnn.block.training and cnn.block.bn1.training


def test_recalibration_keeps_dropout_off_and_honours_max_samples():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.BatchNorm1d(8))
    inputs = torch.randn(40, 6)
    model.train()
    assert recalibrate_batchnorm(model, inputs, batch_size=10, max_samples=20) == 1
    with torch.no_grad():
        expected = model[0](inputs[:20]).mean(dim=0)
    torch.testing.assert_close(model[2].running_mean, expected, rtol=1e-4, atol=1e-5)
    assert model.training and model[1].training


def test_recalibration_is_a_no_op_without_batchnorm(mlp):
    state = copy.deepcopy(mlp.state_dict())
    assert recalibrate_batchnorm(mlp, torch.randn(8, 12)) == 0
    assert all(torch.equal(state[k], v) for k, v in mlp.state_dict().items())


def test_recalibration_rejects_bad_input(cnn, images):
    with pytest.raises(InvalidConfigError) as err:
        recalibrate_batchnorm(cnn, images, batch_size=1)
    assert err.value.field == "pruning.recalibrate_batchnorm.batch_size"
    with pytest.raises(InvalidConfigError) as err:
        recalibrate_batchnorm(cnn, images, max_samples=0)
    assert err.value.field == "pruning.recalibrate_batchnorm.max_samples"
    with pytest.raises(InvalidDatasetError) as err:
        recalibrate_batchnorm(cnn, images[:1])
    assert err.value.field == "dataset.inputs"
    exported = torch.export.export(cnn.eval(), (images[:2],)).module()
    with pytest.raises(UnsupportedOperationError):
        recalibrate_batchnorm(exported, images)
    # Inputs the model cannot take: the old statistics survive the failed pass.
    stats = copy.deepcopy(cnn.state_dict())
    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(cnn, torch.randn(4, 5, 8, 8))
    assert all(torch.equal(stats[k], v) for k, v in cnn.state_dict().items())
    assert cnn.bn1.momentum == 0.1 and not cnn.training
