"""Serving from a client's seat: Predict through the running service against the same model run
in-process, outcome ingestion through ReportOutcomes, and a scrape of the live exporter.

Starts a real `equiprune serve` (Ray + Serve + gRPC on loopback; see harness/server.py),
trains a small digits CNN, prunes and fine-tunes it (80 % unstructured), deploys the pruned
model (no shadow, so the service runs one forward pass per batch, like the baseline), then:

1. Predict, each figure next to the same artifact downloaded and loaded here with `load_model`
   on one torch thread (the model server also runs one), forward passes on the same instances:
   (a) 1 instance per request, sequential: latency percentiles, instances/s;
   (b) 1 instance per request from 16 client threads: throughput, so Serve's dynamic batching
       (@serve.batch) can merge requests; compared with (a) for the batch effect;
   (c) 64 instances per request, sequential.
2. ReportOutcomes in batches of 1,000 and 10,000 outcomes (random order) for predictions made
   beforehand with Predict at 1,024 instances per request (timed as well), against the
   20,000/s target and the monitor core alone (docs/bench/monitor.md).
3. GET /metrics on the live exporter with the model deployed and its traffic recorded.

    python bench/bench_serving.py                      # ≈ 70 s on 2 cores (server start included)
"""

from __future__ import annotations

import argparse
import math
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from _common import DOCS_BENCH, write_results
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.models.io import load_model
from equiprune.engine.modes import try_set_mode
from equiprune.v1 import serving_pb2_grpc
from harness.server import ServerProcess
from _serving_measure import (MONITOR_CORE_DOC, PREDICT_MAX, SERVED_NAME, concurrent, deploy_pruned_model, idle,
                              ingest, make_predictions, monitor_core_rate, outcome_requests, predict_requests,
                              raw_forward, scrape, sequential, traffic_rows, trivial_calls, uptime, with_cpu)

TARGET_OUTCOMES_PER_S = 20_000



# ---------------------------------------------------------------- report

def ms(value: float) -> str:
    return f"{value * 1e3:.1f}"


def latency_cells(s: dict) -> str:
    return " | ".join(ms(s[k]) for k in ("p50", "p90", "p99", "max"))


def cpu_cells(row: dict) -> str:
    """Server and client CPU per request, and how many cores the two kept busy on average."""
    busy = (row["server_cpu_s"] + row["client_cpu_s"]) / row.get("wall_s", row.get("seconds"))
    return f"{ms(row['server_cpu_s'] / row['requests'])} | {ms(row['client_cpu_s'] / row['requests'])} | {busy:.2f}"


