"""The monitor's persistence hooks: the whole state as a snapshot, a monitor restored from
one (a damaged part skipped, not fatal), and saving and loading it through persistence.py.

`MonitorSnapshots` is a part of `Monitor` (state.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Self

from equiprune.service.serving.monitor.config import OUTCOME_RESULTS, MonitorConfig
from equiprune.service.serving.monitor.ledger import JoinLedger
from equiprune.service.serving.monitor.model import ModelState
from equiprune.service.serving.monitor.persistence import encode_snapshot, read_snapshot, section_name, write_atomically
from equiprune.service.serving.monitor.refusals import is_finite_real

log = logging.getLogger("equiprune.service.serving.monitor")

SNAPSHOT_FORMAT = "equiprune-monitor"
SNAPSHOT_VERSION = 1


class MonitorSnapshots:
    """The persistence half of `Monitor`."""

    def snapshot(self) -> dict:
        """The whole state as JSON-ready data (see docs/monitoring.md, "Persistence"). Only
        shallow copies are taken under the lock; the large lists are built after it."""
        with self._lock:
            taken_at = self._clock()
            ledger = self._ledger.copy()
            models = [m.to_json() for m in self._models]
            unattributed = dict(self._unattributed)
        return {
            "format": SNAPSHOT_FORMAT,
            "version": SNAPSHOT_VERSION,
            "taken_at": taken_at,
            "config": asdict(self.config),
            "models": models,
            "ledger": ledger.to_json(),
            "unattributed_outcomes": unattributed,
        }

    @classmethod
    def restore(cls, snapshot: dict, clock: Callable[[], float] = time.time,
                config: MonitorConfig | None = None) -> Self:
        """A monitor with the state of `snapshot`, under its saved config or `config`. With a
        new config, a window kept from the saved one keeps its buckets (when
        `buckets_per_window` is unchanged), a new window starts empty, and smaller ledger
        bounds forget the oldest entries.

        Not a snapshot at all (format, version, config): ValueError. A damaged part is logged
        and skipped instead, so that it cannot keep the rest from loading: a model's section
        (that model starts afresh when registered again; its pending predictions are dropped),
        the ledger (it starts empty), the unattributed counts. Non-finite window values are
        repaired and counted in the model's `repaired_values`."""
        if snapshot.get("format") != SNAPSHOT_FORMAT or snapshot.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"not an {SNAPSHOT_FORMAT} v{SNAPSHOT_VERSION} snapshot")
        saved_data = dict(snapshot["config"])
        saved = MonitorConfig(**{**saved_data, "windows_s": tuple(saved_data["windows_s"])})
        config = config or saved
        monitor = cls(config, clock)
        loaded: dict[int, tuple[int, int]] = {}  # saved index → (index now, number of groups)
        for saved_index, section in enumerate(snapshot.get("models") or []):
            try:
                model = ModelState.from_json(len(monitor._models), section, config.windows_s,
                                             config.buckets_per_window, saved.buckets_per_window)
                if model.reference.name in monitor._by_name:
                    raise ValueError("a second section for the same model")
            except Exception as exc:  # noqa: BLE001 - a damaged section may fail anyhow; the others still load
                log.error("monitor snapshot: the section of model %r (#%d) is damaged and was not loaded: %r",
                          section_name(section), saved_index, exc)
                continue
            monitor._models.append(model)
            monitor._by_name[model.reference.name] = model
            loaded[saved_index] = (model.index, len(model.group_names))
        try:
            monitor._ledger, dropped = JoinLedger.from_json(snapshot["ledger"], config.max_pending,
                                                            config.pending_ttl_s, config.remembered_outcome_ids,
                                                            loaded)
            if dropped:
                log.warning("monitor snapshot: %d ledger entries (of models not loaded, or damaged) were dropped",
                            dropped)
        except Exception as exc:  # noqa: BLE001 - as above: without the ledger the windows still load
            log.error("monitor snapshot: the ledger is damaged and was not loaded; it starts empty: %r", exc)
        saved_unattributed = snapshot.get("unattributed_outcomes")
        for result in OUTCOME_RESULTS:
            count = saved_unattributed.get(result, 0) if isinstance(saved_unattributed, dict) else None
            if type(count) is int and count >= 0:
                monitor._unattributed[result] = count
            else:
                log.error("monitor snapshot: the unattributed %r count is damaged (%r); it starts at 0", result, count)
        taken_at = snapshot.get("taken_at")
        monitor._last_persist_time = taken_at if is_finite_real(taken_at) else None
        return monitor

    def save(self, path: str | Path, snapshot: dict | None = None) -> None:
        """Write the snapshot (taken now, or the one given) atomically (write_atomically).
        Serialising happens outside the lock, so traffic waits only for the copy. Each model is
        encoded on its own: one that cannot be (a bug let a NaN in) is repaired or, failing
        that, left out of this round, and the other models and the ledger are saved all the
        same."""
        snapshot = snapshot if snapshot is not None else self.snapshot()
        write_atomically(path, encode_snapshot(snapshot, self._repaired_section))
        with self._lock:
            self._last_persist_time = snapshot["taken_at"]

    @classmethod
    def load(cls, path: str | Path, clock: Callable[[], float] = time.time,
             config: MonitorConfig | None = None) -> Self:
        """Monitor.restore of a file `save` wrote."""
        return cls.restore(read_snapshot(path), clock, config)

    def _repaired_section(self, index: int) -> dict:
        """Repair model `index` in its live state, so that its windows and its next save are
        clean again, and return its section anew (save found that it cannot be encoded)."""
        with self._lock:
            model = self._models[index]
            repaired = model.repair()
            log.error("monitor: model %r had %d window values that were not finite numbers; reset them to 0 "
                      "(%d so far)", model.reference.name, repaired, model.repaired_values)
            return model.to_json()
