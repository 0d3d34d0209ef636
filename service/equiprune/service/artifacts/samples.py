"""Built-in sample datasets, imported with a `sample:<name>` URI (no download: all offline).

`sample:digits` is scikit-learn's bundled 8x8 digits with the engine's synthetic group
attributes (`cohort`, `ink`) and train/constraint/test splits: what `equiprune demo` runs on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from equiprune.service.errors import InvalidArgument

PREFIX = "sample:"
# sample:digits holds this share of its training rows out as a "constraint" split: a dense
# model trained on "train" never sees them, so fair fine-tuning's held-out steps read unseen data.
SAMPLE_CONSTRAINT_FRACTION = 0.2


def _digits(path: Path) -> None:
    from equiprune.engine.dataset import save_dataset
    from equiprune.engine.demo_data import digits_group_dataset

    save_dataset(digits_group_dataset(constraint_fraction=SAMPLE_CONSTRAINT_FRACTION), path)


SAMPLES = {"digits": _digits}


def is_sample(uri: str) -> bool:
    return uri.startswith(PREFIX)


def write_sample(uri: str, folder: str) -> Path:
    """Write the named sample dataset into `folder`; its path."""
    name = uri[len(PREFIX):]
    if name not in SAMPLES:
        raise InvalidArgument(f"unknown sample {name!r}; samples: {', '.join(PREFIX + n for n in SAMPLES)}",
                              field="source.uri")
    path = Path(tempfile.mkdtemp(dir=folder)) / f"{name}.npz"
    SAMPLES[name](path)
    return path
