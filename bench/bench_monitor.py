"""The production monitor's cost: outcome ingestion, prediction recording, Prometheus scrapes,
the pending ledger's memory and a snapshot of it.

1. Outcomes joined per second in batches of 100, 1,000 and 10,000 (ReportOutcomes carries up
   to 100,000), arriving in random order, against the 20,000/s target; once more with the
   pending ledger full (1,000,000 predictions waiting, the default bound).
2. Predictions recorded per second in batches of 1,000 (Predict's 1,024 limit), 10 and 1,000
   classes, shadow class on two thirds of them.
3. A scrape (`generate_latest`) with 100 models × 10 groups × 3 windows, and its series count.
4. Memory per pending prediction (tracemalloc) and a save/load of the full ledger's snapshot.

    python bench/bench_monitor.py            # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import gc
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from _common import write_results
from equiprune.service.serving.monitor import ModelReference, Monitor, MonitorConfig
from equiprune.service.serving.monitor.exporter import MonitorExporter

TARGET_PER_S = 20_000
GROUPS = [{"race": r, "sex": s} for r in ("a", "b", "c", "d", "e") for s in ("f", "m")]  # 10 groups
REFERENCE = {f"{g['race']}&{g['sex']}": 0.9 for g in GROUPS}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def probabilities(num_classes: int, predicted: int) -> list[float]:
    rest = 0.4 / (num_classes - 1)
    return [0.6 if c == predicted else rest for c in range(num_classes)]


def new_monitor(models: int = 1, num_classes: int = 10, **config) -> Monitor:
    monitor = Monitor(MonitorConfig(**config))
    for m in range(models):
        monitor.register_model(ModelReference(f"model-{m}", ("race", "sex"), REFERENCE,
                                              tolerance=0.02, num_classes=num_classes))
    return monitor


def prediction_batches(model: str, count: int, batch: int, num_classes: int, now: float) -> list[list[tuple]]:
    probs = probabilities(num_classes, 3)
    rows = [(f"{model}.{i:024x}", now, GROUPS[i % 10], 3, probs, (3 if i % 3 else 4) if i % 3 != 1 else None)
            for i in range(count)]
    return [rows[k:k + batch] for k in range(0, count, batch)]


def record_all(monitor: Monitor, model: str, batches: list[list[tuple]]) -> float:
    started = time.perf_counter()
    for items in batches:
        monitor.record_predictions(model, items)
    return time.perf_counter() - started


def outcome_rate(batch: int, count: int, pending_filler: int = 0) -> dict:
    """Outcomes/s for `count` outcomes in random order, in batches of `batch`, with
    `pending_filler` further predictions waiting in the ledger (never answered)."""
    monitor = new_monitor()
    now = monitor.now()
    if pending_filler:
        record_all(monitor, "model-0", prediction_batches("filler", pending_filler, 1000, 10, now))
    record_all(monitor, "model-0", prediction_batches("model-0", count, 1000, 10, now))
    ids = [f"model-0.{i:024x}" for i in range(count)]
    random.Random(0).shuffle(ids)
    batches = [[(pid, 3 if i % 5 else 1) for i, pid in enumerate(ids[k:k + batch])] for k in range(0, count, batch)]
    gc.collect()
    started = time.perf_counter()
    joined = 0
    for outcomes in batches:
        joined += monitor.record_outcomes(outcomes)["joined"]
    elapsed = time.perf_counter() - started
    assert joined == count
    return {"batch": batch, "outcomes": count, "pending_before": count + pending_filler, "seconds": elapsed,
            "per_s": count / elapsed, "monitor": monitor}


def prediction_rate(num_classes: int, count: int) -> dict:
    monitor = new_monitor(num_classes=num_classes)
    batches = prediction_batches("model-0", count, 1000, num_classes, monitor.now())
    gc.collect()
    elapsed = record_all(monitor, "model-0", batches)
    return {"num_classes": num_classes, "predictions": count, "seconds": elapsed, "per_s": count / elapsed}


def scrape_cost(models: int = 100, repeats: int = 5) -> dict:
    """A monitor with traffic in every window of every group of every model, then scrapes."""
    monitor = new_monitor(models=models, min_count=5)
    now = monitor.now()
    for m in range(models):
        name = f"model-{m}"
        for age in (30, 1200, 20000):  # lands in 5 m / 1 h / 1 d
            rows = [(f"{name}.{age}.{i}", now - age, GROUPS[i % 10], 3, probabilities(10, 3), 3) for i in range(100)]
            monitor.record_predictions(name, rows)
            monitor.record_outcomes([(row[0], 3 if i % 7 else 2) for i, row in enumerate(rows)])
    monitor.maintain()
    registry = CollectorRegistry()
    MonitorExporter(monitor, registry)
    times, body = [], b""
    for _ in range(repeats):
        started = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    for m in range(models):
        monitor.metrics(f"model-{m}")
    metrics_s = time.perf_counter() - started
    samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    return {"models": models, "groups": 10, "windows": 3, "series": len(samples), "bytes": len(body),
            "scrape_s": times, "scrape_median_s": statistics.median(times), "metrics_all_models_s": metrics_s}


def pending_memory(count: int = 200_000) -> dict:
    """Bytes held per pending prediction (ids, ledger entries, arrival order), by tracemalloc."""
    monitor = new_monitor()
    batches = prediction_batches("model-0", count, 1000, 10, monitor.now())
    id_size = sys.getsizeof(batches[0][0][0])  # the id strings exist before tracing starts: add them by hand
    gc.collect()
    tracemalloc.start()
    record_all(monitor, "model-0", batches)
    pending, _ = tracemalloc.get_traced_memory()
    monitor.record_outcomes([(row[0], 3) for items in batches for row in items])
    joined, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"predictions": count, "id_bytes": id_size, "pending_bytes_per_prediction": pending / count + id_size,
            "after_join_bytes_per_prediction": joined / count + id_size}


def window_memory(groups: int = 10, per_bucket: int = 260) -> dict:
    """Bytes one model's windows hold with every bucket of every window in use by every group,
    with counts above 256 (Python caches smaller ints, which would flatter the figure): the
    deep size of the rings, lists and number objects."""
    now = time.time()
    monitor = Monitor(MonitorConfig(max_pending=1000, remembered_outcome_ids=1000), clock=lambda: now)
    monitor.register_model(ModelReference("model-0", ("race", "sex"), REFERENCE, num_classes=10))
    ring_times = [now - k * width for width in (5, 60, 1440) for k in range(60)]  # each bucket of 5m, 1h, 1d
    probs = probabilities(10, 3)
    for j, t in enumerate(ring_times):
        monitor.record_predictions("model-0", [(f"model-0.{j}.{g}", t, GROUPS[g], 3, probs, 3) for g in range(groups)])
        monitor.record_evaluations("model-0", [(t, GROUPS[i % groups], 3, 3, 0.6) for i in range(per_bucket * groups)])
    rings = monitor._by_name["model-0"].rings
    size = 0
    for ring in rings:
        size += sys.getsizeof(ring.starts) + sys.getsizeof(ring.slots) + sum(map(sys.getsizeof, ring.starts))
        for run in ring.slots:
            size += sys.getsizeof(run) + sum(sys.getsizeof(x) for x in run if not (type(x) is int and x <= 256))
    used = sum(1 for ring in rings for run in ring.slots if run)
    return {"groups": groups, "buckets_in_use": used, "bytes": size}


class TimedLock:
    """The monitor's lock, timing how long each holder keeps it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.held_s: list[float] = []

    def __enter__(self):
        self._lock.acquire()
        self._since = time.perf_counter()

    def __exit__(self, *exc):
        self.held_s.append(time.perf_counter() - self._since)
        self._lock.release()


