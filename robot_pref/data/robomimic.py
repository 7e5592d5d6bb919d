"""Import a robomimic hdf5 dataset into the trajectory store (read with h5py only).

robomimic's layout: ``data`` (attrs ``env_args``: JSON with env_name, type, env_kwargs) holding
``demo_N`` groups (attrs ``num_samples``) of ``obs/<key>``, ``actions`` (T, A), ``rewards`` (T,),
``dones`` (T,), ``states`` (T, S); optional ``mask/<filter key>`` lists of demo names.
robomimic 0.3.0's env code does not run beside robosuite 1.5, so nothing here builds an env; a file of
states only (no ``obs``: robosuite's own demo files, robomimic's raw releases) is replayed in the task
by `robot_pref.data.robosuite_demos`.

How a demo becomes an episode (T rows, robomimic's observed steps s_0 .. s_{T-1}):

- ``obs``: the low-dim keys concatenated in ``obs_keys`` order; by default robomimic's standard
  set ``robot0_eef_pos | robot0_eef_quat | robot0_gripper_qpos | object`` (for Lift the same 19
  numbers, in the same order, as `robot_pref.envs` Lift), or every low-dim key sorted by name when
  that set is incomplete. The order is stored in attrs ``obs_keys`` and ``env.obs_dims``.
- frames: every uint8 (T, H, W, 3) key ``<cam>_image`` goes to ``frames/<cam>_<H>``, marked
  rendered, flipped upright (robosuite's camera observations are upside down, OpenGL style; the
  store's frames have row 0 at the top). ``state`` <- ``states``, ``action`` <- ``actions``.
- rewards: robomimic's ``rewards[t]`` is the reward after action t, r(s_{t+1}); the store holds
  r(s_t), so ``reward[t] = rewards[t - 1]`` (`shift_next`) for t >= 1, and ``reward[0] = rewards[0]`` (r(s_0) is not
  recorded; the next state's reward is the nearest known value, and for robomimic's sparse success
  rewards both are 0 unless the demo succeeds in one step). The reward of the final state s_T is
  not a row (robomimic saves no state for it); with sparse 0/1 rewards it is kept as the episode's
  ``success`` (any reward of 1), and ``ground_truth/success`` is the shifted reward == 1.
  Dense rewards leave success unknown.
- ``terminated`` is False: robomimic writes ``dones`` as "succeeded or last step of the demo", not as a
  terminal state, so taking it would make IQL stop bootstrapping one step early; the horizon is a
  time-out, as for collected data. ``terminals=True`` (``--terminals``) opts in to ``dones[-1]``.
- tier <- the demo's quality filter key (better/okay/worse) if any.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from robot_pref.data.commands import ImportRobomimicConfig
from robot_pref.data.dataset import DatasetError, Episode, frame_key
from robot_pref.data.imports import check_resumed, export_reward, open_export, open_import, shift_next

ROBOMIMIC_LOW_DIM = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
QUALITY_KEYS = ("better", "okay", "worse")  # robomimic's multi-human (MH) quality filter keys


def _demo_number(name: str) -> int:
    match = re.fullmatch(r"demo_(\d+)", name)
    return int(match.group(1)) if match else -1


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).reshape(-1)]


def read_layout(f) -> dict[str, Any]:
    """env args, demo names (numeric order), low-dim and image obs keys of an open robomimic file."""
    if "data" not in f or not any(_demo_number(k) >= 0 for k in f["data"]):
        raise DatasetError(
            f"{f.filename} is not a robomimic dataset (no data/demo_N groups; top level holds {sorted(f)}); "
            "robomimic files look like data/demo_0/{obs/<key>, actions, rewards, dones, states}"
        )
    try:
        env_args = json.loads(f["data"].attrs.get("env_args", "{}"))
    except (TypeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{f.filename}: data.attrs['env_args'] is not JSON ({err})") from err
    demos = sorted((k for k in f["data"] if _demo_number(k) >= 0), key=_demo_number)
    obs = f[f"data/{demos[0]}/obs"] if "obs" in f[f"data/{demos[0]}"] else {}
    images = sorted(k for k in obs if obs[k].dtype == np.uint8 and obs[k].ndim == 4 and obs[k].shape[-1] == 3)
    low_dim = sorted(k for k in obs if k not in images)
    return {"env_args": env_args, "demos": demos, "low_dim": low_dim, "images": images}


def demo_to_episode(demo, name: str, obs_keys, image_keys, flip: bool, tier: str, task: str, goal: str,
                    terminals: bool = False) -> Episode:
    for key in ("actions", "states"):
        if key not in demo:
            raise DatasetError(f"{demo.file.filename}: {name} has no {key!r} (it holds {sorted(demo)})")
    missing = [k for k in (*obs_keys, *image_keys) if k not in demo.get("obs", {})]
    if missing:
        raise DatasetError(f"{demo.file.filename}: {name}/obs lacks {missing}; choose --obs-keys present in every demo")
    actions = np.asarray(demo["actions"], np.float32)
    T = len(actions)
    if T == 0:
        raise DatasetError(f"{demo.file.filename}: {name} has no steps")
    obs = np.concatenate([np.asarray(demo["obs"][k], np.float32).reshape(T, -1) for k in obs_keys], axis=1)
    rewards = np.asarray(demo["rewards"], np.float32) if "rewards" in demo else None
    dones = np.asarray(demo["dones"]) if "dones" in demo else np.zeros(T)
    binary = rewards is not None and np.isin(rewards, (0.0, 1.0)).all()
    frames = {}
    for key in image_keys:
        x = np.asarray(demo["obs"][key])
        frames[frame_key(key.removesuffix("_image"), x.shape[1], x.shape[2])] = x[:, ::-1] if flip else x
    return Episode(
        obs=obs, action=actions, state=np.asarray(demo["states"], np.float64), frames=frames,
        true_reward=None if rewards is None else shift_next(rewards),
        true_success=shift_next(rewards) >= 1.0 if binary else None,
        task=task, goal=goal, tier=tier, source="robomimic", seed=-1,
        success=bool(rewards.max() >= 1.0) if binary else None, terminated=terminals and bool(dones[-1]),
    )


def import_robomimic(cfg: ImportRobomimicConfig) -> dict[str, Any]:
    """Convert ``cfg.file`` into a store at ``cfg.out`` (continuing a partial import there); returns the summary."""
    import h5py
    from tqdm import tqdm

    if not cfg.file or not cfg.out:
        raise ValueError("give the robomimic file and --out, e.g. "
                         "`robot-pref import-robomimic low_dim.hdf5 --out lift.zarr`")
    if not Path(cfg.file).is_file():
        raise FileNotFoundError(f"{cfg.file} does not exist")
    if not h5py.is_hdf5(cfg.file):
        raise DatasetError(f"{cfg.file} is not an HDF5 file; robomimic datasets are .hdf5 files")
    with h5py.File(cfg.file, "r") as f:
        layout = read_layout(f)
        demos = layout["demos"]
        if cfg.filter_key:
            if f"mask/{cfg.filter_key}" not in f:
                raise DatasetError(f"{cfg.file} has no filter key mask/{cfg.filter_key}; it has "
                                   f"{sorted(f['mask']) if 'mask' in f else 'no mask/ group'}")
            keep = set(_names(f[f"mask/{cfg.filter_key}"][()]))
            demos = [d for d in demos if d in keep]
        tiers = {d: q for q in QUALITY_KEYS if f"mask/{q}" in f for d in _names(f[f"mask/{q}"][()])}
        if demos and not layout["low_dim"] and not layout["images"]:  # states only: replay them in the task
            from robot_pref.data.robosuite_demos import import_states

            return import_states(cfg, f, demos, tiers)
        obs_keys = list(cfg.obs_keys) or (list(ROBOMIMIC_LOW_DIM) if set(ROBOMIMIC_LOW_DIM) <= set(layout["low_dim"])
                                          else layout["low_dim"])
        unknown = [k for k in obs_keys if k not in layout["low_dim"]]
        if unknown or not obs_keys:
            raise DatasetError(f"{cfg.file}: obs keys {unknown or '(none)'} are not low-dim observations; "
                               f"available: {layout['low_dim']}")
        image_keys = layout["images"] if cfg.images else []
        env_args = layout["env_args"]
        env_name = env_args.get("env_name", "")
        first = f[f"data/{demos[0]}"] if demos else None
        if first is None:
            raise DatasetError(f"{cfg.file}: no demos to import (filter key {cfg.filter_key!r} selects none)")
        obs_dims = {k: int(np.prod(first["obs"][k].shape[1:])) for k in obs_keys}
        kwargs = env_args.get("env_kwargs", {})
        options = {k: getattr(cfg, k) for k in ("filter_key", "images", "flip_images", "task", "goal", "terminals")}
        ds = open_import(
            cfg.out, {"format": "robomimic", "path": str(Path(cfg.file).resolve()), "obs_keys": obs_keys, **options},
            cfg.overwrite, obs_dim=sum(obs_dims.values()), action_dim=first["actions"].shape[1],
            state_dim=first["states"].shape[1], fps=float(kwargs.get("control_freq", 20)), obs_keys=obs_keys,
            env={"source": "robomimic", "name": env_name, "env_type": env_args.get("type"), "env_kwargs": kwargs,
                 "obs_dims": obs_dims, "file": str(Path(cfg.file).resolve()),
                 "cameras": [k.removesuffix("_image") for k in image_keys]},
        )
        done = check_resumed(ds, [int(f[f"data/{d}/actions"].shape[0]) for d in demos], cfg.file)
        task = cfg.task or env_name.lower()
        for name in tqdm(demos[done:], desc=f"import {Path(cfg.file).name}", unit="demo", initial=done,
                         total=len(demos)):
            ep = demo_to_episode(f[f"data/{name}"], name, obs_keys, image_keys, cfg.flip_images,
                                 tiers.get(name, ""), task, cfg.goal, cfg.terminals)
            try:
                ds.append_episode(ep)
            except DatasetError as err:
                raise DatasetError(f"{cfg.file} {name}: {err}") from err
    return ds.summary()


def _obs_parts(ds) -> dict[str, tuple[int, int]]:
    """Column range of each named observation part: recorded at import (``obs_dims``), else the task's own."""
    env = ds.env_meta
    dims = env.get("obs_dims")
    if not dims and env.get("task"):
        from robot_pref.envs import TaskEnv

        with TaskEnv.from_meta(env) as task_env:
            return dict(task_env._obs_slices)
    if not dims:
        return {"obs": (0, ds.shape("obs")[1])}
    ends = np.cumsum([0, *dims.values()])
    return {k: (int(a), int(b)) for k, a, b in zip(dims, ends[:-1], ends[1:])}


