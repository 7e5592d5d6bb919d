"""The safety layer: every command passes the same checks, in order, whatever the backend.

1. validate      shape, finite values, a control mode the robot declared        -> fault
2. joint limits  joint_pos: clamp targets into [low + margin, high - margin];
                 ee_delta: the arm already inside the margin                     -> fault
3. workspace     ee_delta: clamp the target position into the box;
                 joint_pos: a target whose forward kinematics leaves the box     -> fault
4. per-step cap  scale the step down to max_ee_step (m) / max_rot_step (rad) / max_joint_step (rad)
5. rate limit    a command sooner than one control period after the last one moves proportionally less,
                 so steps x rate can never exceed cap x control_freq (a client flooding delta commands
                 cannot make the arm faster)

Steps 2-5 only shrink motion towards the current pose, so a pose inside the box stays inside it.
Faults latch: the arm is stopped and every further command is refused until `recover()`. A watchdog
thread stops the arm (and latches a fault) when no command arrived for ``watchdog_periods`` control
periods while it was moving.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.interface import Observation, Robot, RobotInfo, SafetyFault

log = logging.getLogger(__name__)


def _cap_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


class SafetyFilter:
    """The pure part: command + current observation -> the command to apply (or SafetyFault)."""

    def __init__(self, cfg: SafetyConfig, info: RobotInfo):
        self.cfg, self.info = cfg, info
        self.low = np.asarray(cfg.workspace_low if cfg.workspace_low is not None else info.workspace_low, float)
        self.high = np.asarray(cfg.workspace_high if cfg.workspace_high is not None else info.workspace_high, float)
        if self.low.shape != (3,) or self.high.shape != (3,) or not np.all(self.low < self.high):
            raise ValueError(f"workspace box needs low < high in x, y, z; got low={self.low} high={self.high}")
        m = cfg.joint_margin
        self.q_low = np.asarray(info.joint_low, float) + m
        self.q_high = np.asarray(info.joint_high, float) - m
        if not np.all(self.q_low < self.q_high):
            raise ValueError(f"joint_margin {m} rad leaves no room inside the joint limits; use a smaller one")
        self.period = 1.0 / info.control_freq
        self.reset()

    def reset(self) -> None:
        """Forget the last command (after stop/home/recover the next step may be a full one)."""
        self._last_t: float | None = None

    def __call__(self, command: np.ndarray, mode: str, obs: Observation, now: float, fk=None) -> np.ndarray:
        """The command to apply now. ``fk(joints) -> ee position`` lets joint targets be checked against the box."""
        cmd = self._validate(command, mode)
        rate = self._rate_scale(now)
        if mode == "ee_delta":
            out = np.concatenate([self._ee_step(cmd, obs) * rate, cmd[6:]])
        else:
            q = np.asarray(obs.joint_pos, float)
            out = np.concatenate([q + self._joint_step(cmd, obs, fk) * rate, cmd[-1:]])
        out[-1] = np.clip(out[-1], -1.0, 1.0)
        self._last_t = now
        return out

    def _validate(self, command, mode: str) -> np.ndarray:
        if mode not in self.info.modes:
            raise SafetyFault(f"control mode {mode!r} is not supported by {self.info.name}; "
                              f"it accepts {list(self.info.modes)}")
        try:
            cmd = np.array(command, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise SafetyFault(f"{mode} command is not numeric: {err}") from err
        n = self.info.action_dim(mode)
        if cmd.shape != (n,):
            raise SafetyFault(f"{mode} command must have shape ({n},), got {cmd.shape}")
        if not np.all(np.isfinite(cmd)):
            raise SafetyFault(f"{mode} command has non-finite values {cmd.tolist()}")
        return cmd

    def _rate_scale(self, now: float) -> float:
        if not self.cfg.rate_limit or self._last_t is None:
            return 1.0
        return float(np.clip((now - self._last_t) / self.period + 1e-6, 0.0, 1.0))  # 1e-6: float jitter

    def _ee_step(self, cmd: np.ndarray, obs: Observation) -> np.ndarray:
        """(dpos, drot) after joint-limit check, workspace clamp and per-step cap."""
        q = np.asarray(obs.joint_pos, float)
        bad = np.flatnonzero((q < self.q_low) | (q > self.q_high))
        if len(bad):
            j = int(bad[0])
            raise SafetyFault(f"joint {j + 1} at {q[j]:.3f} rad is within {self.cfg.joint_margin} rad of its limit "
                              f"[{self.info.joint_low[j]:.3f}, {self.info.joint_high[j]:.3f}]; recover() and move "
                              "it away in joint_pos mode, or home()")
        ee = np.asarray(obs.ee_pos, float)
        dpos = np.clip(ee + cmd[:3], self.low, self.high) - ee
        return np.concatenate([_cap_norm(dpos, self.cfg.max_ee_step), _cap_norm(cmd[3:6], self.cfg.max_rot_step)])

    def _joint_step(self, cmd: np.ndarray, obs: Observation, fk) -> np.ndarray:
        """target - current after joint-limit clamp, workspace check and per-step cap."""
        target = np.clip(cmd[:-1], self.q_low, self.q_high)
        reached = fk(target) if fk is not None else None
        where = "target" if reached is not None else "current hand position"
        pos = np.asarray(reached if reached is not None else obs.ee_pos, float)
        if np.any(pos < self.low - 1e-9) or np.any(pos > self.high + 1e-9):
            raise SafetyFault(f"joint_pos {where} {np.round(pos, 3).tolist()} m lies outside the workspace box "
                              f"{self.low.tolist()}..{self.high.tolist()}")
        q = np.asarray(obs.joint_pos, float)
        return np.clip(target - q, -self.cfg.max_joint_step, self.cfg.max_joint_step)


class Watchdog:
    """Calls ``on_timeout`` when armed and not kicked for ``timeout_s``, at the latest by ``timeout_s``.

    It checks every ``timeout_s / 20`` and fires once the silence exceeds ``timeout_s`` less two checks, so
    the stop lands within the limit (barring scheduling delays), never later.
    """

    def __init__(self, timeout_s: float, on_timeout):
        self.timeout_s = float(timeout_s)
        self._on_timeout = on_timeout
        self._last = time.monotonic()
        self.armed = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="robot-watchdog", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._last = time.monotonic()
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def silent_for(self) -> float:
        return time.monotonic() - self._last

    def expired(self) -> bool:
        return self.armed and self.silent_for() > self.timeout_s * 0.9  # 0.9 = less two checks

    def _run(self) -> None:
        while not self._closed.wait(self.timeout_s / 20):
            if self.expired():
                self._on_timeout()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()


class SafeRobot(Robot):
    """Any backend behind the safety filter, a fault latch, an emergency stop and (optionally) a watchdog.

    Thread-safe: the watchdog thread and the caller share one lock, so a stop never interleaves with a step.
    """

    def __init__(self, robot: Robot, cfg: SafetyConfig | None = None, watchdog: bool = True):
        self.robot = robot
        self.cfg = cfg or SafetyConfig()
        self.use_watchdog = watchdog and self.cfg.watchdog_periods > 0
        self._lock = threading.RLock()
        self._fault: str | None = None
        self._filter: SafetyFilter | None = None
        self._watchdog: Watchdog | None = None

    @property
    def info(self) -> RobotInfo:
        return self.robot.info

    def connect(self) -> "SafeRobot":
        if self._filter is not None:
            return self
        self.robot.connect()
        self._filter = SafetyFilter(self.cfg, self.robot.info)
        if self.use_watchdog and self._watchdog is None:
            self._watchdog = Watchdog(self.cfg.watchdog_periods / self.info.control_freq, self._on_watchdog)
        return self

    def disconnect(self) -> None:
        if self._filter is None:
            return
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        with self._lock:
            try:
                self.robot.stop()
            finally:
                self.robot.disconnect()
                self._filter = None

    @property
    def fault(self) -> str | None:
        return self._fault or self.robot.fault

    def _require_ok(self, what: str) -> None:
        if self.fault:
            raise SafetyFault(f"{what} refused: fault latched ({self.fault}); call recover() first")

    def _latch(self, reason: str) -> None:
        if self._fault is None:
            log.warning("safety fault: %s", reason)
            self._fault = reason
        self._settle()
        try:
            self.robot.stop()
        except Exception as err:  # the stop must be attempted even when the backend is failing
            log.error("stop after fault failed: %s", err)

    def _settle(self) -> None:
        """The arm is at rest: disarm the watchdog, and the next command may be a full step."""
        if self._watchdog is not None:
            self._watchdog.disarm()
        self._filter.reset()

    def _on_watchdog(self) -> None:
        with self._lock:
            wd = self._watchdog
            if wd is not None and wd.expired():  # again under the lock: a command may just have arrived
                self._latch(f"watchdog: no command for {wd.silent_for() * 1e3:.0f} ms (limit "
                            f"{wd.timeout_s * 1e3:.0f} ms = {self.cfg.watchdog_periods:g} control periods)")

    def observe(self, frames: bool = True) -> Observation:
        with self._lock:
            return self.robot.observe(frames)

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        with self._lock:
            self._require_ok("command")
            try:
                safe = self._filter(command, mode, self.robot.observe(frames=False), self.robot.now(),
                                    self.robot.forward_kinematics)
                applied = self.robot.send(safe, mode)
            except Exception as err:
                self._latch(str(err) if isinstance(err, SafetyFault) else f"backend error: {err!r}")
                raise SafetyFault(self._fault) from err
            if self._watchdog is not None:
                self._watchdog.kick()
            return applied

    def reset(self, seed: int | None = None) -> Observation:
        with self._lock:
            self._require_ok("reset")
            obs = self.robot.reset(seed)
            self._settle()
            return obs

    def home(self) -> None:
        with self._lock:
            self._require_ok("home")
            self.robot.home()
            self._settle()

    def stop(self) -> None:
        with self._lock:
            self.robot.stop()
            self._settle()

    def estop(self) -> None:
        with self._lock:
            try:
                self.robot.estop()
            finally:
                self._latch("emergency stop")

    def recover(self) -> None:
        with self._lock:
            self.robot.recover()
            self._fault = None
            self._settle()

    def now(self) -> float:
        return self.robot.now()

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray | None:
        return self.robot.forward_kinematics(joints)
