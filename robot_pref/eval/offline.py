"""Evaluation without a simulator: what can be measured on a recorded (real-robot) dataset.

A dataset with no simulated task (a LeRobot import, a real-arm recording) cannot roll a policy out,
so its policies are scored on the data: the action error of the policy against the recorded actions
(per episode and overall, on the episodes it trained on: training holds none out), written as
``eval_info.json`` with ``offline: true`` so the report says so.
The learned reward's agreement with annotated reward/success is in the reward model's own evaluation.
Testing on the arm stays `robot-pref rollout --robot remote:...|ur:...|franka:...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OFFLINE_NOTE = ("no simulator for this dataset: policies are scored offline against the recorded actions of "
                "every episode (the training data: no episodes are held out), not by task success; test on the "
                "arm with `robot-pref rollout --robot remote:HOST:PORT|ur:...|franka:...`")


@dataclass
class OfflineEvalConfig:
    policy: str = field(default="", metadata={"help": "policy checkpoint (.pt) from robot-pref train"})
    dataset: str = field(default="", metadata={"help": "zarr dataset whose recorded actions the policy is scored on"})
    out: str = field(default="runs/eval_offline", metadata={"help": "folder for eval_info.json"})
    batch_size: int = 1024


def has_simulator(dataset: str) -> bool:
    """Whether ``dataset`` came from a simulated task that `robot-pref eval` can roll out in."""
    from robot_pref.data import TrajectoryDataset

    if not Path(dataset).exists():
        return True  # not collected yet: the pipeline collects it in the simulator
    return TrajectoryDataset.open(dataset).env_meta.get("renderable", True) is not False  # imports say so


def evaluate_offline(cfg: OfflineEvalConfig) -> dict[str, Any]:
    """Score ``cfg.policy`` on every episode of ``cfg.dataset``; writes and returns ``eval_info.json``."""
    from robot_pref.data import TrajectoryDataset
    from robot_pref.rl.checkpoint import load_policy

    ds = TrajectoryDataset.open(cfg.dataset)
    policy = load_policy(cfg.policy, device="cpu")
    recorded = ds.get("action")
    predicted = np.empty_like(recorded)
    for start in range(0, ds.n_frames, cfg.batch_size):
        rows = np.arange(start, min(start + cfg.batch_size, ds.n_frames))
        predicted[rows] = policy.act({k: ds.get(k, rows) for k in policy.observation_keys})
    err = (predicted - recorded) ** 2
    per_episode = [{"episode": e, "action_mse": float(err[ds.episode_slice(e)].mean())} for e in range(ds.n_episodes)]
    info = {
        "offline": True, "note": OFFLINE_NOTE, "policy": cfg.policy, "dataset": cfg.dataset,
        "episodes": ds.n_episodes, "frames": ds.n_frames,
        "action_mse": float(err.mean()), "action_mae": float(np.sqrt(err).mean()),
        "action_mse_per_dim": err.mean(0).tolist(), "per_episode": per_episode,
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "eval_info.json").write_text(json.dumps(info, indent=2))
    print(f"offline: action MSE {info['action_mse']:.4f} (MAE {info['action_mae']:.4f}) over {ds.n_episodes} "
          f"episodes; {OFFLINE_NOTE}")
    return info
