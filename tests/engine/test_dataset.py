"""Tests for the dataset format, its validation and group selection (engine/dataset.py)."""

from __future__ import annotations

import io
import json
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from equiprune.engine.dataset import (
    MAX_ARCHIVE_MEMBERS,
    MAX_ATTRIBUTES,
    MAX_CLASSES,
    GroupDataset,
    dataset_from_arrays,
    dataset_to_arrays,
    load_dataset,
    save_dataset,
    validate_for_model,
)
from equiprune.engine.errors import InvalidConfigError, InvalidDatasetError, InvalidModelError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "dataset-format.md"

# 12 samples: race in blocks of four, gender alternating, test rows 2, 3, 6 and 7.
RACE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
GENDER = np.array([0, 1] * 6)
SPLIT = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=np.int8)


def make_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "inputs": rng.integers(0, 256, size=(12, 3, 2, 2), dtype=np.uint8),
        "labels": np.arange(12) % 3,
        "attr__race": RACE.astype(np.int8),
        "attr__race__names": np.array(["White", "Black", "Asian"]),
        "attr__gender": GENDER,
        "attr__gender__names": np.array(["male", "female"]),
        "split": SPLIT,
        "split__names": np.array(["train", "test"]),
        "label_names": np.array(["a", "b", "c"]),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> io.BytesIO:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


def load_arrays(arrays: dict[str, np.ndarray]) -> GroupDataset:
    return load_dataset(npz_bytes(arrays))


@pytest.fixture
def dataset() -> GroupDataset:
    return load_arrays(make_arrays())


def assert_refused(call: Callable[[], object], field: str, *, error=InvalidDatasetError, match: str = "") -> None:
    with pytest.raises(error) as info:
        call()
    assert info.value.field == field, str(info.value)
    assert re.search(match, info.value.problem), info.value.problem


# ------------------------------------------------------------------ loading and round trip


