"""Walking an array in bounded chunks, in the order its bytes are stored.

Validating a dataset must not need a second copy of it: every value check (finite inputs, codes
in range, value counts) runs over chunks of at most `CHUNK_ELEMENTS` elements, whether the array
is a tensor already in memory or a `.npy` member still inside a zip archive. A chunk is given
as a selector, one `slice` per axis of the array, plus the chunk's values with the array's own
axis layout, so a check can tell which samples (axis 0) and channels (axis 1) a chunk holds.

Chunks follow storage order: for a C-ordered array they are blocks of rows; for a
Fortran-ordered `.npy` they are blocks along the last axis (subdivided further when one slice
is still too large), so a stream can be read front to back exactly once.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

# 2 Mi elements: 16 MiB as int64, the widest working copy a check makes of a chunk.
CHUNK_ELEMENTS = 2**21

Selector = tuple[slice, ...]


def plan_chunks(
    shape: tuple[int, ...], *, fortran_order: bool = False, max_elements: int | None = None
) -> Iterator[Selector]:
    """Selectors covering `shape` once, each at most `max_elements` elements (default
    CHUNK_ELEMENTS), each a contiguous run of the stored bytes, in storage order."""
    max_elements = CHUNK_ELEMENTS if max_elements is None else max_elements
    stored = tuple(reversed(shape)) if fortran_order else tuple(shape)
    if not stored:
        yield ()
        return
    if 0 in stored:
        return  # nothing to read (a shape like (2**50, 0) must not be walked element by element)
    # Split along the outermost stored axis whose trailing block still fits in a chunk.
    split = 0
    while split < len(stored) - 1 and math.prod(stored[split + 1 :]) > max_elements:
        split += 1
    block = math.prod(stored[split + 1 :])
    step = max(1, max_elements // max(block, 1))
    whole_trailing = [slice(0, size) for size in stored[split + 1 :]]
    for prefix in itertools.product(*(range(size) for size in stored[:split])):
        fixed = [slice(i, i + 1) for i in prefix]
        for start in range(0, stored[split], step):
            run = slice(start, min(start + step, stored[split]))
            selector = (*fixed, run, *whole_trailing)
            yield tuple(reversed(selector)) if fortran_order else selector


def selected_shape(selector: Selector) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in selector)


@dataclass(frozen=True)
class ChunkedArray:
    """An array seen one bounded chunk at a time: its shape, and a way to walk it once.

    `chunks()` yields (selector, values) with values a tensor of the selected shape; it may be
    a view of a buffer the next step reuses, so a check must be done with it before moving on.
    """

    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[tuple[Selector, torch.Tensor]]]


class ChunkScratch:
    """One buffer reused for every chunk of a walk. Fresh per-chunk buffers (torch's above
    all, being over-aligned) leave the C heap holding tens of MiB of freed fragments; one
    reused buffer keeps memory at one chunk."""

    def __init__(self, dtype: np.dtype | type) -> None:
        self._buffer = np.empty(0, dtype=dtype)

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous array of `shape` (contents undefined), valid until the next take."""
        count = math.prod(shape)
        if count > self._buffer.size:
            self._buffer = np.empty(count, dtype=self._buffer.dtype)
        return self._buffer[:count].reshape(shape)


def as_numpy(chunk: torch.Tensor) -> np.ndarray:
    """A chunk's values as numpy, without a copy when they are already in CPU memory: the checks
    use numpy so their temporaries can go into reused buffers (numpy ufuncs take out=)."""
    chunk = chunk.detach()
    return chunk.numpy() if chunk.device.type == "cpu" else chunk.cpu().numpy()


def chunked_tensor(tensor: torch.Tensor) -> ChunkedArray:
    """A tensor already in memory, walked as views (no copies)."""
    shape = tuple(tensor.shape)

    def chunks() -> Iterator[tuple[Selector, torch.Tensor]]:
        for selector in plan_chunks(shape):
            yield selector, tensor[selector]

    return ChunkedArray(shape, chunks)
