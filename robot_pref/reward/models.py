"""Reward networks r(image) and the ensemble that trains K of them at once.

Three member types (chosen by ``ModelSpec.type``):

* ``cnn``: the RL-VLM-F image CNN (kernels [5,3,3,3], channels [16,32,64,128], strides [3,2,2,2],
  ReLU, a linear head, tanh);
* ``resnet18``: torchvision's ResNet-18 architecture with random init (no weight download);
* ``clip-head``: a frozen open_clip image encoder whose features are computed once (and cached by the
  trainer), followed by a small trained MLP head. The CLIP variant is the improvement RL-VLM-F lacks.

Every member ends in an output head (``ModelSpec.head``): ``tanh`` (RL-VLM-F: r in [-1, 1]) or
``linear`` (unbounded r). Bradley-Terry on tanh outputs caps the logit difference at 2, so noisy labels
push every clearly ordered frame to +-1 and tanh' then flattens the reward between e.g. "gripper at the
cube" and "cube lifted" (docs/REWARD.md); the linear head keeps those levels apart.

The K members of an ensemble keep their weights stacked along a leading axis and run in one
``torch.func.vmap`` call (for convolutions that is a grouped convolution), so an ensemble of 3 costs
about one network's worth of kernel launches. Reward = ensemble mean; the spread across members is
the disagreement used for active query selection.

Checkpoints are a ``model.safetensors`` (weights only, no pickle) plus a ``model.json`` describing the
network, so loading never executes code from the file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

MODEL_TYPES = ("cnn", "resnet18", "clip-head")
HEADS = ("tanh", "linear")
WEIGHTS_FILE = "model.safetensors"
SPEC_FILE = "model.json"
CNN_KERNELS, CNN_CHANNELS, CNN_STRIDES = (5, 3, 3, 3), (16, 32, 64, 128), (3, 2, 2, 2)


@dataclass
class ModelSpec:
    """Everything needed to rebuild a reward network; stored as ``model.json`` beside the weights."""

    type: str = "cnn"
    ensemble: int = 3
    head: str = "tanh"  # output: tanh (RL-VLM-F, r in [-1, 1]) | linear (unbounded)
    height: int = 84  # frame size the model was trained on
    width: int = 84
    augment: str = "shift"  # none | shift (pad + random crop back to size, DrQ) | crop (random crop, centre at test)
    pad: int = 4  # shift: pixels of replicate padding
    crop: int = 76  # crop: side of the square crop (robomimic 84 -> 76)
    head_hidden: int = 256  # clip-head: hidden units of the trained MLP
    clip_model: str = "ViT-B-32"  # open_clip name, or 'local-dir:/path', or 'hf-hub:org/repo'
    clip_pretrained: str | None = "laion2b_s34b_b79k"  # weights tag for a plain name; None = random init
    clip_model_config: dict | None = None  # architecture JSON for names open_clip does not ship (tests)
    extra: dict[str, Any] = field(default_factory=dict)  # provenance: training config, label counts

    def __post_init__(self) -> None:
        if self.type not in MODEL_TYPES:
            raise ValueError(f"unknown reward model type {self.type!r}; choose one of {list(MODEL_TYPES)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown reward head {self.head!r}; choose one of {list(HEADS)}")
        if self.augment not in ("none", "shift", "crop"):
            raise ValueError(f"augment must be none, shift or crop, got {self.augment!r}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        if self.augment == "crop" and not (0 < self.crop <= min(self.height, self.width)):
            raise ValueError(f"crop size {self.crop} must lie in (0, {min(self.height, self.width)}] for "
                             f"{self.height}x{self.width} frames; set --crop")

    @property
    def input_size(self) -> tuple[int, int]:
        """Size of the images the network sees (after the crop, if any)."""
        return (self.crop, self.crop) if self.augment == "crop" else (self.height, self.width)

    @property
    def stores_encoder(self) -> bool:
        """A randomly initialised CLIP encoder cannot be rebuilt from a name, so its weights are saved."""
        return self.type == "clip-head" and not self.clip_pretrained and ":" not in self.clip_model


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device):
    """bf16 mixed precision on GPU (no loss scaling needed); full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------- members
def output_head(head: str) -> nn.Module:
    return nn.Tanh() if head == "tanh" else nn.Identity()


def rlvlmf_cnn(height: int, width: int, head: str = "tanh") -> nn.Module:
    """The RL-VLM-F reward CNN: 4 unpadded convs + ReLU, flatten, linear, tanh (or no squashing)."""
    layers: list[nn.Module] = []
    c, h, w = 3, height, width
    for k, ch, s in zip(CNN_KERNELS, CNN_CHANNELS, CNN_STRIDES):
        h, w = (h - k) // s + 1, (w - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(f"the RL-VLM-F CNN needs frames of at least 47x47 pixels, got {height}x{width}; "
                             "render larger frames (robot-pref render --size 84) or use --model resnet18")
        layers += [nn.Conv2d(c, ch, k, s), nn.ReLU()]
        c = ch
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, 1), output_head(head))


