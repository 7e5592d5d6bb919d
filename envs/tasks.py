"""The task registry and `TaskEnv`: one robosuite task with its goal text, cameras, reward and renderer.

Every task is a robosuite 1.5 environment with a Panda arm under OSC pose control (7-D delta action:
dx, dy, dz, dax, day, daz in [-1, 1] plus the gripper in [-1 open, 1 closed]), the dense shaped
reward (``reward_shaping=True``) as the true reward, and no termination at success: episodes end at
the task horizon, which is a time-out (``ignore_done=True``).

Policy observation (float32, fixed order, see ``TaskEnv.obs_keys``)::

    robot0_eef_pos (3) | robot0_eef_quat (4, xyzw) | robot0_gripper_qpos (2) | the task's object keys

    lift   cube_pos (3), cube_quat (4), gripper_to_cube_pos (3)                        -> 19 dims
    stack  cubeA_pos, cubeA_quat, cubeB_pos, cubeB_quat, gripper_to_cubeA,
           gripper_to_cubeB, cubeA_to_cubeB                                              -> 32 dims
    door   door_pos, handle_pos, door_to_eef_pos, handle_to_eef_pos, hinge_qpos, handle_qpos -> 23 dims
    cloth_fold  cloth_corners (12), cloth_center, gripper_to_corner, cloth_held (1)       -> 28 dims

Saved state (`get_state`, float64): MuJoCo's [time, qpos, qvel], plus the model pose of bodies that
robosuite places at reset without a joint (the door), so a state alone rebuilds the scene.

Rendering goes through our own ``mujoco.Renderer`` on the simulator's model and data (robosuite's own
offscreen renderer is off), so frames rendered during collection and frames re-rendered later from
saved states come out of the same code. Frames are upright (row 0 is the top of the image), unlike
robosuite's camera observations, which follow the OpenGL convention and come out upside down.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from robot_pref.console import quiet_third_party

quiet_third_party()  # before robosuite's import-time warnings, in Ray workers too

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _load_triton_llvm_first() -> None:
    """Load triton's LLVM (libtriton) before Mesa's EGL brings another LLVM.

    In one process, creating a software-EGL renderer and *then* letting torch import triton (its
    optimizers and torch.compile do, on first use) segfaults: two LLVMs collide. Loading triton's native
    library first is safe and takes ~0.2 s without importing torch (importing torch._dynamo for the same
    effect took 1.5-4.6 s of every rendering process's start: render actors, evaluation workers).
    """
    try:
        import triton._C.libtriton  # noqa: F401
    except ImportError:  # no triton (CPU-only torch wheels, or no torch): nothing to collide with
        pass

PROPRIO_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
CAMERAS = ("agentview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: robosuite env, goal text for the labeler, cameras, episode length, observation."""

    name: str
    env_name: str
    goal: str
    object_keys: tuple[str, ...]
    cameras: tuple[str, ...] = CAMERAS
    horizon: int = 150
    control_freq: int = 20
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)  # task-specific robosuite arguments
    # bodies without a joint that robosuite moves at reset by editing the model (the door): their
    # pose is not in qpos, so it is appended to the saved state
    placed_bodies: tuple[str, ...] = ()
    # the TaskEnv class ("module:Class"); a task with state beyond MuJoCo's (the cloth's picker) subclasses it
    env_class: str = "robot_pref.envs.tasks:TaskEnv"

    @property
    def obs_keys(self) -> tuple[str, ...]:
        return PROPRIO_KEYS + self.object_keys


