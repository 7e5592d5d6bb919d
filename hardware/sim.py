"""`sim:<task>`: a robosuite task (robot_pref.envs.TaskEnv) in-process, behind the arm interface.

One `send` is one env step (one control period of simulated time), so the simulated arm only moves when
commanded and `now()` is simulated time. It accepts ``ee_delta`` (the tasks run robosuite's OSC pose
controller in the base frame, which is exactly that command) and converts SI to the env's normalised
action with the controller's output range (0.05 m, 0.5 rad per unit).
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
from scipy.spatial.transform import Rotation

from robot_pref.data.dataset import frame_key
from robot_pref.hardware.interface import Observation, Robot, RobotInfo


class SimRobot(Robot):
    def __init__(self, task: str = "lift", cameras: tuple[str, ...] = (), size: int = 84, seed: int | None = None,
                 render: Mapping[str, Mapping[str, Any]] | None = None):
        """``render``: render options per frame key (``agentview_84``), e.g. a policy's `frame_render`, so
        its cameras draw frames as the training frames were drawn (default options otherwise)."""
        from robot_pref.envs import RenderOptions

        self.task, self.cameras, self.size, self.seed = task, tuple(cameras), int(size), seed
        self.render = {key: RenderOptions(**options) for key, options in (render or {}).items()}
        self.env = None

    def connect(self) -> "SimRobot":
        if self.env is not None:
            return self
        from robot_pref.envs import make_env

        self.env = env = make_env(self.task, seed=self.seed)
        rs = env.unwrapped
        arm = rs.robots[0]
        self._arm = arm
        self._base_pos = np.asarray(arm.base_pos, float)
        self._base_rot = Rotation.from_matrix(np.asarray(arm.base_ori, float))
        model = env.sim.model
        limits = model.jnt_range[[model.joint_name2id(j) for j in arm.robot_joints]]
        controller = arm.part_controllers["right"]
        home_ee = self._to_base(env.observation()[:3])
        if getattr(rs, "table_full_size", None) is not None:  # the box over the table, up to 0.6 m above it
            half = np.asarray(rs.table_full_size[:2], float) / 2
            top = np.asarray(rs.table_offset, float)
            low = self._to_base(np.r_[top[:2] - half, top[2] + 0.005])
            high = self._to_base(np.r_[top[:2] + half, top[2] + 0.6])
        else:
            low, high = home_ee - 0.5, home_ee + 0.5
        for missing in sorted(set(self.cameras) - set(env.task.cameras)):
            raise ValueError(f"task {self.task} has no camera {missing!r}; cameras: {list(env.task.cameras)}")
        self.info = RobotInfo(
            name=f"sim:{self.task}", modes=("ee_delta",),
            joint_low=tuple(limits[:, 0].tolist()), joint_high=tuple(limits[:, 1].tolist()),
            home_joints=tuple(np.asarray(arm.init_qpos, float).tolist()),
            workspace_low=tuple(low.tolist()), workspace_high=tuple(high.tolist()),
            control_freq=env.control_freq,
            action_scale=tuple(np.r_[controller.output_max, 1.0].tolist()),
            obs_dim=env.obs_dim, state_dim=env.state_dim,
            cameras=tuple(frame_key(c, self.size) for c in self.cameras),
            simulated=True, task=env.task.name, goal=env.task.goal, env=env.meta(),
        )
        return self

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def _to_base(self, p_world: np.ndarray) -> np.ndarray:
        return self._base_rot.inv().apply(np.asarray(p_world, float) - self._base_pos)

    def observe(self, frames: bool = True) -> Observation:
        env, arm = self.env, self._arm
        data = env.sim.data
        t = time.monotonic()
        low = env.observation()
        q = np.array(data.qpos[arm._ref_joint_pos_indexes], float)
        qd = np.array(data.qvel[arm._ref_joint_vel_indexes], float)
        fingers = data.qpos[arm._ref_gripper_joint_pos_indexes["right"]]
        obs = Observation(
            joint_pos=q, joint_vel=qd, ee_pos=self._to_base(low[:3]),
            ee_quat=(self._base_rot.inv() * Rotation.from_quat(low[3:7])).as_quat(),
            gripper=float(fingers[0] - fingers[-1]), low_dim=low, state=env.get_state(),
            stamps={"joints": t, "ee": t, "gripper": t}, reward=env.reward(), success=env.success(),
        )
        if frames:
            for cam in self.cameras:
                key = frame_key(cam, self.size)
                obs.frames[key] = env.render(cam, self.size, self.size, self.render.get(key))
                obs.stamps[key] = time.monotonic()
        return obs

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        if mode != "ee_delta":
            raise ValueError(f"sim accepts ee_delta commands only, got {mode!r}")
        scale = np.asarray(self.info.action_scale)
        _, _, _, info = self.env.step(np.asarray(command, float) / scale)
        return info["action"].astype(np.float64) * scale  # after the env's own clipping to [-1, 1]

    def reset(self, seed: int | None = None) -> Observation:
        self.env.reset(seed)
        return self.observe()

    def home(self) -> None:
        """Put the arm at its home joints at rest (objects stay where they are)."""
        self._arm.set_robot_joint_positions(np.asarray(self.info.home_joints))
        self.env.sim.data.qvel[self._arm._ref_joint_vel_indexes] = 0.0
        self.env.set_state(self.env.get_state())

    def stop(self) -> None:
        """Nothing to do: a simulated arm moves only when stepped."""

    def now(self) -> float:
        return float(self.env.sim.data.time)
