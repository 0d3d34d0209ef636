"""Hostile files, each carrying a real pickle payload that creates a marker file when unpickled.

Every builder takes the path of the marker: a test passes a path the process under test could
write, and afterwards asserts the marker never appeared. `marker_pickle` is the payload
itself; `tests/engine/test_hostile_files.py` shows that it really runs when unpickled, so a
refusal elsewhere means something.

The .pt2 layouts reproduce the tricks of issue #8: the same entry name twice in one zip (the
audit's reader and torch's reader resolving different copies), payloads in pickled weights,
constants and sample inputs, a torch.save checkpoint named .pt2; plus pickle bytes named
.safetensors and .npz files with object arrays or raw pickle members.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


class _Touch:
    """Unpickling this runs `touch <path>` through a shell, as an attacker's payload would."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def marker_pickle(marker: str, protocol: int = 2) -> bytes:
    return pickle.dumps(_Touch(marker), protocol=protocol)


# --- .pt2 --------------------------------------------------------------------------------------

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
PROGRAM = "models/model.json"


def pt2_entries(pt2: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """(root folder, [(path below the root, bytes)]) of a well-formed archive, in order."""
    with zipfile.ZipFile(io.BytesIO(pt2)) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0]
        return root, [(n.split("/", 1)[1], archive.read(n)) for n in names]


