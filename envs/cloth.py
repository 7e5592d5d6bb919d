"""`cloth_fold`: a square cloth (a MuJoCo flex) on the table, folded by the Panda along its diagonal.

The scene is a robosuite 1.5 environment (``ClothFold``): robosuite's model merging carries the
``<flexcomp>`` through unchanged, so the arm, its OSC controller, the table arena, the cameras and the
`sim:` hardware backend are the same as in the rigid tasks. The cloth is a ``GRID``x``GRID`` vertex grid
(``dof="full"``: every vertex a body with three slide joints, so qpos holds every vertex) with inextensible
edges (edge equality constraints) and contact with the table only (the arm passes through it).

Grasping is a picker, as in SoftGym: while the gripper command is "close" and no vertex is held, the
vertex nearest the grip site, if within ``PICK_RADIUS``, is attached to it by a `connect` equality
constraint (one inactive constraint per vertex, switched on); opening the gripper switches it off. The
held vertex is the one piece of state outside MuJoCo's [time, qpos, qvel]: `ClothEnv` appends it.

Image frame: the agentview camera looks at the robot from the far side of the table, so image up is the
world's -x (towards the robot) and image right is +y. The cloth's "top left" corner is the rest-grid
corner at (-x, -y), "bottom right" at (+x, +y); folding it "diagonally from the top left corner to the
bottom right corner" lays the top-left half onto the bottom-right half about the other diagonal.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import mujoco
import numpy as np
from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
from robosuite.models.arenas import TableArena
from robosuite.models.tasks import ManipulationTask
from robosuite.utils.observables import Observable, sensor

from robot_pref.envs.tasks import TaskEnv

GRID = 10  # vertices per side
SIZE = 0.24  # cloth side (m)
RADIUS = 0.004  # vertex collision radius (m): the cloth's half thickness
TIMESTEP = 0.004  # physics step (s); robosuite's default 0.002 halves the speed for the same folds
PICK_RADIUS = 0.025  # the closed gripper picks the nearest vertex within this distance of its grip site
PLACE_XY, PLACE_YAW = 0.03, 0.25  # reset: uniform offset of the cloth's centre (m) and turn (rad)
# success: the top-left half lies on the bottom-right half (mean distance of mirrored vertices under
# this fraction of what it is flat), the two corners meet, and the top-left corner is let go, down on
# the table (the cloth has no bending stiffness: a fold leaves a loose ridge along the crease, ~4 cm high)
FOLD_TOL, CORNER_TOL, DOWN_HEIGHT = 0.3, 0.04, 0.03
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


class ClothFold(ManipulationEnv):
    """robosuite environment: a Panda, a table and a flex cloth with a picker grasp (see module docstring)."""

    def __init__(self, robots, table_full_size=(0.8, 0.8, 0.05), reward_scale=1.0, reward_shaping=True,
                 **kwargs):
        self.table_full_size = table_full_size
        self.table_offset = np.array((0, 0, 0.8))
        self.reward_scale = reward_scale
        self.reward_shaping = reward_shaping  # the reward is dense either way; accepted like the other tasks
        self.held = -1  # vertex attached to the grip site, -1 for none
        super().__init__(robots=robots, **kwargs)

    # ------------------------------------------------------------------ model
    def _load_model(self):
        super()._load_model()
        robot = self.robots[0].robot_model
        robot.set_base_xpos(robot.base_xpos_offset["table"](self.table_full_size[0]))
        arena = TableArena(table_full_size=self.table_full_size, table_offset=self.table_offset)
        arena.set_origin([0, 0, 0])
        self.model = ManipulationTask(mujoco_arena=arena, mujoco_robots=[robot])
        # CG with few iterations: Newton's steps over the cloth's 300 dofs are ~5x slower and the picker
        # needs no precise contact forces; 4 ms steps halve the substeps (tools/bench_envs.py, docs/CLOTH.md)
        self.model.root.find("option").attrib.update(solver="CG", iterations="20", tolerance="1e-6",
                                                     timestep=str(TIMESTEP))
        spacing = SIZE / (GRID - 1)
        top = self.table_offset[2] + RADIUS
        self.model.worldbody.append(ET.fromstring(
            f'<flexcomp name="cloth" type="grid" dim="2" dof="full" count="{GRID} {GRID} 1" '
            f'spacing="{spacing} {spacing} {spacing}" pos="0 0 {top}" radius="{RADIUS}" mass="0.1" '
            f'rgba="0.15 0.35 0.85 1">'
            # contype 2 meets only geoms whose conaffinity has bit 2: the table below, not the arm
            f'<contact condim="3" contype="2" conaffinity="0" selfcollide="none" friction="0.8"/>'
            f'<edge equality="true" damping="0.01"/></flexcomp>'))
        for geom in self.model.worldbody.iter("geom"):
            if geom.get("name") == "table_collision":
                geom.set("conaffinity", "3")
        grip_body = f"{self.robots[0].gripper['right'].naming_prefix}eef"  # the grip site is its origin
        for k in range(GRID * GRID):
            ET.SubElement(self.model.equality, "connect", name=f"pick_{k}", body1=f"cloth_{k}", body2=grip_body,
                          anchor="0 0 0", active="false", solref="0.01 1")

    def _setup_references(self):
        super()._setup_references()
        model = self.sim.model._model
        self.vert_bodies = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"cloth_{k}")
                                     for k in range(GRID * GRID)])
        self.pick_eq = np.array([mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_EQUALITY, f"pick_{k}")
                                 for k in range(GRID * GRID)])
        # the held vertex goes to the grip site (the eef body's origin), not where it was at compile time
        model.eq_data[self.pick_eq, 3:6] = 0.0
        self.grip_site = self.sim.model.site_name2id(self.robots[0].gripper["right"].important_sites["grip_site"])
        self.vert_qpos = np.array([model.jnt_qposadr[model.body_jntadr[b]] for b in self.vert_bodies])
        self.rest = rest = model.body_pos[self.vert_bodies].copy()  # vertex bodies are children of the world
        self.corner_ids = corner_vertices(rest)
        self.pairs = fold_pairs(rest)
        self.rest_pair = float(np.linalg.norm(rest[self.pairs[:, 0]] - rest[self.pairs[:, 1]], axis=1).mean())

    def initialize_time(self, control_freq):
        super().initialize_time(control_freq)
        self.model_timestep = TIMESTEP  # robosuite's loop runs control_timestep / model_timestep substeps

    # ------------------------------------------------------------------ episode
    def _reset_internal(self):
        super()._reset_internal()
        self.attach(-1)
        if self.deterministic_reset:
            return
        shift = self.rng.uniform(-PLACE_XY, PLACE_XY, size=2)
        yaw = self.rng.uniform(-PLACE_YAW, PLACE_YAW)
        centre = self.rest[:, :2].mean(axis=0)
        c, s = np.cos(yaw), np.sin(yaw)
        xy = (self.rest[:, :2] - centre) @ np.array([[c, s], [-s, c]]) + centre + shift
        qpos = self.sim.data.qpos
        for k, adr in enumerate(self.vert_qpos):
            qpos[adr:adr + 2] = xy[k] - self.rest[k, :2]
            qpos[adr + 2] = 0.0
        self.sim.data.qvel[:] = 0.0

    def attach(self, vertex: int) -> None:
        """Hold ``vertex`` at the grip site (-1: hold nothing)."""
        data = self.sim.data._data
        data.eq_active[self.pick_eq] = 0
        if vertex >= 0:
            data.eq_active[self.pick_eq[vertex]] = 1
        self.held = int(vertex)

    def _pre_action(self, action, policy_step=False):
        super()._pre_action(action, policy_step)
        if not policy_step:
            return
        if action[-1] <= 0.0:
            if self.held >= 0:
                self.attach(-1)
        elif self.held < 0:
            d = np.linalg.norm(self.vertices() - self.sim.data.site_xpos[self.grip_site], axis=1)
            k = int(np.argmin(d))
            if d[k] < PICK_RADIUS:
                self.attach(k)

    # ------------------------------------------------------------------ ground truth
    def vertices(self) -> np.ndarray:
        return self.sim.data._data.flexvert_xpos.reshape(-1, 3)

    def fold_error(self) -> float:
        """Mean distance of mirrored vertex pairs over its flat value: 1 flat, 0 folded exactly."""
        v = self.vertices()
        return float(np.linalg.norm(v[self.pairs[:, 0]] - v[self.pairs[:, 1]], axis=1).mean() / self.rest_pair)

    def reward(self, action=None):
        """Dense: 0.1 for reaching the top-left corner (tanh of distance) + 0.9 fold progress; 1 on success."""
        if self._check_success():
            return self.reward_scale
        v = self.vertices()
        reach = 1.0 - np.tanh(10.0 * np.linalg.norm(v[self.corner_ids[0]] - self.sim.data.site_xpos[self.grip_site]))
        fold = np.clip(1.0 - self.fold_error(), 0.0, 1.0)
        return float(self.reward_scale * (0.1 * reach + 0.9 * fold))

    def _check_success(self):
        v = self.vertices()
        top_left, bottom_right = v[self.corner_ids[0]], v[self.corner_ids[3]]
        down = top_left[2] < self.table_offset[2] + DOWN_HEIGHT and self.held < 0
        return bool(down and np.linalg.norm(top_left - bottom_right) < CORNER_TOL and self.fold_error() < FOLD_TOL)

    # ------------------------------------------------------------------ observation
    def _setup_observables(self):
        observables = super()._setup_observables()

        @sensor(modality="object")
        def cloth_corners(obs_cache):
            return self.vertices()[self.corner_ids].reshape(-1).copy()

        @sensor(modality="object")
        def cloth_center(obs_cache):
            return self.vertices().mean(axis=0)

        @sensor(modality="object")
        def gripper_to_corner(obs_cache):
            return self.vertices()[self.corner_ids[0]] - self.sim.data.site_xpos[self.grip_site]

        @sensor(modality="object")
        def cloth_held(obs_cache):
            return np.array([float(self.held >= 0)])

        for fn in (cloth_corners, cloth_center, gripper_to_corner, cloth_held):
            observables[fn.__name__] = Observable(name=fn.__name__, sensor=fn, sampling_rate=self.control_freq)
        return observables


def corner_vertices(rest: np.ndarray) -> np.ndarray:
    """Indices of the top-left (-x, -y), top-right (-x, +y), bottom-left (+x, -y), bottom-right corners."""
    x, y = rest[:, 0] - rest[:, 0].mean(), rest[:, 1] - rest[:, 1].mean()
    return np.array([np.argmin(x + y), np.argmin(x - y), np.argmax(x - y), np.argmax(x + y)])


def fold_pairs(rest: np.ndarray) -> np.ndarray:
    """(top-left-half vertex, its mirror image about the fold diagonal) for every vertex off the diagonal.

    The fold line runs from the top-right to the bottom-left corner; in centred rest coordinates it is
    x + y = 0 and the mirror of (x, y) is (-y, -x).
    """
    c = rest[:, :2] - rest[:, :2].mean(axis=0)
    half = np.flatnonzero(c.sum(axis=1) < -1e-9)
    mirror = np.stack([-c[half, 1], -c[half, 0]], axis=1)
    match = np.argmin(np.linalg.norm(c[None, :, :] - mirror[:, None, :], axis=2), axis=1)
    return np.stack([half, match], axis=1)


class ClothEnv(TaskEnv):
    """`TaskEnv` of the cloth: the saved state also holds the picker's held vertex (-1 for none)."""

    def get_state(self) -> np.ndarray:
        return np.append(super().get_state(), float(self._env.held))

    def _restore(self, state: np.ndarray) -> None:
        self._env.sim.set_state_from_flattened(state[:-1])
        self._env.attach(int(state[-1]))
