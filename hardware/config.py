"""Typed configs of the hardware commands (kept import-light: `robot-pref --help` loads this module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ROBOTS = "sim:TASK, remote:HOST:PORT, fake, ur:IP, franka:IP"
TOKEN_ENV = "ROBOT_PREF_TOKEN"
TOKEN_HELP = f"server token; prefer the {TOKEN_ENV} env var (a flag shows in ps)"


@dataclass
class SafetyConfig:
    joint_margin: float = field(default=0.05, metadata={"help": "rad kept clear of every joint limit"})
    workspace_low: tuple[float, ...] | None = field(
        default=None, metadata={"help": "x,y,z (m, base frame) of the workspace box; default: the robot's"})
    workspace_high: tuple[float, ...] | None = field(default=None, metadata={"help": "x,y,z upper corner"})
    max_ee_step: float = field(default=0.05, metadata={"help": "m the hand may move per control step"})
    max_rot_step: float = field(default=0.5, metadata={"help": "rad the hand may turn per control step"})
    max_joint_step: float = field(default=0.05, metadata={"help": "rad any joint may move per control step"})
    rate_limit: bool = field(default=True, metadata={"help": "scale down commands sent faster than control_freq"})
    watchdog_periods: float = field(
        default=3.0, metadata={"help": "stop after this many control periods without a command (0 = off)"})


@dataclass
class RolloutConfig:
    policy: str = field(default="", metadata={"help": "policy checkpoint (robot-pref train)"})
    robot: str = field(default="sim:lift", metadata={"help": ROBOTS})
    episodes: int = field(default=10, metadata={"help": "episodes to run"})
    seed: int = field(default=0, metadata={"help": "episode i resets with seed + i (sim)"})
    max_steps: int = field(default=0, metadata={"help": "steps per episode (0 = the task horizon)"})
    stop_at_success: bool = field(default=True, metadata={"help": "end an episode at its first success row"})
    record: str = field(default="", metadata={"help": "append the rollouts to this zarr dataset"})
    realtime: bool | None = field(default=None, metadata={"help": "pace at control_freq (default: unless sim)"})
    token: str | None = field(default=None, metadata={"help": TOKEN_HELP})
    on_fault: Literal["stop", "skip"] | None = field(
        default=None, metadata={"help": "after a safety fault: skip = end that episode, recover, go on; stop = end "
                                        "the run for the operator (default: skip on simulated arms, stop on real)"})
    recover: bool = field(default=False, metadata={"help": "clear a fault left latched (not an e-stop) first"})
    out: str = field(default="", metadata={"help": "write the summary JSON here"})
    device: str | None = field(default=None, metadata={"help": "torch device for the policy (default: cuda if any)"})
    safety: SafetyConfig = field(default_factory=SafetyConfig)


DEMO_SCRIPT = "start; move 0,0,-0.5,0,0,0,-1 x10; move 0,0,0,0,0,0,1 x5; move 0,0,0.5,0,0,0,1 x10; save; quit"


@dataclass
class TeleopConfig:
    robot: str = field(default="sim:lift", metadata={"help": ROBOTS})
    device: Literal["keyboard", "spacemouse", "scripted"] = field(default="keyboard", metadata={"help": "input device"})
    script: str = field(default=DEMO_SCRIPT, metadata={"help": "scripted device: 'start; move a1..a7 xN; save; quit'"})
    out: str = field(default="", metadata={"help": "zarr dataset to append episodes to (created if missing)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out instead of appending"})
    cameras: tuple[str, ...] = field(default=(), metadata={"help": "record these cameras (sim), e.g. agentview"})
    size: int = field(default=84, metadata={"help": "frame size in pixels"})
    rate_hz: float = field(default=0.0, metadata={"help": "control rate (0 = the robot's control_freq)"})
    max_steps: int = field(default=0, metadata={"help": "auto-save an episode at this length (0 = task horizon)"})
    seed: int = field(default=0, metadata={"help": "episode k resets the sim scene with seed + k"})
    speed: float = field(default=0.5, metadata={"help": "keyboard action magnitude in [0, 1]"})
    token: str | None = field(default=None, metadata={"help": TOKEN_HELP})
    safety: SafetyConfig = field(default_factory=SafetyConfig)


@dataclass
class ServeConfig:
    robot: str = field(default="sim:lift", metadata={"help": "backend to serve: sim:TASK, fake, ur:IP, franka:IP"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address (non-loopback needs --token)"})
    port: int = field(default=5555, metadata={"help": "TCP port"})
    token: str | None = field(default=None, metadata={"help": "shared secret clients must send; prefer the "
                                                              "ROBOT_PREF_TOKEN env var (a flag shows in ps)"})
    cameras: tuple[str, ...] = field(default=(), metadata={"help": "cameras to stream (sim), e.g. agentview"})
    size: int = field(default=84, metadata={"help": "frame size in pixels"})
    seed: int | None = field(default=None, metadata={"help": "seed of the first sim reset"})
    safety: SafetyConfig = field(default_factory=SafetyConfig)