def resnet18(head: str = "tanh") -> nn.Module:
    import torchvision

    return nn.Sequential(torchvision.models.resnet18(weights=None, num_classes=1), output_head(head))


def mlp_head(in_dim: int, hidden: int, head: str = "tanh") -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), output_head(head))


def clip_encoder(spec: ModelSpec) -> nn.Module:
    """The open_clip image tower (text tower dropped). Weights come from the hub tag / local dir."""
    import open_clip

    name = spec.clip_model
    if spec.clip_model_config is not None and name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:  # add_model_config reads a file named <model>.json
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(spec.clip_model_config))
            open_clip.add_model_config(path)
    try:
        model = open_clip.create_model(name, pretrained=spec.clip_pretrained or None)
    except (RuntimeError, OSError) as err:  # unknown tag, missing file, no network for a hub download
        raise ValueError(f"could not build open_clip model {name!r} with weights {spec.clip_pretrained!r}: {err}. "
                         "Use a name from open_clip.list_models() with a cached tag, 'local-dir:/path' "
                         "holding open_clip_config.json + weights, or --clip-config FILE.json") from err
    return model.visual.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------- ensemble
class Ensemble(nn.Module):
    """K networks of one architecture with stacked weights, evaluated by one vmapped call."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        params, buffers = stack_module_state(members)
        self.names = list(params)
        self.buffer_names = list(buffers)
        # '.' is not allowed in parameter names, so the stacked tensors live under '-' names
        self.params = nn.ParameterDict({n.replace(".", "-"): nn.Parameter(p) for n, p in params.items()})
        for n, b in buffers.items():
            self.register_buffer("buf-" + n.replace(".", "-"), b)
        # the stateless template lives outside the module registry so .to(device) leaves it on 'meta'
        self.__dict__["template"] = copy.deepcopy(members[0]).to("meta")
        self.size = len(members)

    def forward(self, x: torch.Tensor, per_member: bool = False, vectorize: bool | None = None) -> torch.Tensor:
        """x: (N, ...) shared by all members, or (K, N, ...) with ``per_member``. Returns (K, N).

        ``vectorize`` (default: on GPU only) runs all members in one vmapped call; on CPU the grouped
        convolutions vmap produces are slower than K plain ones (tools/bench_reward.py), so members
        run in a loop over views of the same stacked weights.
        """
        params = {n: self.params[n.replace(".", "-")] for n in self.names}
        buffers = {n: getattr(self, "buf-" + n.replace(".", "-")) for n in self.buffer_names}
        self.template.train(self.training)

        def call(p, b, xi):
            return functional_call(self.template, (p, b), (xi,))

        if vectorize if vectorize is not None else x.device.type == "cuda":
            return vmap(call, in_dims=(0, 0, 0 if per_member else None))(params, buffers, x).squeeze(-1)
        outs = []
        for i in range(self.size):
            p_i, b_i = {n: p[i] for n, p in params.items()}, {n: b[i] for n, b in buffers.items()}
            outs.append(call(p_i, b_i, x[i] if per_member else x))
        return torch.stack(outs).squeeze(-1)


# ---------------------------------------------------------------------------------------- reward model
class RewardModel(nn.Module):
    """r(frame): preprocessing (+ frozen encoder) and an ensemble; ``predict`` is the ensemble mean."""

    def __init__(self, spec: ModelSpec, seed: int | None = None):
        super().__init__()
        self.spec = spec
        if seed is not None:
            torch.manual_seed(seed)
        self.encoder = clip_encoder(spec) if spec.type == "clip-head" else None
        if spec.type == "cnn":
            make = lambda: rlvlmf_cnn(*spec.input_size, spec.head)  # noqa: E731
        elif spec.type == "resnet18":
            make = lambda: resnet18(spec.head)  # noqa: E731
        else:
            dim = self.encoder.output_dim
            make = lambda: mlp_head(dim, spec.head_hidden, spec.head)  # noqa: E731
        self.ensemble = Ensemble([make() for _ in range(spec.ensemble)])

    @property
    def device(self) -> torch.device:
        return next(self.ensemble.parameters()).device

    @property
    def image_input(self) -> bool:
        """True when the trained part consumes pixels (and augmentation applies)."""
        return self.encoder is None

    # -------------------------------------------------------------- inputs of the trained part
    @torch.no_grad()
    def inputs(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """What the ensemble consumes, on CPU: uint8 (N,3,H,W) images, or frozen CLIP features (N, D).

        Computed once per frame by the trainer and cached, so CLIP runs once per labeled frame.
        """
        frames = torch.as_tensor(np.asarray(frames))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        if tuple(frames.shape[1:3]) != (self.spec.height, self.spec.width):
            raise ValueError(f"this reward model was trained on {self.spec.height}x{self.spec.width} frames, got "
                             f"{frames.shape[1]}x{frames.shape[2]}; relabel/label with the same frame key")
        images = frames.permute(0, 3, 1, 2).contiguous()
        if self.encoder is None:
            return images
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].to(self.device)
            with autocast(self.device):
                feats = self.encoder(self._clip_preprocess(x))
            out.append(F.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.encoder.output_dim)

    def _clip_preprocess(self, images: torch.Tensor) -> torch.Tensor:
        cfg = self.encoder.preprocess_cfg
        x = F.interpolate(images.float() / 255.0, size=tuple(self.encoder.image_size), mode="bicubic",
                          align_corners=False, antialias=True)
        mean = torch.tensor(cfg["mean"], device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg["std"], device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _augment(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """Random shift (DrQ: replicate-pad, random crop back) or random crop at training time; centre crop at
        test time for 'crop'. One flat gather on the uint8 images: the replicate padding is an index clamp, so no
        padded copy is made and 4x fewer bytes move than on float images (3x faster than indexing padded
        float images here, same values)."""
        spec, n = self.spec, len(x)
        if spec.augment == "none" or (spec.augment == "shift" and not train):
            return x
        pad = spec.pad if spec.augment == "shift" else 0
        h, w = spec.input_size
        H, W = x.shape[-2] + 2 * pad, x.shape[-1] + 2 * pad  # the padded image the crop is taken from
        if train:
            oy = torch.randint(0, H - h + 1, (n,), device=x.device)
            ox = torch.randint(0, W - w + 1, (n,), device=x.device)
        else:
            oy = torch.full((n,), (H - h) // 2, device=x.device)
            ox = torch.full((n,), (W - w) // 2, device=x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device) - pad).clamp_(0, x.shape[-2] - 1)
        cols = (ox[:, None] + torch.arange(w, device=x.device) - pad).clamp_(0, x.shape[-1] - 1)
        pixel = (rows[:, :, None] * x.shape[-1] + cols[:, None, :]).view(n, 1, h * w).expand(n, x.shape[1], h * w)
        return x.flatten(2).gather(2, pixel).view(n, x.shape[1], h, w)

    # -------------------------------------------------------------- forward / predict
    def forward(self, inputs: torch.Tensor, per_member: bool = False, augment: bool = False,
                vectorize: bool | None = None) -> torch.Tensor:
        """Rewards (K, N) of ``inputs`` from `inputs` ((N, ...) shared, or (K, N, ...) per member)."""
        x = inputs.to(self.device, non_blocking=True)
        if self.image_input:
            lead = x.shape[:2] if per_member else x.shape[:1]
            x = self._augment(x.reshape((-1,) + tuple(x.shape[-3:])), train=augment)
            # in place on one fresh copy: the same values as x.float() / 255 - 0.5 without two more
            # image-sized temporaries per step (a fit step's 384 frames are 19 MB of floats)
            x = x.to(torch.float32, copy=True).div_(255.0).sub_(0.5)
            x = x.reshape(lead + tuple(x.shape[1:]))
        return self.ensemble(x, per_member=per_member, vectorize=vectorize).float()

    @torch.no_grad()
    def predict_members(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Per-member rewards (K, N) of uint8 (N, H, W, 3) frames."""
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(frames), batch_size):
            with autocast(self.device):
                out.append(self(self.inputs(frames[i : i + batch_size], batch_size)).cpu())
        self.train(was_training)
        return torch.cat(out, dim=1).numpy() if out else np.zeros((self.spec.ensemble, 0), np.float32)

    def predict(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Reward (N,) of uint8 (N, H, W, 3) frames: the ensemble mean."""
        return self.predict_members(frames, batch_size).mean(0)


# ---------------------------------------------------------------------------------------- checkpoints
def _weights(model: RewardModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if not model.spec.stores_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_reward_model(model: RewardModel, path: str | Path) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into the directory ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(_weights(model), str(path / WEIGHTS_FILE))
    (path / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(model.spec), indent=2))
    return path


def load_reward_model(path: str | Path, device: str | torch.device | None = None) -> RewardModel:
    """Load a checkpoint written by `save_reward_model` (a run directory or its model.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    folder = path.parent if path.suffix == ".safetensors" or path.name == SPEC_FILE else path
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{path} holds no reward model ({WEIGHTS_FILE} + {SPEC_FILE}); pass the --out "
                                "directory of `robot-pref fit-reward`")
    spec = ModelSpec(**json.loads((folder / SPEC_FILE).read_text()))
    model = RewardModel(spec)
    state = load_file(str(folder / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if spec.stores_encoder or not k.startswith("encoder.")]
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_FILE} does not match {SPEC_FILE}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}; the checkpoint is damaged or from another version")
    device = torch.device(device) if device is not None else default_device()
    return model.to(device).eval()
