"""`ur:IP`: Universal Robots e-series/CB3 through ur-rtde (`pip install 'robot_pref[ur]'`).

UNPROVEN ON HARDWARE: written against the ur-rtde API and tested only against a fake of that module.
Try it first with the arm in a safe pose, reduced speed on the teach pendant and the e-stop in hand.

Commands stream as servo targets at ``control_freq`` (``servoL``/``servoJ`` with time = one period), so
a dead client or server leaves the arm holding the last target (at most one capped step away). The
TCP pose ur-rtde reports is [x, y, z, rx, ry, rz] (axis-angle) in the base frame; we convert it to the
(x, y, z, w) quaternion of `Observation`. No gripper is driven (commands' gripper value is ignored).
"""

from __future__ import annotations

import math
import time

import numpy as np
from scipy.spatial.transform import Rotation

from robot_pref.hardware.interface import Observation, Robot, RobotInfo, delta_target, require_finite

HOME = (0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0)
LOOKAHEAD_S, GAIN = 0.1, 300


class URRobot(Robot):
    def __init__(self, ip: str, control_freq: float = 20.0):
        self.ip = ip
        self.info = RobotInfo(
            name=f"ur:{ip}", modes=("ee_delta", "joint_pos"),
            joint_low=(-2 * math.pi,) * 2 + (-math.pi,) + (-2 * math.pi,) * 3,
            joint_high=(2 * math.pi,) * 2 + (math.pi,) + (2 * math.pi,) * 3,
            home_joints=HOME, workspace_low=(-0.6, -0.6, 0.05), workspace_high=(0.6, 0.6, 0.7),
            control_freq=control_freq, obs_dim=6 + 3 + 4, state_dim=12,
        )
        self._ctrl = self._recv = None

    def connect(self) -> "URRobot":
        try:
            import rtde_control
            import rtde_receive
        except ImportError as err:
            raise ImportError("the UR backend needs ur-rtde: pip install 'robot_pref[ur]'") from err
        if self._ctrl is None:
            self._recv = rtde_receive.RTDEReceiveInterface(self.ip)
            self._ctrl = rtde_control.RTDEControlInterface(self.ip)
        return self

    def disconnect(self) -> None:
        if self._ctrl is not None:
            self._ctrl.servoStop()
            self._ctrl.disconnect()
            self._recv.disconnect()
            self._ctrl = self._recv = None

    def observe(self, frames: bool = True) -> Observation:
        t = time.monotonic()
        q = np.asarray(self._recv.getActualQ(), float)
        qd = np.asarray(self._recv.getActualQd(), float)
        tcp = np.asarray(self._recv.getActualTCPPose(), float)
        quat = Rotation.from_rotvec(tcp[3:]).as_quat()
        return Observation(joint_pos=q, joint_vel=qd, ee_pos=tcp[:3], ee_quat=quat, gripper=float("nan"),
                           low_dim=np.concatenate([q, tcp[:3], quat]).astype(np.float32),
                           state=np.concatenate([q, qd]), stamps={"joints": t, "ee": t, "gripper": t})

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        period = 1.0 / self.info.control_freq
        if mode == "ee_delta":
            obs = self.observe(frames=False)
            pos, quat = delta_target(obs.ee_pos, obs.ee_quat, command)
            pose = require_finite(np.r_[pos, Rotation.from_quat(quat).as_rotvec()], 6, "servoL pose")
            self._ctrl.servoL(pose.tolist(), 0.0, 0.0, period, LOOKAHEAD_S, GAIN)
        else:
            q = require_finite(command[:-1], self.info.n_joints, "servoJ joints")
            self._ctrl.servoJ(q.tolist(), 0.0, 0.0, period, LOOKAHEAD_S, GAIN)
        return np.asarray(command, float)

    def home(self) -> None:
        self._ctrl.servoStop()
        self._ctrl.moveJ(list(self.info.home_joints), 0.3, 0.5)  # blocking, slow (rad/s, rad/s^2)

    def stop(self) -> None:
        self._ctrl.servoStop()

    def estop(self) -> None:
        self._ctrl.triggerProtectiveStop()

    def recover(self) -> None:
        if self._recv.isProtectiveStopped():
            import dashboard_client

            dash = dashboard_client.DashboardClient(self.ip)
            dash.connect()
            dash.closeSafetyPopup()
            dash.unlockProtectiveStop()
            dash.disconnect()

    @property
    def fault(self) -> str | None:
        if self._recv is None:
            return None
        if self._recv.isEmergencyStopped():
            return "UR emergency stop pressed"
        return "UR protective stop" if self._recv.isProtectiveStopped() else None

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray:
        return np.asarray(self._ctrl.getForwardKinematics(np.asarray(joints, float).tolist()), float)[:3]
