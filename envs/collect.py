"""The collect step: episodes from scripted collectors, in process or across Ray actors, into a dataset.

Episode i of a run (counted from the episodes already in the dataset, so appends continue the
sequence) is fully determined by (run seed, i) and its tier, whichever worker collects it; the driver
appends results in episode order and is the only writer of the store.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from robot_pref.data.dataset import DatasetError, Episode, TrajectoryDataset
from robot_pref.envs.collectors import TIERS, collect_episode
from robot_pref.envs.commands import CollectConfig
from robot_pref.envs.tasks import TaskEnv, get_task, make_env
from robot_pref.resources import resolve_workers


def episode_plan(tier: str, start: int, n: int, seed: int) -> list[tuple[str, int]]:
    """(tier, rng entropy) of episodes start..start+n-1; ``mixed`` cycles the tiers by episode index."""
    tiers = [TIERS[i % len(TIERS)] if tier == "mixed" else tier for i in range(start, start + n)]
    return list(zip(tiers, range(start, start + n)))


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class _Collector:
    """A Ray actor holding one env: collects the episodes it is handed."""

    def __init__(self, meta: dict, cameras: tuple[str, ...], size: int):
        self.env = TaskEnv.from_meta(meta)
        self.cameras, self.size = cameras, size

    def collect(self, tier: str, seed: int, index: int) -> Episode:
        return collect_episode(self.env, tier, _rng(seed, index), self.cameras, self.size)


def _open_or_create(cfg: CollectConfig, env: TaskEnv) -> TrajectoryDataset:
    if Path(cfg.out).exists() and not cfg.overwrite:
        ds = TrajectoryDataset.open(cfg.out, "a")
        have = ds.env_meta.get("task")
        if have != env.task.name:
            raise DatasetError(
                f"{cfg.out} holds episodes of task {have!r}, not {env.task.name!r}; collect into another "
                "--out, or pass --overwrite to replace it"
            )
        if ds.attrs.get("obs_keys") != list(env.obs_keys):
            raise DatasetError(
                f"{cfg.out} stores observations {ds.attrs.get('obs_keys')}, this task now gives "
                f"{list(env.obs_keys)}; collect into another --out or pass --overwrite"
            )
        return ds
    ds = TrajectoryDataset.create(
        cfg.out, obs_dim=env.obs_dim, action_dim=env.action_dim, state_dim=env.state_dim,
        fps=env.control_freq, env=env.meta(), obs_keys=env.obs_keys, overwrite=cfg.overwrite,
    )
    ds.update_attrs(cameras=list(env.task.cameras))
    return ds


def _episodes(cfg: CollectConfig, env: TaskEnv, plan: list[tuple[str, int]]) -> Iterator[Episode]:
    """Episodes in plan order, collected here (workers <= 1) or by Ray actors."""
    workers = min(resolve_workers(cfg.workers), len(plan))
    if workers <= 1:
        for tier, index in plan:
            yield collect_episode(env, tier, _rng(cfg.seed, index), cfg.cameras, cfg.size)
        return
    import ray
    from robot_pref.console import actors_that_fit, init_ray

    init_ray(cfg.address)
    workers = actors_that_fit(workers, "collect")
    actor = ray.remote(num_cpus=1)(_Collector)
    actors = [actor.remote(env.meta(), tuple(cfg.cameras), cfg.size) for _ in range(workers)]
    pending: collections.deque = collections.deque()
    try:
        for k, (tier, index) in enumerate(plan):
            if len(pending) >= 2 * len(actors):  # bounded in flight: episodes with frames are large
                yield ray.get(pending.popleft())
            pending.append(actors[k % len(actors)].collect.remote(tier, cfg.seed, index))
        while pending:
            yield ray.get(pending.popleft())
    finally:
        for a in actors:
            ray.kill(a)


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Add ``cfg.episodes`` scripted episodes to ``cfg.out``; returns per-tier success of this run."""
    get_task(cfg.task)
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be at least 1, got {cfg.episodes}")
    overrides = {} if cfg.horizon is None else {"horizon": cfg.horizon}
    with make_env(cfg.task, **overrides) as env:
        for cam in cfg.cameras:
            env.render(cam, 8, 8)  # fail now on an unknown camera, not in a worker mid-run
        ds = _open_or_create(cfg, env)
        plan = episode_plan(cfg.tier, ds.n_episodes, cfg.episodes, cfg.seed)
        counts: dict[str, list[int]] = {}
        bar = tqdm(_episodes(cfg, env, plan), total=len(plan), desc=f"collect {cfg.task}", unit="ep")
        for ep in bar:
            ds.append_episode(ep)
            counts.setdefault(ep.tier, []).append(int(ep.success))
            bar.set_postfix({t: f"{np.mean(s):.0%}" for t, s in counts.items()})
    ds.compute_stats()
    result = {
        "dataset": cfg.out,
        "episodes": ds.n_episodes,
        "frames": ds.n_frames,
        "tiers": {t: {"episodes": len(counts[t]), "success_rate": float(np.mean(counts[t]))}
                  for t in TIERS if t in counts},
    }
    print(format_tiers(result["tiers"]))
    return result


def format_tiers(tiers: dict[str, dict]) -> str:
    lines = [f"{'tier':<10}{'episodes':>10}{'success':>10}"]
    lines += [f"{t:<10}{row['episodes']:>10}{row['success_rate']:>10.0%}" for t, row in tiers.items()]
    return "\n".join(lines)
