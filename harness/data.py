"""Test and benchmark data as `GroupDataset`s: UTKFace, CIFAR-10 and scikit-learn's digits.

Not product code: shared by tests and benchmarks (tests/data/loaders.py re-exports it).
UTKFace and CIFAR-10 come from the project's shared archives in `../shared/data` (relative
to the repository root; `EQUIPRUNE_DATA_DIR` overrides it, e.g. on a machine where only a
copy in an ignored folder travels). Each loader goes through
`dataset_from_arrays`, so the data is validated exactly like an uploaded file.

Loaders are cached on their arguments: the returned dataset is shared between callers and
must not be modified in place.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from equiprune.engine.dataset import GroupDataset, dataset_from_arrays
from equiprune.engine.demo_data import digits_group_dataset as digits_dataset  # noqa: F401  (re-exported for tests)
from equiprune.engine.demo_data import stratified_subsample

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "EQUIPRUNE_DATA_DIR"
UTKFACE_FILE = "utkface_32.npz"
CIFAR10_FILE = "cifar10.npz"
AGE_BUCKET_EDGES = (20, 40, 60)
AGE_BUCKET_NAMES = ("0-19", "20-39", "40-59", "60+")
SPLIT_NAMES = ("train", "test")


def shared_data_dir() -> Path:
    """Where the shared archives live: $EQUIPRUNE_DATA_DIR, else ../shared/data from the repo."""
    override = os.environ.get(DATA_DIR_ENV)
    return Path(override) if override else REPO_ROOT.parent / "shared" / "data"


def require_shared_file(name: str) -> Path:
    """The path of a shared archive, or skip the calling test when it is not on this machine
    (pytest is imported only then, so benchmarks do not need it)."""
    path = shared_data_dir() / name
    if not path.is_file():
        import pytest

        pytest.skip(f"shared data file {path} is not present")
    return path


def channel_stats(images_nchw_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in the loader's 0..1 units (uint8 / 255).

    Computed from each channel's 256-bin histogram: exact, and no float copy of the images.
    """
    levels = np.arange(256) / 255.0
    means, stds = [], []
    for channel in range(images_nchw_uint8.shape[1]):
        weights = np.bincount(images_nchw_uint8[:, channel].ravel(), minlength=256) / images_nchw_uint8[:, channel].size
        mean = float(weights @ levels)
        means.append(mean)
        stds.append(float(np.sqrt(weights @ (levels - mean) ** 2)))
    return np.array(means), np.array(stds)


def _split_rows(
    is_test: np.ndarray, strata: np.ndarray, max_train: int | None, max_test: int | None, seed: int
) -> np.ndarray:
    """Row indices: a stratified subsample of the train rows, then of the test rows."""
    parts = []
    for in_split, limit, offset in ((~is_test, max_train, 0), (is_test, max_test, 1)):
        rows = np.flatnonzero(in_split)
        parts.append(rows[stratified_subsample(strata[rows], limit, seed + offset)])
    return np.concatenate(parts)


def _image_arrays(images_nhwc: np.ndarray, is_test: np.ndarray) -> dict[str, np.ndarray]:
    """inputs as NCHW uint8 with mean/std from the train rows, plus the train/test split."""
    inputs = np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2))
    mean, std = channel_stats(inputs[~is_test])
    return {
        "inputs": inputs,
        "input_mean": mean,
        "input_std": std,
        "split": is_test.astype(np.int8),
        "split__names": np.array(SPLIT_NAMES),
    }


@functools.lru_cache(maxsize=2)
def _read_archive(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


@functools.lru_cache(maxsize=8)
def load_utkface(
    path: Path | str | None = None,
    target: str = "race",
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> GroupDataset:
    """UTKFace 32x32 faces, NCHW float32 normalised with the train rows' channel statistics.

    target: "race" (5 classes) or "gender" (2 classes) is the label; race, gender and
    age_bucket (0-19, 20-39, 40-59, 60+) are group attributes either way. The split comes
    from the archive's is_test. max_train/max_test subsample each split stratified by
    race x gender, so small groups keep their share.
    """
    if target not in ("race", "gender"):
        raise ValueError(f"target must be 'race' or 'gender', got {target!r}")
    raw = _read_archive(Path(path) if path is not None else shared_data_dir() / UTKFACE_FILE)
    race, gender = raw["race"].astype(np.int64), raw["gender"].astype(np.int64)
    rows = _split_rows(raw["is_test"], race * 2 + gender, max_train, max_test, seed)
    race, gender = race[rows], gender[rows]
    names = {"race": raw["race_names"], "gender": raw["gender_names"]}
    return dataset_from_arrays(
        {
            **_image_arrays(raw["images"][rows], raw["is_test"][rows]),
            "labels": race if target == "race" else gender,
            "label_names": names[target],
            "attr__race": race,
            "attr__race__names": names["race"],
            "attr__gender": gender,
            "attr__gender__names": names["gender"],
            "attr__age_bucket": np.digitize(raw["age"][rows], AGE_BUCKET_EDGES),
            "attr__age_bucket__names": np.array(AGE_BUCKET_NAMES),
        }
    )


@functools.lru_cache(maxsize=4)
def load_cifar10(
    path: Path | str | None = None,
    max_train: int | None = None,
    max_test: int | None = None,
    seed: int = 0,
) -> GroupDataset:
    """The shared CIFAR-10 subset (1,500 train and 1,000 test images per class), NCHW float32
    normalised with the train rows' statistics; one group per class (attribute "class").
    max_train/max_test subsample each split stratified by class."""
    raw = _read_archive(Path(path) if path is not None else shared_data_dir() / CIFAR10_FILE)
    images = np.concatenate([raw["x_train"], raw["x_test"]])
    labels = np.concatenate([raw["y_train"], raw["y_test"]]).astype(np.int64)
    is_test = np.arange(len(labels)) >= len(raw["y_train"])
    rows = _split_rows(is_test, labels, max_train, max_test, seed)
    return dataset_from_arrays(
        {
            **_image_arrays(images[rows], is_test[rows]),
            "labels": labels[rows],
            "label_names": raw["class_names"],
            "attr__class": labels[rows],
            "attr__class__names": raw["class_names"],
        }
    )
