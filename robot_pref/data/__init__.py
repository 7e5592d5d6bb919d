"""Trajectory storage: the zarr layout, episode-atomic append, sampling, stats, imports.

Names are imported on first use, so `robot-pref --help` does not pay for zarr.
"""

import importlib

_EXPORTS = {
    "Episode": "robot_pref.data.dataset",
    "DatasetError": "robot_pref.data.dataset",
    "TrajectoryDataset": "robot_pref.data.dataset",
    "frame_key": "robot_pref.data.dataset",
    "BatchSampler": "robot_pref.data.sampler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robot_pref.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
