"""Parameter and multiply-accumulate counts, for the before/after of structured pruning.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` rather than
torch_pruning's module hooks: it sees aten operations, so it counts an exported (torch.export)
module as well as an eager one, and it attaches nothing to the model. It reports FLOPs of
matmuls and convolutions as 2 x MACs; bias adds, norms and activations are not counted, which
is the usual meaning of "MACs" in the pruning literature. The count is for one forward pass of
the example input as given: pass a batch of one for a per-sample figure.

Counting never changes the model: an eager model runs in eval mode under ``no_grad`` (so
BatchNorm statistics do not move) and gets its train/eval flags back; an exported module,
whose mode cannot be switched, gets its buffers restored after the pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ExampleInput = torch.Tensor | tuple[torch.Tensor, ...]


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter elements (a tied weight counts once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: ExampleInput) -> int:
    """Multiply-accumulates of conv/linear/matmul operations in one forward of `example_input`."""
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    if isinstance(model, torch.fx.GraphModule):
        return _macs_keeping_buffers(model, args)
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        return _macs_of_forward(model, args)
    finally:
        for module, training in flags.items():
            module.training = training


def _macs_keeping_buffers(model: nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    # A graph exported in train mode updates its BatchNorm buffers on every call.
    saved = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        return _macs_of_forward(model, args)
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _macs_of_forward(model: nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args)
    return counter.get_total_flops() // 2
