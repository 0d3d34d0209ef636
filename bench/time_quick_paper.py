"""Wall and CPU time of the README's quick paper reproduction, run exactly as the README writes it.

    .venv/bin/python bench/time_quick_paper.py           # cold: the quick run's cached dense models are removed first
    .venv/bin/python bench/time_quick_paper.py --warm    # keeps them (a second run skips the dense training)

Runs `.venv/bin/python bench/reproduce_paper.py --quick` from the repository root as a child
process with this environment, echoes its progress lines, and records: wall time, the CPU time
(user + system) of the child processes from getrusage(RUSAGE_CHILDREN), their peak memory, the
load average before and after, the CPU time every other process on the machine used meanwhile
(/proc/stat's busy time less this script's and the run's), the CPU count, where the run wrote,
and the paper's effect as the run's summary.md states it. Writes docs/bench/quick-paper.md and
.json (every figure from this one run). The time is only the README's figure when the machine
was idle: a 1-minute load average below 0.7 before the run, and other processes using under
0.2 cores on average during it (the run's own processes raise the load average "after" by up
to 2, so that value alone says little).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, write_results
from reproduce_paper import parse_args

COMMAND = [".venv/bin/python", "bench/reproduce_paper.py", "--quick"]  # as the README writes it
IDLE_LOAD = 0.7
IDLE_OTHERS_CORES = 0.2


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warm", action="store_true", help="keep the quick run's cached dense models")
    args = p.parse_args(argv)
    out = Path(parse_args(["--quick"]).out)  # the quick run's default folder
    cached = sorted(out.glob("dense-*"))
    if not args.warm:
        for path in cached:
            path.unlink()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = os.getloadavg()
    if load_before[0] >= IDLE_LOAD:
        print(f"note: 1-minute load average {load_before[0]:.2f} ≥ {IDLE_LOAD}: not an idle measurement", flush=True)
    usage_before, self_before = resource.getrusage(resource.RUSAGE_CHILDREN), _own_cpu()
    busy_before = _busy_seconds()
    started = time.perf_counter()
    lines = []
    with subprocess.Popen(COMMAND, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
    wall = time.perf_counter() - started
    usage, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), _busy_seconds()
    load_after = os.getloadavg()
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    others = (busy_after - busy_before - cpu - (_own_cpu() - self_before)) if busy_before is not None else None
    idle = load_before[0] < IDLE_LOAD and others is not None and others / wall < IDLE_OTHERS_CORES
    log = "\n".join(lines)
    written = re.search(r"^Writing into (.+?)/ ", log, re.M)
    setups = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\s*\d+s \[(\w+)\] set-up done in (\d+)s", log, re.M)}
    summary = out / "summary.md"
    outputs = [summary, out / "results.json", *[out / f"{s}_{k}.png" for s in setups for k in ("group_accuracy", "max_psi")]]
    effect = re.findall(r"^## target (\w+).*?^- just-pruned test max ψ_g by sparsity (.+?)$", summary.read_text(), re.M | re.S) \
        if child.returncode == 0 and summary.exists() else []
    results = {
        "command": " ".join(COMMAND), "cwd": "repository root", "returncode": child.returncode,
        "wall_seconds": wall, "children_cpu_seconds": cpu, "children_user_seconds": usage.ru_utime - usage_before.ru_utime,
        "children_system_seconds": usage.ru_stime - usage_before.ru_stime, "children_peak_rss_mib": usage.ru_maxrss / 1024,
        "cpus": cpus, "load_average_before": load_before, "load_average_after": load_after,
        "others_cpu_seconds": others, "idle": idle, "dense_cache": "kept" if args.warm else f"removed ({len(cached)} files)",
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "output_folder": written.group(1) if written else None,
        "outputs_present": all(p.exists() for p in outputs), "setup_seconds": setups,
        "just_pruned_test_max_psi": {target: text for target, text in effect},
    }
    table = [
        f"`{results['command']}` from the repository root, "
        f"{'warm (dense models cached by an earlier run)' if args.warm else 'cold (no cached dense model: both are trained)'}.",
        "",
        "| quantity | value |",
        "| --- | ---: |",
        f"| wall time | {wall:.0f} s ({wall / 60:.1f} min) |",
        f"| CPU time of the child processes (user + system) | {cpu:.0f} s ({cpu / wall:.2f} cores busy on average) |",
        *[f"| set-up {s} (its own clock, in parallel) | {v:.0f} s |" for s, v in setups.items()],
        f"| peak memory of one child process | {results['children_peak_rss_mib']:.0f} MiB |",
        f"| CPUs | {cpus} |",
        f"| load average before (1, 5, 15 min) | {_load(load_before)} |",
        f"| load average after (1, 5, 15 min) | {_load(load_after)} |",
        f"| CPU time of all other processes during the run | "
        f"{'n/a' if others is None else f'{others:.0f} s ({others / wall:.2f} cores on average)'} |",
        f"| exit status | {child.returncode} |",
        "",
        f"Load: {'idle' if idle else 'NOT idle'} — the 1-minute load average before the run was "
        f"{load_before[0]:.2f} and other processes used "
        f"{'an unknown share' if others is None else f'{others / wall:.2f} cores on average'} during it "
        f"(idle means below {IDLE_LOAD} and below {IDLE_OTHERS_CORES} cores); the run's own two processes add up "
        f"to 2 to the load average after. OMP_NUM_THREADS {results['omp_num_threads'] or 'unset'}; the run starts one process per set-up "
        f"with one torch thread each on {cpus} cores (the thread count in the header is this timing script's own).",
        "",
        f"The run wrote into `{_relative(results['output_folder'])}` (the path it printed on its second line and again "
        f"at the end): summary.md, results.json and the PNG plots — {'all present' if results['outputs_present'] else 'SOME MISSING'}.",
        "",
        "The paper's effect in this run (summary.md's check): just-pruned test max ψ_g by sparsity, in points —",
        *[f"- target {t}: {text}" for t, text in results["just_pruned_test_max_psi"].items()],
    ]
    write_results("quick-paper", ".venv/bin/python bench/time_quick_paper.py" + (" --warm" if args.warm else ""),
                  results, table)
    return results


def _busy_seconds() -> float | None:
    """CPU seconds all CPUs of this machine have spent busy since boot (/proc/stat; None elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _relative(path: str | None) -> str:
    if path is None:
        return "(not announced)"
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


if __name__ == "__main__":
    main()
