"""Data-parallel fine-tuning, described with plain torch.distributed (no launcher imports).

`DataParallel` tells the fine-tuning loop which worker it is and gives it the two things it
needs from the process group: a way to wrap the module so gradients are averaged (DDP), and
a way to average a small tensor across workers. Whoever starts the workers (Ray Train,
torchrun, a test spawning processes) builds one; the engine never knows which.

How the loop uses it (see `finetune`):
- every worker draws the same global batch order and trains on its own slice of each global
  batch (`shard`), so one step still consumes one global batch;
- the per-worker loss is scaled so that DDP's plain average of the gradients equals the
  gradient of the mean over the global batch, even when slices differ in size;
- the multipliers of a constrained objective are averaged after every dual step, so every
  worker's primal step uses the same multipliers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DataParallel:
    """One worker's view of a data-parallel run.

    wrap: turns the module into one whose backward pass averages gradients across workers
        (DDP); it must keep the parameters themselves (the loop masks, optimises and
        checkpoints the unwrapped module).
    all_reduce_mean: the element-wise mean of a tensor over all workers, the same result on
        every worker. Called with CPU float64 tensors.
    """

    rank: int
    world_size: int
    wrap: Callable[[nn.Module], nn.Module]
    all_reduce_mean: Callable[[torch.Tensor], torch.Tensor]

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not a worker of a world of {self.world_size}")

    @property
    def is_primary(self) -> bool:
        """The worker that writes checkpoints and reports progress."""
        return self.rank == 0

    def shard(self, values: torch.Tensor) -> torch.Tensor:
        """This worker's part of a global batch: every world_size-th item from `rank`.

        Interleaved rather than contiguous so slice sizes differ by at most one."""
        return values[self.rank :: self.world_size]


def single_process() -> DataParallel:
    """A world of one: no wrapping, no communication (the loop's results are unchanged)."""
    return DataParallel(rank=0, world_size=1, wrap=lambda module: module, all_reduce_mean=lambda t: t)


def from_process_group(wrap: Callable[[nn.Module], nn.Module] | None = None,
                       group: dist.ProcessGroup | None = None) -> DataParallel:
    """A DataParallel for this process in an initialised torch.distributed process group.

    wrap defaults to DistributedDataParallel on the module's device.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed has no initialised process group")
    return DataParallel(
        rank=dist.get_rank(group),
        world_size=dist.get_world_size(group),
        wrap=wrap or ddp_wrap,
        all_reduce_mean=_all_reduce_mean(group),
    )


def ddp_wrap(module: nn.Module) -> nn.Module:
    """DistributedDataParallel around `module`, pinned to its device when that is a GPU."""
    device = next(module.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _all_reduce_mean(group: dist.ProcessGroup | None) -> Callable[[torch.Tensor], torch.Tensor]:
    # NCCL reduces only GPU tensors; the loop's small bookkeeping tensors live on the CPU.
    on_gpu = dist.get_backend(group) == dist.Backend.NCCL
    world_size = dist.get_world_size(group)

    def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
        work = tensor.detach().clone()
        if on_gpu:
            work = work.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(work, op=dist.ReduceOp.SUM, group=group)
        return (work / world_size).to(tensor.device)

    return all_reduce_mean
