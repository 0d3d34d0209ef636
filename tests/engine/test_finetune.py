import pytest
import torch
from torch import nn

from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.evaluation import evaluate
from equiprune.engine.finetune.config import FinetuneConfig
from equiprune.engine.finetune.loop import finetune
from equiprune.engine.groups import GroupedData
from equiprune.engine.pruning.masks import apply_masks, measure_sparsity


def two_group_data(n=600, seed=0):
    """Group b (15 %) follows a different rule, so pruning and naive training neglect it."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=gen)
    groups = (torch.rand(n, generator=gen) < 0.15).long()
    y = torch.where(groups == 0, (x[:, 0] > 0).long(), (x[:, 1] > 0).long())
    x[:, 9] = groups.float()
    return GroupedData(x, y, groups, ("major", "minor"))


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def half_masks(model):
    return {name: (torch.arange(p.numel()) % 2 == 0).reshape(p.shape)
            for name, p in model.named_parameters() if p.dim() == 2}


def test_naive_finetune_lowers_loss_and_keeps_masks_fixed():
    data, model = two_group_data(), mlp()
    masks = half_masks(model)
    before = evaluate(model, data).mean_loss()
    result = finetune(model, masks, data, FinetuneConfig(method="naive", epochs=3, batch_size=32, lr=0.05))
    assert evaluate(model, data).mean_loss() < before
    sparsity = measure_sparsity(model, masks)
    assert sparsity.prunable_sparsity == pytest.approx(0.5, abs=0.01)
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.all(p[~masks[name]] == 0)
    assert len(result.epochs) == 3 and result.epochs[-1].samples == len(data)


@pytest.mark.parametrize("method, schedule", [("naive", "cosine"), ("equalized_loss", "constant"),
                                              ("ceag", "constant"), ("heldout_ceag", "cosine"),
                                              ("fair_distill", "cosine")])
def test_resume_is_exact(tmp_path, method, schedule):
    data = two_group_data()
    train, constraint = data.split_off(0.2, seed=0)
    dense = mlp()
    refs = dict(train_reference=evaluate(dense, train), constraint=constraint,
                constraint_reference=evaluate(dense, constraint), teacher=dense)
    config = FinetuneConfig(method=method, epochs=2, batch_size=64, dual_lr=0.5,
                            replay_size=8, constraint_window=8, checkpoint_every_steps=3, lr_schedule=schedule)

    straight = mlp()
    finetune(straight, half_masks(straight), train, config, **refs)

    interrupted = mlp()

    class Stop(Exception):
        pass

    def stop_at_step_7(event):
        if event.step == 7:  # mid first epoch is step 4; 7 is in the second epoch
            raise Stop

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Stop):
        finetune(interrupted, half_masks(interrupted), train, config, **refs, checkpoint_path=ckpt,
                 on_progress=stop_at_step_7)
    resumed = mlp(seed=123)  # different init: everything must come from the checkpoint
    result = finetune(resumed, half_masks(resumed), train, config, **refs, checkpoint_path=ckpt)
    assert result.resumed_from_step == 6
    for (n1, p1), (_, p2) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p1, p2), n1


def test_ceag_multiplier_grows_for_the_hurt_group():
    data = two_group_data(n=1000)
    dense = mlp()
    finetune(dense, {}, data, FinetuneConfig(method="naive", epochs=15, batch_size=32, lr=0.05))
    ref = evaluate(dense, data)
    assert ref.group_accuracies()["minor"] > 0.8
    pruned = mlp()
    pruned.load_state_dict(dense.state_dict())
    masks = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.15
             for name, p in pruned.named_parameters() if p.dim() == 2}
    result = finetune(pruned, masks, data, FinetuneConfig(method="ceag", epochs=1, batch_size=32, lr=0.01,
                                                           dual_lr=0.5, replay_size=10),
                      train_reference=ref)
    lam = result.epochs[-1].multipliers
    assert lam["minor"] > lam["major"]


def hurt_minority(n=1000):
    """A dense model that serves both groups and a 85 %-pruned copy that fails the minority."""
    data = two_group_data(n=n)
    dense = mlp()
    finetune(dense, {}, data, FinetuneConfig(method="naive", epochs=15, batch_size=32, lr=0.05))
    pruned = mlp()
    pruned.load_state_dict(dense.state_dict())
    masks = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) < 0.15
             for name, p in pruned.named_parameters() if p.dim() == 2}
    apply_masks(pruned, masks)
    return data, dense, pruned, masks


@pytest.mark.parametrize("method", ["ceag", "heldout_ceag", "equalized_loss", "fair_distill"])
def test_constrained_multipliers_act_at_default_settings(method):
    """At the default dual settings, a short run on data where one group is clearly hurt must
    move that group's multiplier off its initial value (the published per-step η of 1e-4
    left them at ≈ 0 here; fair_distill's multipliers are those of its CEAG constraint)."""
    data, dense, pruned, masks = hurt_minority()
    train, constraint = data.split_off(0.3, seed=0)
    refs = dict(train_reference=evaluate(dense, train), constraint=constraint,
                constraint_reference=evaluate(dense, constraint), teacher=dense)
    assert refs["train_reference"].group_accuracies()["minor"] > 0.8
    assert evaluate(pruned, train).group_accuracies()["minor"] < 0.7
    config = FinetuneConfig(method=method, epochs=2, batch_size=32, lr=0.01)
    assert config.dual_lr == FinetuneConfig().dual_lr  # the defaults are what is tested
    result = finetune(pruned, masks, train, config, **refs)
    lam = result.epochs[-1].multipliers
    assert lam["minor"] > 0.05, lam
    assert lam["minor"] > lam["major"], lam


