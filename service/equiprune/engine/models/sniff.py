"""Recognising what a file is from its first bytes, for dispatch and for error messages."""

from __future__ import annotations

import io
import zipfile


def describe_foreign_bytes(data: bytes) -> str:
    """What a file that is not the expected format most likely is, for error messages."""
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        if is_torch_save_zip(data):
            return "a torch.save checkpoint (a pickle inside a zip), which equiprune never unpickles"
        return "a zip archive"
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (legacy torch.save), which equiprune never unpickles"
    if not data:
        return "empty"
    return "unrecognised content"


def is_torch_save_zip(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:
        return False
