"""A dataset file (docs/dataset-format.md) read on the client's machine, without the engine.

The base install has neither numpy nor torch: numpy is imported on use (`numpy_module`), and
these checks stand in for the engine's as far as using the rows locally needs them (arrays,
dtypes, shapes, codes in range); its other rules (name lengths, counts) are the server's to
apply when it imports the dataset. Archives are read with `allow_pickle=False`, always.

`model_inputs` turns stored rows into what the engine feeds a model, with the same float32
operations in the same order (engine/dataset_source.py, InputScaling), so the same bits.
"""

from __future__ import annotations

import os
import tempfile
import zipfile

from .errors import SpecError

NUMPY_MISSING = "reading a dataset needs numpy: pip install numpy (or pip install 'equiprune[server]')"
SAMPLE_PREFIX = "sample:"
ATTR_PREFIX, NAMES_SUFFIX = "attr__", "__names"
PLAIN_KEYS = ("inputs", "labels", "split", "split__names", "label_names", "input_mean", "input_std")
INPUT_DTYPES = ("float32", "float16", "uint8")


def numpy_module():
    """numpy, or a usage error saying how to install it."""
    try:
        import numpy
    except ImportError:
        raise SpecError("dataset", NUMPY_MISSING) from None
    return numpy


def read_dataset(np, dataset: str) -> tuple[dict, dict[str, list[str]], list[str] | None]:
    """The arrays of `dataset` (an .npz path or a built-in sample such as sample:digits),
    checked: (arrays, {attribute: value names}, split names or None). Refusals name `dataset`."""
    arrays = _load(np, dataset)
    return (arrays, *_check(np, arrays))


def _load(np, dataset: str) -> dict:
    if not dataset.startswith(SAMPLE_PREFIX):
        return _read_npz(np, dataset)
    # The built-in samples are made by the engine, as the server makes them on import: same bytes.
    try:
        from equiprune.service.artifacts.samples import SAMPLES
        name = dataset[len(SAMPLE_PREFIX):]
        if name not in SAMPLES:
            raise SpecError("dataset", f"unknown sample {name!r}; samples: "
                                       f"{', '.join(SAMPLE_PREFIX + n for n in SAMPLES)}")
        with tempfile.TemporaryDirectory() as folder:
            SAMPLES[name](os.path.join(folder, "sample.npz"))
            return _read_npz(np, os.path.join(folder, "sample.npz"))
    except ImportError as err:  # no engine, torch or scikit-learn here
        raise SpecError("dataset", f"{dataset} is generated on this machine and needs the server extra: "
                                   f"pip install 'equiprune[server]' ({err}); or give a local .npz") from None
    except RuntimeError as err:  # the engine's own word for what it is missing
        raise SpecError("dataset", f"{dataset} cannot be generated here: {err}") from None


def _read_npz(np, path: str) -> dict:
    """Every array of the archive, read without pickle."""
    if not os.path.isfile(path):
        raise SpecError("dataset", f"no file {path} (give a local .npz or sample:digits)")
    if not zipfile.is_zipfile(path):  # np.load would take anything else for a pickle
        raise SpecError("dataset", f"{path} is not an .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    arrays, key = {}, None
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                arrays[key] = archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MemoryError) as err:  # object arrays, bad headers
        where = f"{path}: array {key!r}" if key else path
        raise SpecError("dataset", f"{where} cannot be read ({type(err).__name__}: {err}); the format holds "
                                   "numbers and unicode names, never pickled objects") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # numpy hands members other than .npy over as bytes
            raise SpecError("dataset", f"{path}: member {key!r} is not a .npy array")
    return arrays


def _check(np, arrays: dict) -> tuple[dict[str, list[str]], list[str] | None]:
    """Refuse what is not a dataset; ({attribute: value names}, split names or None)."""
    def fail(key: str, problem: str):
        raise SpecError("dataset", f"{key}: {problem} (docs/dataset-format.md)")

    def names(key: str) -> list[str]:
        if key not in arrays:
            fail(key, "missing")
        if arrays[key].dtype.kind != "U" or arrays[key].ndim != 1 or not arrays[key].size:
            fail(key, f"must be a non-empty 1-d unicode array, got {arrays[key].dtype}, shape {arrays[key].shape}")
        return [str(name) for name in arrays[key]]

    def codes(key: str, count: int | None) -> None:
        a = arrays[key]
        if a.dtype.kind not in "iu" or a.shape != (n,):
            fail(key, f"must hold {n} integers (one per row of inputs), got dtype {a.dtype}, shape {a.shape}")
        if a.size and (a.min() < 0 or (count is not None and a.max() >= count)):
            most = "C-1" if count is None else count - 1
            fail(key, f"codes run from {a.min()} to {a.max()}; they must be in 0 … {most}")

    for key in ("inputs", "labels"):
        if key not in arrays:
            fail(key, "missing: every dataset has the arrays 'inputs' and 'labels'")
    attribute_keys = [k for k in arrays if k.startswith(ATTR_PREFIX) and not k.endswith(NAMES_SUFFIX)]
    for key in arrays:
        if key.startswith(ATTR_PREFIX) and key.removesuffix(NAMES_SUFFIX) not in attribute_keys:
            fail(key.removesuffix(NAMES_SUFFIX), f"missing: {key} is given, so the codes are required too")
        if key not in PLAIN_KEYS and not key.startswith(ATTR_PREFIX):
            fail(key, f"unknown array; the format knows {', '.join(PLAIN_KEYS)}, attr__<name> and attr__<name>__names")
    if not attribute_keys:
        fail("attr__<name>", "missing: a dataset has at least one group attribute")
    inputs = arrays["inputs"]
    if inputs.dtype.name not in INPUT_DTYPES or not 2 <= inputs.ndim <= 5 or 0 in inputs.shape:
        fail("inputs", f"must be float32, float16 or uint8 of shape (N, d1 … dk), 1 ≤ k ≤ 4, no dimension 0; "
                       f"got {inputs.dtype}, shape {inputs.shape}")
    n = len(inputs)
    codes("labels", len(names("label_names")) if "label_names" in arrays else None)
    attributes = {}
    for key in attribute_keys:
        attributes[key[len(ATTR_PREFIX):]] = values = names(key + NAMES_SUFFIX)
        codes(key, len(values))
    splits = None
    if "split" in arrays or "split__names" in arrays:
        splits = names("split__names")
        if "split" not in arrays:
            fail("split", "missing: split__names is given, so split is required too")
        codes("split", len(splits))
    stats = [key for key in ("input_mean", "input_std") if key in arrays]
    if len(stats) == 1:
        fail("input_std" if stats[0] == "input_mean" else "input_mean", f"missing: {stats[0]} is given")
    for key in stats:
        a = arrays[key]
        if a.dtype.kind != "f" or a.shape != (inputs.shape[1],) or not np.isfinite(a).all() or (
                key == "input_std" and not (a > 0).all()):
            fail(key, f"must be {inputs.shape[1]} finite floats, one per channel (axis 1 of inputs), the std's > 0; "
                      f"got {a.dtype}, shape {a.shape}")
    return attributes, splits


