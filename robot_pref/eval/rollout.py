"""`evaluate(cfg)`: roll a policy checkpoint out in the simulator; success rate with a Wilson CI, videos.

Episodes stop at the first success (the task is done; the rest of the horizon adds nothing to the
success rate). Returns are sums of the true dense reward over the executed steps. With more than
one worker the episodes run in parallel on Ray actors (one simulator and one CPU policy each).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from robot_pref.resources import resolve_workers

os.environ.setdefault("MUJOCO_GL", "egl")

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    policy: str = field(default="", metadata={"help": "checkpoint written by `robot-pref train` (last.pt/best.pt)"})
    task: str = field(default="", metadata={"help": "task name (default: the task the policy was trained on)"})
    episodes: int = 50
    workers: int = field(default=0, metadata={"help": "parallel Ray actors (1 = in this process, 0 = one per core)"})
    seed: int = field(default=1000, metadata={"help": "episode i starts from reset(seed + i)"})
    max_steps: int | None = field(default=None, metadata={"help": "steps per episode (default: the task horizon)"})
    videos: int = field(default=2, metadata={"help": "record this many episodes (the first ones) as mp4"})
    video_camera: str = "agentview"
    video_size: int = 256
    out: str = field(default="", metadata={"help": "output directory (default: eval_<checkpoint> beside it)"})
    device: str = field(default="cpu", metadata={"help": "policy device in the rollout workers"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: local)"})


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for z = 1.96); sound at 0% and 100% too."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _frame_camera(key: str) -> tuple[str, int, int]:
    """``frames/agentview_84`` -> (agentview, 84, 84); ``frames/agentview_96x128`` -> (agentview, 96, 128)."""
    name = key.split("/", 1)[1]
    camera, _, size = name.rpartition("_")
    h, _, w = size.partition("x")
    if not camera or not h.isdigit() or (w and not w.isdigit()):
        raise ValueError(f"cannot tell the camera and size of observation key {key!r} (expected frames/<cam>_<size>)")
    return camera, int(h), int(w or h)


def observe(env, obs: np.ndarray, keys: tuple[str, ...], render: Mapping[str, Mapping] | None = None) -> dict[str, np.ndarray]:
    """The policy's observation dict: the env's low-dim obs and freshly rendered frames, drawn with the
    options ``render`` gives per frames key (the training frames' `Policy.frame_render`)."""
    from robot_pref.envs import RenderOptions

    out = {}
    for key in keys:
        if key == "obs":
            out[key] = obs
        elif key.startswith("frames/"):
            camera, h, w = _frame_camera(key)
            out[key] = env.render(camera, h, w, RenderOptions(**(render or {}).get(key, {})))
        else:
            raise ValueError(f"the simulator cannot provide observation key {key!r} (only obs and frames/...)")
    return out


def make_eval_env(policy, task: str):
    from robot_pref.envs import TaskEnv, make_env

    if policy.env_meta and task in ("", policy.task):
        return TaskEnv.from_meta(policy.env_meta)
    if not task and not policy.task:
        raise ValueError("the checkpoint names no task; pass --task (lift, stack, door)")
    return make_env(task or policy.task)


def run_episode(env, policy, seed: int, max_steps: int, video: tuple[str, int] | None = None) -> dict[str, Any]:
    """One rollout; stops at success. Returns the per-episode row (and ``frames`` when recording)."""
    obs = env.reset(seed=seed)
    frames = [env.render(video[0], video[1], video[1])] if video else []
    ret, success, steps = 0.0, False, 0
    for steps in range(1, max_steps + 1):
        action = policy.act(observe(env, obs, policy.observation_keys, getattr(policy, "frame_render", None)))
        obs, reward, success, _ = env.step(action)
        ret += reward
        if video:
            frames.append(env.render(video[0], video[1], video[1]))
        if success:
            break
    row = {"seed": seed, "success": bool(success), "steps": steps, "return": float(ret)}
    if video:
        row["frames"] = np.stack(frames)
    return row


class _Worker:
    """A simulator and a policy; runs episodes on request (as a Ray actor or in process)."""

    def __init__(self, policy_path: str, task: str, device: str):
        import torch

        from robot_pref.eval.robomimic_policy import load_eval_policy

        torch.set_num_threads(1)
        self.policy = load_eval_policy(policy_path, device=device)  # ours, or a robomimic peer's
        self.env = make_eval_env(self.policy, task)

    def horizon(self) -> int:
        return int(self.env.horizon)

    def run(self, seed: int, max_steps: int, video: tuple[str, int] | None) -> dict[str, Any]:
        return run_episode(self.env, self.policy, seed, max_steps, video)

    def close(self) -> None:
        self.env.close()


EPISODE_LOG = "episodes.jsonl"


def episodes_done(out: str | Path) -> int:
    """Episodes an evaluation writing to ``out`` has finished so far (the lines of its episode log)."""
    path = Path(out) / EPISODE_LOG
    return len(path.read_text().splitlines()) if path.exists() else 0


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the episodes, write ``eval_info.json`` and videos to ``out``; returns the summary."""
    import imageio.v2 as imageio
    from tqdm.auto import tqdm

    from robot_pref.eval.robomimic_policy import load_eval_policy

    if cfg.episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {cfg.episodes}")
    policy_path = Path(cfg.policy)
    policy = load_eval_policy(policy_path, device="cpu")  # fail early on a bad checkpoint, and read its task
    task = cfg.task or policy.task
    out = Path(cfg.out) if cfg.out else policy_path.parent / f"eval_{policy_path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    video = (cfg.video_camera, cfg.video_size)
    jobs = [(i, cfg.seed + i, video if i < cfg.videos else None) for i in range(cfg.episodes)]
    bar = tqdm(total=cfg.episodes, desc=f"eval {task}", unit="episode")
    rows: dict[int, dict] = {}
    # each episode's row as soon as it ends: a crash or an interrupt keeps the finished ones, and the pipeline's
    # status line counts them (`episodes_done`)
    with (out / EPISODE_LOG).open("w") as episode_log:
        def finished(i: int, row: dict) -> None:
            rows[i] = row
            episode_log.write(json.dumps({"episode": i, **{k: v for k, v in row.items() if k != "frames"}}) + "\n")
            episode_log.flush()
            bar.update(1)

        workers = min(resolve_workers(cfg.workers), cfg.episodes)
        if workers <= 1:
            worker = _Worker(str(policy_path), cfg.task, cfg.device)
            max_steps = cfg.max_steps or worker.horizon()
            try:
                for i, seed, vid in jobs:
                    finished(i, worker.run(seed, max_steps, vid))
            finally:
                worker.close()
        else:
            import ray
            from robot_pref.console import actors_that_fit, init_ray

            init_ray(cfg.address)
            gpus = 1 if cfg.device.startswith("cuda") else 0
            workers = actors_that_fit(workers, "eval", num_gpus=gpus)
            remote = ray.remote(num_cpus=1, num_gpus=gpus)(_Worker)
            actors = [remote.remote(str(policy_path.resolve()), cfg.task, cfg.device)
                      for _ in range(workers)]
            try:
                max_steps = cfg.max_steps or ray.get(actors[0].horizon.remote())
                pending = {actors[k % len(actors)].run.remote(seed, max_steps, vid): i
                           for k, (i, seed, vid) in enumerate(jobs)}
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    finished(pending.pop(done[0]), ray.get(done[0]))
            finally:
                for a in actors:
                    ray.kill(a)
    bar.close()

    per_episode, videos = [], []
    for i in range(cfg.episodes):
        row = {"episode": i, **rows[i]}
        frames = row.pop("frames", None)
        if frames is not None:
            path = out / f"episode_{i:03d}_{'success' if row['success'] else 'fail'}.mp4"
            imageio.mimwrite(path, frames, fps=20, macro_block_size=1)
            row["video"] = path.name
            videos.append(str(path))
        per_episode.append(row)
    successes = sum(r["success"] for r in per_episode)
    returns = np.array([r["return"] for r in per_episode])
    lo, hi = wilson_interval(successes, cfg.episodes)
    info = {
        "policy": str(policy_path), "task": task, "episodes": cfg.episodes, "seed": cfg.seed,
        "max_steps": max_steps, "success_rate": successes / cfg.episodes, "successes": successes,
        "ci": [lo, hi], "ci_method": "wilson 95%", "mean_return": float(returns.mean()),
        "std_return": float(returns.std()), "mean_steps": float(np.mean([r["steps"] for r in per_episode])),
        "wall_s": round(time.perf_counter() - t0, 2), "workers": workers, "videos": videos,
        "per_episode": per_episode,
    }
    (out / "eval_info.json").write_text(json.dumps(info, indent=2))
    log.info("%s: success %d/%d (95%% CI %.0f-%.0f%%), mean return %.1f -> %s", policy_path, successes,
             cfg.episodes, 100 * lo, 100 * hi, info["mean_return"], out)
    return info