def table(r: dict) -> list[str]:
    a, b, c = r["single_sequential"], r["single_concurrent"], r["batch64_sequential"]
    raw1, raw64 = r["raw_batch1"], r["raw_batch64"]
    pred, core = r["predictions"], r["monitor_core_per_s"]
    scr, model = r["scrape"], r["model"]
    lines = [
        "What this measures: serving as a client sees it, over gRPC on loopback, against the same model "
        "artifact run in this process. The client, the server (Ray + Serve: gRPC proxy, Ingress, ModelServer, "
        "MonitorService replicas) and the baseline share one machine: 2 CPU cores, no GPU. One run.",
        "",
        f"`uptime` before: `{r['uptime_before']}`; after: `{r['uptime_after']}`"
        + (" — other work was running on the machine, so absolute figures are pessimistic." if r["busy"] else "."),
        f"Server: started by the script (`equiprune.service.launcher`, 2 CPUs for Ray), answering after "
        f"{r['server_start_s']:.1f} s.",
        "",
        f"Model: `small_cnn` on the digits sample (1×8×8 inputs, 10 classes), trained {r['train_epochs']} epochs, "
        f"80 % unstructured pruning + 1 epoch of naive fine-tuning ({model['jobs_s']:.1f} s for the jobs), "
        f"deployed without a shadow in {model['deploy_s']:.2f} s, monitored by `cohort`; the artifact is "
        f"{model['bytes'] / 1024:.0f} KiB. Baseline: that artifact downloaded, `load_model(...).module` in eval "
        "mode, `torch.set_num_threads(1)` (the ModelServer replica also runs one thread), `softmax(model(x))` "
        "under `no_grad` on prebuilt tensors of the same instances. Service requests are built before the "
        "clock starts and sent with the generated stub (no SDK validation), so the client cost timed is "
        "serialisation and the call.",
        "",
        "## 1. Predict: service vs the raw model in-process",
        "",
        "| case | requests | instances/s | service / raw | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU ms/request | client CPU ms/request | cores busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| raw forward, batch 1 | {raw1['passes']} | {raw1['instances_per_s']:,.0f} | 1 | "
        f"{ms(raw1['per_pass_s'])} (mean) | | | | | | |",
        f"| raw forward, batch 64 | {raw64['passes']} | {raw64['instances_per_s']:,.0f} | 1 | "
        f"{ms(raw64['per_pass_s'])} (mean) | | | | | | |",
    ]
    for name, row, raw, base in (("(a) service, 1 instance/request, sequential", a, raw1, "batch 1"),
                                 ("(b) service, 1 instance/request, 16 client threads", b, raw1, "batch 1"),
                                 ("(c) service, 64 instances/request, sequential", c, raw64, "batch 64")):
        lines.append(f"| {name} | {row['requests']} | {row['instances_per_s']:,.0f} | "
                     f"{row['instances_per_s'] / raw['instances_per_s']:.4f} (vs raw {base}) | "
                     + latency_cells(row["latency_s"]) + " | " + cpu_cells(row) + " |")
    t = r["trivial"]
    lines.append(f"| ListServedModels (no model: proxy → Ingress → MonitorService), sequential | {t['requests']} | | | "
                 + latency_cells(t["latency_s"]) + " | | | |")
    lines += [
        "",
        f"Latency is per request, client side. CPU is user + system time of every process of the server's "
        f"session (read from /proc) and of this client process over the phase; idle, the server alone kept "
        f"{r['idle']['server_cpu_s'] / r['idle']['wall_s']:.2f} cores busy ({r['idle']['wall_s']:.0f} s sampled "
        "before the Predict phases; that background is included in the per-request figures). "
        "Cores busy: (server + client CPU) / wall time, out of 2, the rest taken by other work on the machine. "
        f"Raw figures with the server's conversions added (list of "
        f"floats → tensor, probabilities → list, as the model server does (serving/model_server.py)): batch 1 "
        f"{raw1['with_conversion_instances_per_s']:,.0f}/s, batch 64 {raw64['with_conversion_instances_per_s']:,.0f}/s.",
        "",
        f"Batch effect: 16 concurrent single-instance callers get {b['instances_per_s'] / a['instances_per_s']:.2f}× "
        f"the throughput of one sequential caller ({b['instances_per_s']:,.0f} vs {a['instances_per_s']:,.0f} "
        f"instances/s), at a p50 latency of {ms(b['latency_s']['p50'])} ms instead of {ms(a['latency_s']['p50'])} ms. "
        f"64 instances in one request give {c['instances_per_s'] / a['instances_per_s']:.1f}× the single-instance "
        "sequential throughput: per-request overhead, not the forward pass, sets the rate. "
        f"A request's fixed cost, from (a): {ms(a['latency_s']['p50'])} ms at p50 against "
        f"{ms(raw1['per_pass_s'])} ms for the forward pass itself, and {ms(b['server_cpu_s'] / b['requests'])} ms "
        f"of server CPU per request in (b): even with both cores to itself the server could not pass "
        f"{2 / (b['server_cpu_s'] / b['requests']):,.0f} single-instance requests/s. @serve.batch merges only the "
        "ModelServer's forward passes; each Predict still makes its own gRPC proxy → Ingress hop and three "
        "replica calls from the Ingress (MonitorService.served, ModelServer.predict, "
        "MonitorService.record_predictions; read from serving/plane.py, not timed one by one), so merging saves "
        "little of that cost.",
        "",
        "## 2. Outcome ingestion: ReportOutcomes",
        "",
        f"Predictions made first with Predict at 1,024 instances per request (sequential): {pred['instances']:,} "
        f"in {pred['requests']} requests, {pred['wall_s']:.1f} s, **{pred['instances_per_s']:,.0f} predictions/s** "
        f"(request p50 {ms(pred['latency_s']['p50'])} ms, max {ms(pred['latency_s']['max'])} ms; per request "
        f"server CPU {ms(pred['server_cpu_s'] / pred['requests'])} ms, client CPU "
        f"{ms(pred['client_cpu_s'] / pred['requests'])} ms, cores busy "
        f"{(pred['server_cpu_s'] + pred['client_cpu_s']) / pred['wall_s']:.2f}).",
        "",
        "| batch | requests | outcomes | joined | seconds (sum of calls) | outcomes/s | × target (20,000/s) "
        "| × monitor core alone | p50 ms per call | max ms | server CPU ms/call | client CPU ms/call | cores busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["outcomes"]:
        core_ratio = f"{row['per_s'] / core:.2f}×" if core else "n/a"
        s = row["latency_s"]
        lines.append(f"| {row['batch']:,} | {row['requests']} | {row['outcomes']:,} | {row['joined']:,} | "
                     f"{row['seconds']:.2f} | {row['per_s']:,.0f} | {row['per_s'] / TARGET_OUTCOMES_PER_S:.2f}× | "
                     f"{core_ratio} | {ms(s['p50'])} | {ms(s['max'])} | {cpu_cells(row)} |")
    lines += [
        "",
        "Outcomes for distinct predictions, in random order, each joined once (the `joined` column is the server's "
        f"count). The monitor core alone: {core:,.0f} outcomes/s at batches of 1,000 (from {MONITOR_CORE_DOC}, "
        "one process, no Ray or gRPC, run at a different time). Through the service an outcome also crosses the "
        "gRPC proxy, is checked and converted in the Ingress replica and sent on to the MonitorService replica. "
        f"At the end the monitor counted {r['totals']['predictions']:,} predictions and "
        f"{r['totals']['outcomes_joined']:,} joined outcomes (GetModelMetrics totals).",
        "",
        "## 3. Exporter scrape of the live server",
        "",
        "| scrapes | p50 ms | p90 ms | max ms | bytes | series (all) | `equiprune_*` series |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {scr['latency_s']['n']} | {ms(scr['latency_s']['p50'])} | {ms(scr['latency_s']['p90'])} | "
        f"{ms(scr['latency_s']['max'])} | {scr['bytes']:,} | {scr['series']:,} | {scr['equiprune_series']:,} |",
        "",
        "HTTP GET of `http://127.0.0.1:<metrics_port>/metrics` (served by the MonitorService replica) with this one "
        "model deployed, 2 groups and its traffic above recorded, one after another, after the outcomes. For the "
        f"large case (100 models × 10 groups × 3 windows, 41k series) see {MONITOR_CORE_DOC} §3: the text "
        "formatting dominates and grows with the number of series.",
    ]
    return lines


# ---------------------------------------------------------------- main

def run(stub, client: EquipruneClient, args, folder: Path, server: ServerProcess) -> dict:
    model_info = deploy_pruned_model(client, folder, args.train_epochs)
    print(f"deployed {model_info['artifact_id']}", flush=True)
    rows = traffic_rows()
    shape = model_info["input_shape"]
    torch.set_num_threads(1)
    model = load_model(str(model_info["path"])).module
    try_set_mode(model, False)

    single = predict_requests(rows, args.single + args.concurrent_requests, 1)
    batch64 = predict_requests(rows, args.batch64, 64)
    for request in single[:20] + batch64[:5]:  # loads the model into the replica, warms every hop
        stub.Predict(request, timeout=120)
    results = {"model": {k: v for k, v in model_info.items() if k != "path"}}
    session = server.process.pid
    results["idle"] = with_cpu(session, idle, args.idle_s)
    results["raw_batch1"] = raw_forward(model, rows, 1, args.raw_passes, shape)
    results["trivial"] = trivial_calls(stub, args.trivial)
    results["single_sequential"] = with_cpu(session, sequential, stub, single[:args.single])
    results["single_concurrent"] = with_cpu(session, concurrent, stub, single[args.single:], args.threads)
    results["raw_batch64"] = raw_forward(model, rows, 64, args.raw_passes // 10, shape)
    results["batch64_sequential"] = with_cpu(session, sequential, stub, batch64)
    print("predict done", flush=True)

    full = predict_requests(rows, math.ceil((args.outcomes_small + args.outcomes_large) / PREDICT_MAX), PREDICT_MAX)
    made = with_cpu(session, make_predictions, stub, rows, full)
    pairs = list(zip(made["ids"], made["labels"]))
    random.Random(0).shuffle(pairs)
    results["predictions"] = {**made["stats"], "server_cpu_s": made["server_cpu_s"], "client_cpu_s": made["client_cpu_s"]}
    small = outcome_requests(pairs[:args.outcomes_small], 1000)
    large = outcome_requests(pairs[args.outcomes_small:args.outcomes_small + args.outcomes_large], 10_000)
    results["outcomes"] = [with_cpu(session, ingest, stub, small), with_cpu(session, ingest, stub, large)]
    results["monitor_core_per_s"] = monitor_core_rate()
    print("outcomes done", flush=True)

    results["scrape"] = scrape(server.metrics_port, args.scrapes)
    totals = client.get_model_metrics(SERVED_NAME).totals
    results["totals"] = {"predictions": totals.predictions, "outcomes_joined": totals.outcomes_joined}
    return results


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--train-epochs", type=int, default=5)
    p.add_argument("--single", type=int, default=500, help="(a) sequential 1-instance requests")
    p.add_argument("--concurrent-requests", type=int, default=1600, help="(b) 1-instance requests in all")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--batch64", type=int, default=200, help="(c) sequential 64-instance requests")
    p.add_argument("--idle-s", type=float, default=5.0, help="seconds of idle server CPU sampled")
    p.add_argument("--trivial", type=int, default=200, help="sequential ListServedModels calls")
    p.add_argument("--raw-passes", type=int, default=2000, help="batch-1 forward passes (batch 64: a tenth)")
    p.add_argument("--outcomes-small", type=int, default=10_000, help="outcomes sent in batches of 1,000")
    p.add_argument("--outcomes-large", type=int, default=40_000, help="outcomes sent in batches of 10,000")
    p.add_argument("--scrapes", type=int, default=20)
    p.add_argument("--out-dir", type=Path, default=DOCS_BENCH)
    args = p.parse_args(argv)

    uptime_before, load_before = uptime(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        server = ServerProcess(folder / "data").start(timeout=180)
        server_start_s = time.monotonic() - started
        try:
            with EquipruneClient(server.target, timeout=60) as client, server.channel() as channel:
                results = run(serving_pb2_grpc.ServingServiceStub(channel), client, args, folder, server)
        except Exception:
            print(server.log())
            raise
        finally:
            server.stop()
    results.update(uptime_before=uptime_before, uptime_after=uptime(), server_start_s=server_start_s,
                   train_epochs=args.train_epochs, busy=load_before > 1.0)
    write_results("serving", "python bench/bench_serving.py", results, table(results), out_dir=args.out_dir)


if __name__ == "__main__":
    main()
