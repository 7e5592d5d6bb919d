"""The safety layer: every command passes the same checks, in order, whatever the backend.

0. observation   the pose the checks read must be finite (NaN compares False with every limit)  -> fault
1. validate      real numbers (no complex, strings, objects), shape, finite values, a declared mode -> fault
2. joint limits  joint_pos: clamp targets into [low + margin, high - margin];
                 ee_delta: the arm already inside the margin                     -> fault
3. workspace     ee_delta: clamp the target position into the box;
                 joint_pos: a target whose forward kinematics leaves the box     -> fault
                 (joint_pos without forward kinematics is refused: the box could only be checked late)
4. per-step cap  scale the step down to max_ee_step (m) / max_rot_step (rad) / max_joint_step (rad)
5. rate limit    a command sooner than one control period after the last one moves proportionally less,
                 so steps x rate can never exceed cap x control_freq (a client flooding delta commands
                 cannot make the arm faster)

Steps 2-5 only shrink motion towards the current pose, so a pose inside the box stays inside it, and a
last finiteness check stands right before the backend's send. Faults latch: the arm is stopped and every
further command is refused until `recover()`; an emergency stop is released only on the robot side
(`clear_estop`). A watchdog thread stops the arm (and latches a fault) when no command arrived for
``watchdog_periods`` control periods while it was moving, also while a backend call hangs.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.interface import Observation, Robot, RobotInfo, SafetyFault, require_finite

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
        """The command to apply now. ``fk(joints) -> ee position`` checks joint targets against the box."""
        self.check_observation(obs)
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

    def check_observation(self, obs: Observation) -> None:
        """The pose every check reads must be real and finite: ``q < low`` is False for NaN, so a NaN
        reading would pass the joint, box and step checks and become a NaN command."""
        for name, shape in (("joint_pos", (self.info.n_joints,)), ("joint_vel", (self.info.n_joints,)),
                            ("ee_pos", (3,)), ("ee_quat", (4,))):
            value = np.asarray(getattr(obs, name))
            if value.shape != shape or value.dtype.kind not in "iuf" or not np.all(np.isfinite(value)):
                raise SafetyFault(f"observed {name} {value.tolist()} is not {shape[0]} finite real values: the "
                                  "arm's sensors or state are broken; check the arm, then recover()",
                                  "bad_observation")

    def _validate(self, command, mode: str) -> np.ndarray:
        if mode not in self.info.modes:
            raise SafetyFault(f"control mode {mode!r} is not supported by {self.info.name}; "
                              f"it accepts {list(self.info.modes)}", "invalid_command")
        n = self.info.action_dim(mode)
        try:
            raw = np.asarray(command)
        except (TypeError, ValueError) as err:  # ragged nesting
            raise SafetyFault(f"{mode} command is not an array of {n} real numbers: {err}", "invalid_command") from err
        if raw.dtype.kind not in "iuf":  # complex would lose its imaginary part, strings would be parsed
            raise SafetyFault(f"{mode} command must be real numbers (int or float), got dtype {raw.dtype}: "
                              f"{raw.tolist()!r:.120}", "invalid_command")
        cmd = raw.astype(np.float64)
        if cmd.shape != (n,):
            raise SafetyFault(f"{mode} command must have shape ({n},), got {cmd.shape}", "invalid_command")
        if not np.all(np.isfinite(cmd)):
            raise SafetyFault(f"{mode} command has non-finite values {cmd.tolist()}; the arm was not moved",
                              "invalid_command")
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
                              f"[{self.info.joint_low[j]:.3f}, {self.info.joint_high[j]:.3f}]; recover(), then "
                              "reset() or home() (or move it away in joint_pos mode where the arm has it)",
                              "joint_limit")
        ee = np.asarray(obs.ee_pos, float)
        dpos = np.clip(ee + cmd[:3], self.low, self.high) - ee
        return np.concatenate([_cap_norm(dpos, self.cfg.max_ee_step), _cap_norm(cmd[3:6], self.cfg.max_rot_step)])

    def _joint_step(self, cmd: np.ndarray, obs: Observation, fk) -> np.ndarray:
        """target - current after joint-limit clamp, workspace check and per-step cap."""
        target = np.clip(cmd[:-1], self.q_low, self.q_high)
        reached = fk(target) if fk is not None else None
        if reached is None:  # the hand's current position would only tell, one step late, that it left the box
            raise SafetyFault(f"joint_pos refused on {self.info.name}: the workspace box is checked on the target's "
                              "forward kinematics, and this backend has none; send ee_delta commands, or give the "
                              "backend a forward_kinematics()", "no_forward_kinematics")
        pos = np.asarray(reached, float)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            raise SafetyFault(f"forward kinematics of {target.tolist()} gave {pos.tolist()}, not a finite (3,) "
                              "position; the target cannot be checked against the box", "no_forward_kinematics")
        if np.any(pos < self.low - 1e-9) or np.any(pos > self.high + 1e-9):
            raise SafetyFault(f"joint_pos target {np.round(pos, 3).tolist()} m lies outside the workspace box "
                              f"{self.low.tolist()}..{self.high.tolist()}", "workspace")
        q = np.asarray(obs.joint_pos, float)
        return np.clip(target - q, -self.cfg.max_joint_step, self.cfg.max_joint_step)


class Watchdog:
    """Calls ``on_timeout`` when armed and not kicked for ``timeout_s``, at the latest by ``timeout_s``.

    It checks every ``interval = timeout_s / 20`` and fires once the silence exceeds ``fire_after =
    timeout_s - 2 * interval``, so the stop lands within the limit (barring scheduling delays), never
    later. ``clock`` is injectable so tests can check the bound without sleeping.
    """

    def __init__(self, timeout_s: float, on_timeout, clock=time.monotonic):
        self.timeout_s = float(timeout_s)
        self.interval = self.timeout_s / 20
        self.fire_after = self.timeout_s - 2 * self.interval
        self._on_timeout = on_timeout
        self._clock = clock
        self._last = clock()
        self.armed = False
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="robot-watchdog", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._last = self._clock()
        self.armed = True

    def disarm(self) -> None:
        self.armed = False

    def silent_for(self) -> float:
        return self._clock() - self._last

    def expired(self) -> bool:
        return self.armed and self.silent_for() > self.fire_after

    def check(self) -> None:
        """One tick of the watchdog thread."""
        if self.expired():
            self._on_timeout()

    def _run(self) -> None:
        while not self._closed.wait(self.interval):
            self.check()

    def close(self) -> None:
        self._closed.set()
        self._thread.join()


class SafeRobot(Robot):
    """Any backend behind the safety filter, a fault latch, an emergency stop and (optionally) a watchdog.

    Thread-safe with two locks: ``_lock`` lets one command at a time reach the backend; ``_state`` guards
    the latch and the watchdog and is never held across a backend call, so the watchdog's stop and
    `estop` act at once, even while a backend call hangs.
    """

    def __init__(self, robot: Robot, cfg: SafetyConfig | None = None, watchdog: bool = True,
                 clock=time.monotonic):
        self.robot = robot
        self.cfg = cfg or SafetyConfig()
        self.use_watchdog = watchdog and self.cfg.watchdog_periods > 0
        self._clock = clock  # the watchdog's; wall-clock even in sim, where robot.now() only moves when stepped
        self._lock = threading.RLock()
        self._state = threading.Lock()
        self._fault: str | None = None
        self._reason = "fault"
        self._estopped = False
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
            self._watchdog = Watchdog(self.cfg.watchdog_periods / self.info.control_freq, self._on_watchdog,
                                      self._clock)
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
        fault = self.fault
        if fault:
            raise SafetyFault(f"{what} refused: fault latched ({fault}); call recover() first",
                              self._reason if self._fault else "robot")

    def _set_fault(self, reason: str, message: str) -> None:
        """Latch (the first fault's message stays); call with ``_state`` held."""
        if self._fault is None:
            log.warning("safety fault: %s", message)
            self._fault, self._reason = message, reason
        if self._watchdog is not None:
            self._watchdog.disarm()

    def _halt(self) -> None:
        try:
            self.robot.stop()
        except Exception as err:  # the stop must be attempted even when the backend is failing
            log.error("stop after fault failed: %s", err)

    def _latch(self, reason: str, message: str) -> None:
        with self._state:
            self._set_fault(reason, message)
        self._halt()

    def _kick(self) -> None:
        with self._state:
            if self._watchdog is not None:
                self._watchdog.kick()

    def _settle(self) -> None:
        """The arm is at rest: disarm the watchdog, and the next command may be a full step."""
        with self._state:
            if self._watchdog is not None:
                self._watchdog.disarm()
        self._filter.reset()

    def _on_watchdog(self) -> None:
        """Latch and stop without waiting for ``_lock``: a command in flight may be the thing that hangs."""
        with self._state:
            wd = self._watchdog
            if wd is None or not wd.expired():  # again under the lock: a command may just have arrived
                return
            self._set_fault("watchdog", f"watchdog: no command for {wd.silent_for() * 1e3:.0f} ms (limit "
                                        f"{wd.timeout_s * 1e3:.0f} ms = {self.cfg.watchdog_periods:g} control periods)")
        self._halt()

    def observe(self, frames: bool = True) -> Observation:
        with self._lock:
            obs = self.robot.observe(frames)
        try:
            self._filter.check_observation(obs)
        except SafetyFault as err:
            self._latch(err.reason, str(err))
            raise
        return obs

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        with self._lock:
            self._require_ok("command")
            self._kick()  # a command arrived; the watchdog counts from here, so a hung backend call trips it
            try:
                safe = self._filter(command, mode, self.robot.observe(frames=False), self.robot.now(),
                                    self.robot.forward_kinematics)
                safe = require_finite(safe, self.info.action_dim(mode), f"the filtered {mode} command")
                with self._state:
                    if self._fault:  # latched meanwhile (watchdog, estop): this command must not go out
                        raise SafetyFault(self._fault, self._reason)
                applied = self.robot.send(safe, mode)
            except Exception as err:
                if isinstance(err, SafetyFault):
                    self._latch(err.reason, str(err))
                else:
                    self._latch("backend_error", f"backend error: {err!r}")
                raise SafetyFault(self._fault, self._reason) from err
            if self._fault:  # latched while the command was in flight: stop again, after it
                self._halt()
                raise SafetyFault(f"{self._fault} (latched while this command was in flight; the arm was stopped "
                                  "again after it)", self._reason)
            self._kick()
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
        """Emergency stop, at once (it does not wait for a command in flight); only `clear_estop` releases it."""
        with self._state:
            self._estopped = True
            self._fault = None  # the estop's message replaces any earlier fault's
            self._set_fault("estop", "emergency stop")
        try:
            self.robot.estop()
        finally:
            self._halt()

    def recover(self) -> None:
        """Clear a latched fault; an emergency stop stays until it is released on the robot side."""
        with self._lock:
            if self._estopped:
                raise SafetyFault("emergency stop latched: recover() does not release it; release it on the robot "
                                  "side (type 'release' at the `robot-pref serve` console, or call "
                                  "SafeRobot.clear_estop() on the robot PC)", "estop")
            self.robot.recover()
            with self._state:
                self._fault, self._reason = None, "fault"
            self._settle()

    def clear_estop(self) -> None:
        """Release an emergency stop and recover: a robot-side call only (no wire op reaches it)."""
        with self._lock:
            with self._state:
                was, self._estopped = self._estopped, False
            if was:
                log.warning("emergency stop released on the robot side")
            self.recover()

    def now(self) -> float:
        return self.robot.now()

    def forward_kinematics(self, joints: np.ndarray) -> np.ndarray | None:
        return self.robot.forward_kinematics(joints)
