"""Trajectory storage: the zarr layout, episode-atomic append, sampling, stats, imports.

Names are imported on first use, so `robot-pref --help` does not pay for zarr.
"""

from robot_pref.lazy import lazy_exports

_EXPORTS = {
    "Episode": "robot_pref.data.dataset",
    "DatasetError": "robot_pref.data.dataset",
    "TrajectoryDataset": "robot_pref.data.dataset",
    "frame_key": "robot_pref.data.dataset",
    "BatchSampler": "robot_pref.data.sampler",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