def write_zip(entries: list[tuple[str, bytes]]) -> bytes:
    """A stored zip with exactly these (full name, bytes) entries, duplicates included."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            with _quiet_duplicates():
                archive.writestr(zipfile.ZipInfo(name), content)
    return out.getvalue()


class _quiet_duplicates:
    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def _pickled_weights(entries: dict[str, bytes], marker: str) -> dict[str, bytes]:
    """A weights config saying the first weight is a pickle stored in a new entry, and that
    entry: the payload (a name of its own, so whichever config copy a reader takes, the
    benign weights stay intact)."""
    config = json.loads(entries[WEIGHTS_CONFIG])
    first = next(iter(config["config"].values()))
    first.update(use_pickle=True, path_name="weight_99")
    return {WEIGHTS_CONFIG: json.dumps(config).encode(), "data/weights/weight_99": marker_pickle(marker)}


def pt2_pickled_weights(pt2: bytes, marker: str) -> bytes:
    root, entries = pt2_entries(pt2)
    changed = _pickled_weights(dict(entries), marker)
    return write_zip([(f"{root}/{n}", changed.get(n, c)) for n, c in entries])


def pt2_pickled_constants(pt2: bytes, marker: str) -> bytes:
    root, entries = pt2_entries(pt2)
    config = {"config": {"c0": {"path_name": "tensor_0", "is_param": False, "use_pickle": True,
                                "tensor_meta": None}}}
    changed = {CONSTANTS_CONFIG: json.dumps(config).encode()}
    out = [(f"{root}/{n}", changed.get(n, c)) for n, c in entries]
    out.append((f"{root}/data/constants/tensor_0", marker_pickle(marker)))
    return write_zip(out)


def pt2_pickled_sample_inputs(pt2: bytes, marker: str) -> bytes:
    root, entries = pt2_entries(pt2)
    return write_zip([(f"{root}/{n}", marker_pickle(marker) if n == SAMPLE_INPUTS else c) for n, c in entries])


def torch_save_named_pt2(marker: str) -> bytes:
    """A torch.save checkpoint (zip with data.pkl) whose pickle is the payload."""
    import torch

    buffer = io.BytesIO()
    torch.save({"model": _Touch(marker)}, buffer)
    return buffer.getvalue()


def pt2_duplicate_layouts(pt2: bytes, marker: str) -> Iterator[tuple[str, bytes]]:
    """(description, archive) for many layouts of the duplicate-entry trick: for each entry an
    attacker would target, a hostile and a benign copy under the same name, in either order,
    next to each other or at the ends of the archive, under the same or another root folder."""
    root, entries = pt2_entries(pt2)
    benign = dict(entries)
    hostile_sets = {
        "weights config": _pickled_weights(benign, marker),
        "sample inputs": {SAMPLE_INPUTS: marker_pickle(marker)},
        "program guards": {PROGRAM: _with_guard_code(benign[PROGRAM], marker)},
        "constants config": {CONSTANTS_CONFIG: json.dumps({"config": {"c0": {
            "path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}).encode(),
            "data/constants/tensor_0": marker_pickle(marker)},
    }
    for target, hostile in hostile_sets.items():
        for order in ("hostile first", "hostile last"):
            for placement in ("adjacent", "at the ends"):
                for hostile_root in (root, "other"):
                    yield (f"{target}, {order}, {placement}, hostile copy under {hostile_root!r}",
                           write_zip(_layout(root, entries, hostile, order, placement, hostile_root)))
        # The hostile copy replaces the benign one in the central directory only.
        yield f"{target}, central directory and local headers disagree", _central_directory_lie(root, entries, hostile)


def _layout(root: str, entries: list[tuple[str, bytes]], hostile: dict[str, bytes], order: str, placement: str,
            hostile_root: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    tail: list[tuple[str, bytes]] = []
    head: list[tuple[str, bytes]] = []
    for name, content in entries:
        pair = [(f"{root}/{name}", content)]
        if name in hostile:
            evil = (f"{hostile_root}/{name}", hostile[name])
            if placement == "adjacent":
                pair = [evil] + pair if order == "hostile first" else pair + [evil]
            elif order == "hostile first":
                head.append(evil)
            else:
                tail.append(evil)
        out.extend(pair)
    extra = [(f"{hostile_root}/{n}", c) for n, c in hostile.items() if n not in dict(entries)]
    return head + out + tail + extra


def _with_guard_code(program: bytes, marker: str) -> bytes:
    content = json.loads(program)
    content["guards_code"] = [f"__import__('os').system(\"touch '{marker}'\")"]
    return json.dumps(content).encode()


def _central_directory_lie(root: str, entries: list[tuple[str, bytes]], hostile: dict[str, bytes]) -> bytes:
    """A zip whose local headers hold the hostile bytes but whose central directory points at
    benign copies stored elsewhere under the same name (hand-written: zipfile cannot)."""
    local, central, offset = bytearray(), bytearray(), 0
    records = [(f"{root}/{n}", hostile.get(n, c), c) for n, c in entries]
    records += [(f"{root}/{n}", c, c) for n, c in hostile.items() if n not in dict(entries)]
    benign_offsets = {}
    for name, _, content in records:  # benign copies first, referenced by the central directory
        benign_offsets[name] = len(local)
        local += _local_header(name, content) + content
    for name, content, _ in records:  # hostile copies after them, referenced by nothing
        local += _local_header(name, content) + content
    for name, _, content in records:
        central += _central_header(name, content, benign_offsets[name])
    offset = len(local)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), offset, 0)
    return bytes(local + central + end)


def _local_header(name: str, content: bytes) -> bytes:
    raw = name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(content), len(content),
                       len(content), len(raw), 0) + raw


def _central_header(name: str, content: bytes, offset: int) -> bytes:
    raw = name.encode()
    return struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, zlib.crc32(content), len(content),
                       len(content), len(raw), 0, 0, 0, 0, 0, offset) + raw


# --- other formats -------------------------------------------------------------------------------


def pickle_named_safetensors(marker: str) -> bytes:
    return marker_pickle(marker)


def npz_object_array(marker: str) -> bytes:
    """A dataset whose inputs are an object array: its .npy member is a pickle."""
    buffer = io.BytesIO()
    inputs = np.empty(4, dtype=object)
    inputs[:] = [_Touch(marker)] * 4
    np.savez(buffer, inputs=inputs, labels=np.zeros(4, dtype=np.int64),
             attr__g=np.zeros(4, dtype=np.int64), attr__g__names=np.array(["a"]))
    return buffer.getvalue()


def npz_raw_pickle_member(marker: str, member: str = "inputs.npy") -> bytes:
    """A dataset archive whose member is raw pickle bytes instead of a .npy array."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(member, marker_pickle(marker))
        archive.writestr("labels.npy", _npy(np.zeros(4, dtype=np.int64)))
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@contextmanager
def marker_folder():
    """A folder outside /tmp (a sandboxed worker's /tmp is private) that any user may write:
    wherever a payload ran — a service process or a sandboxed worker of its own user — its
    marker would land here. Yields the folder; fails on leaving if any marker appeared."""
    folder = os.path.join(os.getcwd(), f".hostile-markers-{uuid.uuid4().hex[:8]}")
    os.makedirs(folder)
    os.chmod(folder, 0o777)
    try:
        yield folder
    finally:
        leftovers = os.listdir(folder)
        for name in leftovers:
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)
    assert not leftovers, f"payloads ran: {leftovers}"
