"""Frames between the service and a sandboxed worker: a JSON header and raw bytes.

One frame = 8 bytes (header length, payload length; little-endian u32 each), the header
(UTF-8 JSON object), the payload. JSON only — never pickle — in both directions: a worker
that a hostile file took over must not be able to make the service deserialise objects.
Readers bound both lengths before reading, so a runaway worker cannot make the service
allocate more than the limits below.
"""

from __future__ import annotations

import json
import struct
from typing import BinaryIO

MAX_HEADER_BYTES = 4 * 2**20
MAX_PAYLOAD_BYTES = 64 * 2**20
_PREFIX = struct.Struct("<II")


class ProtocolError(Exception):
    """The other side sent something that is not a well-formed frame."""


def write_frame(stream: BinaryIO, header: dict, payload: bytes = b"") -> None:
    raw = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    stream.write(_PREFIX.pack(len(raw), len(payload)) + raw + payload)
    stream.flush()


def read_frame(stream: BinaryIO, *, max_header: int = MAX_HEADER_BYTES,
               max_payload: int = MAX_PAYLOAD_BYTES) -> tuple[dict, bytes] | None:
    """The next frame, or None at a clean end of stream."""
    prefix = _read_exactly(stream, _PREFIX.size, allow_eof=True)
    if prefix is None:
        return None
    header_length, payload_length = _PREFIX.unpack(prefix)
    if header_length > max_header or payload_length > max_payload:
        raise ProtocolError(f"frame of {header_length} + {payload_length} bytes exceeds the limits")
    try:
        header = json.loads(_read_exactly(stream, header_length))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ProtocolError(f"frame header is not JSON: {type(err).__name__}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    return header, _read_exactly(stream, payload_length)


def _read_exactly(stream: BinaryIO, size: int, *, allow_eof: bool = False) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            if allow_eof and remaining == size:
                return None
            raise ProtocolError(f"stream ended inside a frame ({size - remaining} of {size} bytes)")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
