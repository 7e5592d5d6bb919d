"""One arm interface for every backend (sim, remote, UR, Franka).

Conventions, the same for every backend:

- Units are SI: metres, radians, seconds. Gripper *commands* are normalised, -1 open .. +1 closed
  (as in robosuite); the observed gripper is the finger opening in metres (NaN when there is none).
- Frames: positions and orientations are in the robot's **base frame** (x forward, y left, z up).
  Quaternions are ordered **(x, y, z, w)** (scipy and robosuite order). Rotation deltas are axis-angle
  vectors in the base frame, applied on the left: ``R_target = R_delta @ R_current``.
- Control modes (``info.modes`` declares which a backend accepts):
  ``ee_delta``  (7,) ``[dx, dy, dz (m), drx, dry, drz (rad), gripper]`` per control step;
  ``joint_pos`` (n_joints + 1,) ``[q_1..q_n (rad, absolute targets), gripper]``.
- Timestamps are ``time.monotonic()`` on the machine that read the sensor (robot-side for `remote`).

Policies and datasets speak the task's normalised action (robosuite OSC: each of the 6 pose entries in
[-1, 1]); ``info.action_scale`` converts: ``si = normalised * action_scale``. `Robot.send` returns the
command actually applied after safety, which is what datasets record (normalised back).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MODES = ("ee_delta", "joint_pos")


class SafetyFault(RuntimeError):
    """The arm refused a command or stopped by itself; latched until `Robot.recover()`.

    The message says what happened and the fix; ``reason`` is a short kind ("joint_limit", "workspace",
    "watchdog", "estop", ...) so a rollout can count its faults by reason.
    """

    def __init__(self, message: str = "", reason: str = "fault"):
        super().__init__(message)
        self.reason = reason


@dataclass
class RobotInfo:
    """What a connected robot is: control modes, limits, rates and (for sim) the task it runs."""

    name: str  # "sim:lift", "ur:192.168.1.10", ...
    modes: tuple[str, ...]
    joint_low: tuple[float, ...]  # rad, hardware limits
    joint_high: tuple[float, ...]
    home_joints: tuple[float, ...]
    workspace_low: tuple[float, float, float]  # m, base frame: the default box for the safety layer
    workspace_high: tuple[float, float, float]
    control_freq: float  # Hz, the rate the caller should send commands at
    action_scale: tuple[float, ...] = (0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 1.0)  # SI per unit of policy action
    obs_dim: int = 0  # length of Observation.low_dim
    state_dim: int = 0  # length of Observation.state
    cameras: tuple[str, ...] = ()  # frame keys in Observation.frames ("agentview_84")
    simulated: bool = False
    task: str = ""
    goal: str = ""
    env: dict = field(default_factory=dict)  # TaskEnv.meta() for sim; stored in dataset attrs["env"]

    @property
    def n_joints(self) -> int:
        return len(self.joint_low)

    def action_dim(self, mode: str) -> int:
        return 7 if mode == "ee_delta" else self.n_joints + 1

    def to_si(self, action: np.ndarray) -> np.ndarray:
        """Normalised policy action -> SI ``ee_delta`` command (no cast: a complex action stays complex, and
        the safety layer refuses it instead of silently dropping its imaginary part)."""
        return np.asarray(action) * np.asarray(self.action_scale)

    def to_normalised(self, command: np.ndarray) -> np.ndarray:
        """SI ``ee_delta`` command -> normalised policy action (what datasets store)."""
        return (np.asarray(command, np.float64) / np.asarray(self.action_scale)).astype(np.float32)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RobotInfo":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


@dataclass
class Observation:
    """One reading of the robot, each part stamped with the robot-side monotonic clock."""

    joint_pos: np.ndarray  # (n,) rad
    joint_vel: np.ndarray  # (n,) rad/s
    ee_pos: np.ndarray  # (3,) m, base frame
    ee_quat: np.ndarray  # (4,) x, y, z, w, base frame
    gripper: float  # finger opening, m (NaN if no gripper)
    low_dim: np.ndarray  # float32 policy observation (TaskEnv obs in sim; proprioception on real arms)
    state: np.ndarray  # float64 (flattened MuJoCo state in sim, for re-rendering; proprioception otherwise)
    stamps: dict[str, float]  # "joints", "ee", "gripper", and each frame key -> time.monotonic()
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # frame key -> uint8 (H, W, 3), upright
    reward: float | None = None  # ground truth r(s_t) where known (sim)
    success: bool | None = None  # ground-truth task success where known (sim)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Observation":
        return cls(**d)

    def policy_input(self, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        """A batch of one for `Policy.act`: ``"obs"`` -> low_dim, ``"frames/<key>"`` -> that camera."""
        out = {}
        for key in keys:
            if key == "obs":
                out[key] = self.low_dim[None]
            elif key.startswith("frames/") and key[7:] in self.frames:
                out[key] = self.frames[key[7:]][None]
            else:
                raise KeyError(f"the policy needs {key!r}, the robot observes 'obs' and "
                               f"{['frames/' + k for k in self.frames]}; open the robot with that camera")
        return out


class Robot(ABC):
    """An arm. Backends implement the abstract methods; `SafeRobot` wraps any backend with safety."""

    info: RobotInfo

    def connect(self) -> "Robot":
        return self

    def disconnect(self) -> None:
        pass

    def __enter__(self) -> "Robot":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.disconnect()

    @abstractmethod
    def observe(self, frames: bool = True) -> Observation:
        """Read the robot now (``frames=False`` skips the cameras: what the safety layer reads per step)."""

    @abstractmethod
    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        """Execute one control step; returns the command actually applied (SI)."""

    def reset(self, seed: int | None = None) -> Observation:
        """Begin an episode: sim re-places the scene (seeded); a real arm moves home (the scene is yours)."""
        self.home()
        return self.observe()

    @abstractmethod
    def home(self) -> None:
        """Move to ``info.home_joints``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop moving now and hold position."""

    def recover(self) -> None:
        """Clear a fault (the backend's own protective stop, or the safety layer's latch)."""

    def estop(self) -> None:
        """Emergency stop: as `stop`, and latched as a fault by the safety layer."""
        self.stop()

    def now(self) -> float:
        """The robot's clock in seconds: wall-clock monotonic on hardware, simulated time in sim."""
        return time.monotonic()

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray | None:
        """End-effector position (m, base frame) at ``joints``, or None when the backend cannot tell."""
        return None

    @property
    def fault(self) -> str | None:
        """The latched fault, or None when the arm accepts commands."""
        return None


def require_finite(values, n: int, what: str) -> np.ndarray:
    """``values`` as ``n`` finite floats, else a `SafetyFault`: the last check before an SDK call moves the arm."""
    out = np.asarray(values, np.float64)
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise SafetyFault(f"refusing to send {what} {out.tolist()}: not {n} finite values; nothing was sent",
                          "unsafe_output")
    return out


def delta_target(ee_pos: np.ndarray, ee_quat: np.ndarray, command: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute base-frame target (position, xyzw quaternion) of an ``ee_delta`` command."""
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_rotvec(command[3:6]) * Rotation.from_quat(ee_quat)
    return np.asarray(ee_pos, float) + command[:3], rot.as_quat()
