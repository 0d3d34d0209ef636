"""Built-in sample datasets, imported with a `sample:<name>` URI (no download: all offline).

`sample:digits` is scikit-learn's bundled 8x8 digits with the engine's synthetic group
attributes (`cohort`, `ink`) and a train/test split: what `equiprune demo` runs on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from equiprune.service.errors import InvalidArgument

PREFIX = "sample:"


def _digits(path: Path) -> None:
    from equiprune.engine.dataset import save_dataset
    from equiprune.engine.demo_data import digits_group_dataset

    save_dataset(digits_group_dataset(), path)


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


def write_traffic(out: Path, *, split: str = "test", group_by: tuple[str, ...] = ("cohort",), limit: int | None = None) -> int:
    """Write the digits sample's rows as Predict instances, one JSON object per line:
    {"values": [...], "groups": {...}, "label": n} — what `equiprune predict --instances`
    reads. The values are the model's inputs (already normalised, as the dataset stores them)."""
    import json

    from equiprune.engine.demo_data import digits_group_dataset

    dataset = digits_group_dataset()
    rows = dataset.split_codes == dataset.split_names.index(split)
    indices = rows.nonzero().flatten().tolist()[:limit]
    with open(out, "w") as f:
        for i in indices:
            groups = {a: dataset.attribute_values[a][int(dataset.attributes[a][i])] for a in group_by}
            f.write(json.dumps({"values": [round(v, 6) for v in dataset.inputs[i].flatten().tolist()],
                                "groups": groups, "label": int(dataset.labels[i])}) + "\n")
    return len(indices)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m equiprune.service.artifacts.samples",
                                     description="write sample traffic for equiprune predict")
    parser.add_argument("command", choices=["traffic"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--group-by", action="append", default=None)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    n = write_traffic(Path(args.out), split=args.split, group_by=tuple(args.group_by or ("cohort",)), limit=args.limit)
    print(f"wrote {n} instances to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
