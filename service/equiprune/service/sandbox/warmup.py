"""A tiny model in every format and a tiny dataset, written by the service itself, that each
sandboxed worker loads once before it gives up its privileges.

Why: torch imports much of itself lazily (the .pt2 loader pulls in parts of dynamo and
inductor on first use), and after the switch to its own user a worker may no longer be able
to read the Python installation (e.g. under /root). Loading these trusted files walks the
same code paths a client's file will, so every module those paths need is imported while it
still can be. The files are made once per process, in a folder only the service can read.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

KIT_FILES = ("warm_pt2", "warm_safetensors", "warm_sparse", "warm_dataset")


@functools.lru_cache(maxsize=1)
def warmup_kit() -> dict[str, str]:
    import torch

    from equiprune.engine.dataset import GroupDataset, save_dataset
    from equiprune.engine.models import ArchitectureSpec, build_model, save_exported, save_safetensors
    from equiprune.engine.models.sparse import save_sparse

    folder = tempfile.mkdtemp(prefix="equiprune-warmup-")  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    spec = ArchitectureSpec("small_cnn", {"num_classes": 2, "in_channels": 1, "input_size": 8, "channels": [2, 2]})
    torch.manual_seed(0)
    model = build_model(spec).eval()
    paths = {name: os.path.join(folder, name) for name in KIT_FILES}
    save_exported(model, torch.randn(2, 1, 8, 8), paths["warm_pt2"], training=False, spec=spec)
    save_safetensors(model, spec, paths["warm_safetensors"])
    save_sparse(model, spec, paths["warm_sparse"])
    n = 16
    save_dataset(GroupDataset(inputs=torch.randn(n, 1, 8, 8), labels=torch.arange(n) % 2,
                              attributes={"g": torch.arange(n) % 2}, attribute_values={"g": ("a", "b")},
                              split_codes=torch.arange(n) % 2, split_names=("train", "test")), paths["warm_dataset"])
    return paths


def warm_up(files: dict) -> None:
    """In the worker, before `confine.drop`: load every kit file the way a client's would be."""
    from equiprune.engine.dataset import load_dataset
    from equiprune.service.artifacts.validation import describe_dataset, describe_model

    for name in ("warm_pt2", "warm_safetensors", "warm_sparse"):
        describe_model(files.pop(name))
    describe_dataset(files["warm_dataset"])
    files["warm_dataset"].seek(0)
    load_dataset(files.pop("warm_dataset"))
