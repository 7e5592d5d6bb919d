"""A tiny dataset whose progress is visible: a red square that grows with the true reward.

For tests, benchmarks and demos of labeling without robosuite: frame t of an episode shows a
square of side proportional to r(s_t), so a judge that counts red pixels (see `mock_server`)
orders frames exactly like the ground truth. Episodes pause at the start (identical frames).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_pref.data.dataset import Episode, TrajectoryDataset

GOAL = "to grow the red square"


def square_frame(side: int, size: int) -> np.ndarray:
    frame = np.full((size, size, 3), 40, dtype=np.uint8)
    lo = (size - side) // 2
    frame[lo : lo + side, lo : lo + side] = (220, 30, 30)
    return frame


def make_square_dataset(path: str | Path, episodes: int = 6, length: int = 20, size: int = 32,
                        seed: int = 0, frame_key: str | None = None) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    ds = TrajectoryDataset.create(path, obs_dim=2, action_dim=1, state_dim=1, fps=20,
                                  env={"name": "square", "task": "square"}, overwrite=True)
    key = frame_key or f"agentview_{size}"
    for e in range(episodes):
        pause = int(rng.integers(1, 4))
        speed = rng.uniform(0.3, 1.0)
        progress = np.clip((np.arange(length) - pause) * speed / length, 0, 1) * (0.4 + 0.6 * e / max(episodes - 1, 1))
        side = 2 + np.round(progress * (size - 4)).astype(int)
        ds.append_episode(Episode(
            obs=np.stack([progress, np.arange(length) / length], 1), action=np.zeros((length, 1)),
            state=progress[:, None], frames={key: np.stack([square_frame(s, size) for s in side])},
            true_reward=(side / size).astype(np.float32), true_success=side >= size - 4,
            task="square", goal=GOAL, tier="synthetic", seed=seed + e, success=bool(side[-1] >= size - 4)))
    return ds
