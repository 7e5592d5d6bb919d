"""Simulated tasks (installed as robot_pref.envs): task registry, `TaskEnv`, scripted collectors.

Importing this package is light; robosuite and mujoco load when an env is built.
"""

from robot_pref.envs.tasks import TASKS, RenderOptions, TaskEnv, TaskSpec, get_task, make_env

__all__ = ["TASKS", "RenderOptions", "TaskEnv", "TaskSpec", "get_task", "make_env"]
