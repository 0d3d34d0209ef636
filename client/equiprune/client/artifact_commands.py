"""The artifact commands of `equiprune`: upload, import, artifacts, download.

    equiprune upload dense.safetensors --kind model
    equiprune import sample:digits --kind dataset
    equiprune download art-1f2e runs/

Their arguments and handlers, apart from cli.py (entry point, global options, error reporting)
like serving_commands, so each area of commands reads on its own.
"""

from __future__ import annotations

import os

from . import tables
from .runner import EXIT_OK, Output, to_dict
from .sdk import EquipruneClient
from .specs import ARTIFACT_KINDS


def add_commands(command) -> None:
    """Register the artifact commands with cli.build_parser's `command(name, handler, help)`."""
    upload = command("upload", _upload, "upload a local file as an artifact (resumable)")
    upload.add_argument("path")
    upload.add_argument("--kind", required=True, choices=ARTIFACT_KINDS.choices())
    upload.add_argument("--name", help="display name (default: the file name)")
    upload.add_argument("--id-only", action="store_true", help="print only the artifact id (for scripts: "
                        "MODEL=$(equiprune upload m.safetensors --kind model --id-only))")
    imported = command("import", _import, "have the server import a URI as an artifact")
    imported.add_argument("uri")
    imported.add_argument("--kind", required=True, choices=ARTIFACT_KINDS.choices())
    imported.add_argument("--sha256", default="", help="the content's sha256 (required except for sample:)")
    imported.add_argument("--name", default="", help="display name")
    imported.add_argument("--id-only", action="store_true", help="print only the artifact id (for scripts)")
    listed = command("artifacts", _artifacts, "list stored artifacts, newest first")
    listed.add_argument("--kind", choices=ARTIFACT_KINDS.choices())
    download = command("download", _download, "download an artifact (resumable, verified)")
    download.add_argument("artifact_id")
    download.add_argument("path", help="file to write, or a directory to write into under the artifact's name")


# ------------------------------------------------------------------ handlers: artifacts
def _upload(client: EquipruneClient, args, out: Output) -> int:
    progress = None if args.id_only else out.byte_progress(f"upload {os.path.basename(args.path)}")
    try:
        artifact = client.upload_file(args.path, args.kind, display_name=args.name, on_progress=progress)
    finally:
        if progress:
            progress.close()
    return _show(artifact, args, out)


def _import(client: EquipruneClient, args, out: Output) -> int:
    artifact = client.import_uri(args.uri, args.kind, sha256=args.sha256, display_name=args.name)
    return _show(artifact, args, out)


def _show(artifact, args, out: Output) -> int:
    """The stored artifact: a line (or only its id with --id-only), and the --json document."""
    out.say(artifact.artifact_id if args.id_only else tables.artifact_line(artifact))
    out.document(to_dict(artifact))
    return EXIT_OK


def _artifacts(client: EquipruneClient, args, out: Output) -> int:
    artifacts = list(client.list_artifacts(kind=args.kind))
    out.say(tables.artifacts_table(artifacts))
    out.document({"artifacts": [to_dict(a) for a in artifacts]})
    return EXIT_OK


def _download(client: EquipruneClient, args, out: Output) -> int:
    progress = out.byte_progress(f"download {args.artifact_id}")
    try:
        artifact, path = client.download_to(args.artifact_id, args.path, on_progress=progress)
    finally:
        if progress:
            progress.close()
    out.say(f"{tables.artifact_line(artifact)}\n→ {path}")
    out.document({"artifact": to_dict(artifact), "path": str(path)})
    return EXIT_OK
