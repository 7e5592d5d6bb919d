"""A robomimic checkpoint behind robot_pref's policy interface, so `robot-pref eval` rolls it out unchanged.

The peer baseline of the study: robomimic's own BC and IQL, trained by robomimic's train script on the
`robot-pref export-robomimic` file of a dataset, are evaluated by the same episodes, seeds and success test
as ours. robomimic's `FileUtils.policy_from_checkpoint` loads the model (with its own observation
normalisation); this adapter only splits our flat ``obs`` into the named parts the export wrote
(robomimic's low-dim keys). The parts, the task and our env meta come from the sidecar
``<checkpoint>.robot_pref.json`` that tools/robomimic_peer.py writes beside the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def sidecar(checkpoint: str | Path) -> Path:
    return Path(str(checkpoint) + ".robot_pref.json")


def write_sidecar(checkpoint: str | Path, task: str, env_meta: Mapping[str, Any],
                  obs_parts: Mapping[str, tuple[int, int]]) -> Path:
    path = sidecar(checkpoint)
    path.write_text(json.dumps({"task": task, "env_meta": dict(env_meta),
                                "obs_parts": {k: list(v) for k, v in obs_parts.items()}}, indent=2))
    return path


class RobomimicPolicy:
    """``act(obs)`` of a robomimic rollout policy; ``task`` / ``env_meta`` / ``observation_keys`` as ours."""

    observation_keys = ("obs",)

    def __init__(self, checkpoint: str | Path, device: str = "cpu"):
        import torch
        import robomimic.utils.file_utils as FileUtils

        meta_path = sidecar(checkpoint)
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} is missing: it names the task and observation parts of a robomimic "
                                    "checkpoint; train it with tools/robomimic_peer.py, which writes it")
        meta = json.loads(meta_path.read_text())
        self.task, self.env_meta = meta["task"], meta["env_meta"]
        self.parts = {k: slice(a, b) for k, (a, b) in meta["obs_parts"].items()}
        self.policy, _ = FileUtils.policy_from_checkpoint(ckpt_path=str(checkpoint), device=torch.device(device),
                                                          verbose=False)
        self.policy.start_episode()  # MLP policies (BC, IQL) keep no state between steps

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        flat = np.array(obs["obs"], np.float32)  # a copy: robomimic wraps it in a tensor, which wants it writable
        return np.asarray(self.policy({k: flat[s] for k, s in self.parts.items()}), np.float32)


def load_eval_policy(path: str | Path, device: str = "cpu"):
    """A robot_pref checkpoint (``.pt``) or a robomimic one (``.pth``, with its sidecar)."""
    if str(path).endswith(".pth"):
        return RobomimicPolicy(path, device)
    from robot_pref.rl import load_policy

    return load_policy(path, device=device)
