"""Train/eval mode handling that also works for torch.export modules.

A module from ``ExportedProgram.module()`` has its mode baked in at export time and raises
NotImplementedError on ``.train()`` / ``.eval()`` (torch 2.11–2.13). Evaluation and
fine-tuning still run on it; they just cannot switch, and reports say so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def is_exported_module(module: nn.Module) -> bool:
    """True for the GraphModule that ``ExportedProgram.module()`` returns."""
    try:
        module.train(module.training)
    except NotImplementedError:
        return True
    return False


def try_set_mode(module: nn.Module, training: bool) -> bool:
    """Switch the mode if the module allows it; return whether it did."""
    try:
        module.train(training)
    except NotImplementedError:
        return False
    return True


@contextmanager
def mode(module: nn.Module, training: bool) -> Iterator[None]:
    """Run a block in train or eval mode, restoring the previous mode afterwards."""
    previous = module.training
    switched = try_set_mode(module, training)
    try:
        yield
    finally:
        if switched:
            module.train(previous)
