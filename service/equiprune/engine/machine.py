"""What this machine can hold: the one place default limits are scaled from. No torch here,
so settings and launchers can read it cheaply."""

from __future__ import annotations

import os

# Linux cgroup files holding a container's memory limit (v2, then v1).
_CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
FALLBACK_MEMORY_BYTES = 8 * 2**30


def memory_bytes() -> int:
    """Physical memory, or the container's cgroup limit when lower; 8 GiB where neither can
    be read."""
    memory = _physical_memory()
    for path in _CGROUP_MEMORY_LIMITS:
        limit = _read_int(path)
        if limit is not None and limit > 0:
            memory = limit if memory is None else min(memory, limit)
    return FALLBACK_MEMORY_BYTES if memory is None else memory


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            return int(handle.read().strip())  # "max" (no limit) is not an int
    except (OSError, ValueError):
        return None
