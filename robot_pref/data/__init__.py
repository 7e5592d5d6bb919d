"""Trajectory storage: the zarr layout, episode-atomic append, sampling, stats, imports."""

from robot_pref.data.dataset import (
    Episode,
    DatasetError,
    TrajectoryDataset,
    frame_key,
)

__all__ = ["Episode", "DatasetError", "TrajectoryDataset", "frame_key"]
