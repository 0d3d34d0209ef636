"""The fine-tuning loop: one readable function, masks fixed, resumable to the exact bit.

Per mini-batch: forward, let the objective observe the outcomes, draw a constraint batch if
the objective wants one, dual step, primal step, re-apply the masks. Everything random is
derived from (seed, epoch) or (seed, step), so a run resumed from a checkpoint replays the
same batches as one that never stopped.

Data-parallel runs (`data_parallel`, see distributed.py) keep that shape: every worker draws
the same global batch and trains on its slice of it, so one step is still one global batch
and steps, schedules and checkpoints mean what they mean in a single process. What is shared:
- gradients, by the wrapped module (DDP); each worker's loss is scaled by its share of the
  global batch, so the averaged gradient of a plain mean loss is the full-batch gradient;
- the multipliers, averaged after every dual step (one all-reduce per step, which also
  carries the batch's loss sum and sample count for progress and epoch statistics). The PI
  controllers' own state (dual.py: integral, smoothed violation) stays each worker's, so each
  worker's controller answers its own shard's estimates and the averaged multiplier is what
  every worker trains on; Equalized Loss's per-epoch step instead reads the epoch's loss sums
  all-reduced over the workers, so it is the step one process would take;
- fair_distill's distillation term is balanced over the groups in each worker's slice, then
  scaled by the slice's share like any primal loss (an approximation of balancing over the
  global batch);
What is not: each worker's replay buffers hold only the outcomes of its own slices, so its
dual step estimates ψ_g (or EL's violations) from its shard; averaging the multipliers each
worker moved approximates one dual step on the union of the shards. A worker only starts
stepping a group once its own buffer is ready, which takes about world_size times as many
steps. The held-out variant's buffers agree across workers for models without BatchNorm:
its constraint draws are a function of (seed, step) and every worker holds the same weights.
BatchNorm running statistics are each worker's own between forward passes (DDP broadcasts
rank 0's buffers at the start of each one), so the model rank 0 ends with is the one to keep.
Only rank 0 writes checkpoints and reports progress. A checkpoint stores rank 0's replay
buffers, which every worker loads on resume, so a resumed constrained run continues with the
same weights and multipliers but differs from an uninterrupted one in the other workers'
buffers (naive fine-tuning resumes exactly).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidConfigError
from ..evaluation import Evaluation, evaluate
from ..groups import GroupedData
from ..jsonable import json_safe
from ..modes import mode, try_set_mode
from ..pruning.masks import Masks, apply_masks, mask_gradients
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .config import FinetuneConfig
from .calibrate import Calibration, match_prediction_rates
from .distill import TeacherOutputs
from .distributed import DataParallel
from .dual import PIMultipliers
from .objectives import CEAG, Batch, EqualizedLoss, FairDistillation, HeldOutCEAG, Objective


@dataclass(frozen=True)
class ProgressEvent:
    """What the loop reports after every step; a callback may raise to cancel the run."""

    phase: str
    epoch: int
    step: int
    steps_per_epoch: int
    epochs: int
    loss: float
    multipliers: dict[str, float]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    mean_loss: float
    seconds: float
    samples: int
    multipliers: dict[str, float]


@dataclass(frozen=True)
class FinetuneResult:
    config: FinetuneConfig
    epochs: tuple[EpochStats, ...]
    resumed_from_step: int
    mode_fixed: bool = False  # a torch.export program: trained in the mode it was exported in
    calibration: dict | None = None  # fair_distill's held-out output calibration (calibrate.py)

    def to_dict(self) -> dict:
        return json_safe({
            "config": self.config.to_dict(),
            "epochs": [vars(e) for e in self.epochs],
            "resumed_from_step": self.resumed_from_step,
            "mode_fixed": self.mode_fixed,
            "calibration": self.calibration,
        })


def build_objective(
    config: FinetuneConfig,
    train: GroupedData,
    train_reference: Evaluation | None,
    constraint: GroupedData | None,
    constraint_reference: Evaluation | None,
    steps_per_epoch: int = 1,
    teacher: TeacherOutputs | None = None,
) -> Objective:
    """The objective for `config.method`, with the dense references it needs."""
    g = train.num_groups
    shares = train.group_counts().double()

    def controller(proportional: float = config.dual_proportional, total_bound: bool = True) -> PIMultipliers:
        # CEAG's Lagrangian needs Σλ ≤ λ_max (dual.py); Equalized Loss's |J_a − J| terms do not.
        return PIMultipliers(g, integral_gain=config.dual_lr, proportional_gain=proportional,
                             max_multiplier=config.max_multiplier, steps_per_epoch=steps_per_epoch,
                             total_bound=total_bound)

    def held_out() -> HeldOutCEAG:
        if constraint is None or constraint_reference is None or len(constraint) == 0:
            raise InvalidConfigError("finetune.method", f"{config.method} needs a non-empty constraint split and "
                                     "the dense model's evaluation on it")
        if train_reference is None:
            raise InvalidConfigError("finetune.method", f"{config.method} needs the dense model's evaluation on the training data")
        return HeldOutCEAG(
            g, dual=controller(), tolerance=config.tolerance, confidence_z=config.confidence_z,
            buffer_size=config.constraint_window, min_count=config.replay_size,
            reference_group_accuracy=constraint_reference.group_accuracy(),
            # The primal proxy compares training losses with the dense training losses.
            reference_group_loss=train_reference.group_loss(),
            # Δ averages groups by their share of the population (the training data), as the
            # report does, whatever the make-up of the constraint split.
            group_weights=shares,
        )

    if config.method == "naive":
        return Objective(g)
    if config.method == "equalized_loss":
        # J is the epoch's mean over every sample, so no group shares are needed.
        return EqualizedLoss(g, controller(proportional=0.0, total_bound=False))
    def train_side() -> CEAG:
        if train_reference is None:
            raise InvalidConfigError("finetune.method", f"{config.method} needs the dense model's evaluation on the training data")
        return CEAG(
            g, dual=controller(), tolerance=config.tolerance, buffer_size=config.replay_size,
            reference_group_accuracy=train_reference.group_accuracy(),
            reference_group_loss=train_reference.group_loss(), group_weights=shares,
        )

    if config.method == "ceag":
        return train_side()
    if config.method == "fair_distill":
        if teacher is None:
            raise InvalidConfigError("finetune.method", "fair_distill needs the dense model (the teacher)")
        if config.calibrate_outputs and (constraint is None or len(constraint) == 0):
            raise InvalidConfigError("finetune.calibrate_outputs",
                                     "fair_distill's output calibration needs a non-empty constraint split")
        constraint = {"none": None, "train": train_side, "held_out": held_out}[config.distill_constraint]
        return FairDistillation(g, teacher=teacher, alpha=config.distill_alpha, temperature=config.distill_temperature,
                                constraint=constraint() if constraint is not None else None)
    return held_out()


def finetune(
    model: nn.Module,
    masks: Masks,
    train: GroupedData,
    config: FinetuneConfig,
    *,
    train_reference: Evaluation | None = None,
    constraint: GroupedData | None = None,
    constraint_reference: Evaluation | None = None,
    device: torch.device | str | None = None,
    checkpoint_path: str | Path | None = None,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    phase: str = "finetune",
    data_parallel: DataParallel | None = None,
    teacher: nn.Module | None = None,
) -> FinetuneResult:
    """Fine-tune `model` in place with `masks` held fixed; resume from `checkpoint_path` if it
    exists (and was written by this same run). The model's train/eval mode is restored on return.

    teacher: the dense model, for fair_distill (its outputs are the distillation targets).

    data_parallel: this worker's place in a data-parallel run (module docstring). Every worker
    must call this with the same arguments; `checkpoint_path` must then name storage every
    worker reads (only rank 0 writes it), and `on_progress` is called on rank 0 only. An
    error on one worker (a raising `on_progress` included) leaves the others waiting in
    their next collective: the launcher must tear the group down (Ray Train does)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    targets = None
    if config.needs_teacher and teacher is not None:
        augmenting = config.augment_hflip and train.inputs.dim() == 4
        targets = TeacherOutputs(teacher.to(device), train, augmenting=augmenting, device=device,
                                 reference=train_reference)
        if targets.table is None and teacher is model:
            targets.teacher = copy.deepcopy(model)  # per-batch targets must not come from the moving weights
    objective = build_objective(config, train, train_reference, constraint, constraint_reference,
                                steps_per_epoch, targets)
    use_cuda_extras = device.type == "cuda"
    if use_cuda_extras and config.channels_last and train.inputs.dim() == 4:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    apply_masks(model, masks)

    schedule = _lr_schedule(optimizer, config, steps_per_epoch * config.epochs)
    start_step = 0
    fingerprint = run_fingerprint(config.to_dict(), masks, len(train), train.group_names)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start_step = load_checkpoint(checkpoint_path, model, optimizer, objective, fingerprint)
        apply_masks(model, masks)
        _set_lr(optimizer, schedule(start_step))
    forward = model
    writes_checkpoints = True
    if data_parallel is not None:
        _agree_on_start(data_parallel, start_step, fingerprint)
        forward = data_parallel.wrap(model)  # masks, optimiser and checkpoints keep `model`
        writes_checkpoints = data_parallel.is_primary
        if not data_parallel.is_primary:
            on_progress = None
    rank = data_parallel.rank if data_parallel is not None else 0
    was_training = model.training
    mode_fixed = not try_set_mode(model, True)
    random_layers = _has_random_layers(model)

    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if use_cuda_extras and config.mixed_precision
        else nullcontext()
    )
    sampler = (ConstraintSampler(constraint, config.constraint_batch_per_group, config.seed)
               if objective.uses_constraint_split else None)
    names = train.group_names
    history: list[EpochStats] = []
    step = start_step
    for epoch in range(start_step // steps_per_epoch, config.epochs):
        started, loss_sum, samples = time.perf_counter(), 0.0, 0
        order = _epoch_order(len(train), config.seed, epoch)
        for batch_index in range(step - epoch * steps_per_epoch, steps_per_epoch):
            idx = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            global_size = idx.numel()
            if data_parallel is not None:
                idx = data_parallel.shard(idx)
            x, y, g = _to_device(train.subset(idx), device, use_cuda_extras and config.channels_last)
            rows = idx
            if config.augment_hflip and x.dim() == 4:
                x = _flip_half(x, config.seed, step, global_size, data_parallel)

            with autocast, _step_rng(random_layers, config.seed, step, rank):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, reduction="none")
            correct = logits.detach().argmax(dim=1) == y
            objective.observe(loss.detach(), correct, g)
            if sampler is not None:
                objective.observe_constraint(*sampler.outcomes(model, step, device, autocast))
            objective.dual_step(g)
            batch_loss, batch_samples = loss.detach().sum().item(), int(y.numel())
            if data_parallel is not None:
                batch_loss, batch_samples = _share_step(data_parallel, objective, batch_loss, batch_samples)

            optimizer.zero_grad(set_to_none=True)
            batch = Batch(logits=logits, index=rows, inputs=x)
            if data_parallel is None:
                objective.primal_loss(loss, g, batch).backward()
            else:
                _primal_share(objective, loss, g, batch, global_size, data_parallel).backward()
            mask_gradients(model, masks)
            optimizer.step()
            apply_masks(model, masks)

            step += 1
            _set_lr(optimizer, schedule(step))
            loss_sum += batch_loss
            samples += batch_samples
            if (config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and checkpoint_path
                    and writes_checkpoints and batch_index < steps_per_epoch - 1):
                save_checkpoint(checkpoint_path, model, optimizer, objective, step, fingerprint)
            if on_progress is not None:
                shown = loss.detach().mean().item() if data_parallel is None else batch_loss / max(batch_samples, 1)
                on_progress(ProgressEvent(phase, epoch, step, steps_per_epoch, config.epochs,
                                          shown, _named(objective.multipliers, names)))
        if data_parallel is not None and isinstance(objective, EqualizedLoss):
            # The epoch's losses over every worker's slices: the per-epoch dual step is then
            # the one a single process would take, and every worker's controller agrees.
            world = data_parallel.world_size
            objective.set_epoch_sums(data_parallel.all_reduce_mean(objective.epoch_sums()) * world)
        objective.end_epoch()
        history.append(EpochStats(epoch, loss_sum / max(samples, 1), time.perf_counter() - started,
                                  samples, _named(objective.multipliers, names)))
        if checkpoint_path is not None and writes_checkpoints:
            save_checkpoint(checkpoint_path, model, optimizer, objective, step, fingerprint)
    calibration = None
    if config.method == "fair_distill" and config.calibrate_outputs:
        calibration = _calibrate(model, constraint, constraint_reference, teacher, device).to_dict()
    if not mode_fixed:
        model.train(was_training)
    return FinetuneResult(config, tuple(history), start_step, mode_fixed, calibration)