def export_robomimic(cfg) -> dict[str, Any]:
    """Write ``cfg.dataset`` as a robomimic hdf5 file (written to ``<out>.partial``, renamed when complete).

    Per demo: ``obs/<part>`` and ``next_obs/<part>`` (the observation split into its named parts),
    ``obs/<camera>_image`` for every fully rendered frame key (flipped to robosuite's upside-down
    convention unless ``flip_images`` is off, as import reads it), ``actions``, ``states``,
    ``rewards`` (robomimic's r(s_{t+1}) = the store's reward[t + 1]; the last row repeats its own) from
    ``rewards/<reward_key>`` (``true``: the ground truth; none: zeros, recorded in ``data.attrs``),
    ``dones`` (1 on each demo's last step, robomimic's end of demo); ``mask/<tier>`` lists demos per tier.
    """
    import os

    import h5py
    from tqdm import tqdm

    ds, out = open_export(cfg.dataset, cfg.out, cfg.overwrite, "robot-pref export-robomimic --dataset data/lift.zarr "
                          "--out exports/lift.hdf5 --reward-key learned")
    reward = export_reward(ds, cfg.reward_key)
    if reward is None:
        reward = np.zeros(ds.n_frames, np.float32)
    cameras = list(cfg.cameras) or [k for k in ds.frame_keys if ds.rendered_episodes(k).all()]
    names = {}
    for key in cameras:
        if key not in ds.frame_keys or not ds.rendered_episodes(key).all():
            raise DatasetError(f"frames/{key} is not rendered for every episode of {cfg.dataset} (frame keys: "
                               f"{ds.frame_keys}); run `robot-pref render` or choose --cameras")
        image = key.rpartition("_")[0] + "_image"
        if image in names.values():
            raise DatasetError(f"frame keys {[k for k in cameras if k.startswith(image[:-6])]} are one camera at two "
                               f"sizes; robomimic holds one {image}: choose one with --cameras")
        names[key] = image
    parts = _obs_parts(ds)
    env = ds.env_meta
    env_args = {"env_name": env.get("name", ""), "type": env.get("env_type", 1),
                "env_kwargs": env.get("env_kwargs", env.get("kwargs", {}))}
    table = ds.episode_table()
    obs, action, state = ds.get("obs"), ds.get("action"), ds.get("state")
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(partial, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = ds.n_frames
        data.attrs["rewards"] = cfg.reward_key or "none (zeros)"
        for e in tqdm(range(ds.n_episodes), desc=f"export {out.name}", unit="demo"):
            sl = ds.episode_slice(e)
            g = data.create_group(f"demo_{e}")
            g.attrs["num_samples"] = sl.stop - sl.start
            for part, (a, b) in parts.items():
                x = obs[sl, a:b]
                g.create_dataset(f"obs/{part}", data=x)
                g.create_dataset(f"next_obs/{part}", data=np.concatenate([x[1:], x[-1:]]))
            for key, image in names.items():
                x = ds.get(f"frames/{key}", sl)
                x = x[:, ::-1] if cfg.flip_images else x
                g.create_dataset(f"obs/{image}", data=x)
                g.create_dataset(f"next_obs/{image}", data=np.concatenate([x[1:], x[-1:]]))
            r = reward[sl]
            g.create_dataset("actions", data=action[sl])
            g.create_dataset("states", data=state[sl])
            g.create_dataset("rewards", data=np.concatenate([r[1:], r[-1:]]).astype(np.float32))
            g.create_dataset("dones", data=(np.arange(sl.stop - sl.start) == sl.stop - sl.start - 1).astype(np.int64))
        for tier in sorted(set(table["tier"].tolist()) - {""}):
            f.create_dataset(f"mask/{tier}", data=np.array(
                [f"demo_{e}" for e in np.flatnonzero(table["tier"] == tier)], dtype="S"))
    os.replace(partial, out)
    return {"path": str(out), "demos": ds.n_episodes, "frames": ds.n_frames, "obs": list(parts),
            "images": list(names.values()), "reward": cfg.reward_key or None}
