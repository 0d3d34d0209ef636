"""The monitor replica: served-model registry, per-group monitor state, Prometheus exporter.

One replica owns all of it, so predictions, outcomes and scrapes see one consistent state
(the platform notes measured that a per-replica exporter collides on its port, and that a
dedicated owner of the registry is the simplest correct shape).

Durability: every recording call is appended to the write-ahead journal and fsynced, then
applied, and only then acknowledged (monitor/journal.py). The state is snapshotted every
`monitor_persist_interval_s` and when the replica stops, with the journal sequence it holds;
a start loads the snapshot and replays the journal after it, pending predictions included, so
nothing acknowledged is lost to a crash and outcomes that arrive after a restart still join.
The snapshot is taken on the event loop, between two calls, so it holds exactly the entries
up to its sequence; only writing it to disk runs in a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

from prometheus_client import CollectorRegistry
from ray import serve

from equiprune.service.errors import FailedPrecondition, NotFound, Unavailable
from equiprune.service.serving.monitor.exporter import MonitorExporter, serve_metrics
from equiprune.service.serving.monitor.journal import Journal
from equiprune.service.serving.monitor.state import ModelReference, Monitor, MonitorConfig
from equiprune.service.factory import settings_from

log = logging.getLogger("equiprune.service.monitoring")


@serve.deployment(name="MonitorService", num_replicas=1, max_ongoing_requests=1000,
                  ray_actor_options={"num_cpus": 0})
class MonitorService:
    def __init__(self, settings: dict) -> None:
        self.settings = settings_from(settings)
        self.registry_path = self.settings.data_dir / "served_models.json"
        self.state_path = self.settings.data_dir / "monitor_state.json"
        self.models: dict[str, dict] = _read_json(self.registry_path) or {}
        config = MonitorConfig(windows_s=tuple(self.settings.monitor_windows_s),
                               min_count=self.settings.monitor_min_count)
        self.monitor = Monitor.load(self.state_path, config=config) if self.state_path.exists() else Monitor(config)
        for served in self.models.values():
            self.monitor.register_model(_reference(served))
        snapshot = _read_json(self.state_path) or {}
        held = snapshot.get("journal_sequence") if isinstance(snapshot.get("journal_sequence"), int) else 0
        self.journal = Journal(self.settings.data_dir / "monitor_journal", after=held)
        self._replay(held)
        # One call's journal entry and its effect, or one snapshot, at a time: a snapshot
        # (on the loop, or from __del__ off it) never holds half of a call.
        self._record_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._written_sequence = held
        self.prometheus = CollectorRegistry()
        MonitorExporter(self.monitor, self.prometheus)
        self._http = serve_metrics(self.prometheus, self.settings.host, self.settings.metrics_port)
        self._persister: asyncio.Task | None = None

    # ------------------------------------------------------------------ registry

    async def deploy(self, served: dict) -> dict:
        self._ensure_persisting()
        known = self.monitor.models(include_unregistered=True)
        if served["name"] in known and list(self.monitor.reference(served["name"]).group_by) != served["group_by"]:
            raise FailedPrecondition(
                f"{served['name']!r} was monitored by {list(self.monitor.reference(served['name']).group_by)}; its "
                "history would mix two groupings — deploy under a new name", field="group_by")
        # Durable first, then applied: a registry that could not be written changes nothing.
        _write_json(self.registry_path, {**self.models, served["name"]: served})
        self.models[served["name"]] = served
        self.monitor.register_model(_reference(served))
        return served

    async def undeploy(self, name: str) -> None:
        if name not in self.models:
            raise NotFound(f"no served model named {name!r}", field="name")
        _write_json(self.registry_path, {k: v for k, v in self.models.items() if k != name})
        del self.models[name]
        self.monitor.unregister_model(name)

    async def served(self, name: str) -> dict:
        return self._get(name)

    async def list_served(self) -> list[dict]:
        return [self.models[name] for name in sorted(self.models)]

    def _get(self, name: str) -> dict:
        if name not in self.models:
            raise NotFound(f"no served model named {name!r}", field="model")
        return self.models[name]

    # ------------------------------------------------------------------ traffic

    # Each call is journalled and fsynced, then applied (the monitor refuses what it must); the
    # reply — the acknowledgement — comes after both.

    async def record_predictions(self, model: str, items: list[tuple]) -> None:
        self._ensure_persisting()
        self._recorded("predictions", [model, items], lambda: self.monitor.record_predictions(model, items))

    async def record_outcomes(self, items: list[tuple[str, int]]) -> dict:
        self._ensure_persisting()
        return dict(self._recorded("outcomes", [items], lambda: self.monitor.record_outcomes(items)))

    async def record_evaluations(self, model: str, records: list[tuple]) -> dict:
        self._ensure_persisting()
        self._get(model)
        return dict(self._recorded("evaluations", [model, records],
                                   lambda: self.monitor.record_evaluations(model, records)))

    def _recorded(self, kind: str, payload: list, apply):
        """Journal first, then apply: a call whose entry could not be made durable changes
        nothing (UNAVAILABLE, the client retries); a call the monitor refuses is refused the
        same way when its entry is replayed."""
        with self._record_lock:
            try:
                self.journal.append(kind, self.monitor.now(), payload)
            except Exception:  # noqa: BLE001 - a disk fault: nothing was applied, nothing is acknowledged
                log.exception("monitor journal: could not write a %s entry", kind)
                raise Unavailable("the monitor could not make the record durable; nothing was recorded — retry")
            return apply()

    def _replay(self, after: int) -> None:
        """Apply the journal's entries after the snapshot's, each at the time it first came."""
        clock, replayed = self.monitor._clock, 0
        try:
            for sequence, kind, when, payload in self.journal.entries_after(after):
                self.monitor._clock = lambda when=when: when
                try:
                    if kind == "predictions":
                        self.monitor.record_predictions(*payload)
                    elif kind == "outcomes":
                        self.monitor.record_outcomes(*payload)
                    elif kind == "evaluations":
                        self.monitor.record_evaluations(*payload)
                    replayed += 1
                except Exception:  # noqa: BLE001 - one entry the monitor now refuses must not stop the rest
                    log.exception("monitor journal: entry %d (%s) could not be replayed", sequence, kind)
        finally:
            self.monitor._clock = clock
        if replayed:
            log.info("monitor journal: replayed %d acknowledged entries after the snapshot", replayed)

    async def metrics(self, name: str) -> dict:
        served = self.models.get(name)
        if served is None and name not in self.monitor.models(include_unregistered=True):
            raise NotFound(f"no served model named {name!r} (now or before)", field="model")
        return {"served": served, "metrics": asdict(self.monitor.metrics(name)),
                "min_count": self.monitor.config.min_count}

    # ------------------------------------------------------------------ persistence

    def _ensure_persisting(self) -> None:
        if self._persister is None:
            self._persister = asyncio.get_running_loop().create_task(self._persist_forever())

    async def _persist_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.monitor_persist_interval_s)
            await self.flush()

    async def flush(self) -> None:
        """Write the state now (the launcher calls this before it stops Serve, and the loop
        every `monitor_persist_interval_s`): taken on the loop, written in a thread."""
        sequence, snapshot = self._snapshot()
        if snapshot is not None:
            await asyncio.to_thread(self._write, sequence, snapshot)

    def persist(self) -> None:
        """`flush` without an event loop (the replica is stopping)."""
        sequence, snapshot = self._snapshot()
        if snapshot is not None:
            self._write(sequence, snapshot)

    def _snapshot(self) -> tuple[int, dict | None]:
        # Two steps, each failing on its own: a broken tick must not stop the save.
        try:
            self.monitor.maintain()  # forget expired predictions; the heartbeat the lag alert reads
        except Exception:  # noqa: BLE001 - keep serving and still save; the next round tries again
            log.exception("the monitor's periodic tick failed")
        try:
            with self._record_lock:
                sequence = self.journal.rotate()  # entries up to here are in the snapshot, none after
                snapshot = self.monitor.snapshot()
            snapshot["journal_sequence"] = sequence
            return sequence, snapshot
        except Exception:  # noqa: BLE001 - keep serving; the journal still holds everything
            log.exception("could not take the monitor snapshot")
            return 0, None

    def _write(self, sequence: int, snapshot: dict) -> None:
        # The save isolates models (Monitor.save): one model's bad state is repaired or left
        # out of this round and every other model and the ledger are still written. The
        # journal files it covers go only once it is on disk.
        with self._write_lock:
            if sequence < self._written_sequence:
                return  # a newer snapshot is already on disk (an older one must not replace it)
            try:
                self.monitor.save(self.state_path, snapshot)
                self.journal.discard_through(sequence)
                self._written_sequence = sequence
            except Exception:  # noqa: BLE001 - keep serving; the journal still holds everything
                log.exception("could not persist the monitor state")

    async def check_health(self) -> None:
        # Serve calls this every few seconds: it keeps the heartbeat fresh while idle, so the
        # lagging alert fires only when the monitor itself stops.
        self.monitor.maintain()

    def __del__(self) -> None:
        # Serve calls this when the replica stops: keep what arrived since the last round.
        self.persist()
        if getattr(self, "_http", None) is not None:
            self._http[0].shutdown()


def _reference(served: dict) -> ModelReference:
    return ModelReference(
        name=served["name"], group_by=tuple(served["group_by"]),
        reference_accuracy=dict(served["reference_accuracy"]),
        reference_overall_accuracy=served.get("reference_overall_accuracy"),
        tolerance=served["tolerance"], num_classes=served.get("num_classes"))


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _write_json(path: Path, value) -> None:
    """Atomically and durably: a deploy is acknowledged after this returns, so the bytes and
    the rename are fsynced (a SIGKILL keeps the page cache; a power cut would not)."""
    temporary = path.with_suffix(f".tmp-{os.getpid()}-{time.monotonic_ns()}")
    with open(temporary, "w") as out:
        out.write(json.dumps(value, indent=1, allow_nan=False))
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
