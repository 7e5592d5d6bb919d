"""A kinematic stand-in arm (`fake:`): no physics, no MuJoCo, instant steps.

For dry-running the remote path (client, wire, server, safety, watchdog) and for tests that need to see
exactly what reached the "hardware": every applied command and every stop is recorded.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.spatial.transform import Rotation

from robot_pref.hardware.interface import Observation, Robot, RobotInfo

# A fixed linear map joints -> hand position around home: enough to make joint and Cartesian motion agree.
_J = np.array([[0.0, 0.5, 0.0, -0.4, 0.0, 0.2, 0.0],
               [0.6, 0.0, 0.3, 0.0, 0.1, 0.0, 0.0],
               [0.0, -0.3, 0.0, -0.5, 0.0, -0.2, 0.0]])
HOME = (0.0, 0.2, 0.0, -2.6, 0.0, 2.9, 0.8)
HOME_EE = (0.45, 0.0, 0.3)


def _hand(joints: np.ndarray) -> np.ndarray:
    return np.asarray(HOME_EE) + _J @ (np.asarray(joints, float) - np.asarray(HOME))


class FakeArm(Robot):
    def __init__(self, control_freq: float = 20.0):
        self.info = RobotInfo(
            name="fake", modes=("ee_delta", "joint_pos"),
            joint_low=(-2.9, -1.76, -2.9, -3.07, -2.9, -0.02, -2.9),
            joint_high=(2.9, 1.76, 2.9, -0.07, 2.9, 3.75, 2.9),
            home_joints=HOME, workspace_low=(0.2, -0.4, 0.0), workspace_high=(0.8, 0.4, 0.6),
            control_freq=control_freq, obs_dim=7 + 3 + 4 + 1, state_dim=7 + 7 + 1,
        )
        self.applied: list[tuple[str, np.ndarray]] = []  # every command that reached the arm
        self.stops = 0
        self.connected = False
        self._set(np.asarray(HOME, float))

    def _set(self, q: np.ndarray) -> None:
        self.q = q
        self.qd = np.zeros(7)
        self.rot = Rotation.from_euler("x", np.pi)  # hand pointing down
        self.grip = 0.08

    def connect(self) -> "FakeArm":
        self.connected = True
        return self

    def disconnect(self) -> None:
        self.connected = False

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray:
        return _hand(joints)

    def observe(self, frames: bool = True) -> Observation:
        t = time.monotonic()
        ee, quat = _hand(self.q), self.rot.as_quat()
        low = np.concatenate([self.q, ee, quat, [self.grip]]).astype(np.float32)
        return Observation(joint_pos=self.q.copy(), joint_vel=self.qd.copy(), ee_pos=ee, ee_quat=quat,
                           gripper=self.grip, low_dim=low, state=np.concatenate([self.q, self.qd, [self.grip]]),
                           stamps={"joints": t, "ee": t, "gripper": t})

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        command = np.asarray(command, float)
        self.applied.append((mode, command.copy()))
        if mode == "ee_delta":
            target = self.q + np.linalg.pinv(_J) @ command[:3]
            self.rot = Rotation.from_rotvec(command[3:6]) * self.rot
        else:
            target = command[:7]
        self.qd = (target - self.q) * self.info.control_freq
        self.q = target
        self.grip = 0.04 * (1.0 - command[-1])
        return command

    def home(self) -> None:
        self._set(np.asarray(HOME, float))

    def stop(self) -> None:
        self.stops += 1
        self.qd = np.zeros(7)
