"""Run the long fuzzing profile (tests/service/test_fuzz_rpcs.py, `-m slow`, plus the default
profile and the undecodable-bytes checks) against a real server and write the answers it
got, by RPC and status code, to docs/bench/fuzz.md and .json.

    python bench/fuzz_counts.py            # ≈ 15 min on 2 cores (EQUIPRUNE_FUZZ_SLOW_EXAMPLES=120)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from _common import ROOT, write_results

FORBIDDEN = ("INTERNAL", "UNKNOWN", "UNIMPLEMENTED", "DATA_LOSS")


def main() -> None:
    with tempfile.NamedTemporaryFile(suffix=".json") as counts_file:
        env = {**os.environ, "EQUIPRUNE_FUZZ_COUNTS": counts_file.name, "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
                               "tests/service/test_fuzz_rpcs.py"], cwd=ROOT, env=env)
        minutes = (time.perf_counter() - started) / 60
        counts = json.loads(open(counts_file.name).read())
    table: dict[str, dict[str, int]] = defaultdict(dict)
    codes: set[str] = set()
    for key, n in counts.items():
        rpc, code = key.split(" ")
        table[rpc][code] = n
        codes.add(code)
    order = sorted(codes, key=lambda c: (c != "OK", c))
    total = sum(counts.values())
    forbidden = sum(n for key, n in counts.items() if key.split(" ")[1] in FORBIDDEN)
    lines = [f"{total} requests over {len(table)} RPCs in {minutes:.1f} min; pytest exit code {done.returncode}; "
             f"answers with a forbidden code ({', '.join(FORBIDDEN)}): {forbidden}. Load average after: "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.", "",
             "| RPC | " + " | ".join(order) + " | total |", "| --- |" + " --- |" * (len(order) + 1)]
    for rpc in sorted(table):
        row = table[rpc]
        lines.append(f"| {rpc} | " + " | ".join(str(row.get(c, 0)) for c in order) + f" | {sum(row.values())} |")
    lines.append("| **all** | " + " | ".join(str(sum(r.get(c, 0) for r in table.values())) for c in order)
                 + f" | {total} |")
    write_results("fuzz", "python bench/fuzz_counts.py", {"counts": counts, "exit_code": done.returncode,
                                                          "minutes": minutes}, lines)


if __name__ == "__main__":
    main()
