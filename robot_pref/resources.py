"""How many cores this process may use: the default for workers, actors and torch threads (0 = auto)."""

from __future__ import annotations

import os


def cpus_given() -> int:
    """Cores in this process's affinity mask (what taskset, cgroups' cpusets or a scheduler left it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def resolve_workers(n: int) -> int:
    """``n`` parallel workers, or one per core given when ``n`` is 0."""
    if n < 0:
        raise ValueError(f"worker count must be 0 (one per core) or positive, got {n}")
    return n or cpus_given()