def test_load_scales_uint8_and_normalises_per_channel():
    arrays = make_arrays()
    mean, std = np.array([0.1, 0.5, 0.9]), np.array([0.5, 0.25, 2.0])
    data = load_arrays({**arrays, "input_mean": mean, "input_std": std})
    raw = torch.from_numpy(arrays["inputs"]).float() / 255.0
    expected = (raw - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.tensor(
        std, dtype=torch.float32
    ).view(1, 3, 1, 1)
    assert data.inputs.dtype == torch.float32
    torch.testing.assert_close(data.inputs, expected, rtol=0, atol=1e-6)


def test_load_keeps_float16_values_and_converts_codes_to_int64():
    arrays = make_arrays()
    arrays["inputs"] = np.linspace(-3, 3, 12 * 5, dtype=np.float16).reshape(12, 5)
    data = load_arrays(arrays)
    assert torch.equal(data.inputs, torch.from_numpy(arrays["inputs"].astype(np.float32)))
    assert data.labels.dtype == data.attributes["race"].dtype == data.split_codes.dtype == torch.int64
    assert data.attributes["race"].tolist() == RACE.tolist()


def test_properties(dataset):
    assert dataset.attribute_names == ("race", "gender")
    assert dataset.split_names == ("train", "test")
    assert dataset.num_classes == 3
    assert dataset.sample_shape == (3, 2, 2)
    assert len(dataset) == 12


def test_num_classes_without_label_names_is_largest_label_plus_one():
    arrays = make_arrays()
    del arrays["label_names"]
    arrays["labels"] = np.array([0, 4] * 6)
    assert load_arrays(arrays).num_classes == 5


def test_round_trip_through_a_file_is_exact(tmp_path):
    arrays = make_arrays()
    original = load_arrays({**arrays, "input_mean": np.array([0.3, 0.4, 0.5]), "input_std": np.array([0.2, 0.2, 0.3])})
    path = tmp_path / "data.npz"
    save_dataset(original, path)
    loaded = load_dataset(path)
    assert path.exists() and not (tmp_path / "data.npz.npz").exists()
    assert torch.equal(loaded.inputs, original.inputs)
    assert torch.equal(loaded.labels, original.labels)
    assert torch.equal(loaded.split_codes, original.split_codes)
    assert loaded.attribute_names == original.attribute_names
    for name in original.attribute_names:
        assert torch.equal(loaded.attributes[name], original.attributes[name])
        assert loaded.attribute_values[name] == original.attribute_values[name]
    assert (loaded.split_names, loaded.label_names) == (original.split_names, original.label_names)


def test_round_trip_without_optional_arrays_through_a_file_object():
    original = GroupDataset(
        inputs=torch.randn(4, 2),
        labels=torch.tensor([0, 1, 1, 0]),
        attributes={"site": torch.tensor([0, 0, 1, 1])},
        attribute_values={"site": ("north", "south")},
    )
    buffer = io.BytesIO()
    save_dataset(original, buffer)
    buffer.seek(0)
    loaded = load_dataset(buffer)
    assert torch.equal(loaded.inputs, original.inputs)
    assert loaded.split_codes is None and loaded.split_names == () and loaded.label_names == ()
    assert set(dataset_to_arrays(loaded)) == {"inputs", "labels", "attr__site", "attr__site__names"}


def test_repr_is_short(dataset):
    assert repr(dataset) == (
        "GroupDataset(num_samples=12, sample_shape=(3, 2, 2), num_classes=3, "
        "attributes=['race', 'gender'], splits=['train', 'test'])"
    )


def test_dataset_is_immutable(dataset):
    with pytest.raises(TypeError):
        dataset.attributes["race"] = torch.zeros(12, dtype=torch.int64)
    with pytest.raises(AttributeError):
        dataset.labels = torch.zeros(12, dtype=torch.int64)


def test_summary_is_json_serialisable_and_counts(dataset):
    summary = dataset.summary().to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["attribute_counts"]["race"] == {"White": 4, "Black": 4, "Asian": 4}
    assert summary["split_counts"] == {"train": 8, "test": 4}
    assert summary["sample_shape"] == [3, 2, 2] and summary["num_classes"] == 3


def test_docs_example_writes_a_loadable_file(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    grouped = namespace["test_by_race_gender"]
    assert grouped.group_names[:2] == ("White&male", "White&female") and len(grouped) == 40
    train = namespace["data"].select("race", "train")
    torch.testing.assert_close(train.inputs.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-4)


# ------------------------------------------------------------------ grouping and splits


def test_select_single_attribute_all_samples(dataset):
    grouped = dataset.select(["race"])
    assert grouped.group_names == ("White", "Black", "Asian")
    assert grouped.groups.tolist() == RACE.tolist()
    assert grouped.inputs is dataset.inputs


def test_select_accepts_a_plain_string(dataset):
    assert dataset.select("gender").group_names == ("male", "female")


def test_intersections_are_named_and_ordered(dataset):
    grouped = dataset.select(["race", "gender"])
    assert grouped.group_names == (
        "White&male", "White&female", "Black&male", "Black&female", "Asian&male", "Asian&female",
    )
    assert grouped.groups.tolist() == (RACE * 2 + GENDER).tolist()
    assert grouped.group_counts().tolist() == [2] * 6
    reversed_order = dataset.select(["gender", "race"])
    assert reversed_order.group_names[:3] == ("male&White", "male&Black", "male&Asian")
    assert reversed_order.groups.tolist() == (GENDER * 3 + RACE).tolist()


def test_select_per_split(dataset):
    test = dataset.select("race", "test", min_group_size=0)
    train = dataset.select("race", "train")
    assert torch.equal(test.inputs, dataset.inputs[torch.from_numpy(SPLIT == 1)])
    assert test.group_counts().tolist() == [2, 2, 0]
    assert train.group_counts().tolist() == [2, 2, 4]
    assert test.group_names == train.group_names == ("White", "Black", "Asian")


def test_group_names_list_groups_absent_from_the_split(dataset):
    test = dataset.select(["race", "gender"], "test", min_group_size=0)
    assert test.group_names == dataset.group_names(["race", "gender"])
    assert test.group_counts().tolist() == [1, 1, 1, 1, 0, 0]


def test_any_split_names_work():
    arrays = make_arrays()
    arrays["split"] = np.array([0, 1, 2] * 4)
    arrays["split__names"] = np.array(["train", "test", "constraint"])
    data = load_arrays(arrays)
    assert data.split_names == ("train", "test", "constraint")
    assert len(data.select("gender", "constraint")) == 4


def test_single_sample_group_is_refused_by_default_naming_it(dataset):
    assert_refused(
        lambda: dataset.select(["race", "gender"], "test"), "dataset.group_by", match=r"'White&male' \(1 sample\)"
    )


def test_empty_group_is_refused_only_with_positive_min_group_size(dataset):
    assert_refused(
        lambda: dataset.select("race", "test", min_group_size=1), "dataset.group_by", match=r"'Asian' \(0 samples\)"
    )
    assert dataset.select("race", "test", min_group_size=0).group_counts().tolist() == [2, 2, 0]


def test_min_group_size_above_every_group_names_all_of_them(dataset):
    assert_refused(
        lambda: dataset.select("race", min_group_size=5), "dataset.group_by", match="'White'.*'Black'.*'Asian'"
    )


@pytest.mark.parametrize(
    ("group_by", "match"),
    [
        (["ethnicity"], "unknown attribute 'ethnicity'; known attributes: race, gender"),
        (["race", "race"], "twice"),
        ([], "choose one or more of: race, gender"),
        (None, "got NoneType"),
        ([["race"]], "unknown attribute ['race']"),
    ],
)
def test_bad_group_by_is_refused(dataset, group_by, match):
    assert_refused(lambda: dataset.select(group_by), "dataset.group_by", match=re.escape(match))


def test_too_many_groups_are_refused():
    arrays = make_arrays()
    arrays["attr__a"], arrays["attr__a__names"] = np.zeros(12, dtype=int), np.array([f"a{i}" for i in range(200)])
    arrays["attr__b"], arrays["attr__b__names"] = np.zeros(12, dtype=int), np.array([f"b{i}" for i in range(100)])
    data = load_arrays(arrays)
    assert_refused(lambda: data.select(["a", "b"], min_group_size=0), "dataset.group_by", match="20000 groups")


def test_unknown_split_lists_known_splits(dataset):
    assert_refused(lambda: dataset.select("race", "validation"), "dataset.split", match="known splits: train, test")


def test_split_requested_from_data_without_split():
    arrays = make_arrays()
    del arrays["split"], arrays["split__names"]
    data = load_arrays(arrays)
    assert data.split_names == ()
    assert_refused(lambda: data.select("race", "train"), "dataset.split", match="has no split")


def test_declared_split_without_samples_is_refused():
    arrays = make_arrays()
    arrays["split__names"] = np.array(["train", "test", "constraint"])
    data = load_arrays(arrays)
    assert_refused(lambda: data.select("race", "constraint", min_group_size=0), "dataset.split", match="no samples")


@pytest.mark.parametrize("size", [-1, 1.5, True])
def test_bad_min_group_size_is_a_config_error(dataset, size):
    assert_refused(lambda: dataset.select("race", min_group_size=size), "min_group_size", error=InvalidConfigError)


# ------------------------------------------------------------------ field-by-field validation


def _with(**changes: object) -> Callable[[dict], None]:
    def apply(arrays: dict) -> None:
        arrays.update(changes)

    return apply


def _without(*keys: str) -> Callable[[dict], None]:
    def apply(arrays: dict) -> None:
        for key in keys:
            del arrays[key]

    return apply


def _nan_at(*samples: int) -> Callable[[dict], None]:
    def apply(arrays: dict) -> None:
        inputs = arrays["inputs"].astype(np.float32)
        inputs[samples[0], 0, 0, 0] = np.nan
        for sample in samples[1:]:
            inputs[sample, 1, 1, 1] = np.inf
        arrays["inputs"] = inputs

    return apply


def _unnamed_labels(labels: np.ndarray) -> Callable[[dict], None]:
    def apply(arrays: dict) -> None:
        del arrays["label_names"]
        arrays["labels"] = labels

    return apply


def _race_names(*names: str) -> Callable[[dict], None]:
    return _with(attr__race__names=np.array(names))


def _attribute(name: str) -> Callable[[dict], None]:
    return _with(**{f"attr__{name}": RACE, f"attr__{name}__names": np.array(["x", "y", "z"])})


def _extra_attributes(count: int) -> Callable[[dict], None]:
    def apply(arrays: dict) -> None:
        for i in range(count):
            arrays[f"attr__x{i}"] = np.zeros(12, dtype=np.int8)
            arrays[f"attr__x{i}__names"] = np.array(["only"])

    return apply


RACE_NAMES = "dataset.attr__race__names"
INVALID_CASES = {
    # missing or unpaired arrays
    "no inputs": (_without("inputs"), "dataset.inputs", "missing"),
    "no labels": (_without("labels"), "dataset.labels", "missing"),
    "no attribute": (
        _without("attr__race", "attr__race__names", "attr__gender", "attr__gender__names"),
        "dataset.attributes",
        "no group attribute",
    ),
    "codes without names": (_without("attr__race__names"), "dataset.attr__race__names", "missing"),
    "names without codes": (_without("attr__race"), "dataset.attr__race", "missing"),
    "split without names": (_without("split__names"), "dataset.split__names", "missing"),
    "split names without split": (_without("split"), "dataset.split", "missing"),
    "mean without std": (_with(input_mean=np.zeros(3)), "dataset.input_std", "missing"),
    "unknown array": (_with(attr_race=RACE), "dataset.attr_race", "unknown array"),
    # shapes
    "0-d inputs": (_with(inputs=np.array(1.0, dtype=np.float32)), "dataset.inputs", r"shape \(N, \.\.\.\)"),
    "1-d inputs": (_with(inputs=np.zeros(12, dtype=np.float32)), "dataset.inputs", r"shape \(N, \.\.\.\)"),
    "6-d inputs": (_with(inputs=np.zeros((12, 1, 1, 1, 1, 1), dtype=np.float32)), "dataset.inputs", "1 to 4"),
    "empty samples": (_with(inputs=np.zeros((12, 0), dtype=np.float32)), "dataset.inputs", "empty"),
    "empty dataset": (
        _with(
            inputs=np.zeros((0, 3), dtype=np.float32), labels=np.zeros(0, dtype=int), attr__race=np.zeros(0, dtype=int),
            attr__gender=np.zeros(0, dtype=int), split=np.zeros(0, dtype=int),
        ),
        "dataset.inputs",
        "no samples",
    ),
    "labels count mismatch": (_with(labels=np.zeros(11, dtype=int)), "dataset.labels", r"\(12,\)"),
    "0-d labels": (_with(labels=np.array(1)), "dataset.labels", r"\(12,\)"),
    "2-d labels": (_with(labels=np.zeros((12, 1), dtype=int)), "dataset.labels", r"\(12,\)"),
    "attribute count mismatch": (_with(attr__race=RACE[:10]), "dataset.attr__race", r"\(12,\)"),
    "split count mismatch": (_with(split=SPLIT[:5]), "dataset.split", r"\(12,\)"),
    "2-d value names": (_with(attr__race__names=np.array([["White", "Black", "Asian"]])), RACE_NAMES, "1-d"),
    # dtypes
    "float64 inputs": (_with(inputs=np.zeros((12, 3), dtype=np.float64)), "dataset.inputs", "float32, float16"),
    "int inputs": (_with(inputs=np.zeros((12, 3), dtype=np.int32)), "dataset.inputs", "float32, float16 or uint8"),
    "float labels": (_with(labels=np.zeros(12, dtype=np.float32)), "dataset.labels", "integers"),
    "bool labels": (_with(labels=np.zeros(12, dtype=bool)), "dataset.labels", "integers"),
    "float group codes": (_with(attr__race=RACE.astype(np.float64)), "dataset.attr__race", "integers"),
    "float split codes": (_with(split=SPLIT.astype(np.float32)), "dataset.split", "integers"),
    "bytes value names": (_with(attr__race__names=np.array([b"White", b"Black", b"Asian"])), RACE_NAMES, "unicode"),
    "float label names": (_with(label_names=np.zeros(3)), "dataset.label_names", "unicode"),
    "uint64 beyond int64": (_with(labels=np.full(12, 2**63, dtype=np.uint64)), "dataset.labels", "too large"),
    # values
    "NaN and inf inputs": (_nan_at(5, 7), "dataset.inputs", "2 values are NaN or infinite.*sample 5"),
    "inf after normalisation": (
        _with(inputs=np.full((12, 3), 3e38, dtype=np.float32), input_mean=np.zeros(3), input_std=np.full(3, 1e-3)),
        "dataset.inputs",
        "NaN or infinite",
    ),
    "negative label": (_with(labels=np.array([0, 1, -1] * 4)), "dataset.labels", r"negative.*-1.*sample 2"),
    "label without a name": (_with(labels=np.array([0, 1, 3] * 4)), "dataset.labels", r"outside 0\.\.2.*3 at sample 2"),
    "label beyond class cap": (_unnamed_labels(np.full(12, MAX_CLASSES)), "dataset.labels", f"more than {MAX_CLASSES}"),
    "group code beyond names": (_with(attr__race=np.tile([0, 1, 3], 4)), "dataset.attr__race", r"0\.\.2.*3 at sample"),
    "negative group code": (_with(attr__gender=np.array([0, -1] * 6)), "dataset.attr__gender", r"-1 at sample 1"),
    "split code beyond names": (_with(split=np.array([0, 2] * 6)), "dataset.split", r"outside 0\.\.1"),
    "no value names": (_with(attr__race__names=np.array([], dtype="<U1")), RACE_NAMES, "no value names"),
    "duplicate value names": (_race_names("White", "Black", "White"), RACE_NAMES, "unique.*White"),
    "blank value name": (_race_names("White", " ", "Asian"), RACE_NAMES, "non-blank"),
    "ampersand in value name": (_race_names("White", "B&W", "Asian"), RACE_NAMES, "'&'"),
    "too long value name": (_race_names("White", "B" * 101, "Asian"), RACE_NAMES, "100"),
    "duplicate split names": (_with(split__names=np.array(["train", "train"])), "dataset.split__names", "unique"),
    "duplicate label names": (_with(label_names=np.array(["a", "b", "a"])), "dataset.label_names", "unique"),
    "bad attribute name": (_attribute("bad-name"), "dataset.attr__bad-name", "letters and digits"),
    "double underscore name": (_attribute("a__b"), "dataset.attr__a__b", "single underscores"),
    "attribute names differing in case": (_attribute("Race"), "dataset.attr__Race", "duplicate attribute name"),
    "too many attributes": (_extra_attributes(MAX_ATTRIBUTES), "dataset.attributes", f"at most {MAX_ATTRIBUTES}"),
    # normalisation statistics
    "mean of wrong length": (_with(input_mean=np.zeros(2), input_std=np.ones(2)), "dataset.input_mean", r"\(3,\)"),
    "integer std": (_with(input_mean=np.zeros(3), input_std=np.ones(3, dtype=int)), "dataset.input_std", "float"),
    "zero std": (_with(input_mean=np.zeros(3), input_std=np.array([1.0, 0.0, 1.0])), "dataset.input_std", "> 0"),
    "NaN mean": (_with(input_mean=np.array([0.0, np.nan, 0.0]), input_std=np.ones(3)), "dataset.input_mean", "finite"),
}


@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_invalid_dataset_is_refused_naming_the_field(case):
    mutate, field, match = INVALID_CASES[case]
    arrays = make_arrays()
    mutate(arrays)
    assert_refused(lambda: load_arrays(arrays), field, match=match)
    assert_refused(lambda: dataset_from_arrays(arrays), field, match=match)


def test_non_array_value_is_refused():
    arrays = make_arrays()
    arrays["labels"] = [0, 1, 2] * 4
    assert_refused(lambda: dataset_from_arrays(arrays), "dataset.labels", match="numpy array")


# ------------------------------------------------------------------ datasets built in code


def _tensors(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "inputs": torch.zeros(4, 2),
        "labels": torch.tensor([0, 1, 0, 1]),
        "attributes": {"site": torch.tensor([0, 1, 1, 0])},
        "attribute_values": {"site": ("north", "south")},
    }
    return {**fields, **changes}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inputs": torch.zeros(4, 2, dtype=torch.float64)}, "dataset.inputs"),
        ({"inputs": np.zeros((4, 2), dtype=np.float32)}, "dataset.inputs"),
        ({"labels": torch.tensor([0, 1, 0, 1], dtype=torch.int32)}, "dataset.labels"),
        ({"attribute_values": {"place": ("north", "south")}}, "dataset.attributes"),
        ({"attribute_values": {"site": "ns"}}, "dataset.attr__site__names"),
        ({"split_names": ("train",)}, "dataset.split"),
        ({"split_codes": torch.tensor([0, 0, 0, 0])}, "dataset.split__names"),
        ({"label_names": ("a", "a")}, "dataset.label_names"),
    ],
)
def test_group_dataset_checks_tensors_built_in_code(changes, field):
    assert_refused(lambda: GroupDataset(**_tensors(**changes)), field)


