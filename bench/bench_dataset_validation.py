"""Peak memory and time of validating an uploaded dataset: streamed inspection against loading.

    OMP_NUM_THREADS=1 python bench/bench_dataset_validation.py

For datasets of growing unpacked size (uint8 and float32 inputs of shape 3x32x32, random
values, stored and deflated), each reader runs in a fresh interpreter whose peak RSS is reset
after its imports, so the figure is what reading the dataset itself added:

- `inspect`: `inspect_dataset`, what upload validation needs (every check, a summary);
- `load`: today's `load_dataset`, what a job needs (the tensors);
- `legacy load`: `load_dataset` as it was before streaming (commit LEGACY_COMMIT), which is
  what validating an upload used to cost.

A reader whose peak, extrapolated from its ratio at the smallest size, would exceed
--max-child-gib is skipped (this machine is shared). Writes docs/bench/dataset_validation.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from _common import ROOT, write_results
from harness.memory import measure_in_child, write_npz

LEGACY_COMMIT = "88f0308"  # the last commit whose load_dataset read whole arrays
SAMPLE_SHAPE = (3, 32, 32)
MiB = 2**20


def _meminfo() -> dict[str, int]:
    fields = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    return {"total_bytes": fields["MemTotal"], "available_bytes": fields["MemAvailable"]}


def _legacy_module(folder: Path) -> Path | None:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{LEGACY_COMMIT}:service/equiprune/engine/dataset.py"],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        print(f"no legacy comparison: {done.stderr.strip()}")
        return None
    path = folder / "legacy_dataset.py"
    path.write_text(done.stdout)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="64,256,1024", help="unpacked dataset sizes, MiB")
    parser.add_argument("--max-child-gib", type=float, default=2.5, help="skip readers expected to need more")
    args = parser.parse_args()
    sizes = [int(s) * MiB for s in args.sizes_mib.split(",")]
    budget = int(args.max_child_gib * 2**30)

    runs, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        legacy = _legacy_module(folder)
        readers = {"inspect": "inspect", "load": "load"}
        if legacy is not None:
            readers["legacy load"] = f"legacy:{legacy}"
        for input_dtype in (np.uint8, np.float32):
            for storage in ("stored", "deflated"):
                for size in sizes:
                    row_bytes = int(np.prod(SAMPLE_SHAPE)) * np.dtype(input_dtype).itemsize
                    path = folder / "data.npz"
                    unpacked = write_npz(path, num_samples=size // row_bytes, input_dtype=input_dtype,
                                         compressed=storage == "deflated")
                    summaries = []
                    for reader, how in readers.items():
                        key = (np.dtype(input_dtype).name, storage, reader)
                        run = {"inputs": key[0], "storage": storage, "reader": reader, "unpacked_bytes": unpacked,
                               "file_bytes": path.stat().st_size, "load_average_before": os.getloadavg(),
                               "memory_before": _meminfo()}
                        expected = ratios.get(key, 0) * unpacked
                        if expected > budget:
                            run["skipped"] = f"expected peak {expected / 2**30:.1f} GiB > {args.max_child_gib} GiB"
                        else:
                            measured = measure_in_child(path, how)
                            summaries.append(measured.pop("summary"))
                            run.update(measured, ratio=measured["peak_growth_bytes"] / unpacked)
                            ratios.setdefault(key, run["ratio"])
                        runs.append(run)
                        print(run)
                    if any(s != summaries[0] for s in summaries):
                        raise RuntimeError(f"readers disagree on {path}: {summaries}")
                    path.unlink()

    lines = [
        "| inputs | storage | unpacked | file | reader | peak RSS growth | × unpacked | seconds | load (1 min) |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        head = (f"| {run['inputs']} | {run['storage']} | {run['unpacked_bytes'] / MiB:,.0f} MiB | "
                f"{run['file_bytes'] / MiB:,.0f} MiB | {run['reader']} | ")
        if "skipped" in run:
            lines.append(head + f"skipped: {run['skipped']} | | | {run['load_average_before'][0]:.2f} |")
        else:
            lines.append(head + f"{run['peak_growth_bytes'] / MiB:,.1f} MiB | {run['ratio']:.3f} | "
                         f"{run['seconds']:.2f} | {run['load_average_before'][0]:.2f} |")
    memory = _meminfo()
    lines += [
        "",
        f"Peak RSS growth: VmHWM after reading minus the RSS after imports (the high-water mark is reset "
        f"through /proc/self/clear_refs), in a fresh interpreter per run. Inputs are random (3, 32, 32) "
        f"samples, so deflate barely shrinks them. `legacy load` is `load_dataset` at commit {LEGACY_COMMIT}. "
        f"Machine: {os.cpu_count()} CPUs, {memory['total_bytes'] / 2**30:.1f} GiB memory "
        f"({memory['available_bytes'] / 2**30:.1f} GiB available at the end), shared with other work; "
        f"'load (1 min)' is os.getloadavg()[0] just before each run. OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}.",
    ]
    results = {"runs": runs, "max_child_bytes": budget, "memory_after": memory, "cpus": os.cpu_count(),
               "legacy_commit": LEGACY_COMMIT}
    write_results("dataset_validation", "OMP_NUM_THREADS=1 python bench/bench_dataset_validation.py", results, lines)


if __name__ == "__main__":
    main()
