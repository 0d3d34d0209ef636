"""The fine-tuning loop: one readable function, masks fixed, resumable to the exact bit.

Per mini-batch: forward, let the objective observe the outcomes, draw a constraint batch if
the objective wants one, dual step, primal step, re-apply the masks. Everything random is
derived from (seed, epoch) or (seed, step), so a run resumed from a checkpoint replays the
same batches as one that never stopped.
"""

from __future__ import annotations

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
from ..evaluation import Evaluation
from ..groups import GroupedData
from ..jsonable import json_safe
from ..modes import mode, try_set_mode
from ..pruning.masks import Masks, apply_masks, mask_gradients
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .config import FinetuneConfig
from .objectives import CEAG, EqualizedLoss, HeldOutCEAG, Objective


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

    def to_dict(self) -> dict:
        return json_safe({
            "config": self.config.to_dict(),
            "epochs": [vars(e) for e in self.epochs],
            "resumed_from_step": self.resumed_from_step,
            "mode_fixed": self.mode_fixed,
        })


def build_objective(
    config: FinetuneConfig,
    train: GroupedData,
    train_reference: Evaluation | None,
    constraint: GroupedData | None,
    constraint_reference: Evaluation | None,
) -> Objective:
    """The objective for `config.method`, with the dense references it needs."""
    g = train.num_groups
    if config.method == "naive":
        return Objective(g)
    if config.method == "equalized_loss":
        return EqualizedLoss(g, config.dual_lr, config.replay_size if config.el_replay else None,
                             group_weights=train.group_counts().double())
    if config.method == "ceag":
        if train_reference is None:
            raise InvalidConfigError("finetune.method", "ceag needs the dense model's evaluation on the training data")
        return CEAG(
            g,
            dual_lr=config.dual_lr,
            tolerance=config.tolerance,
            buffer_size=config.replay_size,
            reference_group_accuracy=train_reference.group_accuracy(),
            reference_group_loss=train_reference.group_loss(),
            group_weights=train.group_counts().double(),
        )
    if constraint is None or constraint_reference is None or len(constraint) == 0:
        raise InvalidConfigError("finetune.method", "heldout_ceag needs a non-empty constraint split and the dense model's evaluation on it")
    if train_reference is None:
        raise InvalidConfigError("finetune.method", "heldout_ceag needs the dense model's evaluation on the training data")
    return HeldOutCEAG(
        g,
        dual_lr=config.dual_lr,
        tolerance=config.tolerance,
        buffer_size=config.constraint_window,
        min_count=config.replay_size,
        reference_group_accuracy=constraint_reference.group_accuracy(),
        # The primal proxy compares training losses with the dense training losses.
        reference_group_loss=train_reference.group_loss(),
        # Δ averages groups by their share of the population (the training data), as the
        # report does, whatever the make-up of the constraint split.
        group_weights=train.group_counts().double(),
    )


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
) -> FinetuneResult:
    """Fine-tune `model` in place with `masks` held fixed; resume from `checkpoint_path` if it
    exists (and was written by this same run). The model's train/eval mode is restored on return."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    objective = build_objective(config, train, train_reference, constraint, constraint_reference)
    model.to(device)
    use_cuda_extras = device.type == "cuda"
    if use_cuda_extras and config.channels_last and train.inputs.dim() == 4:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    apply_masks(model, masks)

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    schedule = _lr_schedule(optimizer, config, steps_per_epoch * config.epochs)
    start_step = 0
    fingerprint = run_fingerprint(config.to_dict(), masks, len(train), train.group_names)
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        start_step = load_checkpoint(checkpoint_path, model, optimizer, objective, fingerprint)
        apply_masks(model, masks)
        _set_lr(optimizer, schedule(start_step))
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
            x, y, g = _to_device(train.subset(idx), device, use_cuda_extras and config.channels_last)
            if config.augment_hflip and x.dim() == 4:
                x = _flip_half(x, config.seed, step)

            with autocast, _step_rng(random_layers, config.seed, step):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="none")
            correct = logits.detach().argmax(dim=1) == y
            objective.observe(loss.detach(), correct, g)
            if sampler is not None:
                objective.observe_constraint(*sampler.outcomes(model, step, device, autocast))
            objective.dual_step(g)

            optimizer.zero_grad(set_to_none=True)
            objective.primal_loss(loss, g).backward()
            mask_gradients(model, masks)
            optimizer.step()
            apply_masks(model, masks)

            step += 1
            _set_lr(optimizer, schedule(step))
            loss_sum += loss.detach().sum().item()
            samples += int(y.numel())
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and checkpoint_path:
                save_checkpoint(checkpoint_path, model, optimizer, objective, step, fingerprint)
            if on_progress is not None:
                on_progress(ProgressEvent(phase, epoch, step, steps_per_epoch, config.epochs,
                                          loss.detach().mean().item(), _named(objective.multipliers, names)))
        history.append(EpochStats(epoch, loss_sum / max(samples, 1), time.perf_counter() - started,
                                  samples, _named(objective.multipliers, names)))
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, objective, step, fingerprint)
    if not mode_fixed:
        model.train(was_training)
    return FinetuneResult(config, tuple(history), start_step, mode_fixed)


def _has_random_layers(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())


@contextmanager
def _step_rng(random_layers: bool, seed: int, step: int) -> Iterator[None]:
    """Dropout draws from the global RNG; seed it per step (inside a fork, so the caller's RNG
    is untouched) so that a resumed run makes the same draws as one that never stopped."""
    if not random_layers:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 15_485_863 + step)
        yield


def _flip_half(x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """Mirror a random half of the images (width axis); the choice is a function of (seed, step)."""
    flip = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(seed * 7_919 + step)) < 0.5
    flip = flip.to(x.device).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flip, x.flip(-1), x)


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