# ------------------------------------------------------------------ archive-level checks


def _zip_bytes(members: list[tuple[str, bytes]]) -> io.BytesIO:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members:
                archive.writestr(name, data)
    buffer.seek(0)
    return buffer


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _valid_members() -> list[tuple[str, bytes]]:
    return [(f"{key}.npy", _npy(value)) for key, value in make_arrays().items()]


def _replace_member(key: str, data: bytes) -> list[tuple[str, bytes]]:
    return [m for m in _valid_members() if m[0] != f"{key}.npy"] + [(f"{key}.npy", data)]


def _lying_header() -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3)})
    return buffer.getvalue() + b"\0" * 48


BAD_MEMBER_CASES = {
    "duplicate member": (
        lambda: _valid_members() + [("labels.npy", _npy(np.zeros(12, dtype=int)))], "dataset.labels", "more than"
    ),
    "non-npy member": (lambda: _valid_members() + [("readme.txt", b"hello")], "dataset.readme.txt", "not a .npy"),
    "object array": (
        lambda: _replace_member("labels", _npy(np.array([{"a": 1}] * 12))), "dataset.labels", "pickled objects"
    ),
    "structured array": (
        lambda: _replace_member("labels", _npy(np.zeros(12, dtype=[("a", "i4")]))), "dataset.labels", "not allowed"
    ),
    "header lies": (lambda: _replace_member("inputs", _lying_header()), "dataset.inputs", "promises"),
    "garbage member": (lambda: _replace_member("inputs", b"not an array"), "dataset.inputs", "cannot read"),
}


