"""Evaluation without a simulator: what can be measured on a recorded (real-robot) dataset.

A dataset with no simulated task (a LeRobot import, a real-arm recording) cannot roll a policy out,
so its policies are scored on the data: the action error of the policy against the recorded actions
on the episodes training held out (``train.holdout``), and the learned value's ranking of those
episodes against their annotated return, written as ``eval_info.json`` with ``offline: true`` so the
report says so.
The learned reward's agreement with annotated reward/success is in the reward model's own evaluation.
Testing on the arm stays `robot-pref rollout --robot remote:...|ur:...|franka:...`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

OFFLINE_NOTE = ("no simulator for this dataset: policies are scored offline against the recorded actions, not by "
                "task success; test on the arm with `robot-pref rollout --robot remote:HOST:PORT|ur:...|franka:...`")


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
    """Score ``cfg.policy`` on ``cfg.dataset``; writes and returns ``eval_info.json``.

    Action error on the episodes training held out (``train.holdout``; on the training episodes too, and on
    them alone when none were held out), and for IQL the learned value's ranking of the held-out episodes:
    Spearman of each episode's mean V(s) with its annotated return, where the dataset has one.
    """
    from scipy.stats import spearmanr

    from robot_pref.data import TrajectoryDataset
    from robot_pref.rl.checkpoint import load_policy

    ds = TrajectoryDataset.open(cfg.dataset)
    policy = load_policy(cfg.policy, device="cpu")
    held_out = list(policy.spec.get("holdout_episodes", []))
    value = _value_net(cfg.policy)
    recorded = ds.get("action")
    predicted = np.empty_like(recorded)
    values = np.full(ds.n_frames, np.nan, np.float32)
    for start in range(0, ds.n_frames, cfg.batch_size):
        rows = np.arange(start, min(start + cfg.batch_size, ds.n_frames))
        obs = {k: ds.get(k, rows) for k in policy.observation_keys}
        predicted[rows] = policy.act(obs)
        if value is not None:
            with torch.no_grad():
                values[rows] = value(policy.features(obs)).numpy()
    err = (predicted - recorded) ** 2
    returns = ds.ground_truth("reward") if ds.has_ground_truth("reward") else None
    per_episode = []
    for e in range(ds.n_episodes):
        sl = ds.episode_slice(e)
        per_episode.append({"episode": e, "held_out": e in held_out, "action_mse": float(err[sl].mean()),
                            "mean_value": None if value is None else float(values[sl].mean()),
                            "annotated_return": None if returns is None else float(returns[sl].sum())})
    scored = [r for r in per_episode if r["held_out"]] or per_episode
    frames = np.concatenate([np.arange(ds.n_frames)[ds.episode_slice(r["episode"])] for r in scored])
    ranking = None
    if value is not None and returns is not None and len(scored) >= 3:
        ranking = float(spearmanr([r["mean_value"] for r in scored], [r["annotated_return"] for r in scored])[0])
    train_rows = [r for r in per_episode if not r["held_out"]]
    info = {
        "offline": True, "note": OFFLINE_NOTE, "policy": cfg.policy, "dataset": cfg.dataset,
        "scored_on": "held-out episodes" if held_out else "training episodes (none held out: set train.holdout)",
        "episodes": len(scored), "frames": int(len(frames)), "held_out_episodes": held_out,
        "action_mse": float(err[frames].mean()), "action_mae": float(np.sqrt(err[frames]).mean()),
        "action_mse_per_dim": err[frames].mean(0).tolist(),
        "train_action_mse": float(np.mean([r["action_mse"] for r in train_rows])) if held_out else None,
        "value_return_spearman": ranking, "per_episode": per_episode,
    }
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "eval_info.json").write_text(json.dumps(info, indent=2))
    rank = "" if ranking is None else f"; value ranks them vs annotated return with Spearman {ranking:.2f}"
    print(f"offline: action MSE {info['action_mse']:.4f} (MAE {info['action_mae']:.4f}) on {len(scored)} "
          f"{info['scored_on']}{rank}; {OFFLINE_NOTE}")
    return info


def _value_net(path: str):
    """V of an IQL checkpoint (None for BC), from the learner the checkpoint trained."""
    from robot_pref.config import from_dict
    from robot_pref.rl.checkpoint import build_obs_model, load_checkpoint
    from robot_pref.rl.config import TrainConfig
    from robot_pref.rl.train import make_learner

    ckpt = load_checkpoint(path)
    if ckpt["policy"]["algo"] != "iql":
        return None
    learner = make_learner(from_dict(TrainConfig, ckpt["config"]), build_obs_model(ckpt["policy"]),
                           len(ckpt["policy"]["action_low"]))
    learner.load_train_state(ckpt)
    return learner.v.eval()