def test_the_dual_step_does_not_depend_on_the_number_of_steps():
    """The same data repeated 4 times (4× the steps per epoch) moves CEAG's multipliers about
    as far in one epoch: the step is normalised per epoch, not per step."""
    from equiprune.engine.finetune.dual import PIMultipliers

    moved = []
    for steps in (50, 200):
        dual = PIMultipliers(2, integral_gain=10.0, proportional_gain=1.0, max_multiplier=5.0, steps_per_epoch=steps)
        for _ in range(steps):
            lam = dual.update(torch.tensor([0.05, -0.02]), torch.tensor([True, True]))
        moved.append(lam.clone())
    assert float(moved[0][0]) == pytest.approx(float(moved[1][0]), rel=0.1)
    assert float(moved[0][0]) > 0.4 and float(moved[0][1]) == 0  # 10/epoch × 0.05 + a smoothed P term; the other stays at 0


def test_the_controller_falls_back_and_does_not_wind_up():
    """Below the bound the integral stops growing (anti-windup): once the violation turns
    negative the multiplier falls at once instead of first unwinding a huge integral."""
    from equiprune.engine.finetune.dual import PIMultipliers

    dual = PIMultipliers(1, integral_gain=10.0, proportional_gain=1.0, max_multiplier=1.0, steps_per_epoch=10)
    on = torch.tensor([True])
    for _ in range(100):  # ten epochs far over the bound
        lam = dual.update(torch.tensor([0.5]), on)
    assert float(lam) == 1.0 and float(dual.integral) <= 1.0 / 10.0 + 1e-12
    for _ in range(10):  # one epoch satisfied by a margin
        lam = dual.update(torch.tensor([-0.2]), on)
    assert float(lam) < 0.5
    held = float(lam)
    assert float(dual.update(torch.tensor([5.0]), torch.tensor([False]))) == held  # inactive groups hold


def test_multipliers_are_bounded_and_equalized_loss_steps_once_per_epoch():
    data, dense, pruned, masks = hurt_minority()
    config = FinetuneConfig(method="equalized_loss", epochs=3, batch_size=32, lr=0.01, dual_lr=100.0, max_multiplier=0.3)
    seen = []
    result = finetune(pruned, masks, data, config, on_progress=lambda e: seen.append(e.multipliers["minor"]))
    steps = len(seen) // 3
    assert set(seen[:steps]) == {0.0}  # nothing moves before the first epoch ends
    assert len(set(seen[steps:2 * steps])) == 1  # and then only at epoch ends
    assert max(max(e.multipliers.values()) for e in result.epochs) == pytest.approx(0.3)