@pytest.mark.parametrize("case", list(BAD_MEMBER_CASES))
def test_bad_archive_members_are_refused(case):
    members, field, match = BAD_MEMBER_CASES[case]
    assert_refused(lambda: load_dataset(_zip_bytes(members())), field, match=match)


@pytest.mark.parametrize(
    "content", [b"", b"definitely not a zip", _npy(np.zeros(3))], ids=["empty", "text", "bare npy"]
)
def test_non_archives_are_refused(content):
    assert_refused(lambda: load_dataset(io.BytesIO(content)), "dataset", match="not a readable")


def test_archive_with_too_many_members_is_refused():
    members = _valid_members() + [(f"extra{i}.npy", b"") for i in range(MAX_ARCHIVE_MEMBERS)]
    assert_refused(lambda: load_dataset(_zip_bytes(members)), "dataset", match="members")


def test_missing_file_is_refused(tmp_path):
    assert_refused(lambda: load_dataset(tmp_path / "absent.npz"), "dataset")


def test_archive_larger_than_max_bytes_is_refused():
    assert_refused(lambda: load_dataset(npz_bytes(make_arrays()), max_bytes=100), "dataset", match="limit is 100")


def test_max_bytes_counts_the_memory_of_the_loaded_dataset_not_the_file():
    arrays = make_arrays()  # uint8 inputs and int8 race codes: the file is far smaller than the tensors
    codes = ("labels", "attr__race", "attr__gender", "split")
    names = ("attr__race__names", "attr__gender__names", "split__names", "label_names")
    loaded = arrays["inputs"].size * 4 + sum(arrays[k].size * 8 for k in codes) + sum(arrays[k].nbytes for k in names)
    assert loaded > sum(a.nbytes for a in arrays.values())
    assert_refused(lambda: load_dataset(npz_bytes(arrays), max_bytes=loaded - 1), "dataset", match=f"needs {loaded} ")
    assert len(load_dataset(npz_bytes(arrays), max_bytes=loaded)) == 12