def snapshot_cost(monitor: Monitor) -> dict:
    monitor._lock = lock = TimedLock()
    monitor.snapshot()
    copy_s = sum(lock.held_s)  # what a snapshot makes Predict and ReportOutcomes wait for
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "monitor.json"
        started = time.perf_counter()
        monitor.save(path)
        save_s = time.perf_counter() - started
        size = path.stat().st_size
        started = time.perf_counter()
        restored = Monitor.load(path)
        load_s = time.perf_counter() - started
    return {"pending": restored.status().pending_predictions, "bytes": size, "copy_s": copy_s, "save_s": save_s,
            "load_s": load_s}


def main() -> None:
    load_before = load_average()
    outcomes = [outcome_rate(batch, 200_000) for batch in (100, 1000, 10_000)]
    full = outcome_rate(1000, 200_000, pending_filler=800_000)
    snapshot = snapshot_cost(full.pop("monitor"))  # 800,000 still pending after the joins
    for row in outcomes:
        row.pop("monitor")
    predictions = [prediction_rate(c, 200_000) for c in (10, 1000)]
    scrape = scrape_cost()
    memory = pending_memory()
    windows = window_memory()
    load_after = load_average()

    lines = [
        "What this measures: the monitor core in one Python process (no Ray, no gRPC), called as the "
        "serving replica calls it; single-threaded, so one core. One run.",
        "",
        f"Machine load (1/5/15-min load averages): {load_before} before, {load_after} after; "
        "2 cores shared with other work, so rates are pessimistic.",
        "",
        "## 1. Outcome ingestion (ReportOutcomes → `record_outcomes`)",
        "",
        "| batch | outcomes | pending before | seconds | outcomes/s | × target (20,000/s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in [*outcomes, full]:
        lines.append(f"| {row['batch']:,} | {row['outcomes']:,} | {row['pending_before']:,} | {row['seconds']:.2f} | "
                     f"{row['per_s']:,.0f} | {row['per_s'] / TARGET_PER_S:.1f}× |")
    lines += [
        "",
        "Outcomes arrive in random order relative to their predictions (10 groups; 80 % correct), every one "
        "joins; the last row has the ledger at its default bound (1,000,000 pending: 800,000 never answered).",
        "",
        "## 2. Prediction recording (Predict → `record_predictions`)",
        "",
        "| classes | predictions | seconds | predictions/s | × target (20,000/s) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in predictions:
        lines.append(f"| {row['num_classes']:,} | {row['predictions']:,} | {row['seconds']:.2f} | "
                     f"{row['per_s']:,.0f} | {row['per_s'] / TARGET_PER_S:.1f}× |")
    ratio = predictions[0]["per_s"] / predictions[1]["per_s"]
    lines += [
        "",
        f"Batches of 1,000, 10 groups, a shadow class on two thirds. The boundary proxy 1 − Σp² is a sum over "
        f"the classes: 10 classes record {ratio:.1f}× as fast as 1,000.",
        "",
        "## 3. Prometheus scrape (`generate_latest` over `MonitorExporter`)",
        "",
        "| models | groups | windows | series | bytes | median scrape ms | all `metrics()` ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {scrape['models']} | {scrape['groups']} | {scrape['windows']} | {scrape['series']:,} | "
        f"{scrape['bytes']:,} | {scrape['scrape_median_s'] * 1e3:.0f} | {scrape['metrics_all_models_s'] * 1e3:.0f} |",
        "",
        f"Median of {len(scrape['scrape_s'])} scrapes (all: "
        + ", ".join(f"{t * 1e3:.0f}" for t in scrape["scrape_s"])
        + " ms). Every group has outcomes in every window, so every gauge is present; the last column is "
        f"the monitor's own share ({scrape['metrics_all_models_s'] / scrape['scrape_median_s']:.0%} of a scrape), "
        "the rest is prometheus_client formatting the text.",
        "",
        "## 4. Memory and persistence",
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| bytes per pending prediction (id string, ledger entry, order) | {memory['pending_bytes_per_prediction']:.0f} |",
        f"| bytes per joined prediction kept for duplicate detection | {memory['after_join_bytes_per_prediction']:.0f} |",
        f"| one model's windows, {windows['groups']} groups, all {windows['buckets_in_use']} buckets in use, "
        "counts > 256 "
        f"| {windows['bytes'] / 1024:.0f} KiB |",
        f"| snapshot with {snapshot['pending']:,} pending: file size | {snapshot['bytes'] / 2**20:.1f} MiB |",
        f"| … time `snapshot()` holds the monitor's lock (shallow copies) | {snapshot['copy_s']:.2f} s |",
        f"| … save (copy, JSON, fsync, rename) | {snapshot['save_s']:.2f} s |",
        f"| … load | {snapshot['load_s']:.2f} s |",
        "",
        f"tracemalloc over {memory['predictions']:,} predictions, plus the {memory['id_bytes']} bytes of each 32-character id string. At the default bounds "
        f"(1,000,000 pending + 1,000,000 remembered) the ledger holds at most about "
        f"{(memory['pending_bytes_per_prediction'] + memory['after_join_bytes_per_prediction']) * 1e6 / 2**20:.0f} MiB "
        "(less with shorter ids); the windows add a fixed amount per model (see docs/monitoring.md).",
    ]
    results = {"load_before": load_before, "load_after": load_after, "outcomes": [*outcomes, full],
               "predictions": predictions, "scrape": scrape, "memory": memory, "windows": windows,
               "snapshot": snapshot}
    write_results("monitor", "python bench/bench_monitor.py", results, lines)


if __name__ == "__main__":
    main()
