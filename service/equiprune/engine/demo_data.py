"""A small offline dataset for demos: scikit-learn's bundled digits with group attributes.

The group attributes are synthetic (see `digits_group_dataset`); the data is real and ships
inside scikit-learn, so the demo runs without network or downloads.
"""

from __future__ import annotations

import functools

import numpy as np

from .dataset import GroupDataset, dataset_from_arrays, save_dataset

SPLIT_NAMES = ("train", "test")


def stratified_subsample(strata: np.ndarray, size: int | None, seed: int) -> np.ndarray:
    """Sorted row indices of about `size` rows keeping every stratum's share.

    Each stratum gets floor(share * size) rows, and the rows left over go to the strata with
    the largest remainders, so the total is exactly `size` and small strata are not dropped
    by chance. `size=None` (or one at least the row count) keeps every row.
    """
    if size is None or size >= len(strata):
        return np.arange(len(strata))
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    values, counts = np.unique(strata, return_counts=True)
    quotas = counts * size / len(strata)
    taken = np.floor(quotas).astype(np.int64)
    leftover = size - int(taken.sum())
    taken[np.argsort(-(quotas - taken), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(strata == value), size=int(k), replace=False)
        for value, k in zip(values, taken, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


# `sample:digits` holds this share of its training rows out as a "constraint" split: a dense
# model trained on "train" never sees them, so fair fine-tuning's held-out steps read unseen data.
SAMPLE_CONSTRAINT_FRACTION = 0.2

# The demo's set-up, one definition (`equiprune demo` keeps a copy in the client, which has no
# engine; tests/client/test_demo_setup_copy.py holds them equal). bench/demo_setup.py chose it
# on a selection split: docs/results/demo-setup.md.
DEMO_GROUP_BY = ("cohort",)
DEMO_ARCHITECTURE = "mlp"
DEMO_ARCHITECTURE_KWARGS = {"in_features": 64, "num_classes": 10, "hidden": [64, 64]}
DEMO_KEEP_FIRST_AND_LAST = False  # three linear layers: keeping two dense would leave one to prune
DEMO_SPARSITY = 0.9
DEMO_TRAIN_EPOCHS, DEMO_TRAIN_LR = 20, 0.05
DEMO_FINETUNE_EPOCHS = 10
DEMO_TOLERANCE = 0.02
DEMO_MIN_GROUP_SIZE = 10

DIGITS_MINORITY_LABELS = (8, 9)
DIGITS_HEAVY_INK_QUANTILE = 0.8
DIGITS_TEST_FRACTION = 0.25


@functools.lru_cache(maxsize=8)
def digits_group_dataset(seed: int = 0, constraint_fraction: float = 0.0) -> GroupDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as (N, 1, 8, 8) float32.

    The group attributes are SYNTHETIC, made up for tests, not a property of the people or
    data behind the images:
    - "cohort": "minority" for digits 8 and 9 (about 20 %), "majority" for the rest;
    - "ink": "heavy" for the fifth of images with the most total ink, "light" otherwise.
    The split ("train"/"test", 25 % test) is stratified by label and drawn with `seed`;
    normalisation uses the train rows' mean and std. With `constraint_fraction`, that share
    of the training rows (stratified by label) becomes a third split, "constraint": data a
    dense model trained on "train" has never seen, which fair fine-tuning's held-out steps
    read (what `sample:digits` ships, so the demo's repair is judged as the method intends).
    """
    return dataset_from_arrays(digits_arrays(seed, constraint_fraction))


def digits_arrays(seed: int = 0, constraint_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """The arrays of `digits_group_dataset`, in the .npz format (docs/dataset-format.md)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError("the digits demo needs scikit-learn: pip install 'equiprune[dev]'") from None

    digits = load_digits()
    images = (digits.images[:, None, :, :] / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    ink = images.sum(axis=(1, 2, 3))
    test_rows = stratified_subsample(labels, round(DIGITS_TEST_FRACTION * len(labels)), seed)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_rows] = True
    train = images[~is_test]
    arrays = {
        "inputs": images,
        "input_mean": np.array([train.mean()]),
        "input_std": np.array([train.std()]),
        "labels": labels,
        "label_names": np.array([str(d) for d in range(10)]),
        "attr__cohort": np.isin(labels, DIGITS_MINORITY_LABELS).astype(np.int8),
        "attr__cohort__names": np.array(["majority", "minority"]),
        "attr__ink": (ink > np.quantile(ink, DIGITS_HEAVY_INK_QUANTILE)).astype(np.int8),
        "attr__ink__names": np.array(["light", "heavy"]),
        "split": is_test.astype(np.int8),
        "split__names": np.array(SPLIT_NAMES),
    }
    if constraint_fraction:
        arrays = carve_split(arrays, "train", "constraint", constraint_fraction, seed)
    return arrays


def carve_split(arrays: dict[str, np.ndarray], source: str, name: str, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A copy of `arrays` in which `fraction` of split `source`'s rows, stratified by label,
    form a new split `name`. The normalisation statistics stay those of the original data."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    names = [str(n) for n in arrays["split__names"]]
    if name in names:
        raise ValueError(f"split {name!r} exists already")
    rows = np.flatnonzero(arrays["split"] == names.index(source))
    chosen = rows[stratified_subsample(arrays["labels"][rows], round(fraction * len(rows)), seed)]
    split = arrays["split"].copy()
    split[chosen] = len(names)
    return {**arrays, "split": split, "split__names": np.array([*names, name])}


def write_digits_sample(path) -> None:
    """`sample:digits` as an .npz: the digits with the sample's constraint split."""
    save_dataset(digits_group_dataset(constraint_fraction=SAMPLE_CONSTRAINT_FRACTION), path)


# The built-in samples (`sample:<name>` URIs of the service, `equiprune traffic --dataset`).
SAMPLES = {"digits": write_digits_sample}
