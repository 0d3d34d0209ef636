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
import json
import math
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import torch

from _common import DOCS_BENCH, write_results
from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.engine.models.io import load_model
from equiprune.engine.modes import try_set_mode
from equiprune.service.artifacts.samples import write_traffic
from equiprune.v1 import jobs_pb2, serving_pb2, serving_pb2_grpc
from harness.server import ServerProcess

TARGET_OUTCOMES_PER_S = 20_000
MONITOR_CORE_DOC = "docs/bench/monitor.md"
DIGITS_CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}
SERVED_NAME = "bench-digits"
PREDICT_MAX = 1024  # Predict's per-request limit


# ---------------------------------------------------------------- statistics

def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "p50": percentile(ordered, 0.5), "p90": percentile(ordered, 0.9),
            "p99": percentile(ordered, 0.99), "max": ordered[-1], "mean": statistics.fmean(ordered)}


def session_cpu_s(session: int) -> float:
    """User + system CPU seconds of the live processes in a session: the server started with
    `start_new_session`, so its Ray processes (GCS, raylet, proxy and replica workers) are in it."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session:  # fields after the command name: state, ppid, pgrp, session, …
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def with_cpu(session: int, measure, *args) -> dict:
    """Run a measurement; add the CPU seconds the server and this client process spent in it."""
    server, client = session_cpu_s(session), time.process_time()
    result = measure(*args)
    result["server_cpu_s"] = session_cpu_s(session) - server
    result["client_cpu_s"] = time.process_time() - client
    return result


def idle(seconds: float) -> dict:
    """Nothing sent: what the server's background (GCS, raylet, Serve controller, health
    checks, the monitor's persistence) costs by itself."""
    time.sleep(seconds)
    return {"wall_s": seconds}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ---------------------------------------------------------------- setting up the served model

def wait_succeeded(client: EquipruneClient, job: jobs_pb2.Job) -> jobs_pb2.Job:
    job = client.wait_job(job.job_id, timeout=300)
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job {job.job_id} ended {jobs_pb2.JobState.Name(job.state)}: {job.error}")
    return job


def model_output(job: jobs_pb2.Job) -> str:
    return next(o.artifact.artifact_id for o in job.result.outputs if o.role == "model")


def deploy_pruned_model(client: EquipruneClient, folder: Path, train_epochs: int) -> dict:
    """Train, prune and fine-tune, deploy the pruned model; download it for the baseline."""
    started = time.monotonic()
    dataset = client.import_uri("sample:digits", "dataset").artifact_id
    dense = model_output(wait_succeeded(client, client.create_job(specs.train_spec(
        dataset=dataset, architecture="small_cnn", architecture_kwargs=DIGITS_CNN, epochs=train_epochs))))
    job = wait_succeeded(client, client.create_job(specs.prune_and_finetune_spec(
        model=dense, dataset=dataset, group_by="cohort", sparsity=0.8, method="naive", epochs=1,
        min_group_size=10)))
    pruned = model_output(job)
    jobs_s = time.monotonic() - started
    started = time.monotonic()
    served = client.deploy_model(SERVED_NAME, pruned, ["cohort"], reference_job_id=job.job_id)
    deploy_s = time.monotonic() - started
    path = folder / "pruned-model"
    client.download(pruned, path)
    return {"artifact_id": pruned, "path": path, "bytes": path.stat().st_size, "jobs_s": jobs_s,
            "deploy_s": deploy_s, "input_shape": list(served.input_shape)}


