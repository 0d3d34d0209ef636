"""The monitor's snapshot file, written so that one model's damage stays that model's.

The snapshot used to be one `json.dump(..., allow_nan=False)`: a single NaN that got into one
model's buckets failed the whole save, round after round, so after a restart every model lost
what had arrived since (issue #8). Now each model's section is encoded on its own:

1. a section that encodes is written as it is;
2. one that does not (a non-finite number, a value JSON cannot hold, any exception) is logged
   with the model's name, repaired through `repaired_section` (the monitor resets the bad
   values in its live state and counts them per model, see WindowRing.repair) and encoded again;
3. one that still fails is written as `null`: that model is left out of this round only (the
   next round tries again), and a load skips it like any damaged section.

Every other model, the ledger and the counters are written in every case. The file is one JSON
document of the same format as before, so reading it needs nothing new.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("equiprune.service.serving.monitor")


def encode_snapshot(snapshot: dict, repaired_section: Callable[[int], dict]) -> list[str]:
    """`snapshot` (Monitor.snapshot()) as pieces of one strict JSON document (no NaN, no
    Infinity). `repaired_section(i)` repairs model `i` and returns its section anew."""
    models = [_encode_model(i, section, repaired_section) for i, section in enumerate(snapshot["models"])]
    rest = _strict_json({key: value for key, value in snapshot.items() if key != "models"})
    # `rest` is a non-empty object ("format" at least): open it again to add the models.
    return [rest[:-1], ',"models":[', ",".join(models), "]}"]


def write_atomically(path: str | Path, pieces: list[str]) -> None:
    """Write to a temporary file in the same folder, fsync, rename over `path`: a crash leaves
    the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(pieces)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_snapshot(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def section_name(section) -> str:
    """The model name a (possibly damaged) section claims, for log lines."""
    try:
        return str(section["reference"]["name"])
    except Exception:  # noqa: BLE001 - a damaged section may be anything; the log still needs a line
        return "<unnamed>"


def _encode_model(index: int, section: dict, repaired_section: Callable[[int], dict]) -> str:
    name = section_name(section)
    try:
        return _strict_json(section)
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with this model, the others are saved
        log.error("monitor: model %r cannot be saved as it is (%s); repairing its window values", name, exc)
    try:
        return _strict_json(repaired_section(index))
    except Exception:  # noqa: BLE001 - as above; the next round tries this model again
        log.exception("monitor: model %r still cannot be saved; it is left out of this snapshot", name)
        return "null"


def _strict_json(value) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)
