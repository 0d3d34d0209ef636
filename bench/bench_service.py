"""The running gRPC service from a client's seat: job submission, watch latency, transfers.

Starts a real `equiprune serve` (Ray + Serve + gRPC on loopback; see harness/server.py)
unless `--server HOST:PORT` names one already running, and drives it through the client SDK:

1. CreateJob round trip (evaluate jobs, created back to back; they queue and run meanwhile)
   against GetJob, a trivial unary read, interleaved call by call so both see the same load.
2. Watch latency: JobEvent.time (the server's clock when it stored the event) to the moment
   the SDK's watch iterator yields it, over a fine-tuning job; same machine, so same clock.
3. Upload and download of a ~64 MiB model (a valid one: the server loads what it receives)
   against a local file copy and a local read + sha256 of the same file.

    python bench/bench_service.py                      # starts its own server; ≈ 1 min on 2 cores
    python bench/bench_service.py --server 127.0.0.1:9000
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _common import DOCS_BENCH, write_results
from equiprune.client import specs
from equiprune.client.sdk import EquipruneClient
from equiprune.client.transfers import file_sha256
from equiprune.engine.models.io import load_model, save_safetensors
from equiprune.engine.models.registry import ArchitectureSpec, build_model
from equiprune.v1 import jobs_pb2
from harness.server import ServerProcess

MiB = 1024 * 1024
DIGITS_CNN = {"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [16, 32]}
# 4096·4096 + 4096·10 weights and biases in float32: 64.2 MiB of safetensors.
BIG_MLP = ArchitectureSpec("mlp", {"num_classes": 10, "in_features": 4096, "hidden": [4096]})


# ---------------------------------------------------------------- statistics

def spread(values: list[float]) -> dict:
    """n, median, p90 (nearest rank) and max."""
    ordered = sorted(values)
    n = len(ordered)
    return {"n": n, "median": statistics.median(ordered), "p90": ordered[math.ceil(0.9 * n) - 1], "max": ordered[-1]}


def ms_row(name: str, s: dict, ratio: str = "") -> str:
    return f"| {name} | {s['n']} | {s['median'] * 1e3:.1f} | {s['p90'] * 1e3:.1f} | {s['max'] * 1e3:.1f} | {ratio} |"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class TimedStub:
    """Wraps a gRPC stub so every unary call's wall time is added up per method name."""

    def __init__(self, stub) -> None:
        self._stub, self.seconds, self.calls = stub, {}, {}

    def __getattr__(self, name):
        method = getattr(self._stub, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                self.calls[name] = self.calls.get(name, 0) + 1
        return timed


# ---------------------------------------------------------------- the three measurements

def train_model(client: EquipruneClient, dataset_id: str) -> str:
    """A short TRAIN job on digits; the id of the model it wrote."""
    job = client.create_job(specs.train_spec(dataset=dataset_id, architecture="small_cnn",
                                             architecture_kwargs=DIGITS_CNN, epochs=2))
    job = client.wait_job(job.job_id, timeout=180)
    if job.state != jobs_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the train job ended {jobs_pb2.JobState.Name(job.state)}: {job.error}")
    return next(o.artifact.artifact_id for o in job.result.outputs if o.role == "model")


def measure_submission(client: EquipruneClient, model_id: str, dataset_id: str, n: int) -> dict:
    """CreateJob and GetJob wall times, interleaved, after one untimed pair; then the drain."""
    spec = specs.evaluate_spec(model=model_id, dataset=dataset_id, group_by="cohort")
    warm = client.create_job(spec)
    client.get_job(warm.job_id)
    job_ids, create, get = [warm.job_id], [], []
    first_created = time.monotonic()
    for _ in range(n):
        started = time.perf_counter()
        job = client.create_job(spec)
        create.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.get_job(job.job_id)
        get.append(time.perf_counter() - started)
        job_ids.append(job.job_id)
    states = [client.wait_job(job_id, timeout=300).state for job_id in job_ids]
    drained = time.monotonic() - first_created
    succeeded = sum(s == jobs_pb2.JOB_STATE_SUCCEEDED for s in states)
    return {"create_s": spread(create), "get_s": spread(get), "jobs": len(job_ids), "succeeded": succeeded,
            "drain_s": drained}


def measure_watch(client: EquipruneClient, model_id: str, dataset_id: str, epochs: int) -> dict:
    """Server-recorded → client-yielded delay of every event stored after the watch opened."""
    spec = specs.finetune_spec(model=model_id, dataset=dataset_id, group_by="cohort", method="naive",
                               epochs=epochs, min_group_size=10)
    job = client.create_job(spec)
    opened = time.time()
    events = []
    for event in client.watch(job.job_id):
        arrived = time.time()
        recorded = event.time.seconds + event.time.nanos * 1e-9
        events.append({"sequence": event.sequence, "recorded": recorded, "arrived": arrived,
                       "phase": event.progress.phase, "step": event.progress.step,
                       "stepping": bool(event.progress.total_steps)})
    final = client.get_job(job.job_id)
    live = [e for e in events if e["recorded"] >= opened]
    steps = [e for e in events if e["phase"] == "finetune" and e["stepping"]]
    step_span = steps[-1]["recorded"] - steps[0]["recorded"] if len(steps) > 1 else 0.0
    span = events[-1]["recorded"] - events[0]["recorded"]
    return {
        "state": jobs_pb2.JobState.Name(final.state),
        "latency_s": spread([e["arrived"] - e["recorded"] for e in live]),
        "events": len(events), "before_watch_opened": len(events) - len(live),
        "job_span_s": span, "events_per_s": (len(events) - 1) / span if span else 0.0,
        "step_events": len(steps), "step_span_s": step_span,
        "step_events_per_s": (len(steps) - 1) / step_span if step_span else 0.0,
        "steps_done": steps[-1]["step"] if steps else 0,
        "sequences_in_order": [e["sequence"] for e in events] == sorted({e["sequence"] for e in events}),
    }


def write_big_model(path: Path) -> None:
    torch.manual_seed(0)
    save_safetensors(build_model(BIG_MLP), BIG_MLP, path)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def copy_and_fsync(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())


def measure_transfers(client: EquipruneClient, folder: Path, repeats: int) -> dict:
    """Local baselines, upload (phases timed per RPC) and download, interleaved per round."""
    source = folder / "big_mlp.safetensors"
    write_big_model(source)
    size = source.stat().st_size
    timings = {name: [] for name in ("copy", "copy_fsync", "read_sha256", "load_model", "upload", "download",
                                     "start_upload", "put_chunks", "finish_upload", "client_side")}
    chunks = 0
    stub = client._artifacts
    for round_ in range(repeats):
        timings["copy"].append(timed(lambda: shutil.copyfile(source, folder / "copy.bin")))
        timings["copy_fsync"].append(timed(lambda: copy_and_fsync(source, folder / "copy_fsync.bin")))
        timings["read_sha256"].append(timed(lambda: file_sha256(source)))
        timings["load_model"].append(timed(lambda: load_model(str(source))))
        timer = client._artifacts = TimedStub(stub)
        try:
            started = time.perf_counter()
            artifact = client.upload_file(source, "model")
            upload = time.perf_counter() - started
        finally:
            client._artifacts = stub
        rpc = {name: timer.seconds.get(name, 0.0) for name in ("StartUpload", "PutUploadChunk", "FinishUpload")}
        chunks = timer.calls.get("PutUploadChunk", 0)
        timings["upload"].append(upload)
        timings["start_upload"].append(rpc["StartUpload"])
        timings["put_chunks"].append(rpc["PutUploadChunk"])
        timings["finish_upload"].append(rpc["FinishUpload"])
        timings["client_side"].append(upload - sum(rpc.values()))  # mostly hashing the file before StartUpload
        target = folder / f"downloaded-{round_}.safetensors"
        timings["download"].append(timed(lambda: client.download(artifact.artifact_id, target)))
        if file_sha256(target) != artifact.sha256:
            raise RuntimeError("the downloaded file differs from the uploaded one")
        target.unlink()
    median_round = sorted(range(repeats), key=lambda i: timings["upload"][i])[repeats // 2]
    phases = {k: timings[k][median_round] for k in ("client_side", "start_upload", "put_chunks", "finish_upload")}
    return {"bytes": size, "chunks_per_upload": chunks, "median_round_phases": phases,
            "seconds": {k: spread(v) for k, v in timings.items()}}


# ---------------------------------------------------------------- report

def table(results: dict) -> list[str]:
    sub, watch, tr = results["submission"], results["watch"], results["transfers"]
    secs, size_mib = tr["seconds"], tr["bytes"] / MiB
    lines = [
        "What this measures: the service as a client sees it, over gRPC on loopback, with the server "
        "(Ray + Serve: proxy, ingress and job-manager replicas, job tasks) and this client on the same "
        "machine: 2 cores, no GPU, so they compete for the two cores. One run.",
        "",
        f"Machine load (1/5/15-min load averages): {results['load_before']} before, {results['load_after']} after"
        + (" — other work was running on the machine during this run, so absolute times are pessimistic."
           if results["busy"] else "."),
        f"Server: {results['server']}.",
        "",
        "## 1. Job submission",
        "",
        "| call | n | median ms | p90 ms | max ms | median ratio to GetJob |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        ms_row("CreateJob (evaluate spec)", sub["create_s"], f"{sub['create_s']['median'] / sub['get_s']['median']:.2f}×"),
        ms_row("GetJob (the job just created)", sub["get_s"], "1.00×"),
        "",
        f"Calls interleaved (create, get, create, …) after one untimed pair; client-side wall time of the SDK call. "
        f"The jobs queue and run while later ones are created (2 at a time, one CPU each), so the calls compete "
        f"with them for the cores. The {sub['jobs']} evaluate jobs (warm-up included) had all finished, "
        f"{sub['succeeded']} of them succeeded, {sub['drain_s']:.1f} s after the first timed create "
        f"({sub['jobs'] / sub['drain_s']:.2f} jobs/s through the queue).",
        "",
        "## 2. Watch event latency",
        "",
        "| measure | n | median ms | p90 ms | max ms | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        ms_row("JobEvent.time → yielded by `watch()`", watch["latency_s"]),
        "",
        f"A naive fine-tuning job of {results['epochs']} epochs on `sample:digits` (small_cnn from a 2-epoch TRAIN "
        f"job), ended {watch['state']}: {watch['events']} events over {watch['job_span_s']:.1f} s "
        f"({watch['events_per_s']:.1f} events/s); {watch['step_events']} of them fine-tuning step events over "
        f"{watch['step_span_s']:.1f} s ({watch['step_events_per_s']:.2f}/s, {watch['steps_done']} steps run). "
        "The service thins step events to one per `progress_interval_s` (0.5 s by default) but always sends "
        f"the last step of each epoch; here an epoch is {watch['steps_done'] / results['epochs']:.0f} steps and "
        f"the step events came on average {1e3 / watch['step_events_per_s'] if watch['step_events_per_s'] else 0:.0f} "
        "ms apart, so nearly all of them are epoch ends and the rate is set by the "
        "epoch time, not by the throttle. "
        f"{watch['before_watch_opened']} event(s) stored before the watch opened (the job's creation) are left out "
        "of the latency. Events arrive in order, each once: "
        f"{watch['sequences_in_order']}. Both clocks are this machine's `time.time()`.",
        "",
        "## 3. Upload and download",
        "",
        f"A {size_mib:.1f} MiB safetensors model (`mlp`, 4096 → 4096 → 10, float32); {secs['upload']['n']} rounds, each: the local baselines, then an upload, then a download.",
        "",
        "| operation | n | median s | p90 s | max s | median MiB/s | ratio to local copy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    copy = secs["copy"]["median"]
    for key, name in (("copy", "local copy (`shutil.copyfile`)"), ("copy_fsync", "local copy + fsync"),
                      ("read_sha256", "local read + sha256"), ("upload", "upload (SDK, default chunks)"),
                      ("download", "download (SDK)")):
        s = secs[key]
        rate = size_mib / s["median"]
        lines.append(f"| {name} | {s['n']} | {s['median']:.3f} | {s['p90']:.3f} | {s['max']:.3f} | {rate:.0f} | "
                     f"{(size_mib / s['median']) / (size_mib / copy):.3f} |")
    phases = tr["median_round_phases"]
    up = sum(phases.values())
    lines += [
        "",
        "Ratios are throughput over the local copy's (so < 1 is slower). Phases of the upload whose total was the "
        f"median ({up:.3f} s), timed per RPC on the client:",
        "",
        "| upload phase | s | share | median over rounds s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name in (("client_side", "client: sha256 of the file (before StartUpload) and file reads"),
                      ("start_upload", "StartUpload"),
                      ("put_chunks", f"PutUploadChunk × {tr['chunks_per_upload']} (server max chunk)"),
                      ("finish_upload", "FinishUpload (server: sha256 check, load the model, store)")):
        lines.append(f"| {name} | {phases[key]:.3f} | {phases[key] / up:.0%} | {secs[key]['median']:.3f} |")
    lines += [
        "",
        f"For scale, `load_model` of the same file in this client process (the validation FinishUpload runs on the "
        f"server) took {secs['load_model']['median']:.3f} s (median). The download includes GetArtifact, the stream "
        "(1 MiB chunks), the client's sha256, fsync and the atomic rename; the local copy is served from the page "
        "cache and is not fsynced (the fsync row is the fairer comparison for the download).",
    ]
    return lines


# ---------------------------------------------------------------- main

def run(client: EquipruneClient, args, folder: Path) -> dict:
    dataset_id = client.import_uri("sample:digits", "dataset").artifact_id  # also the smoke call
    model_id = train_model(client, dataset_id)
    print(f"digits {dataset_id}, trained model {model_id}", flush=True)
    results = {"submission": measure_submission(client, model_id, dataset_id, args.jobs)}
    print("submission done", flush=True)
    results["watch"] = measure_watch(client, model_id, dataset_id, args.epochs)
    print("watch done", flush=True)
    results["transfers"] = measure_transfers(client, folder, args.repeats)
    return results


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--server", help="HOST:PORT of a running server; default: start one on loopback")
    p.add_argument("--jobs", type=int, default=30, help="timed CreateJob calls")
    p.add_argument("--epochs", type=int, default=100, help="epochs of the watched fine-tuning job")
    p.add_argument("--repeats", type=int, default=5, help="upload/download rounds")
    p.add_argument("--out-dir", type=Path, default=DOCS_BENCH)
    args = p.parse_args(argv)

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        folder = Path(tmp)
        server, started = None, time.monotonic()
        if args.server:
            target, how = args.server, f"already running at {args.server}"
        else:
            server = ServerProcess(folder / "data").start(timeout=180)
            target = server.target
            how = f"started by the script (`equiprune.service.launcher`, 2 CPUs for Ray), answering after {time.monotonic() - started:.1f} s"
        try:
            with EquipruneClient(target, timeout=60) as client:
                results = run(client, args, folder)
        except Exception:
            if server is not None:
                print(server.log())
            raise
        finally:
            if server is not None:
                server.stop()
    load_after = load_average()
    results.update(load_before=load_before, load_after=load_after, server=how, epochs=args.epochs,
                   busy=float(load_before.split()[0]) > 1.0)  # before our server started: other work
    write_results("service", "python bench/bench_service.py", results, table(results), out_dir=args.out_dir)


if __name__ == "__main__":
    main()