def test_methods_need_their_references():
    data, model = two_group_data(), mlp()
    with pytest.raises(InvalidConfigError) as err:
        finetune(model, {}, data, FinetuneConfig(method="ceag"))
    assert err.value.field == "finetune.method"
    with pytest.raises(InvalidConfigError, match="constraint split"):
        finetune(model, {}, data, FinetuneConfig(method="heldout_ceag"), train_reference=evaluate(model, data))
    with pytest.raises(InvalidConfigError, match="teacher"):
        finetune(model, {}, data, FinetuneConfig(method="fair_distill", dual_lr=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidConfigError) as err:  # refused before a single step, not after training
        finetune(model, {}, data, FinetuneConfig(method="fair_distill"), train_reference=evaluate(model, data),
                 teacher=mlp(seed=3))
    assert err.value.field == "finetune.calibrate_outputs"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs, field", [
    ({"method": "fancy"}, "finetune.method"),
    ({"epochs": 0}, "finetune.epochs"),
    ({"lr": 0}, "finetune.lr"),
    ({"tolerance": 1.5}, "finetune.tolerance"),
    ({"dual_lr": -1}, "finetune.dual_lr"),
    ({"lr_schedule": "step"}, "finetune.lr_schedule"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(InvalidConfigError) as err:
        FinetuneConfig(**kwargs)
    assert err.value.field == field


def test_flip_augmentation_mirrors_about_half_and_is_reproducible():
    from equiprune.engine.finetune.loop import _flip_half

    x = torch.arange(64 * 3 * 2 * 4, dtype=torch.float32).reshape(64, 3, 2, 4)
    out = _flip_half(x, seed=0, step=5)
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(64)])
    assert torch.all(flipped ^ kept) and 16 < int(flipped.sum()) < 48
    assert torch.equal(out, _flip_half(x, seed=0, step=5))


def test_replay_buffers_keep_the_last_k_and_report_when_ready():
    from equiprune.engine.finetune.replay import ReplayBuffers

    buffers = ReplayBuffers(num_groups=2, size=4, min_count=2)
    buffers.push(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 1]))
    assert buffers.ready().tolist() == [True, False]
    assert buffers.means()[0] == pytest.approx(0.5) and torch.isnan(buffers.means()[1])
    buffers.push(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0, 0]))
    # Group 0 saw 1,0,0,0,0,0,1: its ring holds the last four (0,0,0,1).
    assert buffers.means()[0] == pytest.approx(0.25)
    full = ReplayBuffers(num_groups=1, size=3)  # the paper's rule: ready only when full
    full.push(torch.tensor([1.0, 1.0]), torch.tensor([0, 0]))
    assert not full.ready()[0]


def test_sample_per_group_caps_every_group_and_keeps_order():
    data = two_group_data(n=600)
    sample = data.sample_per_group(50, seed=0)
    counts = sample.group_counts().tolist()
    assert counts == [50, min(50, int(data.group_counts()[1]))]
    rows = [int(torch.nonzero((data.inputs == row).all(dim=1))[0]) for row in sample.inputs]
    assert rows == sorted(rows)
    assert torch.equal(sample.inputs, data.sample_per_group(50, seed=0).inputs)


def test_replay_ring_keeps_exactly_the_last_k_when_a_batch_brings_more_than_k():
    from equiprune.engine.finetune.replay import ReplayBuffers

    buffers = ReplayBuffers(num_groups=1, size=4)
    buffers.push(torch.arange(6.0), torch.zeros(6, dtype=torch.long))
    buffers.push(torch.tensor([10.0]), torch.zeros(1, dtype=torch.long))
    assert sorted(buffers.values[0].tolist()) == [3.0, 4.0, 5.0, 10.0]
    buffers.push(torch.tensor([11.0, 12.0]), torch.zeros(2, dtype=torch.long))
    assert sorted(buffers.values[0].tolist()) == [5.0, 10.0, 11.0, 12.0]


def test_a_checkpoint_from_another_run_is_refused_not_loaded(tmp_path):
    data, ckpt = two_group_data(), tmp_path / "ckpt.pt"
    model = mlp()
    finetune(model, half_masks(model), data, FinetuneConfig(method="naive", epochs=1, batch_size=64), checkpoint_path=ckpt)
    other = mlp()
    with pytest.raises(InvalidConfigError) as err:
        finetune(other, half_masks(other), data, FinetuneConfig(method="naive", epochs=1, batch_size=64, lr=0.02),
                 checkpoint_path=ckpt)
    assert err.value.field == "finetune.checkpoint" and "different run" in err.value.problem
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidConfigError, match="not a readable checkpoint"):
        finetune(other, half_masks(other), data, FinetuneConfig(method="naive", epochs=1, batch_size=64), checkpoint_path=ckpt)


