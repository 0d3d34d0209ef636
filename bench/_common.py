"""Shared plumbing for benchmarks: repo paths and writing results next to the docs."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS_BENCH = ROOT / "docs" / "bench"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # harness/ (shared with the tests): data loaders, the test server


def machine() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(name: str, command: str, results: dict, table_lines: list[str], out_dir: Path = DOCS_BENCH) -> None:
    """Write <name>.json and <name>.md (the table and the command that produced it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": machine(), "results": results}
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=1))
    md = [f"# {name}", "", f"Produced by `{command}` on {payload['machine']['when']}",
          f"(torch {payload['machine']['torch']}, {payload['machine']['threads']} threads, "
          f"GPU: {payload['machine']['cuda'] or 'none'}).", "", *table_lines, ""]
    (out_dir / f"{name}.md").write_text("\n".join(md))
    print("\n".join(table_lines))
