"""Reading an `.npz` archive header-first and in bounded chunks, never unpickling.

Opening an archive walks its members and parses every `.npy` header, refusing object and
structured dtypes, unknown format versions and headers that promise more bytes than the member
holds, before a single data byte is read. Callers then decide from the headers alone (shapes and
dtypes) whether the archive is worth reading, and read each member as a stream of chunks from
the zip member itself, stored or deflated alike, so the archive's arrays never have to be held
whole unless the caller assembles them.
"""

from __future__ import annotations

import itertools
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from typing import IO

import numpy as np

from equiprune.engine.array_chunks import Selector, plan_chunks, selected_shape
from equiprune.engine.dataset_checks import fail

# Far above what the format can hold, so the field-level checks name the problem; this only
# stops an archive of countless tiny members before it is walked.
MAX_ARCHIVE_MEMBERS = 1_000

PathOrFile = str | PathLike[str] | IO[bytes]
_READ_PIECE_BYTES = 2**20

# What a damaged or hostile member can raise while it is decompressed or parsed.
_READ_ERRORS = (ValueError, EOFError, OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class NpyMember:
    """One `.npy` member, known from its header: what it holds and where its data starts."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class NpzReader:
    """An open `.npz` archive whose members' headers are checked; use as a context manager.

    members: key (member name without `.npy`) -> NpyMember, in archive order.
    """

    def __init__(self, source: PathOrFile) -> None:
        try:
            self._archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            fail("dataset", f"not a readable .npz (zip) archive: {exc}")
        try:
            infos = self._archive.infolist()
            _check_member_names(infos)
            self.members = {member.key: member for member in map(self._read_header, infos)}
        except BaseException:
            self._archive.close()
            raise

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def keys(self) -> list[str]:
        return list(self.members)

    def spec(self, key: str) -> NpyMember:
        return self.members[key]

    def chunks(self, key: str, max_elements: int | None = None) -> Iterator[tuple[Selector, np.ndarray]]:
        """(selector, values) for consecutive runs of the member's data, each at most
        max_elements elements (default CHUNK_ELEMENTS), values laid out on the array's own axes
        (Fortran order too); each a view of a buffer the next chunk overwrites."""
        member = self.members[key]
        selectors = plan_chunks(member.shape, fortran_order=member.fortran_order, max_elements=max_elements)
        first = next(selectors, None)
        if first is None:  # an empty array
            return
        # One buffer for every chunk of the member, sized by the first chunk, the largest.
        buffer = bytearray(math.prod(selected_shape(first)) * member.dtype.itemsize)
        selectors = itertools.chain([first], selectors)
        try:
            with self._archive.open(member.info) as stream:
                stream.seek(member.data_offset)
                for selector in selectors:
                    yield selector, _read_chunk(stream, member, selector, buffer)
        except _READ_ERRORS as exc:
            fail(f"dataset.{key}", f"cannot read the array: {exc}")

    def read(self, key: str) -> np.ndarray:
        """The whole member; for arrays whose header showed them to be small."""
        member = self.members[key]
        array = np.empty(member.shape, member.dtype, order="F" if member.fortran_order else "C")
        for selector, values in self.chunks(key):
            array[selector] = values
        return array

    def _read_header(self, info: zipfile.ZipInfo) -> NpyMember:
        key = info.filename[: -len(".npy")]
        try:
            with self._archive.open(info) as stream:
                version = np.lib.format.read_magic(stream)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    fail(f"dataset.{key}", f".npy format version {version} is not supported (use 1.0 or 2.0)")
                data_offset = stream.tell()
        except _READ_ERRORS as exc:
            fail(f"dataset.{key}", f"cannot read the array: {exc}")
        if dtype.hasobject or dtype.fields is not None:
            fail(
                f"dataset.{key}",
                f"dtype {dtype} is not allowed: only plain numeric and unicode arrays, never pickled objects",
            )
        member = NpyMember(key, info, tuple(shape), dtype, bool(fortran_order), data_offset)
        held = info.file_size - data_offset
        if member.nbytes > held:
            fail(f"dataset.{key}", f"header promises {member.nbytes} bytes but the member holds {held}")
        return member


def _check_member_names(infos: list[zipfile.ZipInfo]) -> None:
    names = [info.filename for info in infos]
    if len(names) > MAX_ARCHIVE_MEMBERS:
        fail("dataset", f"the archive holds {len(names)} members; at most {MAX_ARCHIVE_MEMBERS} are read")
    seen: set[str] = set()
    for name in names:
        if not name.endswith(".npy"):
            fail(f"dataset.{name}", "archive member is not a .npy array")
        if name in seen:
            fail(f"dataset.{name[: -len('.npy')]}", "appears more than once in the archive")
        seen.add(name)


def _read_chunk(stream: IO[bytes], member: NpyMember, selector: Selector, buffer: bytearray) -> np.ndarray:
    shape = selected_shape(selector)
    count = math.prod(shape)
    if count == 0 or member.dtype.itemsize == 0:
        return np.zeros(shape, member.dtype)
    wanted = count * member.dtype.itemsize
    target = memoryview(buffer)[:wanted]
    filled = 0
    while filled < wanted:
        # Small pieces: reading a deflated member holds the compressed and the inflated piece
        # at once, and one large read would also be copied while it is assembled.
        piece = stream.read(min(_READ_PIECE_BYTES, wanted - filled))
        if not piece:
            # The zip directory may declare more than the compressed stream really holds.
            fail(f"dataset.{member.key}", f"cannot read the array: the data stops {wanted - filled} bytes short")
        target[filled : filled + len(piece)] = piece
        filled += len(piece)
    values = np.frombuffer(buffer, dtype=member.dtype, count=count)
    if member.fortran_order:
        # The stored run is C-ordered on the reversed axes; its transpose is the array's layout.
        return values.reshape(shape[::-1]).T
    return values.reshape(shape)
