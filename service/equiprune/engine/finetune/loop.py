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

The loop's parts live next to it: results.py (what it reports), objective_setup.py (the
objective per method), batching.py (seeded batches and draws) and parallel_step.py (the
data-parallel collectives); the names other code imports are re-exported here.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidConfigError
from ..evaluation import Evaluation, evaluate
from ..groups import GroupedData
from ..modes import try_set_mode
from ..pruning.masks import Masks, apply_masks, mask_gradients
from .batching import ConstraintSampler, _epoch_order, _flip_half, _has_random_layers, _step_rng, _to_device
from .calibrate import Calibration, match_prediction_rates
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .config import FinetuneConfig
from .distill import TeacherOutputs
from .distributed import DataParallel
from .objective_setup import build_objective
from .objectives import Batch, EqualizedLoss
from .parallel_step import _agree_on_start, _primal_share, _share_step
from .results import EpochStats, FinetuneResult, ProgressEvent, _named

__all__ = [
    "ConstraintSampler",
    "EpochStats",
    "FinetuneResult",
    "ProgressEvent",
    "build_objective",
    "finetune",
]


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


def _lr_schedule(optimizer, config: FinetuneConfig, total_steps: int) -> Callable[[int], float]:
    """Learning rate as a pure function of the global step, so a resumed run matches."""
    if config.lr_schedule == "constant":
        return lambda step: config.lr
    return lambda step: 0.5 * config.lr * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
