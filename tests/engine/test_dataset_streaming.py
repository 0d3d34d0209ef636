"""inspect_dataset: every check of load_dataset, made while streaming the archive in chunks.

Both functions are run over the same cases (the invalid datasets and hostile archives of
test_dataset.py, valid datasets in several layouts), stored and deflated, in one chunk and in
tiny chunks that cut through samples; peak memory is measured in a child process.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from equiprune.engine import array_chunks, dataset, machine
from equiprune.engine.array_chunks import plan_chunks
from equiprune.engine.dataset import (
    DEFAULT_MAX_BYTES,
    MAX_ARCHIVE_MEMBERS,
    MAX_CLASSES,
    dataset_from_arrays,
    default_max_dataset_bytes,
    inspect_dataset,
    load_dataset,
)
from harness.memory import measure_in_child, write_npz
from tests.engine.test_dataset import (
    BAD_MEMBER_CASES,
    DOCS,
    INVALID_CASES,
    _npy,
    _valid_members,
    _zip_bytes,
    assert_refused,
    make_arrays,
)

FORMATS = {"stored": np.savez, "deflated": np.savez_compressed}
READERS = {"load": load_dataset, "inspect": inspect_dataset}


def archive(arrays: dict[str, np.ndarray], fmt: str = "stored") -> io.BytesIO:
    buffer = io.BytesIO()
    FORMATS[fmt](buffer, **arrays)
    buffer.seek(0)
    return buffer


def summary_of(reader: str, source) -> dict:
    result = READERS[reader](source)
    return (result if reader == "inspect" else result.summary()).to_dict()


@pytest.fixture(params=[None, 5], ids=["one chunk", "5-element chunks"])
def chunk_elements(request, monkeypatch) -> int | None:
    """Tiny chunks make every array span many chunks, cutting through samples."""
    if request.param is not None:
        monkeypatch.setattr(array_chunks, "CHUNK_ELEMENTS", request.param)
    return request.param


# ------------------------------------------------------------------ the chunk walk


@pytest.mark.parametrize("shape", [(7,), (4, 3), (3, 4, 5), (2, 3, 1, 4), (1, 9), (5, 0, 2), ()])
@pytest.mark.parametrize("fortran_order", [False, True])
@pytest.mark.parametrize("max_elements", [1, 2, 5, 12, 1000])
def test_chunks_cover_the_array_once_in_storage_order(shape, fortran_order, max_elements):
    order = "F" if fortran_order else "C"
    # Each element holds its position in the stored bytes.
    positions = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape, order=order)
    seen = []
    for selector in plan_chunks(shape, fortran_order=fortran_order, max_elements=max_elements):
        values = positions[selector]
        assert values.size <= max_elements
        seen.extend(np.ravel(values, order=order).tolist())
    assert seen == list(range(positions.size))


# ------------------------------------------------------------------ same refusals as loading


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("case", list(INVALID_CASES))
def test_invalid_datasets_are_refused_naming_the_same_field(case, fmt, reader, chunk_elements):
    mutate, field, match = INVALID_CASES[case]
    arrays = make_arrays()
    mutate(arrays)
    assert_refused(lambda: READERS[reader](archive(arrays, fmt)), field, match=match)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(BAD_MEMBER_CASES))
def test_bad_archive_members_are_refused_alike(case, reader):
    members, field, match = BAD_MEMBER_CASES[case]
    assert_refused(lambda: READERS[reader](_zip_bytes(members())), field, match=match)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("content", [b"", b"definitely not a zip", _npy(np.zeros(3))], ids=["empty", "text", "npy"])
def test_non_archives_are_refused_alike(content, reader):
    assert_refused(lambda: READERS[reader](io.BytesIO(content)), "dataset", match="not a readable")


@pytest.mark.parametrize("reader", list(READERS))
def test_too_many_members_and_too_many_names_are_refused_alike(reader):
    members = _valid_members() + [(f"extra{i}.npy", b"") for i in range(MAX_ARCHIVE_MEMBERS)]
    assert_refused(lambda: READERS[reader](_zip_bytes(members)), "dataset", match="members")
    arrays = make_arrays()
    arrays["label_names"] = np.array([f"c{i}" for i in range(MAX_CLASSES + 1)])
    assert_refused(lambda: READERS[reader](archive(arrays)), "dataset.label_names", match=f"at most {MAX_CLASSES}")


@pytest.mark.parametrize("reader", list(READERS))
def test_missing_file_is_refused_alike(reader, tmp_path):
    assert_refused(lambda: READERS[reader](tmp_path / "absent.npz"), "dataset", match="not a readable")


def _declaring_more_than_it_holds(fmt: str, missing: int) -> io.BytesIO:
    """An archive whose inputs member lacks its last `missing` bytes while the zip directory
    still declares the full size, so the header check passes and the data runs out."""
    members = _valid_members()
    inputs = next(data for name, data in members if name == "inputs.npy")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED if fmt == "deflated" else zipfile.ZIP_STORED) as zf:
        for name, data in members:
            zf.writestr(name, data[:-missing] if name == "inputs.npy" else data)
    raw = bytearray(buffer.getvalue())
    entry = raw.index(b"PK\x01\x02")  # central directory entries: signature, fields, name at 46
    while raw[entry + 46 : entry + 46 + len(b"inputs.npy")] != b"inputs.npy":
        entry = raw.index(b"PK\x01\x02", entry + 4)
    struct.pack_into("<I", raw, entry + 24, len(inputs))  # the uncompressed size in the directory
    return io.BytesIO(bytes(raw))


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_member_holding_less_than_it_declares_is_refused(fmt, reader, chunk_elements):
    assert_refused(lambda: READERS[reader](_declaring_more_than_it_holds(fmt, 40)), "dataset.inputs", match="short")


# ------------------------------------------------------------------ same summaries as loading


def _normalised(arrays: dict) -> None:
    arrays["input_mean"], arrays["input_std"] = np.array([0.1, 0.5, 0.9]), np.array([0.5, 0.25, 2.0])


def _float16_flat(arrays: dict) -> None:
    arrays["inputs"] = np.linspace(-3, 3, 12 * 5, dtype=np.float16).reshape(12, 5)


def _fortran_order(arrays: dict) -> None:
    arrays["inputs"] = np.asfortranarray(arrays["inputs"])


def _minimal(arrays: dict) -> None:
    for key in ("split", "split__names", "label_names", "attr__gender", "attr__gender__names"):
        del arrays[key]


def _wide_big_endian_codes(arrays: dict) -> None:
    arrays["labels"] = arrays["labels"].astype(np.uint64)
    arrays["attr__race"] = arrays["attr__race"].astype(">i4")
    arrays["split__names"] = np.array(["train", "test", "never used"])


VALID_VARIANTS: dict[str, Callable[[dict], None]] = {
    "as made": lambda arrays: None,
    "normalised": _normalised,
    "float16 2-d inputs": _float16_flat,
    "fortran-order inputs": _fortran_order,
    "no split, no label names, one attribute": _minimal,
    "uint64, big-endian codes, an empty split": _wide_big_endian_codes,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("variant", list(VALID_VARIANTS))
def test_inspection_summarises_as_loading_does(variant, fmt, chunk_elements):
    arrays = make_arrays()
    VALID_VARIANTS[variant](arrays)
    inspected = inspect_dataset(archive(arrays, fmt)).to_dict()
    assert inspected == load_dataset(archive(arrays, fmt)).summary().to_dict()
    assert inspected == dataset_from_arrays(arrays).summary().to_dict()


def test_summary_counts_what_the_arrays_hold():
    arrays = make_arrays()
    arrays["split__names"] = np.array(["train", "test", "constraint"])
    summary = inspect_dataset(archive(arrays, "deflated"))
    assert summary.num_samples == 12 and summary.sample_shape == (3, 2, 2) and summary.num_classes == 3
    assert summary.label_names == ("a", "b", "c")
    assert summary.attribute_counts == {
        "race": dict(zip(["White", "Black", "Asian"], np.bincount(arrays["attr__race"]).tolist(), strict=True)),
        "gender": {"male": 6, "female": 6},
    }
    assert summary.split_counts == {"train": 8, "test": 4, "constraint": 0}
    unnamed = make_arrays()
    del unnamed["label_names"]
    unnamed["labels"] = np.array([0, 6] * 6)
    assert inspect_dataset(archive(unnamed)).num_classes == 7


def test_fortran_order_inputs_load_to_the_same_tensors(chunk_elements):
    arrays = make_arrays()
    _normalised(arrays)
    fortran = {**arrays, "inputs": np.asfortranarray(arrays["inputs"])}
    stored = archive(fortran)
    with zipfile.ZipFile(stored) as zf, zf.open("inputs.npy") as member:
        np.lib.format.read_magic(member)
        assert np.lib.format.read_array_header_1_0(member)[1] is True  # really written Fortran-ordered
    stored.seek(0)
    assert torch.equal(load_dataset(stored).inputs, load_dataset(archive(arrays)).inputs)


@pytest.mark.parametrize("reader", list(READERS))
def test_fortran_order_nan_names_the_first_sample_though_read_later(reader, monkeypatch):
    monkeypatch.setattr(array_chunks, "CHUNK_ELEMENTS", 5)
    inputs = make_arrays()["inputs"].astype(np.float32)
    inputs[7, 0, 0, 0] = np.nan  # stored 8th
    inputs[5, 1, 1, 1] = np.inf  # stored 126th, in a later chunk
    arrays = {**make_arrays(), "inputs": np.asfortranarray(inputs)}
    assert_refused(lambda: READERS[reader](archive(arrays)), "dataset.inputs", match="2 values .* sample 5\\)")


@pytest.mark.parametrize("reader", list(READERS))
def test_offenders_are_found_in_later_chunks(reader, monkeypatch):
    monkeypatch.setattr(array_chunks, "CHUNK_ELEMENTS", 5)
    arrays = make_arrays()
    arrays["attr__gender"] = np.array([0, 1] * 5 + [2, 3])
    assert_refused(
        lambda: READERS[reader](archive(arrays)), "dataset.attr__gender", match="2 values fall outside 0..1.*2 at sample 10"
    )


# ------------------------------------------------------------------ the memory limit


class CountingReader(io.RawIOBase):
    """A seekable file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buffer) -> int:
        count = self._data.readinto(buffer)
        self.bytes_read += count
        return count


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """About 1 MB that unpacks to 1 GiB of uint8 inputs (4 GiB once loaded as float32)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _valid_members():
            if name != "inputs.npy":
                zf.writestr(name, data)
        with zf.open("inputs.npy", "w", force_zip64=True) as member:
            header = {"descr": "|u1", "fortran_order": False, "shape": (12, 2**30 // 12)}
            np.lib.format.write_array_header_1_0(member, header)
            zeros = bytes(2**24)
            for _ in range(2**30 // len(zeros)):
                member.write(zeros)
    return buffer.getvalue()


@pytest.mark.parametrize("reader", list(READERS))
def test_zip_bomb_is_refused_from_its_headers_before_reading_data(zip_bomb, reader):
    assert len(zip_bomb) < 2**21
    source = CountingReader(zip_bomb)
    assert_refused(lambda: READERS[reader](source, max_bytes=2**32 - 1), "dataset", match="limit is 4294967295")
    # The central directory and the first compressed block of each member, nothing more.
    assert source.bytes_read < 64 * 1024, source.bytes_read


def test_default_limit_follows_the_machine(monkeypatch, tmp_path):
    page = 4096
    memory = {"SC_PAGE_SIZE": page, "SC_PHYS_PAGES": 16 * 2**30 // page}
    monkeypatch.setattr(os, "sysconf", lambda name: memory[name])
    monkeypatch.setattr(machine, "_CGROUP_MEMORY_LIMITS", ())
    assert default_max_dataset_bytes() == 4 * 2**30
    memory["SC_PHYS_PAGES"] = 256 * 2**30 // page
    assert default_max_dataset_bytes() == DEFAULT_MAX_BYTES == 8 * 2**30
    cgroup = tmp_path / "memory.max"
    cgroup.write_text("2147483648\n")
    monkeypatch.setattr(machine, "_CGROUP_MEMORY_LIMITS", (str(tmp_path / "absent"), str(cgroup)))
    assert default_max_dataset_bytes() == 2**29
    cgroup.write_text("max\n")
    assert default_max_dataset_bytes() == DEFAULT_MAX_BYTES


def test_docs_state_the_limits_the_code_applies():
    text = DOCS.read_text()
    assert DEFAULT_MAX_BYTES == 8 * 2**30 and "never more than 8 GiB" in text
    assert dataset.DEFAULT_MEMORY_SHARE == 4 and "a quarter of its physical" in text
    assert array_chunks.CHUNK_ELEMENTS == 2**21 and "chunks of at most 2 Mi elements" in text


@pytest.mark.parametrize("reader", list(READERS))
def test_default_limit_applies_when_none_is_given(reader, monkeypatch):
    monkeypatch.setattr(dataset, "default_max_dataset_bytes", lambda: 100)
    assert_refused(lambda: READERS[reader](archive(make_arrays())), "dataset", match="limit is 100")


# ------------------------------------------------------------------ peak memory, in a child process


needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


def _uint8_dataset(tmp_path: Path, unpacked: int) -> tuple[Path, int, int]:
    path = tmp_path / "large.npz"
    num_samples = unpacked // (3 * 32 * 32)
    return path, num_samples, write_npz(path, num_samples=num_samples)


@needs_proc
@pytest.mark.parametrize("unpacked", [64 * 2**20, 400 * 10**6], ids=["64 MiB", "400 MB"])
def test_inspection_memory_stays_far_below_the_data(tmp_path, unpacked):
    path, num_samples, unpacked = _uint8_dataset(tmp_path, unpacked)
    measured = measure_in_child(path, "inspect")
    assert measured["summary"]["num_samples"] == num_samples
    assert measured["peak_growth_bytes"] < 1.5 * unpacked, measured
    assert measured["peak_growth_bytes"] < 64 * 2**20, measured  # a few chunks, not the data


@needs_proc
def test_loading_holds_the_tensors_plus_little_more(tmp_path):
    path, num_samples, unpacked = _uint8_dataset(tmp_path, 64 * 2**20)
    tensors = num_samples * 3 * 32 * 32 * 4 + 3 * num_samples * 8  # float32 inputs, 3 int64 code arrays
    measured = measure_in_child(path, "load")
    assert measured["summary"]["num_samples"] == num_samples
    assert measured["peak_growth_bytes"] < tensors + 48 * 2**20, measured
