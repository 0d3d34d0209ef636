"""`equiprune traffic`: Predict instances from a dataset's split, written locally as JSON Lines

    {"values": [...], "groups": {"race": "Black"}, "label": 2}

one a line: what `equiprune predict --instances` reads (its output then feeds `outcomes --from`).

Predict hands `values` to the model as they come (float32, C order): the server neither scales
nor normalises. So they are the inputs exactly as the engine loads them for training and
evaluation: the file is read by the engine's own `load_dataset` (one definition of the format,
its checks and its scaling; never a pickle), which is why this command needs the server extra.
Each float32 is written as the shortest decimal that reads back, through JSON's double and
Predict's float32, as the same float32: bit for bit what a job's evaluation of the split saw.
"""

from __future__ import annotations

import json
import os
import tempfile

from .errors import SpecError
from .runner import EXIT_OK, EXIT_USAGE, Output

SAMPLE_PREFIX = "sample:"
ENGINE_MISSING = ("reading a dataset needs the engine: pip install 'equiprune[server]' (the client alone has "
                  "neither numpy nor torch)")


def add_command(command) -> None:
    """Register `traffic` with cli.build_parser's `command(name, handler, help)`: a local command."""
    cmd = command("traffic", None, "write Predict instances (JSON Lines) from a dataset (local files only)")
    cmd.add_argument("--dataset", required=True, metavar="FILE.npz", help="a local .npz (docs/dataset-format.md), "
                     "or sample:digits (made here: needs the server extra)")
    cmd.add_argument("--out", required=True, metavar="FILE.jsonl", help="write the instances here")
    cmd.add_argument("--split", help="rows of this split (default: test; every row of a dataset without splits)")
    cmd.add_argument("--group-by", action="append", metavar="ATTR", help="group attribute (repeatable; default: all)")
    cmd.add_argument("--limit", type=int, metavar="N", help="write at most N instances")
    cmd.add_argument("--shuffle", action="store_true", help="rows in random order (before --limit)")
    cmd.add_argument("--seed", type=int, help="seed of --shuffle (default: 0)")
    cmd.set_defaults(local=_command)


def _command(args, out: Output) -> int:
    # Local commands bypass cli.main's error handling: every refusal becomes `error: field: problem`.
    try:
        written = write_traffic(args.dataset, args.out, split=args.split, group_by=args.group_by,
                                limit=args.limit, shuffle=args.shuffle, seed=args.seed)
    except SpecError as err:
        out.warn(f"error: {err.field}: {err.problem}")
        return EXIT_USAGE
    except OSError as err:  # everything was checked before --out was opened: this is the output
        out.warn(f"error: out: cannot write {args.out}: {err.strerror or err}")
        return EXIT_USAGE
    out.say(f"wrote {written['instances']} instances to {args.out}")
    out.document(written)
    return EXIT_OK


def write_traffic(dataset: str, out, *, split: str | None = None, group_by: list[str] | None = None,
                  limit: int | None = None, shuffle: bool = False, seed: int | None = None) -> dict:
    """Write the rows of `split` of `dataset` (a .npz path or sample:digits) to `out` as Predict
    instances; what was written ({"instances", "out", "dataset", "split", "group_by"}).
    SpecError names the argument at fault; nothing is written unless all of them are good."""
    if limit is not None and limit < 1:
        raise SpecError("limit", f"must be at least 1, got {limit}")
    if seed is not None and not shuffle:
        raise SpecError("seed", "only means something with --shuffle")
    np, data = _load(dataset)
    attributes = {name: list(values) for name, values in data.attribute_values.items()}
    group_by = _choose_groups(group_by, attributes)
    splits = list(data.split_names) if data.split_codes is not None else None
    if splits is None and split is not None:
        raise SpecError("split", "the dataset has no split array; leave --split out to use every row")
    split = split or ("test" if splits else None)
    if splits and split not in splits:
        raise SpecError("split", f"unknown split {split!r}; the dataset's splits: {', '.join(splits)}")
    codes = data.split_codes.numpy() if splits else None
    rows = np.flatnonzero(codes == splits.index(split)) if splits else np.arange(len(data.labels))
    if shuffle:
        rows = np.random.default_rng(0 if seed is None else seed).permutation(rows)
    rows = rows[:limit]
    inputs = data.inputs.numpy()[rows].reshape(len(rows), -1)
    labels = data.labels.numpy()
    attribute_codes = {a: data.attributes[a].numpy() for a in group_by}
    with open(out, "w", encoding="utf-8") as sink:
        for i, values in zip(rows.tolist(), inputs):
            groups = {a: attributes[a][int(attribute_codes[a][i])] for a in group_by}
            sink.write(f'{{"values": [{_numbers(np, values)}], "groups": {json.dumps(groups)}, '
                       f'"label": {int(labels[i])}}}\n')
    return {"instances": len(rows), "out": str(out), "dataset": dataset, "split": split, "group_by": group_by}


def _load(dataset: str):
    """(numpy, the engine's GroupDataset) of a .npz path or a built-in sample; refusals name `dataset`."""
    try:
        import numpy as np

        from equiprune.engine.dataset import load_dataset
        from equiprune.engine.errors import EngineError
        from equiprune.engine.demo_data import SAMPLES
    except ImportError as err:
        raise SpecError("dataset", f"{ENGINE_MISSING} ({err})") from None
    try:
        if not dataset.startswith(SAMPLE_PREFIX):
            if not os.path.isfile(dataset):
                raise SpecError("dataset", f"no file {dataset} (give a local .npz or sample:digits)")
            return np, load_dataset(dataset)
        name = dataset[len(SAMPLE_PREFIX):]
        if name not in SAMPLES:
            raise SpecError("dataset", f"unknown sample {name!r}; samples: "
                                       f"{', '.join(SAMPLE_PREFIX + n for n in SAMPLES)}")
        # Made by the engine as the server makes it on import: the same bytes.
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"{name}.npz")
            SAMPLES[name](path)
            return np, load_dataset(path)
    except EngineError as err:  # the engine's refusal, naming the array: "dataset.labels" → "labels: …"
        where = err.field.removeprefix("dataset").lstrip(".")
        raise SpecError("dataset", f"{where}: {err.problem}" if where else err.problem) from None
    except RuntimeError as err:  # the sample's own word for what it is missing (scikit-learn)
        raise SpecError("dataset", f"{dataset} cannot be generated here: {err}") from None


def _choose_groups(group_by: list[str] | None, attributes: dict) -> list[str]:
    if not group_by:
        return list(attributes)
    for i, name in enumerate(group_by):
        if name not in attributes:
            raise SpecError("group_by",
                            f"unknown attribute {name!r}; the dataset's attributes: {', '.join(attributes)}")
        if name in group_by[:i]:
            raise SpecError("group_by", f"{name!r} is given twice")
    return list(group_by)


def _numbers(np, row) -> str:
    """A float32 row as JSON numbers: numpy's shortest decimal of each float32, checked to read
    back the way Predict reads it (JSON gives a double, the proto field keeps a float32)."""
    texts = [str(v) for v in row]
    same = np.array(texts, dtype=np.float64).astype(np.float32).view(np.uint32) == row.view(np.uint32)
    # Rounding twice (decimal to double, double to float32) might in theory miss by one unit;
    # the exact double of a float32 never does, so such a value would be written that way.
    return ", ".join(t if ok else repr(float(v)) for t, ok, v in zip(texts, same.tolist(), row.tolist()))