def test_unicode_names_wider_than_any_allowed_name_are_refused_before_reading():
    arrays = make_arrays()
    arrays["label_names"] = np.array(["a", "b", "c"], dtype="<U101")
    assert_refused(lambda: load_arrays(arrays), "dataset.label_names", match="up to 101 characters")


def test_compressed_archives_load():
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **make_arrays())
    buffer.seek(0)
    assert load_dataset(buffer).attribute_names == ("race", "gender")


# ------------------------------------------------------------------ fit to a model


def test_validate_for_model_accepts_a_fitting_model(dataset):
    validate_for_model(dataset, 3, (3, 2, 2))


def test_labels_beyond_model_outputs_are_refused():
    arrays = make_arrays()
    del arrays["label_names"]
    arrays["labels"] = np.array([0, 1, 2, 3] * 3)
    data = load_arrays(arrays)
    assert_refused(lambda: validate_for_model(data, 3), "dataset.labels", match=r"3 outputs.*3 at sample 3")


def test_label_names_count_must_match_model_outputs(dataset):
    assert_refused(lambda: validate_for_model(dataset, 5), "dataset.label_names", match="3 classes.*5 outputs")


def test_input_shape_mismatch_is_refused(dataset):
    assert_refused(
        lambda: validate_for_model(dataset, 3, (3, 32, 32)), "dataset.inputs", match=r"\(3, 2, 2\).*\(3, 32, 32\)"
    )


@pytest.mark.parametrize("num_classes", [0, -2, 2.0])
def test_bad_model_output_count_is_a_model_error(dataset, num_classes):
    assert_refused(lambda: validate_for_model(dataset, num_classes), "model.num_classes", error=InvalidModelError)