def test_dropout_runs_resume_exactly_and_the_callers_mode_and_rng_are_kept(tmp_path):
    data = two_group_data()

    def dropout_mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    config = FinetuneConfig(method="naive", epochs=2, batch_size=64, checkpoint_every_steps=3)
    straight = dropout_mlp()
    straight.eval()
    torch.manual_seed(42)
    finetune(straight, {}, data, config)
    assert not straight.training  # mode restored
    after = torch.rand(3)
    torch.manual_seed(42)
    assert torch.equal(after, torch.rand(3))  # the caller's RNG was not consumed

    class Stop(Exception):
        pass

    def stop(event):
        if event.step == 7:
            raise Stop

    ckpt = tmp_path / "c.pt"
    with pytest.raises(Stop):
        finetune(dropout_mlp(), {}, data, config, checkpoint_path=ckpt, on_progress=stop)
    resumed = dropout_mlp()
    finetune(resumed, {}, data, config, checkpoint_path=ckpt)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lr", "dual_lr", "momentum", "weight_decay", "tolerance"])
def test_non_finite_settings_are_refused(name):
    with pytest.raises(InvalidConfigError) as err:
        FinetuneConfig(**{name: float("nan")})
    assert err.value.field == f"finetune.{name}"


def test_output_calibration_restores_the_dense_prediction_rates_on_held_out_data():
    """A pruned model that no longer predicts the minority's class gets it back, as often as
    the dense model predicts it on the constraint split, through the output bias alone."""
    from equiprune.engine.finetune.calibrate import match_prediction_rates

    data = two_group_data(n=2000)
    dense = mlp()
    finetune(dense, {}, data, FinetuneConfig(method="naive", epochs=10, batch_size=32, lr=0.05))
    suppressed = mlp()
    suppressed.load_state_dict(dense.state_dict())
    with torch.no_grad():
        suppressed[2].bias[1] -= 8.0  # class 1 all but vanishes from the predictions
    dense_logits = evaluate(dense, data, keep_logits=True).logits
    rate = lambda logits: float((logits.argmax(1) == 1).double().mean())  # noqa: E731
    assert rate(evaluate(suppressed, data, keep_logits=True).logits) < 0.5 * rate(dense_logits)
    weights_before = suppressed[0].weight.clone()
    calibration = match_prediction_rates(suppressed, data, dense_logits)
    assert calibration.applied and calibration.distance_after < calibration.distance_before
    assert rate(evaluate(suppressed, data, keep_logits=True).logits) == pytest.approx(rate(dense_logits), abs=0.02)
    assert torch.equal(suppressed[0].weight, weights_before)  # only the output bias moved


def test_output_calibration_leaves_a_model_without_an_additive_output_bias_alone():
    from equiprune.engine.finetune.calibrate import match_prediction_rates

    data = two_group_data()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2), nn.Tanh())  # the bias is squashed
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense_logits = torch.stack([torch.zeros(len(data)), torch.ones(len(data))], dim=1)
    calibration = match_prediction_rates(model, data, dense_logits)
    assert not calibration.applied and "not added" in calibration.note
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ceag_multipliers_together_never_turn_the_average_loss_into_ascent():
    """CEAG's Lagrangian weighs the overall loss by 1 − Σλ: with many groups each at its own
    bound the primal step would ascend it (CIFAR-10 collapsed to 25–36 % accuracy that way).
    The sum is bounded by λ_max, so the coefficient stays ≥ 0 whatever the number of groups."""
    from equiprune.engine.finetune.dual import PIMultipliers

    dual = PIMultipliers(10, integral_gain=10.0, proportional_gain=1.0, max_multiplier=1.0, steps_per_epoch=5,
                         total_bound=True)
    for _ in range(50):
        lam = dual.update(torch.full((10,), 0.3), torch.ones(10, dtype=torch.bool))
    assert float(lam.sum()) == pytest.approx(1.0) and torch.allclose(lam, torch.full((10,), 0.1, dtype=lam.dtype))
    unbounded = PIMultipliers(10, integral_gain=10.0, proportional_gain=1.0, max_multiplier=1.0, steps_per_epoch=5)
    for _ in range(50):
        lam = unbounded.update(torch.full((10,), 0.3), torch.ones(10, dtype=torch.bool))
    assert float(lam.sum()) == pytest.approx(10.0)  # Equalized Loss keeps per-group bounds only
