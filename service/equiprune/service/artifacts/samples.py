"""Built-in sample datasets, imported with a `sample:<name>` URI (no download: all offline).

`sample:digits` is scikit-learn's bundled 8x8 digits with the engine's synthetic group
attributes (`cohort`, `ink`) and train/constraint/test splits: what `equiprune demo` runs on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from equiprune.engine.demo_data import SAMPLES
from equiprune.service.errors import InvalidArgument

PREFIX = "sample:"


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