def _calibrate(model, constraint, constraint_reference, teacher, device) -> Calibration:
    """fair_distill's last step: output offsets fitted on the constraint split."""
    if constraint is None or len(constraint) == 0:
        raise InvalidConfigError("finetune.calibrate_outputs", "output calibration needs a non-empty constraint split")
    dense_logits = constraint_reference.logits if constraint_reference is not None else None
    if dense_logits is None or dense_logits.shape[0] != len(constraint):
        if teacher is None:
            raise InvalidConfigError("finetune.method", "fair_distill needs the dense model (the teacher)")
        dense_logits = evaluate(teacher, constraint, device=device, keep_logits=True).logits
    return match_prediction_rates(model, constraint, dense_logits, device=device)


def _has_random_layers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@contextmanager
def _step_rng(random_layers: bool, seed: int, step: int, rank: int = 0) -> Iterator[None]:
    """Dropout draws from the global RNG; seed it per step (inside a fork, so the caller's RNG
    is untouched) so that a resumed run makes the same draws as one that never stopped.
    Data-parallel workers offset the seed by their rank so their slices get distinct draws."""
    if not random_layers:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 15_485_863 + step + (rank << 40))
        yield


def _flip_half(x: torch.Tensor, seed: int, step: int, global_size: int | None = None,
               data_parallel: DataParallel | None = None) -> torch.Tensor:
    """Mirror a random half of the images (width axis); the choice is a function of (seed, step),
    drawn for the whole global batch so a data-parallel worker flips what one process would."""
    global_size = x.shape[0] if global_size is None else global_size
    flip = torch.rand(global_size, generator=torch.Generator().manual_seed(seed * 7_919 + step)) < 0.5
    if data_parallel is not None:
        flip = data_parallel.shard(flip)
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


