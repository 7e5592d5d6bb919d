"""What a user sees on the console: robot_pref's own lines by default, everything with ``-v``.

robosuite prints ~10 warning lines at import (private macro file, robosuite_models, mink), PyOpenGL
and Ray add their own start-up lines; none of them is actionable for a robot_pref user. The choice
travels to Ray workers and subprocesses through an environment variable, because they import robosuite
themselves.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

VERBOSE_ENV = "ROBOT_PREF_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _OwnLinesOnly(logging.Filter):
    """Pass robot_pref's records, and errors from anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("robot_pref") or record.levelno >= logging.ERROR


class _ErrorsUnlessVerbose(logging.Filter):
    """Decides per record, so importing robosuite before `configure` (e.g. for task names) is fine."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or verbose()


_ERRORS_UNLESS_VERBOSE = _ErrorsUnlessVerbose()


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirect), not the one at set-up."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(verbose_flag: bool = False) -> None:
    """Set up console logging for a command; ``verbose_flag`` (``-v``) shows every library's lines."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose():
        handler.addFilter(_OwnLinesOnly())
    logging.basicConfig(level=logging.DEBUG if verbose() else logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(not verbose())  # Python warnings become "py.warnings" records, filtered above
    quiet_third_party()


def quiet_third_party() -> None:
    """Silence robosuite's own console handler below ERROR; call before robosuite is imported.

    robosuite attaches a StreamHandler to its "robosuite_logs" logger at import; a filter on the
    logger itself stops the records before any handler (robosuite's or ours) sees them.
    """
    logging.getLogger("robosuite_logs").addFilter(_ERRORS_UNLESS_VERBOSE)  # adding it twice is a no-op


def init_ray(address: str | None = None, **kwargs: Any) -> None:
    """``ray.init`` with Ray's own start-up lines (dashboard URL, token notice) only when verbose.

    A local Ray (no address, no RAY_ADDRESS) starts without its dashboard unless verbose, where its URL is
    printed: the dashboard adds ~3 s to every command's start and ~4% of a core while it runs (measured on
    2 cores), and without ``-v`` nobody is shown where it is."""
    import ray

    if ray.is_initialized():
        return
    if not (address or os.environ.get("RAY_ADDRESS")):
        kwargs.setdefault("include_dashboard", verbose())
    ray.init(address=address or None, ignore_reinit_error=True,
             logging_level=logging.INFO if verbose() else logging.ERROR, **kwargs)


def actors_that_fit(workers: int, what: str, num_cpus: float = 1.0, num_gpus: float = 0.0) -> int:
    """``workers`` Ray actors of ``num_cpus``/``num_gpus`` each, or as many as the whole cluster can place (with
    a note saying so): an actor that can never be placed keeps the work handed to it forever, and the run hangs."""
    import ray

    have = ray.cluster_resources()
    fits = [int(have.get(name, 0) // need) for name, need in (("CPU", num_cpus), ("GPU", num_gpus)) if need > 0]
    room = min(fits) if fits else workers
    if 0 < room < workers:
        print(f"{what}: {workers} workers asked for but the Ray cluster has room for {room} "
              f"({have.get('CPU', 0):g} CPUs, {have.get('GPU', 0):g} GPUs); running {room}", flush=True)
        return room
    return workers
