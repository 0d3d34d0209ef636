"""Checkpoints of a fine-tuning run: weights, optimiser, multipliers, buffers and the step.

These files are written and read by the engine itself, never received from clients; they are
still loaded with ``weights_only=True`` so a tampered file cannot execute code. Writes go to a
temporary file first and are renamed, so a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .objectives import Objective

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    objective: Objective, step: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "objective": objective.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    objective: Objective) -> int:
    """Restore everything in place; return the global step to resume from."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    objective.load_state_dict(state["objective"])
    return int(state["step"])