def _agree_on_start(data_parallel: DataParallel, start_step: int, fingerprint: str) -> None:
    """Check that every worker runs the same run from the same step, with one all-reduce.

    Workers resuming from different steps would pair up different steps in their
    collectives (a checkpoint only rank 0 can see, on a node-local path, does that). Workers
    with different masks, settings or data (the pipeline before fine-tuning computed on
    hardware that rounds differently) would drift apart: DDP aligns the weights once, but
    each worker re-applies its own masks after every step.
    """
    # Each value is compared through its mean and the mean of its square: the two agree
    # (mean of squares == square of mean) only when every worker sent the same value. The
    # fingerprint enters as two 24-bit pieces so the squares stay exact in float64.
    values = [float(start_step), float(int(fingerprint[:6], 16)), float(int(fingerprint[6:12], 16))]
    mine = torch.tensor([v for value in values for v in (value, value * value)], dtype=torch.float64)
    mean = data_parallel.all_reduce_mean(mine)
    if torch.equal(mean, mine):
        return
    if not torch.equal(mean[:2], mine[:2]):
        raise InvalidConfigError(
            "finetune.checkpoint",
            f"worker {data_parallel.rank} would resume from step {start_step} but other workers from "
            "another step; the checkpoint path must name storage that every worker reads")
    raise RuntimeError(
        f"worker {data_parallel.rank} disagrees with the others on the fine-tuning run (settings, masks "
        "or data differ); every worker must reach fine-tuning with the same pruned model")


