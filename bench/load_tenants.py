"""Mixed load from several tenants at once (issue #11, item 7).

Starts a real `equiprune serve` (harness/server.py), creates N tenants (own token,
max_concurrent_jobs = 1), and in each: imports the digits sample, uploads a small CNN trained
here, runs one evaluate job for the reference and deploys the model as "digits" (the same name
in every tenant). Then, for a bounded time, per tenant three client threads (harness/load.py):
Predict batches of 16 back to back, ReportOutcomes for every prediction made, and job traffic
(CreateJob of a long train job; while it runs, CreateJob again, which must be RESOURCE_EXHAUSTED
naming quotas.max_concurrent_jobs, GetJob, WaitJob with a 0.2 s timeout, ListJobs; CancelJob).

What it measures: every call's latency (client side, p50/p99/max) and status code per RPC, and
per tenant the predictions made and outcomes acknowledged against its GetModelMetrics totals.
It fails (exit 1) on any status other than OK and that intended RESOURCE_EXHAUSTED, on totals
that differ from what the tenant made and had acknowledged (exactly once, in its own tenant),
or when no RESOURCE_EXHAUSTED was seen.

    OMP_NUM_THREADS=1 .venv/bin/python bench/load_tenants.py [--quick] [--out docs/load-tenants.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine
from harness.load import QUOTA_FIELD, run_load, setup_tenants, train_model_file
from harness.server import ServerProcess

RPC_ORDER = ("Predict", "ReportOutcomes", "CreateJob", "GetJob", "WaitJob", "ListJobs", "CancelJob", "GetModelMetrics")
REPORT_MOST = 64  # outcomes per ReportOutcomes call: what run_load is given and the doc states


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def table(r: dict) -> list[str]:
    n, seconds = len(r["tenants"]), r["seconds"]
    lines = [
        f"Mixed load from {n} tenants at once for {seconds:.0f} s (wall {r['wall_s']:.1f} s) against one server "
        f"(Ray + Serve + gRPC on loopback, {r['server_cpus']} CPUs for Ray) on the same machine as the client: "
        f"{r['cpu_count']} CPU cores, no GPU. One run.",
        "",
        f"Load average (1, 5, 15 min) before: {r['load_before']}; after: {r['load_after']}"
        + (" — other work shared the machine, so absolute latencies are pessimistic." if r["busy"] else "."),
        "",
        f"Each tenant: its own token, max_concurrent_jobs = {r['max_concurrent_jobs']}, a small CNN (digits) "
        "deployed as `digits` (the same name in every tenant), and three client threads: Predict batches of "
        f"{r['batch']} back to back; ReportOutcomes with the true label of every prediction made (up to "
        f"{r['report_most']} per call, as they come); job traffic every {r['job_every_s']:g} s: CreateJob (a long "
        f"train job), held {r['hold_s']:g} s while CreateJob is tried again (RESOURCE_EXHAUSTED naming "
        f"`{QUOTA_FIELD}` is intended), GetJob and WaitJob (0.2 s timeout) of it, then CancelJob; ListJobs "
        "throughout. The held jobs start training (Ray worker) and compete with serving for the two cores.",
        "",
        "## Calls per RPC",
        "",
        "| RPC | calls | p50 ms | p99 ms | max ms | status codes |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    rpcs = r["rpcs"]
    for rpc in sorted(rpcs, key=lambda x: RPC_ORDER.index(x) if x in RPC_ORDER else len(RPC_ORDER)):
        s = rpcs[rpc]
        codes = ", ".join(f"{code} {count:,}" for code, count in sorted(s["codes"].items()))
        lines.append(f"| {rpc} | {s['calls']:,} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} | {codes} |")
    unintended = ", ".join(f"{k}: {v}" for k, v in r["unintended"].items()) or "none"
    lines += [
        "",
        f"RESOURCE_EXHAUSTED naming `{QUOTA_FIELD}` (intended): {r['intended_exhausted']:,}. "
        f"Any other status than OK (unintended): {unintended}. WaitJob's latency includes its 0.2 s wait "
        "(the held job never finishes in time). GetModelMetrics and the last ListJobs per tenant are the "
        "checks after the load; the warm-up (one Predict and its outcomes per tenant, before the clock) "
        "is counted in the totals, not in the latencies.",
        "",
        "## Per tenant: made and acknowledged vs counted by the server",
        "",
        "| tenant | predictions made | counted (GetModelMetrics) | outcomes sent | acknowledged joined | "
        "counted joined | other outcome totals | RESOURCE_EXHAUSTED | jobs cancelled | unfinished after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, t in r["per_tenant"].items():
        totals = t["totals"]
        others = {k: v for k, v in totals.items() if k not in ("predictions", "outcomes_joined") and v} or "none"
        lines.append(f"| {name} | {t['predicted']:,} | {totals.get('predictions', 0):,} | {t['outcomes_sent']:,} | "
                     f"{t['acknowledged'].get('joined', 0):,} | {totals.get('outcomes_joined', 0):,} | {others} | "
                     f"{t['exhausted']:,} | {sum(t['job_states_after_cancel'].values())} | "
                     f"{t['unfinished_jobs_after']} |")
    lines += [
        "",
        "Each tenant's totals count exactly what that tenant made and had acknowledged: every outcome once, in "
        "its own tenant (the served name is the same in all of them), and every prediction id it got was its "
        "own (`<tenant>/digits.<hex>`).",
        "",
        f"Result: **{'PASS' if not r['failures'] else 'FAIL'}**"
        + ("" if not r["failures"] else ": " + "; ".join(r["failures"])),
    ]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="15 s of load instead of 60")
    p.add_argument("--seconds", type=float, default=None, help="load duration (default 60, --quick 15)")
    p.add_argument("--tenants", type=int, default=3)
    p.add_argument("--batch", type=int, default=16, help="instances per Predict")
    p.add_argument("--max-concurrent-jobs", type=int, default=1)
    p.add_argument("--job-every-s", type=float, default=6.0)
    p.add_argument("--hold-s", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "load-tenants.md")
    args = p.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (15.0 if args.quick else 60.0)
    command = "OMP_NUM_THREADS=1 .venv/bin/python bench/load_tenants.py" + "".join(
        f" {a}" for a in (sys.argv[1:] if argv is None else argv))

    load_before = _load()
    busy = os.getloadavg()[0] > 1.0
    with tempfile.TemporaryDirectory(prefix="load-tenants-") as tmp:
        folder = Path(tmp)
        model = train_model_file(folder / "m.safetensors")
        server = ServerProcess(folder / "data").start(timeout=180)
        try:
            started = time.monotonic()
            names = [f"load-{i + 1}" for i in range(args.tenants)]
            tenants = setup_tenants(server.target, server.admin_token, names, model, args.max_concurrent_jobs)
            print(f"{len(tenants)} tenants set up in {time.monotonic() - started:.1f} s; load for {seconds:g} s",
                  flush=True)
            results = run_load(server.target, tenants, seconds, batch=args.batch, report_most=REPORT_MOST,
                               job_every_s=args.job_every_s, hold_s=args.hold_s)
        except Exception:
            print(server.log())
            raise
        finally:
            server.stop()
    results.update(load_before=load_before, load_after=_load(), busy=busy, cpu_count=os.cpu_count(),
                   server_cpus=server.num_cpus, batch=args.batch, report_most=REPORT_MOST, job_every_s=args.job_every_s,
                   hold_s=args.hold_s, max_concurrent_jobs=args.max_concurrent_jobs)
    meta = machine()
    lines = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(["# Load from several tenants at once", "", f"Produced by `{command}` on "
                                   f"{meta['when']} (Python {meta['python']}, torch {meta['torch']}).", "",
                                   *lines, ""]))
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": meta, "results": results},
                                                        indent=1))
    print("\n".join(lines))
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
