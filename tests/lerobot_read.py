"""Run in the LeRobot venv by tests/test_lerobot.py: load a dataset with LeRobot's own LeRobotDataset and
print what it returns as JSON (every row's action, state, reward, done, task; each camera's frames as uint8)."""

import json
import sys

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root, out = sys.argv[1], sys.argv[2]
ds = LeRobotDataset("local/export", root=root)
rows = [ds[i] for i in range(len(ds))]
frames = {k: np.stack([(255 * r[k].permute(1, 2, 0).numpy()).round().astype(np.uint8) for r in rows])
          for k in ds.meta.camera_keys}
np.savez(out, **frames)
print(json.dumps({
    "len": len(ds), "episodes": ds.num_episodes, "fps": ds.fps, "robot_type": ds.meta.robot_type,
    "cameras": ds.meta.camera_keys, "stats": sorted(ds.meta.stats),
    "action": [r["action"].tolist() for r in rows], "state": [r["observation.state"].tolist() for r in rows],
    "reward": [r["next.reward"].item() for r in rows] if "next.reward" in ds.features else None,
    "done": [bool(r["next.done"]) for r in rows], "task": [r["task"] for r in rows],
    "episode_index": [int(r["episode_index"]) for r in rows],
}))