def _share_step(data_parallel: DataParallel, objective: Objective, batch_loss: float,
                batch_samples: int) -> tuple[float, int]:
    """Average the multipliers across workers and total the batch's loss and sample count, in
    one all-reduce. Returns (loss sum, samples) over the global batch."""
    mine = torch.cat([objective.multipliers.detach().double().cpu(),
                      torch.tensor([batch_loss, batch_samples], dtype=torch.float64)])
    mean = data_parallel.all_reduce_mean(mine)
    objective.multipliers = mean[:-2].to(objective.multipliers.dtype).clone()
    world = data_parallel.world_size
    return float(mean[-2]) * world, round(float(mean[-1]) * world)


def _primal_share(objective: Objective, loss: torch.Tensor, groups: torch.Tensor, batch: Batch,
                  global_size: int, data_parallel: DataParallel) -> torch.Tensor:
    """This worker's primal loss, scaled by its share of the global batch (n_r · W / N), so
    that DDP's plain average of the gradients weighs every sample alike: for a mean loss it
    is the full-batch gradient (up to rounding). A worker whose slice is empty (a last global batch
    smaller than the world) still joins the gradient all-reduce, with a zero loss that
    reaches every parameter the forward pass used."""
    if loss.numel() == 0:
        return batch.logits.sum() * 0.0
    share = loss.numel() * data_parallel.world_size / global_size
    return objective.primal_loss(loss, groups, batch) * share


