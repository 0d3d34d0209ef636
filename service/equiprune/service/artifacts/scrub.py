"""Scrub the artifact store: check every stored artifact against its recorded sha256.

    python -m equiprune.service.artifacts.scrub --data-dir ./equiprune-data

Prints one line per damaged artifact (and a summary), logs each as DATA LOSS, and exits 1
when any is damaged, so a cron job or a probe can alert. Reads only; the service refuses to
use a damaged artifact whether or not it was scrubbed (artifacts/store.py `local_path`).
"""

from __future__ import annotations

import argparse
import sys

from equiprune.service.artifacts.records import CorruptArtifact
from equiprune.service.factory import artifact_store
from equiprune.service.settings import ServerSettings


def scrub(store) -> tuple[int, list[str]]:
    """(artifacts checked, ids of the damaged ones)."""
    checked, damaged, token = 0, [], ""
    while True:
        records, token = store.list(None, 1000, token)
        for record in records:
            checked += 1
            try:
                store.verify(record.artifact_id)
            except CorruptArtifact:
                damaged.append(record.artifact_id)
            except Exception as exc:  # noqa: BLE001 - unreadable counts as damaged; the scrub goes on
                print(f"UNREADABLE {record.artifact_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                damaged.append(record.artifact_id)
        if not token:
            return checked, damaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m equiprune.service.artifacts.scrub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="the server's data folder")
    parser.add_argument("--artifacts", default=None, help="the artifact root if not <data-dir>/artifacts (an fsspec URL)")
    args = parser.parse_args(argv)
    settings = ServerSettings(data_dir=args.data_dir, artifact_root=args.artifacts)
    checked, damaged = scrub(artifact_store(settings))
    for artifact_id in damaged:
        print(f"DAMAGED {artifact_id}")
    print(f"{checked} artifacts checked, {len(damaged)} damaged")
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
