"""Networks for IQL and BC: an MLP value, a fused twin Q, squashed actors and an image encoder.

The twin Q is one module: both critics' weights are stacked on a leading "member" axis and each
layer runs as a single batched matmul (`torch.baddbmm`), so two critics cost one kernel per layer
instead of two, and their target copy is updated with one `_foreach_lerp_`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(in_dim, h), nn.ReLU(inplace=True)]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers computed by one batched matmul.

    Input (B, in) is shared by all members (the first layer: one wide matmul), input
    (members, B, in) is per member. Output is (members, B, out). Initialised like nn.Linear.
    """

    def __init__(self, members: int, in_features: int, out_features: int):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # shared input: a stride-0 expand, no copy (and no weight reshuffle)
            x = x.expand(self.weight.shape[0], *x.shape)
        if self.weight.shape[-1] == 1 and x.device.type == "cpu":
            # one output column: CPU batched gemm has no fast path for it (forward and both backward
            # matmuls ~5x slower than this multiply-and-sum); CUDA keeps the baddbmm
            return (x * self.weight.transpose(1, 2)).sum(-1, keepdim=True) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Q1, Q2 as one ensemble MLP: forward(obs, act) -> (2, B)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], members: int = 2):
        super().__init__()
        dims = (obs_dim + act_dim,) + tuple(hidden)
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [EnsembleLinear(members, a, b), nn.ReLU(inplace=True)]
        layers.append(EnsembleLinear(members, dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class Actor(nn.Module):
    """Policy over actions normalised to [-1, 1]; the mean is tanh-squashed so actions stay in range.

    ``gaussian``: N(tanh(f(s)), exp(log_std)) with a state-independent log_std (CORL's IQL actor);
    the AWR loss uses the log-likelihood of dataset actions, which stays finite at the bounds.
    ``deterministic``: a = tanh(f(s)); the AWR loss is the weighted squared error.
    """

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...], kind: str = "gaussian"):
        super().__init__()
        if kind not in ("gaussian", "deterministic"):
            raise ValueError(f"actor kind must be 'gaussian' or 'deterministic', got {kind!r}")
        self.kind = kind
        self.net = mlp(obs_dim, act_dim, hidden)
        self.log_std = nn.Parameter(torch.zeros(act_dim)) if kind == "gaussian" else None

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The action the policy executes: the (squashed) mean."""
        return torch.tanh(self.net(obs))

    def nll(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood (gaussian) or squared error (deterministic) of ``act``."""
        return self.nll_of_mean(self(obs), act)

    def nll_of_mean(self, mean: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """`nll` given the policy's mean action (`forward`'s output) at the observations."""
        if self.log_std is None:
            return ((mean - act) ** 2).sum(-1)
        log_std = self.log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        z = (act - mean) / torch.exp(log_std)
        return torch.addcmul(log_std + 0.5 * math.log(2 * math.pi), z, z, value=0.5).sum(-1)  # 0.5 z^2 + log sd + c


class ImageEncoder(nn.Module):
    """Small conv net (uint8 HWC frames -> features) with DrQ/robomimic-style random-shift augmentation.

    Conv weights and inputs are channels_last (NHWC in memory, the frames' own layout): cuDNN's fast
    (bf16 tensor-core) kernels want it, and on CPU oneDNN already runs NHWC inputs that way, bit for bit
    the same. A state dict loads into either layout (``copy_`` keeps the destination's strides).
    """

    def __init__(self, image_size: int, channels: int = 3, feature_dim: int = 64, shift: int = 4):
        super().__init__()
        self.shift = shift
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        ).to(memory_format=torch.channels_last)
        with torch.no_grad():
            n = self.convs(torch.zeros(1, channels, image_size, image_size)).shape[1]
        self.head = nn.Sequential(nn.Linear(n, feature_dim), nn.LayerNorm(feature_dim))
        self.feature_dim = feature_dim

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``frames`` uint8 (B, H, W, C); random shift when ``generator`` is given (training)."""
        # a contiguous NHWC batch permuted to NCHW is channels_last already: no copy
        x = frames.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).float().div_(255.0)
        if generator is not None and self.shift:
            x = random_shift(x, self.shift, generator)
        return self.head(self.convs(x))


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer in [-pad, pad] pixels (replicate padding), as in DrQ; channels_last out.

    The shifts come from ``generator`` on ``x``'s device: inside a CUDA graph they are drawn anew at each
    replay when the graph registers that generator (`CudaGraphUpdate`)."""
    b, _, h, w = x.shape
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator, device=x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + shifts[:, :1])  # (B, h)
    cols = (torch.arange(w, device=x.device)[None, :] + shifts[:, 1:])  # (B, w)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, h, w, C)
    return out.permute(0, 3, 1, 2)
