"""`robot-pref rollout`: run a trained policy on a simulated or real arm, safety on, optionally recording.

The recorded episodes go into a normal dataset (applied commands as actions, tier "rollout"), ready to
be labeled and trained on again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robot_pref.hardware.config import RolloutConfig
from robot_pref.hardware.interface import Robot
from robot_pref.hardware.record import EpisodeRecorder, Rate, open_dataset, open_robot


def run_episode(robot: Robot, policy, seed: int | None, max_steps: int, stop_at_success: bool = True,
                frame_keys: tuple[str, ...] = (), rate_hz: float | None = None) -> EpisodeRecorder:
    """One episode: observe, act (normalised), send (SI), record what was applied; stop at rest."""
    rec = EpisodeRecorder(robot.info, frame_keys)
    keys = tuple(getattr(policy, "observation_keys", ("obs",)))
    obs = robot.reset(seed)
    rec.clear()
    rate = Rate(rate_hz) if rate_hz else None
    try:
        for _ in range(max_steps):
            action = np.asarray(policy.act(obs.policy_input(keys)), np.float64).reshape(-1)
            rec.add(obs, robot.send(robot.info.to_si(action)))
            if stop_at_success and obs.success:
                break
            if rate:
                rate.sleep()
            obs = robot.observe()
    finally:
        robot.stop()
    return rec


def rollout(cfg: RolloutConfig) -> dict:
    from tqdm import tqdm

    from robot_pref.rl import load_policy

    if not cfg.policy:
        raise ValueError("--policy CHECKPOINT is required (a checkpoint written by `robot-pref train`)")
    policy = load_policy(cfg.policy, device=cfg.device)
    keys = tuple(policy.observation_keys)
    frame_keys = tuple(k[len("frames/"):] for k in keys if k.startswith("frames/"))
    cameras = tuple(k.rsplit("_", 1)[0] for k in frame_keys)
    size = int(frame_keys[0].rsplit("_", 1)[1]) if frame_keys else 84
    robot = open_robot(cfg.robot, cameras=cameras, size=size, safety=cfg.safety, token=cfg.token)
    results = []
    with robot:
        info = robot.info
        if info.simulated and policy.task and info.task != policy.task:
            raise ValueError(f"the policy was trained on task {policy.task!r} but the robot runs {info.task!r}; "
                             f"use --robot sim:{policy.task}")
        max_steps = cfg.max_steps or int(info.env.get("horizon", 0)) or 300
        pace = (not info.simulated) if cfg.realtime is None else cfg.realtime
        ds = open_dataset(cfg.record, info) if cfg.record else None
        for i in tqdm(range(cfg.episodes), desc=f"rollout on {info.name}", unit="ep"):
            rec = run_episode(robot, policy, cfg.seed + i, max_steps, cfg.stop_at_success, frame_keys,
                              info.control_freq if pace else None)
            results.append({"episode": i, "seed": cfg.seed + i, "steps": len(rec), "success": rec.success,
                            "return": float(sum(o.reward for o, _ in rec.rows)) if rec.rows[0][0].reward is not None
                            else None})
            if ds is not None:
                ds.append_episode(rec.episode(seed=cfg.seed + i, tier="rollout", source=f"rollout:{cfg.policy}"))
    known = [r["success"] for r in results if r["success"] is not None]
    summary = {"policy": cfg.policy, "robot": cfg.robot, "episodes": results,
               "success_rate": float(np.mean(known)) if known else None, "record": cfg.record or None}
    rate = "unknown (no success check on this robot)" if not known else f"{100 * summary['success_rate']:.0f}%"
    print(f"{len(results)} episodes on {cfg.robot}: success {rate}" + (f"; recorded to {cfg.record}" if ds else ""))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(summary, indent=2))
    return summary
