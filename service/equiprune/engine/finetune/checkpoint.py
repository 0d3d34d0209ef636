"""Checkpoints of a fine-tuning run: weights, optimiser, multipliers, buffers and the step.

These files are written and read by the engine itself, never received from clients; they are
still loaded with ``weights_only=True`` so a tampered file cannot execute code. Writes go to a
temporary file first and are renamed, so a crash mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidConfigError
from .objectives import Objective

FORMAT_VERSION = 2


def run_fingerprint(config_dict: dict, masks, num_samples: int, group_names: tuple[str, ...]) -> str:
    """What makes two runs the same run: settings, masks, data size and groups.

    A checkpoint only resumes the run that wrote it; anything else would silently load the
    weights of a different model.
    """
    digest = hashlib.sha256(json.dumps(
        {"config": config_dict, "n": num_samples, "groups": list(group_names)}, sort_keys=True).encode())
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].cpu().numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    objective: Objective, step: int, fingerprint: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "objective": objective.state_dict(),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    objective: Objective, fingerprint: str) -> int:
    """Restore everything in place; return the global step to resume from."""
    try:
        # Code-running loader, restricted (weights_only: no pickled code, only tensors and plain
        # data). Only trusted bytes, or inside the sandbox: a single-worker job writes and reads
        # this file in its sandboxed worker (the service copies it between runs and to and from
        # the artifact store, service/jobs/checkpoints.py, byte for byte and sha256-checked,
        # without reading it); a data-parallel job, which never runs sandboxed, reads only what
        # its own rank 0 wrote (restored from the store the same way); the engine CLI, the
        # user's own files.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which, never a traceback
        raise InvalidConfigError("finetune.checkpoint", f"{path} is not a readable checkpoint ({err})") from None
    if state.get("format_version") != FORMAT_VERSION:
        raise InvalidConfigError("finetune.checkpoint",
                                 f"{path} has checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    if state.get("fingerprint") != fingerprint:
        raise InvalidConfigError(
            "finetune.checkpoint",
            f"{path} belongs to a different run (other settings, masks or data); "
            "remove it or write to another output folder")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    objective.load_state_dict(state["objective"])
    return int(state["step"])