def traffic_rows(folder: Path) -> list[dict]:
    path = folder / "traffic.jsonl"
    write_traffic(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def instances(rows: list[dict], count: int, offset: int = 0) -> list[serving_pb2.Instance]:
    """`count` instances cycling through the digits rows, starting at `offset`."""
    picked = (rows[(offset + i) % len(rows)] for i in range(count))
    return [serving_pb2.Instance(values=r["values"], groups=r["groups"]) for r in picked]


def predict_requests(rows: list[dict], count: int, per_request: int) -> list[serving_pb2.PredictRequest]:
    """Built before any clock starts: the client's protobuf construction is not the service's cost."""
    return [serving_pb2.PredictRequest(model=SERVED_NAME, instances=instances(rows, per_request, k * per_request))
            for k in range(count)]


# ---------------------------------------------------------------- Predict through the service

def sequential(stub, requests: list[serving_pb2.PredictRequest]) -> dict:
    times, instances_sent = [], 0
    started = time.perf_counter()
    for request in requests:
        begun = time.perf_counter()
        reply = stub.Predict(request, timeout=60)
        times.append(time.perf_counter() - begun)
        if len(reply.predictions) != len(request.instances):
            raise RuntimeError(f"{len(reply.predictions)} predictions for {len(request.instances)} instances")
        instances_sent += len(request.instances)
    wall = time.perf_counter() - started
    return {"latency_s": latency(times), "requests": len(requests), "instances": instances_sent, "wall_s": wall,
            "instances_per_s": instances_sent / wall}


def concurrent(stub, requests: list[serving_pb2.PredictRequest], threads: int) -> dict:
    """`threads` client threads on one channel, each sending its share back to back."""
    shares = [requests[t::threads] for t in range(threads)]
    times: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    ready = threading.Barrier(threads + 1)

    def send(t: int) -> None:
        ready.wait()
        try:
            for request in shares[t]:
                begun = time.perf_counter()
                reply = stub.Predict(request, timeout=60)
                times[t].append(time.perf_counter() - begun)
                if len(reply.predictions) != len(request.instances):
                    raise RuntimeError("prediction count differs from instance count")
        except BaseException as err:  # noqa: BLE001 - reported after the join
            errors.append(err)

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    started = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    sent = sum(len(r.instances) for r in requests)
    return {"latency_s": latency([x for per in times for x in per]), "requests": len(requests), "threads": threads,
            "instances": sent, "wall_s": wall, "instances_per_s": sent / wall}


def trivial_calls(stub, count: int) -> dict:
    """ListServedModels: gRPC proxy → Ingress → MonitorService and back, no model involved."""
    times = []
    for _ in range(count):
        begun = time.perf_counter()
        stub.ListServedModels(serving_pb2.ListServedModelsRequest(), timeout=60)
        times.append(time.perf_counter() - begun)
    return {"latency_s": latency(times), "requests": count}


# ---------------------------------------------------------------- the raw model in-process

def raw_forward(model: torch.nn.Module, rows: list[dict], batch: int, passes: int, shape: list[int]) -> dict:
    """Forward passes (plus softmax, which the server applies too) on prebuilt tensors of the
    same instances, one torch thread; and the same including the server's conversions (list
    of floats → tensor, probabilities → list), which `_forward` in serving.py also does."""
    lists = [[rows[(k * batch + i) % len(rows)]["values"] for i in range(batch)] for k in range(passes)]
    tensors = [torch.tensor(x, dtype=torch.float32).reshape(batch, *shape) for x in lists]
    with torch.no_grad():
        for x in tensors[:5]:
            torch.softmax(model(x), dim=1)  # warm-up
        started = time.perf_counter()
        for x in tensors:
            torch.softmax(model(x).float(), dim=1)
        forward = time.perf_counter() - started
        started = time.perf_counter()
        for rows_ in lists:
            torch.softmax(model(torch.tensor(rows_, dtype=torch.float32).reshape(batch, *shape)).float(), dim=1).tolist()
        converted = time.perf_counter() - started
    return {"batch": batch, "passes": passes, "forward_s": forward, "instances_per_s": batch * passes / forward,
            "per_pass_s": forward / passes, "with_conversion_s": converted,
            "with_conversion_instances_per_s": batch * passes / converted}


# ---------------------------------------------------------------- outcomes

def make_predictions(stub, rows: list[dict], requests: list[serving_pb2.PredictRequest]) -> dict:
    """Predictions from full requests (timed); their ids and the true labels of their rows."""
    labels = [rows[i % len(rows)]["label"] for i in range(len(requests) * PREDICT_MAX)]
    ids, times = [], []
    started = time.perf_counter()
    for request in requests:
        begun = time.perf_counter()
        ids.extend(p.prediction_id for p in stub.Predict(request, timeout=120).predictions)
        times.append(time.perf_counter() - begun)
    wall = time.perf_counter() - started
    return {"ids": ids, "labels": labels[:len(ids)], "stats": {
        "requests": len(requests), "instances": len(ids), "wall_s": wall, "instances_per_s": len(ids) / wall,
        "latency_s": latency(times)}}


def outcome_requests(pairs: list[tuple[str, int]], batch: int) -> list[serving_pb2.ReportOutcomesRequest]:
    return [serving_pb2.ReportOutcomesRequest(outcomes=[serving_pb2.Outcome(prediction_id=i, label=label)
                                                        for i, label in pairs[k:k + batch]])
            for k in range(0, len(pairs), batch)]


def ingest(stub, requests: list[serving_pb2.ReportOutcomesRequest]) -> dict:
    batch, outcomes = len(requests[0].outcomes), sum(len(r.outcomes) for r in requests)
    times, joined, other = [], 0, 0
    for request in requests:
        begun = time.perf_counter()
        reply = stub.ReportOutcomes(request, timeout=120)
        times.append(time.perf_counter() - begun)
        joined += reply.joined
        other += reply.unknown + reply.duplicate + reply.late + reply.invalid
    seconds = sum(times)
    return {"batch": batch, "requests": len(requests), "outcomes": outcomes, "joined": joined, "not_joined": other,
            "seconds": seconds, "per_s": outcomes / seconds, "latency_s": latency(times)}


def monitor_core_rate() -> float | None:
    """The monitor core's outcomes/s at batch 1,000 from the committed monitor benchmark."""
    try:
        rows = json.loads((DOCS_BENCH / "monitor.json").read_text())["results"]["outcomes"]
        return next(r["per_s"] for r in rows if r["batch"] == 1000 and r["pending_before"] == r["outcomes"])
    except (OSError, KeyError, StopIteration, ValueError):
        return None


# ---------------------------------------------------------------- scrape

def scrape(metrics_port: int, repeats: int) -> dict:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    times, body = [], b""
    for _ in range(repeats):
        begun = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
        times.append(time.perf_counter() - begun)
    samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    ours = [line for line in samples if line.startswith("equiprune_")]
    return {"latency_s": latency(times), "bytes": len(body), "series": len(samples), "equiprune_series": len(ours)}


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
        f"floats → tensor, probabilities → list, as `_forward` in serving.py does): batch 1 "
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
        "MonitorService.record_predictions; read from ingress.py, not timed one by one), so merging saves "
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
    rows = traffic_rows(folder)
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
            with EquipruneClient(server.target, timeout=60) as client, grpc.insecure_channel(server.target) as channel:
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
