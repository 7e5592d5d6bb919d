"""The observation spec of a policy: what it sees, checked against the dataset it trains on.

A real arm has cameras and proprioception, not the object's pose. The spec says which parts a policy
reads, and `resolve` turns it into the network's input arrays of a dataset:

* ``proprio``: robot-only entries of the flat observation (sim tasks: ``robot0_eef_pos``,
  ``robot0_eef_quat``, ``robot0_gripper_qpos``; LeRobot imports: ``observation.state``), as columns of
  ``obs``. Object entries (``cube_pos``, ``observation.environment_state``, ...) are refused: they are
  privileged state.
* ``cameras``: frame keys (``agentview`` + ``size`` -> ``frames/agentview_84``), each through a frozen
  ``encoder`` whose cached features (`robot_pref.rl.features`) are projected to ``features`` principal
  components, or ``encoder: conv`` for the trained end-to-end conv encoder (the GPU path).
* ``privileged: true``: the whole flat ``obs``, object state included (preset ``privileged``), for oracle
  baselines only.

At act time the policy reads the same raw inputs the simulator and every arm provide (``obs`` and
``frames/<key>``, see `robot_pref.hardware.interface.Observation.policy_input`) and keeps only the
spec's columns and frames, so one checkpoint runs in eval, in rollout on ``sim:`` and on a real arm.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

SIM_PROPRIO = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")  # = robot_pref.envs.tasks.PROPRIO_KEYS
LEROBOT_PROPRIO = ("observation.state",)
PRESETS: dict[str, dict[str, Any]] = {
    "pixels": {"proprio": list(SIM_PROPRIO), "cameras": ["agentview", "robot0_eye_in_hand"], "size": 84,
               "encoder": "resnet18", "features": 32},
    "privileged": {"privileged": True},
}


class ObsSpecError(ValueError):
    """A spec that cannot be honoured; the message names the field and the fix."""


@dataclass(frozen=True)
class ObsSpec:
    proprio: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    size: int = 84
    encoder: str = "resnet18"  # reward:DIR | resnet18[:WEIGHTS] | open_clip:DIR | conv (trained end to end)
    features: int = 32  # principal components kept per camera (frozen encoders)
    frame_stack: int = 1
    privileged: bool = False

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "ObsSpec":
        """From a config dict: ``preset`` first, then the fields given override it."""
        raw = dict(raw)
        preset = raw.pop("preset", None)
        if preset is not None and preset not in PRESETS:
            raise ObsSpecError(f"obs.preset {preset!r} is unknown; choose one of {sorted(PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ObsSpecError(f"obs has unknown field(s) {unknown}; fields: preset, {', '.join(sorted(names))}")
        values = {**PRESETS.get(preset, {}), **raw}
        for name in ("proprio", "cameras"):
            v = values.get(name, ())
            values[name] = (v,) if isinstance(v, str) else tuple(v)
        spec = cls(**values)
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.privileged and (self.proprio or self.cameras):
            raise ObsSpecError("obs.privileged reads the whole flat obs (object state included); it takes no "
                               "proprio or cameras: drop them, or set privileged: false for a pixel policy")
        if not self.privileged and not (self.proprio or self.cameras):
            raise ObsSpecError("obs names nothing to observe: give proprio and/or cameras (or preset: pixels), "
                               "or privileged: true for an oracle baseline")
        if self.frame_stack != 1:
            raise ObsSpecError(f"obs.frame_stack={self.frame_stack}: only 1 is implemented (the policy keeps no "
                               "history between steps yet); set frame_stack: 1")
        if self.size <= 0 or self.features <= 0:
            raise ObsSpecError(f"obs.size ({self.size}) and obs.features ({self.features}) must be positive")
        if len(set(self.cameras)) != len(self.cameras) or len(set(self.proprio)) != len(self.proprio):
            raise ObsSpecError(f"obs lists a camera or proprio key twice: {self.cameras} {self.proprio}")

    @property
    def end_to_end(self) -> bool:
        return self.encoder == "conv"


def obs_columns(env_meta: Mapping[str, Any], obs_dim: int) -> dict[str, np.ndarray]:
    """Column indices of each named entry of a dataset's flat ``obs``: LeRobot imports record their
    ``obs_dims``; a simulated task's env splits its own observation (`TaskEnv.obs_dict`)."""
    if "obs_dims" in env_meta:
        bounds = np.cumsum([0] + list(env_meta["obs_dims"].values()))
        return {k: np.arange(a, b) for k, a, b in zip(env_meta["obs_dims"], bounds[:-1], bounds[1:])}
    if "task" in env_meta and "kwargs" in env_meta:
        from robot_pref.envs import TaskEnv

        env = TaskEnv.from_meta(env_meta)
        try:
            return {k: np.asarray(v, np.int64) for k, v in env.obs_dict(np.arange(obs_dim)).items()}
        finally:
            env.close()
    raise ObsSpecError("the dataset's attrs['env'] names neither a task nor obs_dims, so its obs columns have no "
                       "names; use obs.privileged (the whole obs) or re-import the data")


def proprio_columns(spec: ObsSpec, env_meta: Mapping[str, Any], obs_dim: int) -> list[int]:
    """The obs columns of ``spec.proprio``, refusing anything that is not the robot's own state."""
    named = obs_columns(env_meta, obs_dim)
    allowed = SIM_PROPRIO + LEROBOT_PROPRIO
    for key in spec.proprio:
        if key not in named:
            raise ObsSpecError(f"obs.proprio {key!r} is not recorded in this dataset's obs (it holds "
                               f"{list(named)}); choose from {[k for k in named if k in allowed]}")
        if key not in allowed:
            raise ObsSpecError(f"obs.proprio {key!r} is privileged object state, not proprioception; a pixel "
                               f"policy may read {[k for k in named if k in allowed]} (for an oracle baseline "
                               "use obs: {preset: privileged})")
    return [int(c) for key in spec.proprio for c in named[key]]


def camera_keys(spec: ObsSpec, frame_keys: list[str]) -> list[str]:
    """Frame keys of ``spec.cameras``: a camera name at ``spec.size`` (``agentview_84``) or a frame key as is."""
    from robot_pref.data.dataset import frame_key

    out = []
    for cam in spec.cameras:
        key = cam.removeprefix("frames/")
        key = key if key in frame_keys else frame_key(key, spec.size)
        if key not in frame_keys:
            raise ObsSpecError(f"obs.cameras {cam!r}: the dataset has no frames {key!r} (frames: {frame_keys}); "
                               f"render it (robot-pref render --camera {cam} --size {spec.size})")
        out.append(key)
    return out
