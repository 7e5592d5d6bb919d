"""Checkpoints and the deployable `Policy`.

A checkpoint is one torch file holding everything: the policy spec (observation keys, sizes,
action bounds, task, env meta), the learner's parameters, optimizer and scheduler states, every RNG
state and the step. Training resumes from it exactly; `load_policy` builds only the observation
model and the actor from it, so the same file runs in eval, rollout and on an arm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from robot_pref.rl.learner import ObsModel
from robot_pref.rl.networks import Actor

FORMAT = "robot_pref.policy"
VERSION = 1


def build_obs_model(spec: Mapping[str, Any]) -> ObsModel:
    """The observation model described by a policy spec (stats are placeholders until state is loaded)."""
    raw = spec.get("projected", {})  # feature key -> encoder dim (projected to spec["lowdim"][key] components)
    lowdim = {k: (np.zeros(raw.get(k, d), np.float32), np.ones(d, np.float32)) for k, d in spec["lowdim"].items()}
    projections = {k: np.zeros((D, spec["lowdim"][k]), np.float32) for k, D in raw.items()}
    return ObsModel(lowdim, dict(spec["frames"]), std_floor=0.0, clip=spec["obs_clip"],
                    feature_dim=spec["feature_dim"], shift=spec["image_shift"], projections=projections)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash mid-save never leaves a broken checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `robot-pref train --out DIR` "
                                "(it writes DIR/last.pt and DIR/best.pt)")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a robot_pref policy checkpoint (written by `robot-pref train`)")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt.get('version')}, this robot_pref reads {VERSION}")
    return ckpt


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> CUDA when present, else CPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Policy:
    """Observation(s) -> action(s): input selection, frozen encoders, normalisation, actor and action
    de-normalisation in one place.

    ``observation_keys`` are the raw inputs every simulator and arm provide (``obs``, ``frames/<key>``).
    A spec'd policy (`robot_pref.rl.obs_spec`) builds its network inputs from them as ``spec["inputs"]``
    says: obs columns (proprioception only, for a pixel policy) or a camera's frames through its frozen
    encoder; the rest of ``obs`` (object state) never reaches the networks.
    """

    def __init__(self, spec: Mapping[str, Any], obs_model: ObsModel, actor: Actor, device: torch.device,
                 encoders: Mapping[str, torch.nn.Module] | None = None):
        self.spec = {k: v for k, v in spec.items() if k != "encoder_state"}  # weights live in self.encoders
        self.obs_model, self.actor, self.device = obs_model.eval(), actor.eval(), device
        self.inputs: dict[str, dict] = dict(spec.get("inputs") or {k: {"source": k} for k in
                                                                    (*spec["lowdim"], *spec["frames"])})
        self.encoders = {k: e.to(device).eval() for k, e in (encoders or {}).items()}
        self.observation_keys: tuple[str, ...] = tuple(dict.fromkeys(i["source"] for i in self.inputs.values()))
        self.task: str = spec["task"]
        self.env_meta: dict = dict(spec["env_meta"])
        self.frame_render: dict[str, dict] = dict(spec.get("frame_render") or {})  # render options per frames key
        self.action_low = np.asarray(spec["action_low"], np.float32)
        self.action_high = np.asarray(spec["action_high"], np.float32)

    @torch.no_grad()
    def act(self, obs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
        """Actions for a batch (or one) observation; ``obs`` is the low-dim array or a dict by observation key."""
        if not isinstance(obs, Mapping):
            obs = {"obs": obs}
        missing = [k for k in self.observation_keys if k not in obs]
        if missing:
            raise KeyError(f"policy needs observation keys {list(self.observation_keys)}; missing {missing}")
        first = self.observation_keys[0]
        single = np.ndim(obs[first]) == (3 if first.startswith("frames/") else 1)
        a = self.actor(self.features({k: np.asarray(obs[k])[None] if single else obs[k] for k in obs})).cpu().numpy()
        a = self.action_low + (a + 1.0) * 0.5 * (self.action_high - self.action_low)
        return a[0] if single else a

    @torch.no_grad()
    def network_inputs(self, obs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The networks' inputs by key, before normalisation: selected obs columns, encoded frames, raw frames."""
        x = {}
        for key, how in self.inputs.items():
            t = torch.as_tensor(np.ascontiguousarray(obs[how["source"]]), device=self.device)  # flipped views too
            if "columns" in how:
                t = t[..., how["columns"]]
            if key in self.encoders:
                t = self.encoders[key](t)
            x[key] = t
        return x

    @torch.no_grad()
    def features(self, obs: Mapping[str, np.ndarray]) -> torch.Tensor:
        """The actor's (and critics') input for a batch: low-dim keys normalised, frames encoded."""
        x = self.network_inputs(obs)
        return self.obs_model({k: self.obs_model.normalize(k, v.float()) if k in self.spec["lowdim"] else v
                               for k, v in x.items()})


def load_policy(path: str | Path, device: str | torch.device | None = None) -> Policy:
    """The deployable policy of a `robot-pref train` checkpoint, on CUDA when present unless ``device`` says."""
    device = resolve_device(device)
    ckpt = load_checkpoint(path, device)
    spec = ckpt["policy"]
    obs_model = build_obs_model(spec)
    actor = Actor(obs_model.dim, len(spec["action_low"]), tuple(spec["hidden"]), spec["actor"])
    state = ckpt["model"]
    obs_model.load_state_dict({k[len("obs_model."):]: v for k, v in state.items() if k.startswith("obs_model.")})
    actor.load_state_dict({k[len("actor."):]: v for k, v in state.items() if k.startswith("actor.")})
    from robot_pref.rl.features import build_encoder

    encoders = {k: build_encoder(desc, spec["encoder_state"][k]) for k, desc in spec.get("encoders", {}).items()}
    return Policy(spec, obs_model.to(device), actor.to(device), device, encoders)