def _lr_schedule(optimizer, config: FinetuneConfig, total_steps: int) -> Callable[[int], float]:
    """Learning rate as a pure function of the global step, so a resumed run matches."""
    if config.lr_schedule == "constant":
        return lambda step: config.lr
    return lambda step: 0.5 * config.lr * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled sample order of one epoch, a pure function of (seed, epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _to_device(batch: GroupedData, device: torch.device, channels_last: bool):
    x = batch.inputs.to(device, non_blocking=True)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, batch.labels.to(device), batch.groups.to(device)


class ConstraintSampler:
    """Balanced draws of constraint samples, each a pure function of (seed, step).

    Balanced (the same count from every group) so a small group's estimate fills as fast as a
    large one's. Outcomes are measured in eval mode: in train mode BatchNorm would fold the
    constraint samples into its running statistics, and the primal side must never see them.
    """

    def __init__(self, constraint: GroupedData, per_group: int, seed: int) -> None:
        self.data = constraint
        self.per_group = per_group
        self.seed = seed
        self.members = [torch.nonzero(constraint.groups == g).flatten() for g in range(constraint.num_groups)]
        self.members = [m for m in self.members if m.numel()]

    @torch.no_grad()
    def outcomes(self, model: nn.Module, step: int, device, autocast) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.cat([m[torch.randint(m.numel(), (self.per_group,), generator=gen)] for m in self.members])
        x, y, g = _to_device(self.data.subset(idx), device, False)
        with autocast, mode(model, training=False):
            logits = model(x)
        return logits.argmax(dim=1) == y, g


def _named(values: torch.Tensor, names: tuple[str, ...]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist())}
