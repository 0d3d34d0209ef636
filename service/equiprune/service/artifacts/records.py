"""What the artifact store keeps and the checks on what it is given: the artifact and upload
records, the kinds, and the argument checks shared by uploads, imports and reads (store.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from equiprune.service.errors import DataLoss, InvalidArgument

KINDS = ("model", "dataset", "report")
OWNER_BEFORE_TENANTS = "admin"  # tenants/store.py BOOTSTRAP_TENANT
MAX_DISPLAY_NAME = 256
COPY_BLOCK_BYTES = 1024**2

_ARTIFACT_ID = re.compile(r"^art-[0-9a-f]{16}$")
_UPLOAD_ID = re.compile(r"^upl-[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Validator = Callable[[str, str], dict[str, str]]
"""(local file path, kind) -> description; raises to refuse the content."""


@dataclass(frozen=True)
class ArtifactRecord:
    """An immutable blob in the store."""

    artifact_id: str
    kind: str
    display_name: str
    size_bytes: int
    sha256: str
    create_time: float
    source: str
    description: dict[str, str]
    # The tenant that owns it: no other tenant can see it (records written before tenants
    # existed belong to the first admin tenant).
    tenant: str = OWNER_BEFORE_TENANTS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactRecord:
        return cls(
            artifact_id=str(data["artifact_id"]),
            kind=str(data["kind"]),
            display_name=str(data["display_name"]),
            size_bytes=int(data["size_bytes"]),
            sha256=str(data["sha256"]),
            create_time=float(data["create_time"]),
            source=str(data["source"]),
            description={str(k): str(v) for k, v in dict(data.get("description") or {}).items()},
            tenant=str(data.get("tenant") or OWNER_BEFORE_TENANTS),
        )


@dataclass(frozen=True)
class UploadRecord:
    """An open upload session; `committed_bytes` is where the client resumes."""

    upload_id: str
    kind: str
    display_name: str
    size_bytes: int
    sha256: str
    committed_bytes: int
    create_time: float
    tenant: str = OWNER_BEFORE_TENANTS


class CorruptArtifact(DataLoss):
    """Stored content no longer matches its recorded sha256 (a storage fault, not a client
    error): DATA_LOSS to the client, who learns which artifact and nothing of its content."""

    def __init__(self, artifact_id: str, field: str | None = "artifact_id") -> None:
        super().__init__(f"artifact {artifact_id} is damaged in the store (its content no longer matches its "
                         "sha256); it is not used — tell the operator", field=field)
        self.artifact_id = artifact_id

    def __reduce__(self):
        return (type(self), (self.artifact_id, self.field))


@dataclass(frozen=True)
class _Copied:
    """A local file holding content copied in, with what was measured while copying."""

    path: str
    size_bytes: int
    sha256: str


# --- validation helpers --------------------------------------------------------------------


def _check_kind(kind: str, field: str) -> None:
    if kind not in KINDS:
        raise InvalidArgument(f"unknown artifact kind {kind!r}; known kinds are {list(KINDS)}", field=field)


def _check_display_name(name: str) -> None:
    if len(name) > MAX_DISPLAY_NAME:
        raise InvalidArgument(
            f"display_name has {len(name)} characters; at most {MAX_DISPLAY_NAME} are allowed", field="display_name"
        )
    if "/" in name or "\x00" in name:
        raise InvalidArgument("display_name must not contain '/' or NUL characters", field="display_name")


def _normalise_sha256(value: str, field: str) -> str:
    digest = value.lower() if isinstance(value, str) else ""
    if not _SHA256.match(digest):
        raise InvalidArgument(f"{field} must be 64 hex digits, not {value!r}", field=field)
    return digest


def _check_id(value: str, pattern: re.Pattern, field: str) -> None:
    # The id becomes part of a path: anything but the exact pattern is refused before use.
    if not isinstance(value, str) or not pattern.match(value):
        example = "art-" if field == "artifact_id" else "upl-"
        raise InvalidArgument(f"{field} {value!r} is not a valid id ({example} followed by 16 hex digits)", field=field)


def _run_validator(validate: Validator | None, path: str, kind: str) -> dict[str, str]:
    if validate is None:
        return {}
    return {str(k): str(v) for k, v in (validate(path, kind) or {}).items()}


def sha256_of_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(COPY_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _remove_local(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
