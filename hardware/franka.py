"""`franka:IP`: Franka Panda / FR3 through franky-control (`pip install 'robot_pref[franka]'`).

UNPROVEN ON HARDWARE: written against franky's Python API and tested only against a fake of that module.
franky-sim speaks the libfranka protocol on loopback and is the next step before a real arm. Try it with
the external activation device (user stop) in hand.

Each command becomes an asynchronous absolute Cartesian (base frame) or joint motion that replaces the
previous one, at a low relative dynamics factor; a dead client leaves the arm settling at the last
target (at most one capped step away). The gripper opens/closes to the command's width
(-1 open = 0.08 m, +1 closed = 0 m) when it changes.
"""

from __future__ import annotations

import math
import time

import numpy as np

from robot_pref.hardware.interface import Observation, Robot, RobotInfo, delta_target, require_finite

HOME = (0.0, -math.pi / 4, 0.0, -3 * math.pi / 4, 0.0, math.pi / 2, math.pi / 4)
MAX_WIDTH = 0.08  # m


class FrankaRobot(Robot):
    def __init__(self, ip: str, control_freq: float = 20.0, dynamics: float = 0.1):
        self.ip, self.dynamics = ip, dynamics
        self.info = RobotInfo(
            name=f"franka:{ip}", modes=("ee_delta", "joint_pos"),
            joint_low=(-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973),
            joint_high=(2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973),
            home_joints=HOME, workspace_low=(0.25, -0.35, 0.02), workspace_high=(0.75, 0.35, 0.6),
            control_freq=control_freq, obs_dim=7 + 3 + 4 + 1, state_dim=15,
        )
        self._robot = self._gripper = None
        self._width = None

    def connect(self) -> "FrankaRobot":
        try:
            import franky
        except ImportError as err:
            raise ImportError("the Franka backend needs franky-control: pip install 'robot_pref[franka]'") from err
        if self._robot is None:
            self._franky = franky
            self._robot = franky.Robot(self.ip)
            self._robot.relative_dynamics_factor = self.dynamics
            self._robot.recover_from_errors()
            self._gripper = franky.Gripper(self.ip)
        return self

    def disconnect(self) -> None:
        self._robot = self._gripper = None

    def observe(self, frames: bool = True) -> Observation:
        t = time.monotonic()
        state = self._robot.state
        q, qd = np.asarray(state.q, float), np.asarray(state.dq, float)
        pose = self._robot.current_pose
        pos, quat = np.asarray(pose.translation, float), np.asarray(pose.quaternion, float)
        width = float(self._gripper.width)
        return Observation(joint_pos=q, joint_vel=qd, ee_pos=pos, ee_quat=quat, gripper=width,
                           low_dim=np.concatenate([q, pos, quat, [width]]).astype(np.float32),
                           state=np.concatenate([q, qd, [width]]), stamps={"joints": t, "ee": t, "gripper": t})

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        fr = self._franky
        if mode == "ee_delta":
            pose = self._robot.current_pose
            pos, quat = delta_target(np.asarray(pose.translation), np.asarray(pose.quaternion), command)
            pos, quat = require_finite(pos, 3, "target position"), require_finite(quat, 4, "target quaternion")
            motion = fr.CartesianMotion(fr.Affine(pos.tolist(), quat.tolist()), fr.ReferenceType.Absolute)
        else:
            q = require_finite(command[:-1], self.info.n_joints, "joint targets")
            motion = fr.JointWaypointMotion([fr.JointWaypoint(q.tolist())])
        self._robot.move(motion, asynchronous=True)
        width = round(MAX_WIDTH * (1.0 - float(command[-1])) / 2, 3)
        if width != self._width:
            self._gripper.move_async(width, 0.1)
            self._width = width
        return np.asarray(command, float)

    def home(self) -> None:
        self._robot.move(self._franky.JointWaypointMotion([self._franky.JointWaypoint(list(self.info.home_joints))]))

    def stop(self) -> None:
        self._robot.move(self._franky.CartesianPoseStopMotion(), asynchronous=True)

    def recover(self) -> None:
        self._robot.recover_from_errors()
