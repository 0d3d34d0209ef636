"""The join ledger: predictions waiting for their outcome, and outcomes already joined.

Both halves are bounded. Pending predictions are kept in arrival order up to `max_pending`
(the oldest is forgotten first) and for at most `ttl_s` seconds; an outcome for a forgotten
prediction is "unknown", exactly as for an id that never existed. Ids that were joined are
remembered (again oldest first forgotten) up to `max_remembered`, so a repeated outcome is
counted as a duplicate instead of being joined twice.

A pending entry is a small tuple (model index, prediction time, group id, predicted class):
the bucket to add the outcome to is found from the *prediction's* time, so outcomes may
arrive in any order.

Arrival order is a deque of ids beside the dict. A joined id leaves the dict at once but
stays in the deque until it reaches the front (or the deque is rebuilt when more than half of
it is such leftovers), which keeps every operation O(1) amortised. Popping the front of a
plain dict instead would rescan its deleted slots on every eviction.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import NamedTuple


class PendingPrediction(NamedTuple):
    model: int  # index into the monitor's model table
    time_s: float
    group: int  # group id within the model
    predicted_class: int


class JoinLedger:
    def __init__(self, max_pending: int, ttl_s: float, max_remembered: int) -> None:
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self.max_remembered = max_remembered
        self._pending: dict[str, PendingPrediction] = {}
        self._order: deque[str] = deque()
        self._joined: dict[str, int] = {}  # prediction id → model index
        self._joined_order: deque[str] = deque()
        self.evicted = 0  # pending predictions forgotten for room or age

    def __len__(self) -> int:
        return len(self._pending)

    def knows(self, prediction_id: str) -> bool:
        return prediction_id in self._pending or prediction_id in self._joined

    def add(self, prediction_id: str, entry: PendingPrediction) -> None:
        if len(self._pending) >= self.max_pending:
            self._evict_oldest()
        self._pending[prediction_id] = entry
        self._order.append(prediction_id)

    def pending(self, prediction_id: str, now: float) -> PendingPrediction | None:
        """The pending entry for the id, or None (never made, forgotten, or past its TTL)."""
        entry = self._pending.get(prediction_id)
        if entry is not None and entry.time_s < now - self.ttl_s:
            del self._pending[prediction_id]
            self.evicted += 1
            return None
        return entry

    def join(self, prediction_id: str) -> None:
        """Move a pending id to the remembered (joined) ids."""
        entry = self._pending.pop(prediction_id)
        self._joined[prediction_id] = entry.model
        self._joined_order.append(prediction_id)
        if len(self._joined_order) > self.max_remembered:
            self._joined.pop(self._joined_order.popleft(), None)
        if len(self._order) > 2 * len(self._pending) + 1024:
            self._order = deque(self._pending)  # drop the joined leftovers; dict order is arrival order

    def joined_model(self, prediction_id: str) -> int | None:
        """The model index of an already joined id, or None."""
        return self._joined.get(prediction_id)

    def expire(self, now: float) -> int:
        """Forget pending predictions older than the TTL, from the oldest arrival on; stops at
        the first one still young (arrival order is time order for a live service)."""
        cutoff, forgotten = now - self.ttl_s, 0
        while self._order:
            entry = self._pending.get(self._order[0])
            if entry is not None and entry.time_s >= cutoff:
                break
            prediction_id = self._order.popleft()
            if entry is not None:
                del self._pending[prediction_id]
                forgotten += 1
        self.evicted += forgotten
        return forgotten

    def _evict_oldest(self) -> None:
        while self._order:
            prediction_id = self._order.popleft()
            if self._pending.pop(prediction_id, None) is not None:
                self.evicted += 1
                return

    def copy(self) -> JoinLedger:
        """A shallow copy (entries are immutable): cheap enough to take under the monitor's
        lock, so that building the snapshot's lists can happen outside it."""
        twin = JoinLedger(self.max_pending, self.ttl_s, self.max_remembered)
        twin._pending = self._pending.copy()
        twin._joined = self._joined.copy()
        twin._joined_order = self._joined_order.copy()
        twin.evicted = self.evicted
        return twin  # its arrival order is left empty: to_json reads the dict's order

    def to_json(self) -> dict:
        """Parallel lists (compact in JSON), in arrival order."""
        ids = list(self._pending)
        entries = list(self._pending.values())
        joined_ids = list(self._joined_order)
        return {
            "pending": {
                "ids": ids,
                "model": [e.model for e in entries],
                "time_s": [e.time_s for e in entries],
                "group": [e.group for e in entries],
                "predicted_class": [e.predicted_class for e in entries],
            },
            "joined": {"ids": joined_ids, "model": [self._joined[i] for i in joined_ids]},
            "evicted": self.evicted,
        }

    @classmethod
    def from_json(cls, data: dict, max_pending: int, ttl_s: float, max_remembered: int,
                  models: Mapping[int, tuple[int, int]]) -> tuple[JoinLedger, int]:
        """The ledger `to_json` wrote, its model indexes renumbered by `models` (saved index →
        (index now, the model's number of groups)). An entry of a model that was not loaded, or
        one that does not fit (an id that is not a string, a time that is not finite, a group
        its model does not have, a class that is not an index) is dropped rather than joined
        wrongly later. Returns the ledger and how many entries were dropped; ValueError when
        the parallel lists are not of one length."""
        ledger = cls(max_pending, ttl_s, max_remembered)
        dropped = 0
        p, j = data["pending"], data["joined"]
        columns = [p["ids"], p["model"], p["time_s"], p["group"], p["predicted_class"]]
        if len({len(c) for c in columns}) != 1 or len(j["ids"]) != len(j["model"]):
            raise ValueError("the ledger's parallel lists differ in length")
        for prediction_id, model, time_s, group, predicted_class in zip(*columns):
            loaded = models.get(model) if type(model) is int else None
            if (loaded is None or type(prediction_id) is not str
                    or type(time_s) not in (int, float) or not math.isfinite(time_s)
                    or type(group) is not int or not 0 <= group < loaded[1]
                    or type(predicted_class) is not int or predicted_class < 0):
                dropped += 1
                continue
            ledger.add(prediction_id, PendingPrediction(loaded[0], time_s, group, predicted_class))
        for prediction_id, model in zip(j["ids"], j["model"]):
            loaded = models.get(model) if type(model) is int else None
            if loaded is None or type(prediction_id) is not str:
                dropped += 1
                continue
            ledger._joined[prediction_id] = loaded[0]
            ledger._joined_order.append(prediction_id)
        while len(ledger._joined_order) > max_remembered:
            ledger._joined.pop(ledger._joined_order.popleft(), None)
        evicted = data.get("evicted", 0)
        ledger.evicted = evicted if type(evicted) is int and evicted >= 0 else 0
        return ledger, dropped
