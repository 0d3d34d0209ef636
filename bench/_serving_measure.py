"""What bench_serving.py measures, one function per measurement: latency statistics, CPU time
of a process tree, the served model's deployment, Predict and ReportOutcomes under load, the
same forward passes in-process, and exporter scrapes. Kept apart from the report it writes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import torch

from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2, serving_pb2

from _common import DOCS_BENCH
from harness.traffic import instances, percentile, traffic_rows  # noqa: F401 - bench_serving imports them from here

MONITOR_CORE_DOC = "docs/bench/monitor.md"
DIGITS_CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}
SERVED_NAME = "bench-digits"
PREDICT_MAX = 1024  # Predict's per-request limit


# ---------------------------------------------------------------- statistics

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
