"""Large synthetic dataset archives, and the peak memory of reading one, measured in a child
process. Shared by tests/engine/test_dataset_streaming.py and bench/bench_dataset_validation.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np


def write_npz(
    path: Path, *, num_samples: int, sample_shape=(3, 32, 32), input_dtype=np.uint8, compressed=False, seed=0
) -> int:
    """Write a valid dataset of random samples without holding its inputs in memory; returns
    the unpacked size of its arrays in bytes."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(input_dtype)
    small = {
        "labels": rng.integers(0, 10, num_samples),
        "attr__group": rng.integers(0, 4, num_samples).astype(np.int8),
        "attr__group__names": np.array(["north", "south", "east", "west"]),
        "split": (np.arange(num_samples) % 5 == 0).astype(np.int8),
        "split__names": np.array(["train", "test"]),
        "label_names": np.array([f"class {i}" for i in range(10)]),
    }
    compression = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    rows_per_block = max(1, 2**24 // (int(np.prod(sample_shape)) * dtype.itemsize))
    with zipfile.ZipFile(path, "w", compression) as zf:
        with zf.open("inputs.npy", "w", force_zip64=True) as member:
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": (num_samples, *sample_shape)}
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, num_samples, rows_per_block):
                shape = (min(rows_per_block, num_samples - start), *sample_shape)
                if dtype == np.uint8:
                    block = rng.integers(0, 256, size=shape, dtype=np.uint8)
                else:
                    block = rng.standard_normal(size=shape, dtype=np.float32).astype(dtype)
                member.write(block.tobytes())
        for key, value in small.items():
            with zf.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, value, allow_pickle=False)
    return num_samples * int(np.prod(sample_shape)) * dtype.itemsize + sum(v.nbytes for v in small.values())


# Run in a fresh interpreter: resets the peak RSS after the imports, then reads one dataset.
_CHILD = r"""
import importlib.util, json, sys, time

def status(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

path, how = sys.argv[1], sys.argv[2]
if how.startswith("legacy:"):  # a former engine/dataset.py, loaded from a file
    spec = importlib.util.spec_from_file_location("legacy_dataset", how.split(":", 1)[1])
    legacy = sys.modules["legacy_dataset"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(legacy)
    run = lambda: legacy.load_dataset(path).summary()
else:
    from equiprune.engine.dataset import inspect_dataset, load_dataset
    run = {"inspect": lambda: inspect_dataset(path), "load": lambda: load_dataset(path).summary()}[how]
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak RSS (VmHWM) restarts from the current RSS
baseline = status("VmHWM")
start = time.perf_counter()
summary = run()
seconds = time.perf_counter() - start
print(json.dumps({"baseline_bytes": baseline, "peak_growth_bytes": status("VmHWM") - baseline,
                  "seconds": seconds, "summary": summary.to_dict()}))
"""


def measure_in_child(path: Path, how: str) -> dict:
    """Peak RSS growth (bytes above the RSS after imports), wall time and summary of reading
    `path` with how = "inspect", "load" or "legacy:<path of an old dataset.py>"."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), how], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child reading {path} with {how} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])
