"""Tests for the test/benchmark data loaders, on the real shared archives when present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.data.loaders import (
    AGE_BUCKET_NAMES,
    CIFAR10_FILE,
    DATA_DIR_ENV,
    REPO_ROOT,
    UTKFACE_FILE,
    channel_stats,
    digits_dataset,
    load_cifar10,
    load_utkface,
    require_shared_file,
    shared_data_dir,
    stratified_subsample,
)


def assert_standardised(inputs: torch.Tensor, atol: float = 1e-3) -> None:
    dims = (0,) + tuple(range(2, inputs.dim()))
    torch.testing.assert_close(inputs.mean(dim=dims), torch.zeros(inputs.shape[1]), rtol=0, atol=atol)
    torch.testing.assert_close(inputs.std(dim=dims, correction=0), torch.ones(inputs.shape[1]), rtol=0, atol=atol)


# ------------------------------------------------------------------ helpers


def test_shared_data_dir_is_next_to_the_repository(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert (REPO_ROOT / "pyproject.toml").is_file()
    assert shared_data_dir() == REPO_ROOT.parent / "shared" / "data"


def test_shared_data_dir_can_be_overridden(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert shared_data_dir() == tmp_path


def test_require_shared_file_skips_when_absent(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(pytest.skip.Exception):
        require_shared_file(UTKFACE_FILE)
    (tmp_path / UTKFACE_FILE).write_bytes(b"")
    assert require_shared_file(UTKFACE_FILE) == tmp_path / UTKFACE_FILE


def test_stratified_subsample_keeps_shares_exactly():
    strata = np.repeat([0, 1, 2, 3], [700, 200, 90, 10])
    rows = stratified_subsample(strata, 100, seed=3)
    assert len(rows) == 100 and len(set(rows.tolist())) == 100 and np.all(np.diff(rows) > 0)
    assert np.bincount(strata[rows]).tolist() == [70, 20, 9, 1]
    assert np.array_equal(rows, stratified_subsample(strata, 100, seed=3))
    assert not np.array_equal(rows, stratified_subsample(strata, 100, seed=4))


def test_stratified_subsample_distributes_remainders_to_largest_fractions():
    strata = np.repeat([0, 1, 2], [5, 3, 2])  # quotas for 4 rows: 2.0, 1.2, 0.8
    assert np.bincount(strata[stratified_subsample(strata, 4, seed=0)], minlength=3).tolist() == [2, 1, 1]


def test_stratified_subsample_without_limit_keeps_all_rows():
    strata = np.array([1, 0, 1])
    assert stratified_subsample(strata, None, seed=0).tolist() == [0, 1, 2]
    assert stratified_subsample(strata, 10, seed=0).tolist() == [0, 1, 2]


def test_channel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, size=(7, 3, 4, 5), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (images / 255.0).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, (images / 255.0).std(axis=(0, 2, 3)), rtol=1e-9)


# ------------------------------------------------------------------ digits (always available)


def test_digits_dataset_shapes_groups_and_split():
    data = digits_dataset(0)
    assert data.inputs.shape == (1797, 1, 8, 8) and data.num_classes == 10
    assert data.attribute_names == ("cohort", "ink") and data.split_names == ("train", "test")
    minority = data.attributes["cohort"] == 1
    assert torch.equal(minority, (data.labels == 8) | (data.labels == 9))
    assert 0.19 < float(data.attributes["ink"].float().mean()) < 0.21
    test = data.select("cohort", "test")
    assert len(test) == 449
    per_class_test = torch.bincount(test.labels, minlength=10)
    per_class_all = torch.bincount(data.labels, minlength=10)
    assert torch.all((per_class_test - per_class_all * 449 / 1797).abs() <= 1)
    intersections = data.select(["cohort", "ink"], "test")
    assert intersections.group_names == ("majority&light", "majority&heavy", "minority&light", "minority&heavy")
    assert intersections.group_counts().min() >= 2


def test_digits_dataset_is_normalised_on_train_and_seeded():
    data = digits_dataset(0)
    assert_standardised(data.select("ink", "train").inputs, atol=1e-4)
    other = digits_dataset(1)
    assert not torch.equal(data.split_codes, other.split_codes)
    assert digits_dataset(0) is data


# ------------------------------------------------------------------ UTKFace and CIFAR-10 (shared files)


@pytest.fixture(scope="module")
def utk_raw():
    with np.load(require_shared_file(UTKFACE_FILE), allow_pickle=False) as archive:
        return {key: archive[key] for key in ("race", "gender", "is_test")}


def test_utkface_subsample_shapes_and_attributes(utk_raw):
    data = load_utkface(max_train=300, max_test=100)
    assert data.inputs.shape == (400, 3, 32, 32) and data.inputs.dtype == torch.float32
    assert data.attribute_names == ("race", "gender", "age_bucket")
    assert data.attribute_values["age_bucket"] == AGE_BUCKET_NAMES
    assert data.label_names == ("White", "Black", "Asian", "Indian", "Others")
    assert torch.equal(data.labels, data.attributes["race"])
    assert data.summary().split_counts == {"train": 300, "test": 100}
    assert load_utkface(max_train=300, max_test=100) is data


def test_utkface_subsample_keeps_race_gender_shares(utk_raw):
    data = load_utkface(max_train=300, max_test=100)
    cells = utk_raw["race"].astype(int) * 2 + utk_raw["gender"]
    for split, size, rows in (("train", 300, ~utk_raw["is_test"]), ("test", 100, utk_raw["is_test"])):
        grouped = data.select(["race", "gender"], split)
        expected = np.bincount(cells[rows], minlength=10) * size / rows.sum()
        assert np.all(np.abs(grouped.group_counts().numpy() - expected) < 1), (split, grouped.group_counts())
        assert int(grouped.group_counts().sum()) == size


def test_utkface_normalisation_uses_train_statistics(utk_raw):
    data = load_utkface(max_train=300, max_test=100)
    assert_standardised(data.select("race", "train").inputs)
    test_mean = data.select("race", "test").inputs.mean(dim=(0, 2, 3))
    assert test_mean.abs().max() > 1e-3  # the test rows were not standardised on themselves


def test_utkface_gender_target(utk_raw):
    data = load_utkface(target="gender", max_train=100, max_test=50)
    assert data.num_classes == 2 and data.label_names == ("male", "female")
    assert torch.equal(data.labels, data.attributes["gender"])


def test_utkface_rejects_unknown_target():
    with pytest.raises(ValueError, match="target"):
        load_utkface(target="age")


def test_cifar10_subsample_has_one_group_per_class():
    require_shared_file(CIFAR10_FILE)
    data = load_cifar10(max_train=200, max_test=100)
    assert data.inputs.shape == (300, 3, 32, 32) and data.num_classes == 10
    assert data.attribute_names == ("class",) and data.label_names[0] == "airplane"
    assert torch.equal(data.labels, data.attributes["class"])
    assert data.select("class", "train").group_counts().tolist() == [20] * 10
    assert data.select("class", "test").group_counts().tolist() == [10] * 10
    assert_standardised(data.select("class", "train").inputs)
