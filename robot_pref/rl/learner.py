"""What IQL and BC share: the observation model and the one-optimizer update step.

Every loss of an algorithm is computed from the same parameter snapshot and touches its own
parameters only (targets are detached), so one backward of their sum and one fused Adam step over
all parameter groups equals separate per-network steps, at a fraction of the per-step overhead. Each
group's parameters live in one flat buffer (`FlatAdam`): Adam steps one tensor per group.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from robot_pref.rl.flat_adam import FlatAdam
from robot_pref.rl.networks import ImageEncoder

log = logging.getLogger(__name__)


class ObsModel(nn.Module):
    """Network input from an observation: normalised low-dim arrays concatenated with image features.

    Low-dim keys (e.g. ``obs``) are normalised with the dataset's mean/std, the std floored at
    ``std_floor`` (near-constant dims would otherwise blow up: see docs/RL.md) and clipped to
    ±``clip``. Frame keys (``frames/<camera>_<size>``) go through a conv encoder each.
    """

    def __init__(self, lowdim: Mapping[str, tuple[np.ndarray, np.ndarray]], frames: Mapping[str, int],
                 std_floor: float = 0.1, clip: float = 10.0, feature_dim: int = 64, shift: int = 4,
                 projections: Mapping[str, np.ndarray] | None = None):
        """``projections`` maps a low-dim key (cached frozen-encoder features) to a (D, k) matrix of principal
        components: that key is centred with its D-dim mean, projected, then divided by the k-dim std
        (unfloored: the components' spread is real), so the networks see k whitened features."""
        super().__init__()
        projections = dict(projections or {})
        self.lowdim_keys = tuple(lowdim)
        self.frame_keys = tuple(frames)
        self.projected = tuple(k for k in self.lowdim_keys if k in projections)
        self.clip = clip
        dim = 0
        for i, (key, (mean, std)) in enumerate(lowdim.items()):
            floor = 1e-6 if key in projections else std_floor
            self.register_buffer(f"mean{i}", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer(f"std{i}", torch.as_tensor(np.maximum(std, floor), dtype=torch.float32))
            if key in projections:
                self.register_buffer(f"proj{i}", torch.as_tensor(projections[key], dtype=torch.float32))
            dim += len(std)
        self.encoders = nn.ModuleList(ImageEncoder(size, feature_dim=feature_dim, shift=shift)
                                      for size in frames.values())
        self.dim = dim + feature_dim * len(frames)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        i = self.lowdim_keys.index(key)
        x = x - getattr(self, f"mean{i}")
        if key in self.projected:
            x = x @ getattr(self, f"proj{i}")
        return (x / getattr(self, f"std{i}")).clamp(-self.clip, self.clip)

    def forward(self, obs: Mapping[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """``obs`` holds normalised low-dim tensors and raw uint8 frames; ``generator`` turns on augmentation."""
        parts = [obs[k] for k in self.lowdim_keys]
        parts += [enc(obs[k], generator) for k, enc in zip(self.frame_keys, self.encoders)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def cosine(total_steps: int):
    """lr multiplier decaying from 1 to 0 over ``total_steps`` (CORL's CosineAnnealingLR on the actor).

    Takes an int step (LambdaLR, eager) or a float64 step tensor (the schedule inside a CUDA graph)."""
    def multiplier(step):
        if isinstance(step, torch.Tensor):
            return 0.5 * (1.0 + torch.cos(math.pi * step.clamp(max=total_steps) / max(total_steps, 1)))
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return multiplier


class Learner(nn.Module):
    """Base: subclasses build networks, `param_groups()` and `losses()`; this class runs the step."""

    def __init__(self, obs_model: ObsModel, compile: bool = False):
        super().__init__()
        self.obs_model = obs_model
        self.compile = compile
        self.amp = False  # bf16 autocast of the losses' forward (`TrainConfig.amp`)
        self.hand_backward = False  # gradients from `hand_gradients` instead of autograd (`choose_gradients`)
        self.optimizer: FlatAdam
        self.scheduler: torch.optim.lr_scheduler.LambdaLR

    def setup_optimizer(self, groups: list[dict[str, Any]], schedules: list) -> None:
        fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
        self.optimizer = FlatAdam(groups, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedules)
        self._losses = torch.compile(self.losses) if self.compile else self.losses

    def losses(self, batch: dict, generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def hand_gradients(self, batch: dict) -> dict[str, torch.Tensor]:
        """`losses`' gradients written into every parameter's ``.grad`` under no_grad (`rl.hand_backward`);
        returns what `losses` logs."""
        raise NotImplementedError

    def hand_backward_blocker(self) -> str | None:
        """Why `hand_gradients` cannot replace autograd for this learner, or None when it can."""
        if type(self).hand_gradients is Learner.hand_gradients:
            return f"{type(self).__name__} has no hand-written gradients"
        if any(True for _ in self.obs_model.parameters()):
            return "the observation model has trained parameters (an image encoder): its backward is autograd's"
        if self.amp or self.compile:
            return "bf16 autocast and torch.compile run through autograd"
        if next(self.parameters()).device.type != "cpu":
            return "the hand-written backward is for CPU (a GPU replays the autograd update as one CUDA graph)"
        return None

    def choose_gradients(self, mode: str) -> None:
        """``auto``: hand-written where `hand_backward_blocker` finds nothing against it, else autograd;
        ``hand`` (refused where it cannot apply) or ``autograd``. Call after moving the learner to its device."""
        if mode not in ("auto", "hand", "autograd"):
            raise ValueError(f"--gradients must be auto, hand or autograd, got {mode!r}")
        blocker = self.hand_backward_blocker()
        if mode == "hand" and blocker:
            raise ValueError(f"--gradients hand cannot apply: {blocker}; use --gradients auto or autograd")
        self.hand_backward = mode == "hand" or (mode == "auto" and blocker is None)

    def after_step(self) -> None:
        """Hook after the optimizer step (IQL: target networks)."""

    def update(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One gradient step. Returns detached tensors (losses, per-sample statistics); reduce and read them
        only on the steps that get logged, so no step waits for a host sync."""
        logs = self._gradient_step(batch, generator)
        self.scheduler.step()
        return logs

    def _gradient_step(self, batch: dict, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        # autocast covers the forward only: gradients come back to the fp32 parameters as fp32, and Adam
        # updates fp32 weights (no loss scaling: bf16 has fp32's exponent range)
        if self.hand_backward:  # every .grad is written, none accumulated: no zero_grad
            self.optimizer.link()
            with torch.no_grad():
                logs = self.hand_gradients(batch)
        else:
            device_type = next(self.parameters()).device.type
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=self.amp):
                loss, logs = self._losses(batch, generator)
            self.optimizer.zero_grad()
            loss.backward()
        self.optimizer.step()
        self.after_step()
        return logs

    def graphed_update(self, sample: Callable[[], dict], generators: tuple[torch.Generator, ...],
                       augment: torch.Generator | None = None) -> Callable[[], dict[str, torch.Tensor]] | None:
        """`update(sample(), augment)` as one CUDA graph replay (see `CudaGraphUpdate`); None (and a log line
        saying why) when capture fails, so the caller keeps the eager update. ``generators`` must hold every
        generator the step draws from, ``augment`` included."""
        try:
            return CudaGraphUpdate(self, sample, generators, augment)
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
            log.warning("CUDA graph capture failed, training eagerly: %s: %s", type(e).__name__, e)
            return None

    def lr(self) -> float:
        """Learning rate of the last parameter group (the actor's); a host sync when it lives on the GPU."""
        return float(self.optimizer.param_groups[-1]["lr"])

    def train_state(self) -> dict[str, Any]:
        # checkpoints hold what an eager run holds (a graphed run keeps lr in a device tensor): they resume anywhere
        optimizer, scheduler = self.optimizer.state_dict(), self.scheduler.state_dict()
        for group in optimizer["param_groups"]:
            group["lr"], group["capturable"] = float(group["lr"]), False
        scheduler["_last_lr"] = [base * float(f(scheduler["last_epoch"]))
                                 for base, f in zip(self.scheduler.base_lrs, self.scheduler.lr_lambdas)]
        return {"model": self.state_dict(), "optimizer": optimizer, "scheduler": scheduler}

    def load_train_state(self, state: Mapping[str, Any]) -> None:
        """Load in place; a CUDA graph captured before this reads stale optimizer state: capture a new one."""
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


class CudaGraphUpdate:
    """The whole update (batch gather, losses, backward, fused Adam, target update, lr schedule) as one CUDA
    graph, replayed each step: an eager update launches ~150 small kernels and leaves the GPU waiting on them.

    PyTorch's recipe: a few warm-up steps on a side stream, capture, replay. Whatever changes between
    steps lives in device tensors the graph updates: batch indices come from the batches' CUDA generator
    (registered with the graph, so each replay advances its offset as an eager step does and its state
    saves and resumes as before), Adam's step counts (``capturable=True``), and the learning rates
    (tensors, set in the graph from a step counter by the scheduler's own multipliers). Image batches
    too: their frames sit on the device and the random-shift augmentation draws from a registered
    generator (``augment``), so each replay shifts anew as the eager step does. The warm-up steps are
    undone (parameters, Adam state and generators restored), so replays repeat the eager run. Gradients
    accumulate into the optimizer's flat buffers (`FlatAdam`): fixed addresses the graph zeroes each replay.
    The returned logs are the graph's static outputs, overwritten by each replay.
    """

    def __init__(self, learner: Learner, sample: Callable[[], dict], generators: tuple[torch.Generator, ...],
                 augment: torch.Generator | None = None, warmup: int = 3):
        if augment is not None and not any(augment is g for g in generators):
            raise ValueError("the augmentation generator is not among the registered generators: every replay "
                             "would repeat the captured shifts")
        self.learner = learner
        opt, sched = learner.optimizer, learner.scheduler
        device = next(learner.parameters()).device
        groups = [(g["lr"], g["capturable"]) for g in opt.param_groups]
        model = {k: v.clone() for k, v in learner.state_dict().items()}
        adam = {p: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
        rng = [gen.get_state() for gen in generators]
        captured = False
        try:
            for g in opt.param_groups:
                g["lr"], g["capturable"] = torch.tensor(float(g["lr"]), device=device), True
            self.t = torch.tensor(float(sched.last_epoch), dtype=torch.float64, device=device)
            with torch.cuda.device(device):  # streams and the capture on the learner's device
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(warmup):
                        learner._gradient_step(sample(), augment)
                torch.cuda.current_stream().wait_stream(side)
                self.graph = torch.cuda.CUDAGraph()
                for gen in generators:
                    self.graph.register_generator_state(gen)
                with torch.cuda.graph(self.graph):
                    self.logs = learner._gradient_step(sample(), augment)
                    self.t += 1  # scheduler.step(), on the device
                    for g, base, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                        value = base * f(self.t)
                        if isinstance(value, torch.Tensor):
                            g["lr"].copy_(value)
                        else:
                            g["lr"].fill_(value)
            captured = True
        finally:  # capture runs nothing; undo the warm-up steps
            with torch.no_grad():
                for k, v in learner.state_dict().items():
                    v.copy_(model[k])
                for p, s in list(opt.state.items()):
                    if p in adam:
                        for k, v in s.items():
                            v.copy_(adam[p][k])
                    elif captured:  # fresh Adam state is all zeros (the graph holds these tensors)
                        for v in s.values():
                            v.zero_()
                    else:
                        del opt.state[p]
                if not captured:
                    for g, (lr, capturable) in zip(opt.param_groups, groups):
                        g["lr"], g["capturable"] = lr, capturable
                for gen, state in zip(generators, rng):
                    gen.set_state(state)

    def __call__(self) -> dict[str, torch.Tensor]:
        self.graph.replay()
        self.learner.scheduler.last_epoch += 1  # the host's copy of the step, for checkpoints
        return self.logs
