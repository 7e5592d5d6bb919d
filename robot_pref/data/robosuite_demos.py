"""Import states-only demos: what robosuite's DataCollectionWrapper writes and robomimic publishes raw.

Layout (robosuite's ``gather_demonstrations_as_hdf5``, then optionally robomimic's
``convert_robosuite.py``): ``data`` (attrs ``env`` + ``env_info`` JSON, or robomimic's ``env_args``)
holding ``demo_N`` groups with attrs ``model_file`` (the scene's MJCF XML) and datasets ``states``
(T, 1 + nq + nv: MuJoCo's flattened time, qpos, qvel) and ``actions`` (T, A); no ``obs``. Optional
``mask/<filter key>`` lists of demo names (robomimic's multi-human ``better/okay/worse`` become tiers).

Each demo's scene is rebuilt from its own ``model_file`` (robosuite's ``edit_model_xml`` makes its mesh
paths local) in the `robot_pref.envs` task of the same robosuite env, and every saved state is set to
produce row t: the task's observation of s_t, the true reward r(s_t) and success(s_t) (no shift:
they are computed for s_t itself), and the task's saved state. The dataset's ``attrs.env`` is the
task's env metadata, so `robot-pref render` rebuilds the scene and draws frames from the states (in
the task's standard model: object sizes that robosuite draws per model build may differ slightly
from the demo's own XML; poses come from the states).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from robot_pref.data.dataset import DatasetError, Episode
from robot_pref.data.imports import check_resumed, open_import


def env_info(f) -> tuple[str, dict]:
    """(robosuite env name, constructor arguments recorded with the demos) of an open demo file."""
    attrs = f["data"].attrs
    try:
        if "env_args" in attrs:  # robomimic's convert_robosuite.py
            args = json.loads(attrs["env_args"])
            return args.get("env_name", ""), dict(args.get("env_kwargs", {}))
        return str(attrs.get("env", "")), dict(json.loads(attrs.get("env_info", "{}")))
    except (TypeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{f.filename}: data.attrs env_args/env_info is not JSON ({err})") from err


def task_of(env_name: str, path: str):
    from robot_pref.envs.tasks import TASKS

    for spec in TASKS.values():
        if spec.env_name == env_name:
            return spec
    raise DatasetError(f"{path}: demos of robosuite env {env_name or '(unnamed)'!r} cannot be replayed; "
                       f"robot_pref's tasks replay {sorted(s.env_name for s in TASKS.values())}")


def replay_demo(env, demo, name: str, loaded: dict) -> Episode:
    """Rebuild ``demo``'s scene from its model_file, set each saved state, record what the task sees.

    ``loaded`` remembers the XML the env holds: demos of one recording session share their scene, and
    rebuilding it (~0.2 s) would cost more than replaying a whole demo.
    """
    path = demo.file.filename
    if "model_file" not in demo.attrs:
        raise DatasetError(f"{path}: {name} has no model_file attribute, so its scene cannot be rebuilt; "
                           "states-only demos need the MJCF XML robosuite's DataCollectionWrapper saves (or "
                           "import a robomimic file that carries obs/)")
    for key in ("states", "actions"):
        if key not in demo:
            raise DatasetError(f"{path}: {name} has no {key!r} (it holds {sorted(demo)})")
    raw = env.unwrapped
    xml = demo.attrs["model_file"]
    if loaded.get("xml") != xml:
        loaded.pop("xml", None)
        try:
            raw.reset_from_xml_string(raw.edit_model_xml(xml))
        except Exception as err:  # MuJoCo's XML errors, robosuite's asserts
            raise DatasetError(f"{path}: {name}'s model_file does not load in robosuite "
                               f"({type(err).__name__}: {err}); it was saved by an incompatible robosuite") from err
        loaded["xml"] = xml
    states, actions = np.asarray(demo["states"], np.float64), np.asarray(demo["actions"], np.float32)
    sim_dim = raw.sim.get_state().flatten().shape[0]
    if states.ndim != 2 or states.shape[1] != sim_dim or len(states) != len(actions) or not len(states):
        raise DatasetError(
            f"{path}: {name}'s states {states.shape} do not fit the scene rebuilt from its model_file "
            f"({len(actions)} actions, states of 1 + nq + nv = {sim_dim} values); the demo was saved from another "
            "robot, scene or robosuite version: re-collect it, or skip it with a --filter-key that leaves it out")
    model = raw.sim.model._model
    placed = [np.concatenate([model.body_pos[b], model.body_quat[b]]) for b in env._placed]  # from the XML
    obs, state, reward, success = [], [], [], []
    for s in states:
        obs.append(env.set_state(np.concatenate([s, *placed])))
        state.append(env.get_state())
        reward.append(env.reward())
        success.append(env.success())
    return Episode(obs=np.stack(obs), action=actions, state=np.stack(state),
                   true_reward=np.asarray(reward, np.float32), true_success=np.asarray(success, bool),
                   success=bool(any(success)))


def import_states(cfg, f, demos: list[str], tiers: dict[str, str]) -> dict[str, Any]:
    """Replay the states-only demos ``demos`` of the open file ``f`` into ``cfg.out``; returns the summary."""
    from tqdm import tqdm

    from robot_pref.envs.tasks import TaskEnv, env_kwargs

    if cfg.obs_keys:
        raise DatasetError(f"{cfg.file} holds states only (no obs/); --obs-keys does not apply: the observation is "
                           "the task's own")
    env_name, recorded = env_info(f)
    spec = task_of(env_name, cfg.file)
    kwargs = env_kwargs(spec, **{k: recorded[k] for k in ("robots", "control_freq") if k in recorded})
    env = TaskEnv(spec, kwargs)
    meta = env.meta()
    try:
        ds = open_import(
            cfg.out, {"format": "robosuite-demos", "path": str(Path(cfg.file).resolve()), "filter_key": cfg.filter_key,
                      "task": cfg.task, "goal": cfg.goal},
            cfg.overwrite, obs_dim=env.obs_dim, action_dim=env.action_dim, state_dim=env.state_dim,
            fps=env.control_freq, obs_keys=list(env.obs_keys),
            env={**meta, "source": "robosuite-demos", "renderable": True, "file": str(Path(cfg.file).resolve()),
                 "recorded_env": {"name": env_name, "kwargs": recorded}})
        done = check_resumed(ds, [int(f[f"data/{d}/actions"].shape[0]) for d in demos], cfg.file)
        loaded: dict = {}
        for name in tqdm(demos[done:], desc=f"replay {Path(cfg.file).name}", unit="demo", initial=done,
                         total=len(demos)):
            ep = replay_demo(env, f[f"data/{name}"], name, loaded)
            ep.task, ep.goal, ep.tier, ep.source = cfg.task or spec.name, cfg.goal or spec.goal, tiers.get(name, ""), \
                "robosuite-demos"
            try:
                ds.append_episode(ep)
            except DatasetError as err:
                raise DatasetError(f"{cfg.file} {name}: {err}") from err
    finally:
        env.close()
    return ds.summary()
