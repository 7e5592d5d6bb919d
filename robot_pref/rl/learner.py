"""What IQL and BC share: the observation model and the one-optimizer update step.

Every loss of an algorithm is computed from the same parameter snapshot and touches its own
parameters only (targets are detached), so one backward of their sum and one fused Adam step over
all parameter groups equals separate per-network steps, at a fraction of the per-step overhead.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from robot_pref.rl.networks import ImageEncoder


class ObsModel(nn.Module):
    """Network input from an observation: normalised low-dim arrays concatenated with image features.

    Low-dim keys (e.g. ``obs``) are normalised with the dataset's mean/std, the std floored at
    ``std_floor`` (near-constant dims would otherwise blow up: see docs/RL.md) and clipped to
    ±``clip``. Frame keys (``frames/<camera>_<size>``) go through a conv encoder each.
    """

    def __init__(self, lowdim: Mapping[str, tuple[np.ndarray, np.ndarray]], frames: Mapping[str, int],
                 std_floor: float = 0.1, clip: float = 10.0, feature_dim: int = 64, shift: int = 4):
        super().__init__()
        self.lowdim_keys = tuple(lowdim)
        self.frame_keys = tuple(frames)
        self.clip = clip
        for i, (mean, std) in enumerate(lowdim.values()):
            self.register_buffer(f"mean{i}", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer(f"std{i}", torch.as_tensor(np.maximum(std, std_floor), dtype=torch.float32))
        self.encoders = nn.ModuleList(ImageEncoder(size, feature_dim=feature_dim, shift=shift)
                                      for size in frames.values())
        self.dim = sum(len(m) for m, _ in lowdim.values()) + feature_dim * len(frames)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        i = self.lowdim_keys.index(key)
        return ((x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")).clamp(-self.clip, self.clip)

    def forward(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """``obs`` holds normalised low-dim tensors and raw uint8 frames; ``generator`` turns on augmentation."""
        parts = [obs[k] for k in self.lowdim_keys]
        parts += [enc(obs[k], generator) for k, enc in zip(self.frame_keys, self.encoders)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def cosine(total_steps: int):
    """lr multiplier decaying from 1 to 0 over ``total_steps`` (CORL's CosineAnnealingLR on the actor)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


class Learner(nn.Module):
    """Base: subclasses build networks, `param_groups()` and `losses()`; this class runs the step."""

    def __init__(self, obs_model: ObsModel, compile: bool = False):
        super().__init__()
        self.obs_model = obs_model
        self.compile = compile
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LambdaLR

    def setup_optimizer(self, groups: list[dict[str, Any]], schedules: list) -> None:
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        self.optimizer = torch.optim.Adam(groups, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedules)
        self._losses = torch.compile(self.losses) if self.compile else self.losses

    def losses(self, batch: dict, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Hook after the optimizer step (IQL: target networks)."""

    def update(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One gradient step. Returns detached tensors (losses, per-sample statistics); reduce and read them
        only on the steps that get logged, so no step waits for a host sync."""
        loss, logs = self._losses(batch, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.after_step()
        return logs

    def train_state(self) -> dict[str, Any]:
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
