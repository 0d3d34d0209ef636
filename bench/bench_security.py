"""Memory high-water of the running server while it validates the largest dataset it accepts
and while it refuses hostile inputs (issue #8), measured from /proc, not estimated.

Starts a real `equiprune serve` (harness/server.py) and, for each case, uploads a file
through the SDK while a sampler reads every process of the server's session 20 times a
second: the whole server's resident memory (sum over its processes), the Ingress replica's
(which used to parse uploads), and the sandboxed validation worker's (which does now). Peaks
are reported as growth over the values just before the upload.

Cases: the largest dataset the default limit accepts (its loaded size just under
`default_max_dataset_bytes()`, inputs uint8, deflated so the file is small); one a little over
the limit (refused from its headers); the issue's 1 MB file that unpacks to 1 GiB; a 252-byte
safetensors naming a 4·10⁶-wide hidden layer; one naming a 10⁹-wide layer.

    python bench/bench_security.py          # ≈ 3 min on 2 cores
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from _common import write_results
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.dataset import default_max_dataset_bytes
from harness.server import ServerProcess

MiB = 2**20
CHUNK = 16 * MiB


def server_processes(session: int) -> dict[int, tuple[str, int]]:
    """pid → (command line, resident bytes) of every process of the server: its session, and
    their descendants in sessions of their own (sandboxed workers start a new session)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            rss_pages = int(Path(f"/proc/{name}/statm").read_text().split()[1])
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            # stat fields 4 and 6: parent pid, session id
            table[int(name)] = (int(fields[1]), int(fields[3]), cmdline, rss_pages * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
    ours = {pid for pid, (_, sid, _, _) in table.items() if sid == session}
    while True:
        children = {pid for pid, (ppid, _, _, _) in table.items() if ppid in ours} - ours
        if not children:
            break
        ours |= children
    return {pid: (table[pid][2], table[pid][3]) for pid in ours}


class Sampler:
    """Peaks of the server's total, Ingress and sandbox-worker resident memory while running."""

    def __init__(self, session: int) -> None:
        self.session, self.peaks, self._stop = session, {"total": 0, "ingress": 0, "sandbox": 0}, threading.Event()

    def sample(self) -> dict[str, int]:
        processes = server_processes(self.session).values()
        return {"total": sum(rss for _, rss in processes),
                "ingress": max((rss for cmd, rss in processes if "Ingress" in cmd), default=0),
                "sandbox": max((rss for cmd, rss in processes if "sandbox.worker" in cmd), default=0)}

    def __enter__(self):
        self.before = self.sample()
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self.sample().items():
                self.peaks[key] = max(self.peaks[key], value)
            time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        time.sleep(0.1)


def write_deflated_dataset(path: Path, samples: int, shape: tuple[int, ...]) -> int:
    """A dataset of uint8 zeros (streamed, deflated: small file, large arrays); its loaded size."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        inputs = np.lib.format.header_data_from_array_1_0(np.zeros((1,), np.uint8))
        inputs["shape"] = (samples, *shape)
        with archive.open("inputs.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, inputs)
            remaining = samples * int(np.prod(shape))
            block = bytes(CHUNK)
            while remaining:
                member.write(block[:min(remaining, CHUNK)])
                remaining -= min(remaining, CHUNK)
        for name, array in (("labels", np.zeros(samples, np.int64)), ("attr__g", np.zeros(samples, np.int64)),
                            ("attr__g__names", np.array(["all"])), ("label_names", np.array(["only", "other"]))):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array)
    return samples * int(np.prod(shape)) * 4 + 2 * samples * 8


def write_header_only_model(path: Path, hidden: int) -> None:
    spec = {"name": "mlp", "kwargs": {"in_features": 64, "hidden": [hidden]}}
    header = json.dumps({"__metadata__": {"equiprune.spec": json.dumps(spec)}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)


def run_case(client: EquipruneClient, session: int, path: Path, kind: str) -> dict:
    with Sampler(session) as sampler:
        started = time.perf_counter()
        try:
            client.upload_file(path, kind)
            outcome = "accepted"
        except EquipruneError as err:
            outcome = f"{err.code.name}: {str(err).removeprefix(err.code.name + ': ')[:120]}"
        seconds = time.perf_counter() - started
    grown = {key: max(0, sampler.peaks[key] - sampler.before[key]) for key in ("total", "ingress")}
    return {"outcome": outcome, "seconds": seconds, "file_bytes": path.stat().st_size,
            "total_growth": grown["total"], "ingress_growth": grown["ingress"], "sandbox_peak": sampler.peaks["sandbox"]}


def main() -> None:
    limit = default_max_dataset_bytes()
    per_sample = 3 * 32 * 32 * 4 + 16
    with tempfile.TemporaryDirectory(prefix="bench-security-") as folder:
        work = Path(folder)
        cases = {}
        largest = write_deflated_dataset(work / "largest.npz", limit // per_sample, (3, 32, 32))
        cases[f"largest accepted dataset (loaded {largest:,} B)"] = (work / "largest.npz", "dataset")
        over = write_deflated_dataset(work / "over.npz", limit // per_sample + 64, (3, 32, 32))
        cases[f"dataset just over the limit (loaded {over:,} B)"] = (work / "over.npz", "dataset")
        write_deflated_dataset(work / "gib.npz", 2**30 // 3072, (3, 32, 32))
        cases["1 GiB of arrays in a small file (issue #8)"] = (work / "gib.npz", "dataset")
        write_header_only_model(work / "wide.safetensors", 4_000_000)
        cases["safetensors naming a 4·10⁶-wide layer"] = (work / "wide.safetensors", "model")
        write_header_only_model(work / "absurd.safetensors", 10**9)
        cases["safetensors naming a 10⁹-wide layer"] = (work / "absurd.safetensors", "model")
        server = ServerProcess(work / "data").start()
        try:
            with EquipruneClient(server.target, timeout=600) as client:
                results = {name: run_case(client, server.process.pid, path, kind) for name, (path, kind) in cases.items()}
        finally:
            server.stop()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"Default dataset limit on this machine: {limit:,} B ({limit / 2**30:.2f} GiB) loaded; load average after the run: "
             f"{load}. Growth = peak resident memory during the upload minus the value just before it.", "",
             "| case | outcome | file | time (s) | whole server: growth | Ingress: growth | sandbox worker: peak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['outcome']} | {r['file_bytes'] / MiB:.1f} MiB | {r['seconds']:.1f} | "
                     f"{r['total_growth'] / MiB:.0f} MiB | {r['ingress_growth'] / MiB:.0f} MiB | "
                     f"{r['sandbox_peak'] / MiB:.0f} MiB |")
    write_results("security", "python bench/bench_security.py", {"limit": limit, "load": load, "cases": results}, lines)


if __name__ == "__main__":
    main()
