"""The loop's data-parallel collectives: agreeing on the run and start step, sharing the
multipliers and batch totals after each dual step, and scaling each worker's primal loss.

Separate from the loop so its single-process path reads without them; what is shared between
workers, and what is not, is described in loop.py's docstring.
"""

from __future__ import annotations

import torch

from ..errors import InvalidConfigError
from .distributed import DataParallel
from .objectives import Batch, Objective


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
