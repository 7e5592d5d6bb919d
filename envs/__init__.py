"""Simulated tasks (installed as robot_pref.envs): task registry, `TaskEnv`, scripted collectors.

Importing this package is light (the CLI imports it for `robot-pref --help`); robosuite and mujoco
load when an env is built, and the collectors (scipy, zarr) on first use of `collect_episode`.
"""

from robot_pref.envs.tasks import TASKS, RenderOptions, TaskEnv, TaskSpec, get_task, make_env

__all__ = ["TASKS", "TIERS", "RenderOptions", "TaskEnv", "TaskSpec", "collect_episode", "get_task", "make_env"]


def __getattr__(name: str):
    if name in ("collect_episode", "TIERS"):
        from robot_pref.envs import collectors

        return getattr(collectors, name)
    raise AttributeError(f"module 'robot_pref.envs' has no attribute {name!r}")
