"""Opening robots by name, and turning a stream of (observation, applied command) into dataset episodes.

Rows follow the dataset convention: row t holds the observation s_t and the command applied in s_t,
normalised back to the policy's action units, plus r(s_t) and success(s_t) where the robot knows them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from robot_pref.data.dataset import DatasetError, Episode, TrajectoryDataset
from robot_pref.hardware.interface import Observation, Robot, RobotInfo, SafetyFault
from robot_pref.hardware.config import ROBOTS, TOKEN_ENV, SafetyConfig
from robot_pref.hardware.safety import SafeRobot

def open_robot(name: str, cameras: tuple[str, ...] = (), size: int = 84, safety: SafetyConfig | None = None,
               token: str | None = None, seed: int | None = None, timeout_s: float = 5.0,
               watchdog: bool | None = None, render: Mapping[str, Mapping[str, Any]] | None = None) -> Robot:
    """A robot by name, not yet connected (use ``with``). Local backends come wrapped in `SafeRobot`
    (``remote:`` is guarded by its server). The watchdog is on except for in-process sim, which only
    moves when stepped; ``watchdog=True`` forces it (the server does). ``render`` (render options per
    frame key) reaches ``sim:`` cameras only: real cameras take the pictures they take."""
    kind, _, rest = name.partition(":")
    if kind == "remote":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"remote robot must look like remote:HOST:PORT (e.g. remote:127.0.0.1:5555), got {name!r}")
        from robot_pref.hardware.remote import RemoteRobot

        return RemoteRobot(host.strip("[]"), int(port), token=token or os.environ.get(TOKEN_ENV),
                           timeout_s=timeout_s)
    if kind == "sim":
        from robot_pref.hardware.sim import SimRobot

        backend: Robot = SimRobot(rest or "lift", cameras, size, seed, render)
    elif kind == "fake":
        from robot_pref.hardware.fake import FakeArm

        backend = FakeArm()
    elif kind == "ur" and rest:
        from robot_pref.hardware.ur import URRobot

        backend = URRobot(rest)
    elif kind == "franka" and rest:
        from robot_pref.hardware.franka import FrankaRobot

        backend = FrankaRobot(rest)
    else:
        raise ValueError(f"unknown robot {name!r}; use one of {ROBOTS}")
    return SafeRobot(backend, safety, watchdog=kind != "sim" if watchdog is None else watchdog)


class EpisodeRecorder:
    """Collects one episode's rows; `episode()` builds the `Episode` to append."""

    def __init__(self, info: RobotInfo, frame_keys: tuple[str, ...] = ()):
        self.info = info
        self.frame_keys = tuple(frame_keys)
        missing = sorted(set(self.frame_keys) - set(info.cameras))
        if missing:
            raise ValueError(f"{info.name} does not stream {missing} (it streams {list(info.cameras)}); "
                             "start it with those cameras (serve/teleop --cameras, --size)")
        self.clear()

    def clear(self) -> None:
        self.rows: list[tuple[Observation, np.ndarray]] = []
        self.t0 = time.monotonic()
        self.fault: SafetyFault | None = None  # the fault that ended the episode, if one did

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, obs: Observation, applied: np.ndarray) -> None:
        self.rows.append((obs, self.info.to_normalised(applied)))

    @property
    def success(self) -> bool | None:
        """Ground-truth success where known; an episode a fault ended is a failure."""
        if self.fault is not None:
            return False
        known = [o.success for o, _ in self.rows if o.success is not None]
        return bool(any(known)) if known else None

    def episode(self, seed: int = -1, tier: str = "", source: str = "") -> Episode:
        obs = [o for o, _ in self.rows]
        start = obs[0].stamps["joints"]
        known = obs[0].reward is not None
        return Episode(
            obs=np.stack([o.low_dim for o in obs]).astype(np.float32),
            action=np.stack([a for _, a in self.rows]),
            state=np.stack([o.state for o in obs]),
            timestamp=np.array([o.stamps["joints"] - start for o in obs]),
            frames={k: np.stack([o.frames[k] for o in obs]) for k in self.frame_keys},
            true_reward=np.array([o.reward for o in obs], np.float32) if known else None,
            true_success=np.array([bool(o.success) for o in obs]) if known else None,
            task=self.info.task, goal=self.info.goal, tier=tier, source=source, seed=seed, success=self.success,
        )


def open_dataset(path: str | Path, info: RobotInfo, overwrite: bool = False) -> TrajectoryDataset:
    """Append to ``path`` if it holds data of the same robot/task, else create it."""
    env = info.env or {"name": info.name, "task": info.task}
    if Path(path).exists() and not overwrite:
        ds = TrajectoryDataset.open(path, "a")
        have = ds.env_meta.get("task"), ds.shape("obs")[1:], ds.shape("action")[1:], ds.shape("state")[1:]
        want = env.get("task"), (info.obs_dim,), (7,), (info.state_dim,)
        if have != want:
            raise DatasetError(f"{path} holds task/obs/action/state {have}, {info.name} produces {want}; "
                               "record into another --out/--record path")
        return ds
    ds = TrajectoryDataset.create(path, obs_dim=info.obs_dim, action_dim=7, state_dim=info.state_dim,
                                  fps=info.control_freq, env=env, obs_keys=env.get("obs_keys", ()), overwrite=overwrite)
    ds.update_attrs(cameras=list(env.get("cameras", ())))  # as `robot-pref collect` writes it
    return ds


class Rate:
    """Sleep to hold a fixed loop rate; counts overruns (ticks that took longer than the period)."""

    def __init__(self, hz: float):
        self.period = 1.0 / hz
        self.next = time.monotonic() + self.period
        self.overruns = 0

    def sleep(self) -> None:
        now = time.monotonic()
        if now < self.next:
            time.sleep(self.next - now)
            self.next += self.period
        else:
            self.overruns += 1
            self.next = now + self.period
