"""The shared-data loaders now live in harness/data.py (benchmarks use them too); this module
re-exports them for the tests that import `tests.data.loaders`."""

from harness.data import (
    AGE_BUCKET_EDGES,
    AGE_BUCKET_NAMES,
    CIFAR10_FILE,
    DATA_DIR_ENV,
    REPO_ROOT,
    SPLIT_NAMES,
    UTKFACE_FILE,
    channel_stats,
    digits_dataset,
    load_cifar10,
    load_utkface,
    require_shared_file,
    shared_data_dir,
    stratified_subsample,
)

__all__ = [
    "AGE_BUCKET_EDGES",
    "AGE_BUCKET_NAMES",
    "CIFAR10_FILE",
    "DATA_DIR_ENV",
    "REPO_ROOT",
    "SPLIT_NAMES",
    "UTKFACE_FILE",
    "channel_stats",
    "digits_dataset",
    "load_cifar10",
    "load_utkface",
    "require_shared_file",
    "shared_data_dir",
    "stratified_subsample",
]