def _check(np, arrays: dict) -> tuple[dict[str, list[str]], list[str] | None]:
    """Refuse what is not a dataset; ({attribute: value names}, split names or None)."""
    def fail(key: str, problem: str):
        raise SpecError("dataset", f"{key}: {problem} (docs/dataset-format.md)")

    def names(key: str) -> list[str]:
        if key not in arrays:
            fail(key, "missing")
        if arrays[key].dtype.kind != "U" or arrays[key].ndim != 1 or not arrays[key].size:
            fail(key, f"must be a non-empty 1-d unicode array, got {arrays[key].dtype}, shape {arrays[key].shape}")
        return [str(name) for name in arrays[key]]

    def codes(key: str, count: int | None) -> None:
        a = arrays[key]
        if a.dtype.kind not in "iu" or a.shape != (n,):
            fail(key, f"must hold {n} integers (one per row of inputs), got dtype {a.dtype}, shape {a.shape}")
        if a.size and (a.min() < 0 or (count is not None and a.max() >= count)):
            most = "C-1" if count is None else count - 1
            fail(key, f"codes run from {a.min()} to {a.max()}; they must be in 0 … {most}")

    for key in ("inputs", "labels"):
        if key not in arrays:
            fail(key, "missing: every dataset has the arrays 'inputs' and 'labels'")
    attribute_keys = [k for k in arrays if k.startswith(ATTR_PREFIX) and not k.endswith(NAMES_SUFFIX)]
    for key in arrays:
        if key.startswith(ATTR_PREFIX) and key.removesuffix(NAMES_SUFFIX) not in attribute_keys:
            fail(key.removesuffix(NAMES_SUFFIX), f"missing: {key} is given, so the codes are required too")
        if key not in PLAIN_KEYS and not key.startswith(ATTR_PREFIX):
            fail(key, f"unknown array; the format knows {', '.join(PLAIN_KEYS)}, attr__<name> and attr__<name>__names")
    if not attribute_keys:
        fail("attr__<name>", "missing: a dataset has at least one group attribute")
    inputs = arrays["inputs"]
    if inputs.dtype.name not in INPUT_DTYPES or not 2 <= inputs.ndim <= 5 or 0 in inputs.shape:
        fail("inputs", f"must be float32, float16 or uint8 of shape (N, d1 … dk), 1 ≤ k ≤ 4, no dimension 0; "
                       f"got {inputs.dtype}, shape {inputs.shape}")
    n = len(inputs)
    codes("labels", len(names("label_names")) if "label_names" in arrays else None)
    attributes = {}
    for key in attribute_keys:
        attributes[key[len(ATTR_PREFIX):]] = values = names(key + NAMES_SUFFIX)
        codes(key, len(values))
    splits = None
    if "split" in arrays or "split__names" in arrays:
        splits = names("split__names")
        if "split" not in arrays:
            fail("split", "missing: split__names is given, so split is required too")
        codes("split", len(splits))
    stats = [key for key in ("input_mean", "input_std") if key in arrays]
    if len(stats) == 1:
        fail("input_std" if stats[0] == "input_mean" else "input_mean", f"missing: {stats[0]} is given")
    for key in stats:
        a = arrays[key]
        if a.dtype.kind != "f" or a.shape != (inputs.shape[1],) or not np.isfinite(a).all() or (
                key == "input_std" and not (a > 0).all()):
            fail(key, f"must be {inputs.shape[1]} finite floats, one per channel (axis 1 of inputs), the std's > 0; "
                      f"got {a.dtype}, shape {a.shape}")
    return attributes, splits


def model_inputs(np, arrays: dict, rows):
    """The chosen rows as the engine loads them (dataset_source.InputScaling): float32 ops only,
    in its order, so the results are the same float32 bits."""
    stored = arrays["inputs"][rows]
    x = stored.astype(np.float32)  # a copy in native byte order, also from float16 or big-endian files
    if stored.dtype == np.uint8:
        x /= np.float32(255.0)
    if "input_mean" in arrays:
        view = (1, -1) + (1,) * (x.ndim - 2)
        x -= arrays["input_mean"].astype(np.float32).reshape(view)
        x /= arrays["input_std"].astype(np.float32).reshape(view)
    if not np.isfinite(x).all():
        raise SpecError("dataset", "inputs: some values are NaN or infinite (after scaling); the server refuses them")
    return x
