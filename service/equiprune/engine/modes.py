"""Train/eval mode handling that also works for torch.export modules.

A module from ``ExportedProgram.module()`` has its mode baked into the graph at export time
and raises NotImplementedError on ``.train()`` / ``.eval()`` (torch 2.11–2.13). A deep copy
of it loses that guard but not the baked-in graph, so detection goes by type: every
``torch.fx.GraphModule`` is treated as a fixed graph whose mode cannot be switched.
Evaluation and fine-tuning still run on it; reports say in which mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def is_exported_module(module: nn.Module) -> bool:
    """True for a GraphModule (what ``ExportedProgram.module()`` returns, or a copy of it)."""
    return isinstance(module, torch.fx.GraphModule)


def try_set_mode(module: nn.Module, training: bool) -> bool:
    """Switch the mode if the module allows it; return whether it did."""
    if is_exported_module(module):
        return False
    try:
        module.train(training)
    except NotImplementedError:
        return False
    return True


@contextmanager
def mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Run a block in train or eval mode, then restore every submodule's own flag (a model
    may be in a mixed state, e.g. BatchNorm frozen in eval inside a training model)."""
    previous = [(m, m.training) for m in module.modules()]
    switched = try_set_mode(module, training)
    try:
        yield
    finally:
        if switched:
            for submodule, flag in previous:
                submodule.training = flag