TASKS: dict[str, TaskSpec] = {
    "lift": TaskSpec(
        name="lift", env_name="Lift", goal="to lift the red cube",
        object_keys=("cube_pos", "cube_quat", "gripper_to_cube_pos"), horizon=150,
    ),
    "stack": TaskSpec(
        name="stack", env_name="Stack", goal="to stack the red cube on top of the green cube",
        object_keys=("cubeA_pos", "cubeA_quat", "cubeB_pos", "cubeB_quat", "gripper_to_cubeA",
                     "gripper_to_cubeB", "cubeA_to_cubeB"),
        horizon=250,
    ),
    "door": TaskSpec(
        name="door", env_name="Door", goal="to open the door",
        object_keys=("door_pos", "handle_pos", "door_to_eef_pos", "handle_to_eef_pos", "hinge_qpos",
                     "handle_qpos"),
        horizon=200, placed_bodies=("Door_main",),
    ),
    "cloth_fold": TaskSpec(  # a flex cloth with a picker grasp: envs/cloth.py, docs/CLOTH.md
        name="cloth_fold", env_name="ClothFold",
        goal="to fold the cloth diagonally from the top left corner to the bottom right corner",
        object_keys=("cloth_corners", "cloth_center", "gripper_to_corner", "cloth_held"),
        horizon=120, env_class="robot_pref.envs.cloth:ClothEnv",
    ),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class RenderOptions:
    """Renderer quality switches; all off by default, which is ~3x faster on a CPU (software GL).

    ``mesh_detail`` < 1 draws visual meshes decimated to that fraction of their triangles
    (`robot_pref.envs.mesh_detail`): at 0.3 a 64x64 Lift frame renders 2.2x faster in software GL and 1.4%
    of its pixels are off by more than 16/255 (tools/bench_render.py)."""

    shadows: bool = False
    reflections: bool = False
    multisample: bool = False
    mesh_detail: float = 1.0

    def __post_init__(self):
        from robot_pref.envs.mesh_detail import check_detail

        check_detail(self.mesh_detail)


def controller_config() -> dict:
    """robosuite 1.5's BASIC composite controller for the Panda: OSC_POSE (delta, base frame) on the arm.

    Only the arm's part is kept: the Panda has no torso/head/base/legs, and robosuite warns about each.
    """
    import robosuite  # noqa: F401  (sets up robosuite's logger)
    from robosuite.controllers import load_composite_controller_config

    logging.getLogger("robosuite_logs").setLevel(logging.WARNING)  # not one INFO line per env built
    cfg = load_composite_controller_config(controller="BASIC", robot="Panda")
    cfg["body_parts"] = {"right": cfg["body_parts"]["right"]}
    return cfg


def env_kwargs(task: str | TaskSpec, **overrides: Any) -> dict:
    """The full robosuite constructor arguments of a task (what `TaskEnv.meta` records)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    kwargs: dict[str, Any] = {
        "robots": "Panda",
        "controller_configs": controller_config(),
        "reward_shaping": True,
        "has_renderer": False,
        "has_offscreen_renderer": False,
        "use_camera_obs": False,
        "ignore_done": True,
        "hard_reset": False,  # sim.reset() instead of rebuilding the model: ~1 ms instead of ~0.6 s
        # seeds robosuite's rng at construction, which also draws model geometry (Lift's cube size):
        # fixed, so every env of a task has the same model; episodes are seeded through reset(seed)
        "seed": 0,
        "horizon": spec.horizon,
        "control_freq": spec.control_freq,
        **dict(spec.env_kwargs),
    }
    kwargs.update(overrides)
    return kwargs


def make_env(task: str, seed: int | None = None, **env_overrides: Any) -> "TaskEnv":
    """Build a task's env; ``env_overrides`` replace robosuite constructor arguments (e.g. horizon=300).

    ``seed`` seeds the first `reset` (later resets continue the stream unless given their own seed).
    """
    spec = get_task(task)
    return env_class(spec)(spec, env_kwargs(task, **env_overrides), seed=seed)


def env_class(spec: TaskSpec) -> type["TaskEnv"]:
    """The task's TaskEnv class; importing its module also registers its robosuite environment."""
    import importlib

    module, name = spec.env_class.split(":")
    return getattr(importlib.import_module(module), name)


class TaskEnv:
    """A robosuite task with a flat float32 observation, clipped actions, state save/restore and rendering."""

    def __init__(self, task: TaskSpec, kwargs: Mapping[str, Any], seed: int | None = None):
        import robosuite

        self.task = task
        self.kwargs = dict(kwargs)
        if self.kwargs.get("hard_reset"):
            raise ValueError("hard_reset=True rebuilds the model on every reset, which breaks cached renderers; "
                             "leave hard_reset at False")
        self._env = robosuite.make(task.env_name, **self.kwargs)
        self.horizon = int(self.kwargs["horizon"])
        self.control_freq = float(self.kwargs["control_freq"])
        self.action_low, self.action_high = (np.asarray(a, np.float32) for a in self._env.action_spec)
        self.action_dim = int(self.action_low.shape[0])
        self._placed = [self._env.sim.model.body_name2id(name) for name in task.placed_bodies]
        self.state_dim = int(self.get_state().shape[0])
        self._renderers: dict[tuple[int, int, bool, float], Any] = {}
        self._scene_option = None
        self._pending_seed = seed
        # a first reset hides robosuite's visualisation sites (a fresh model shows them), so that every
        # env renders a state the same way however many episodes it has run
        self._last_obs = self._observe(self._env.reset())
        self.obs_dim = int(self._last_obs.shape[0])
        raw = self._env._get_observations(force_update=True)
        sizes = np.cumsum([0] + [np.atleast_1d(raw[k]).shape[0] for k in self.obs_keys])
        self._obs_slices = {k: (int(a), int(b)) for k, a, b in zip(self.obs_keys, sizes[:-1], sizes[1:])}

    # ------------------------------------------------------------------ properties
    @property
    def obs_keys(self) -> tuple[str, ...]:
        return self.task.obs_keys

    @property
    def sim(self):
        """robosuite's MjSim (``sim.model._model`` / ``sim.data._data`` are the raw MuJoCo structs)."""
        return self._env.sim

    @property
    def unwrapped(self):
        return self._env

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start an episode; with ``seed`` the initial state (object placement, arm noise) is reproducible."""
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            # robosuite's placement samplers hold a reference to env.rng: reseed it in place
            fresh = np.random.default_rng(seed)
            self._env.rng.bit_generator.state = fresh.bit_generator.state
        self._last_obs = self._observe(self._env.reset())
        return self._last_obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict]:
        """Apply the clipped action; returns r(s_{t+1}), the success check on s_{t+1} and info["action"]."""
        a = np.clip(np.asarray(action, np.float32).reshape(self.action_dim), self.action_low, self.action_high)
        _, _, _, info = self._env.step(a.astype(np.float64))
        # robosuite reads observations and reward before the kinematics of the last physics substep
        # are recomputed; forward first, so obs, reward, success and frames are all functions of the
        # saved state (and equal what `set_state` reproduces later)
        self._env.sim.forward()
        self._last_obs = self._observe(self._env._get_observations(force_update=True))
        return self._last_obs, self.reward(), self.success(), dict(info, action=a)

    def observation(self) -> np.ndarray:
        return self._last_obs.copy()

    def obs_dict(self, obs: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Split a flat observation (default: the current one) back into its named parts."""
        obs = self._last_obs if obs is None else np.asarray(obs)
        return {k: obs[..., a:b] for k, (a, b) in self._obs_slices.items()}

    def reward(self) -> float:
        """Dense true reward of the current state."""
        return float(self._env.reward(None))

    def success(self) -> bool:
        return bool(self._env._check_success())

    def _observe(self, raw: Mapping[str, Any]) -> np.ndarray:
        return np.concatenate([np.atleast_1d(np.asarray(raw[k], np.float32)) for k in self.obs_keys])

    # ------------------------------------------------------------------ state
    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state [time, qpos, qvel] (float64), then [pos (3), quat (4)] of each of the
        task's ``placed_bodies`` (model poses that robosuite randomises at reset, outside qpos)."""
        model = self._env.sim.model._model
        poses = [np.concatenate([model.body_pos[b], model.body_quat[b]]) for b in self._placed]
        return np.concatenate([self._env.sim.get_state().flatten()] + poses).astype(np.float64)

    def set_state(self, state: np.ndarray) -> np.ndarray:
        """Restore a saved state and recompute derived quantities; returns the observation there."""
        state = np.asarray(state, np.float64).reshape(-1)
        if state.shape[0] != self.state_dim:
            raise ValueError(
                f"state has {state.shape[0]} values, {self.task.name} expects {self.state_dim}; "
                "was it saved from another task, robosuite version or cloth grid size? (check dataset attrs['env'])"
            )
        self._restore(state)
        self._env.sim.forward()
        self._last_obs = self._observe(self._env._get_observations(force_update=True))
        return self._last_obs

    def _restore(self, state: np.ndarray) -> None:
        """Write a size-checked saved state into the simulator; a task saving more overrides this."""
        n = state.shape[0] - 7 * len(self._placed)
        self._env.sim.set_state_from_flattened(state[:n])
        model = self._env.sim.model._model
        for b, pose in zip(self._placed, state[n:].reshape(-1, 7)):
            model.body_pos[b], model.body_quat[b] = pose[:3], pose[3:]

    # ------------------------------------------------------------------ rendering
    def render(self, camera: str, height: int, width: int, options: RenderOptions | None = None) -> np.ndarray:
        """An upright uint8 (H, W, 3) image of the current state from a named camera."""
        import mujoco

        options = options or RenderOptions()
        model = self._env.sim.model._model
        if mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            names = [model.camera(i).name for i in range(model.ncam)]
            raise ValueError(f"{self.task.name} has no camera {camera!r}; cameras: {names}")
        renderer = self._renderer(int(height), int(width), bool(options.multisample), float(options.mesh_detail))
        if self._scene_option is None:  # what robosuite's own renderer shows: visual meshes, not collision ones
            self._scene_option = mujoco.MjvOption()
            self._scene_option.geomgroup[0] = int(self.kwargs.get("render_collision_mesh", False))
            self._scene_option.geomgroup[1] = int(self.kwargs.get("render_visual_mesh", True))
        renderer.update_scene(self._env.sim.data._data, camera=camera, scene_option=self._scene_option)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = options.shadows
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = options.reflections
        return renderer.render()  # mujoco.Renderer already flips OpenGL's bottom-up rows

    def _renderer(self, height: int, width: int, multisample: bool, mesh_detail: float):
        """One cached renderer per (size, multisampling, mesh detail): the sample count and the meshes are
        fixed when its context is made."""
        import mujoco

        from robot_pref.envs.mesh_detail import meshes_at_detail

        key = (height, width, multisample, mesh_detail)
        if key not in self._renderers:
            _load_triton_llvm_first()
            model = self._env.sim.model._model
            model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
            model.vis.global_.offheight = max(model.vis.global_.offheight, height)
            samples = model.vis.quality.offsamples
            model.vis.quality.offsamples = samples if multisample else 0
            try:
                with meshes_at_detail(model, mesh_detail):
                    self._renderers[key] = mujoco.Renderer(model, height=height, width=width)
            finally:
                model.vis.quality.offsamples = samples
        return self._renderers[key]

    # ------------------------------------------------------------------ metadata
    def meta(self) -> dict:
        """JSON description stored in dataset attrs["env"]; `TaskEnv.from_meta` rebuilds this env."""
        import mujoco
        import robosuite

        return {
            "name": self.task.env_name,
            "task": self.task.name,
            "goal": self.task.goal,
            "kwargs": self.kwargs,
            "obs_keys": list(self.obs_keys),
            "obs_dim": self.obs_dim,
            "action_dim": self.action_dim,
            "state_dim": self.state_dim,
            "cameras": list(self.task.cameras),
            "horizon": self.horizon,
            "control_freq": self.control_freq,
            "versions": {"robosuite": robosuite.__version__, "mujoco": mujoco.__version__},
        }

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], seed: int | None = None) -> "TaskEnv":
        if "task" not in meta or "kwargs" not in meta:
            raise ValueError(
                f"env metadata needs 'task' and 'kwargs' (got keys {sorted(meta)}); it must come from "
                "TaskEnv.meta(), as stored by `robot-pref collect` in dataset attrs['env']"
            )
        spec = get_task(meta["task"])
        return env_class(spec)(spec, dict(meta["kwargs"]), seed=seed)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._env.close()

    def __enter__(self) -> "TaskEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
