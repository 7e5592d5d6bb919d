"""Lazy package exports: `from robot_pref.rl import load_policy` without importing torch up front.

The CLI reads every room's configs at start-up; importing a package must stay cheap, so a package
names its exports and the module each lives in, and the module loads on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """Return ``(__getattr__, __all__)`` for ``package`` exporting ``{name: module}``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__, list(exports)
