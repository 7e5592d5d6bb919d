"""Frozen visual encoders and `robot-pref encode`: every frame encoded once, cached in the dataset.

A pixel policy on a CPU cannot afford a conv net in every IQL update (3.3 updates/s end to end). A
frozen encoder computes each frame's features once; they are stored beside the frames as
``features/<frame key>.<encoder tag>`` (per episode, resumable, like a reward array), and IQL/BC train
on them at low-dim speed. At act time the policy runs the same encoder on the arm's camera frames: its
checkpoint holds the encoder's architecture description and weights, so it needs neither the dataset
nor the files the encoder was loaded from.

Encoders (``--encoder``):

* ``reward:DIR``: the fitted reward model's image trunk (``robot-pref fit-reward --out DIR``): the CNN
  members' conv features concatenated (before their linear heads), or its frozen CLIP features;
* ``resnet18`` / ``resnet18:WEIGHTS.pt``: torchvision's ResNet-18 without its classifier, random
  (seeded) init or a local state dict; never downloads;
* ``open_clip:DIR``: an open_clip image tower from a local folder (``open_clip_config.json`` + weights,
  open_clip's ``local-dir:`` layout).

The tag is the encoder kind plus a hash of its weights, so features of two reward fits never mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ENCODERS = "reward:DIR, resnet18, resnet18:WEIGHTS.pt, open_clip:DIR"


class FrozenEncoder(nn.Module):
    """uint8 (N, H, W, 3) frames -> float32 (N, dim) features. ``desc`` (JSON) rebuilds the architecture
    without any file (`build_encoder`); the weights travel as the state dict."""

    kind: str
    desc: dict
    dim: int

    def encode(self, frames: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
        device = next(self.parameters()).device
        frames = torch.as_tensor(np.asarray(frames))
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (N, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        out = [self(frames[i: i + batch_size].to(device)).float().cpu() for i in range(0, len(frames), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.dim), np.float32)

    @property
    def tag(self) -> str:
        """kind + hash of the weights: the feature array's name suffix."""
        h = hashlib.sha256(json.dumps(self.desc, sort_keys=True).encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return f"{self.kind}-{h.hexdigest()[:8]}"


class ResNet18Encoder(FrozenEncoder):
    """torchvision ResNet-18 up to global average pooling (512-d), ImageNet input normalisation."""

    kind, dim = "resnet18", 512

    def __init__(self, weights: str = "", seed: int = 0):
        super().__init__()
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = torchvision.models.resnet18(weights=None)
        self.net.fc = nn.Identity()
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no ResNet-18 weights at {path}; pass a local state dict (.pt) or plain "
                                        "resnet18 for a seeded random init (nothing is downloaded)")
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            self.net.load_state_dict(state, strict=True)
        self.desc = {"kind": self.kind}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 255.0
        return self.net((x - self.mean) / self.std)


class OpenClipEncoder(FrozenEncoder):
    """An open_clip image tower; features are unit-normalised embeddings, as the CLIP labeler uses them."""

    kind = "open_clip"

    def __init__(self, model_cfg: Mapping[str, Any], preprocess_cfg: Mapping[str, Any] | None = None,
                 local_dir: str = ""):
        super().__init__()
        from robot_pref.reward.models import ModelSpec, clip_encoder

        name = f"robot-pref-encoder-{hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:8]}"
        spec = ModelSpec(type="clip-head", clip_model=f"local-dir:{local_dir}" if local_dir else name,
                         clip_pretrained=None, clip_model_config=dict(model_cfg))
        self.visual = clip_encoder(spec)
        cfg = dict(preprocess_cfg or self.visual.preprocess_cfg)
        self.image_size = tuple(self.visual.image_size) if isinstance(self.visual.image_size, (tuple, list)) \
            else (self.visual.image_size,) * 2
        self.dim = int(self.visual.output_dim)
        self.desc = {"kind": self.kind, "model_cfg": dict(model_cfg),
                     "preprocess_cfg": {"mean": list(cfg["mean"]), "std": list(cfg["std"])}}
        self.register_buffer("mean", torch.tensor(cfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg["std"], dtype=torch.float32).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    @classmethod
    def from_dir(cls, path: str) -> "OpenClipEncoder":
        folder = Path(path).expanduser()
        config = folder / "open_clip_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has no open_clip_config.json; open_clip:DIR needs a local folder "
                                    "with open_clip_config.json and its weights (open_clip_model.safetensors)")
        cfg = json.loads(config.read_text())
        return cls(cfg["model_cfg"], cfg.get("preprocess_cfg"), local_dir=str(folder.resolve()))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(frames.permute(0, 3, 1, 2).float() / 255.0, size=self.image_size, mode="bicubic",
                          align_corners=False, antialias=True)
        return F.normalize(self.visual((x - self.mean) / self.std).float(), dim=-1)


class RewardEncoder(FrozenEncoder):
    """The fitted reward model's image trunk: each CNN member's conv features, concatenated; or its CLIP
    features (a clip-head reward model)."""

    kind = "reward"

    def __init__(self, spec: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        from robot_pref.reward.models import ModelSpec, RewardModel

        spec = dict(spec)
        if spec["type"] == "resnet18":
            raise ValueError("a resnet18 reward model has no separable trunk here; encode with --encoder resnet18")
        # rebuilt from the spec alone: the weights (CLIP tower included) come from the state dict
        self.model = RewardModel(ModelSpec(**{**spec, "clip_pretrained": None, "extra": {}}))
        if state is not None:
            self.model.load_state_dict(state, strict=spec["type"] != "clip-head")
        self.model.eval().requires_grad_(False)
        ms = self.model.spec
        self.size = (ms.height, ms.width)
        if self.model.image_input:
            with torch.no_grad():
                self.dim = int(self._trunk(torch.zeros(1, 3, *ms.input_size)).shape[1])
        else:
            self.dim = int(self.model.encoder.output_dim)
        self.desc = {"kind": self.kind, "spec": {k: v for k, v in spec.items() if k != "extra"}}

    @classmethod
    def from_dir(cls, path: str) -> "RewardEncoder":
        from robot_pref.reward.models import load_reward_model

        model = load_reward_model(path, device="cpu")
        return cls(dataclasses.asdict(model.spec), model.state_dict())

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        ens = self.model.ensemble
        trunk = ens.template[:-2]  # drop the member's linear head and its output squashing
        names = [n for n in ens.names if n.split(".", 1)[0] in {str(i) for i in range(len(trunk))}]
        outs = [functional_call(trunk, {n: ens.params[n.replace(".", "-")][i] for n in names}, (x,))
                for i in range(ens.size)]
        return torch.cat(outs, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[1:3]) != self.size:
            raise ValueError(f"the reward encoder was fitted on {self.size[0]}x{self.size[1]} frames, got "
                             f"{frames.shape[1]}x{frames.shape[2]}; encode the frames key of that size")
        inputs = self.model.inputs(frames.cpu()).to(frames.device)
        if not self.model.image_input:
            return inputs
        if self.model.spec.augment == "crop":  # the centre crop the reward model evaluates on
            inputs = self.model._augment(inputs, train=False)
        return self._trunk(inputs.float() / 255.0 - 0.5)


def load_encoder(ref: str) -> FrozenEncoder:
    """The encoder a ``--encoder`` reference names (see the module docstring), on the CPU, frozen."""
    kind, _, arg = ref.partition(":")
    if kind == "resnet18":
        return ResNet18Encoder(arg)
    if kind == "reward" and arg:
        return RewardEncoder.from_dir(arg)
    if kind == "open_clip" and arg:
        return OpenClipEncoder.from_dir(arg)
    raise ValueError(f"unknown encoder {ref!r}; choose one of {ENCODERS} (no weights are downloaded)")


def build_encoder(desc: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> FrozenEncoder:
    """Rebuild a checkpoint's encoder from its description and weights (no files needed)."""
    kind = desc["kind"]
    if kind == "resnet18":
        enc: FrozenEncoder = ResNet18Encoder()
    elif kind == "open_clip":
        enc = OpenClipEncoder(desc["model_cfg"], desc["preprocess_cfg"])
    elif kind == "reward":
        enc = RewardEncoder(desc["spec"])
    else:
        raise ValueError(f"checkpoint names an unknown encoder kind {kind!r}")
    enc.load_state_dict(dict(state))
    return enc.eval().requires_grad_(False)


def feature_key(frame_key: str, encoder: FrozenEncoder) -> str:
    """``agentview_84`` + a resnet18 -> ``agentview_84.resnet18-1a2b3c4d`` (under ``features/``)."""
    return f"{frame_key}.{encoder.tag}"


def encode_features(cfg) -> dict[str, Any]:
    """Encode every not-yet-encoded episode of ``cfg.cameras``' frames into ``features/`` (resumable per
    episode: a killed run keeps the episodes it wrote, the rerun encodes the rest only)."""
    from tqdm.auto import tqdm

    from robot_pref.data.dataset import DatasetError, TrajectoryDataset
    from robot_pref.rl.checkpoint import resolve_device

    if not cfg.dataset:
        raise ValueError("no dataset: pass --dataset PATH.zarr")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cameras = [c.removeprefix("frames/") for c in cfg.cameras]
    if cfg.render:
        _render_missing(cfg.dataset, cameras)
    ds = TrajectoryDataset.open(cfg.dataset, mode="a")
    for cam in cameras:
        if cam not in ds.frame_keys:
            raise DatasetError(f"{ds.path} has no frames {cam!r} (frames: {ds.frame_keys}); render them first "
                               f"(robot-pref render --dataset {ds.path} --camera NAME --size N)")
        missing = int((~ds.rendered_episodes(cam)).sum())
        if missing:
            raise DatasetError(f"frames/{cam}: {missing} of {ds.n_episodes} episodes are not rendered; run "
                               f"`robot-pref render --dataset {ds.path}` for that camera first")
    device = resolve_device(cfg.device)
    encoder = load_encoder(cfg.encoder).to(device)
    attrs = {"encoder": cfg.encoder, "tag": encoder.tag, "dim": encoder.dim}
    written: dict[str, Any] = {}
    for cam in cameras:
        key = feature_key(cam, encoder)
        if cfg.overwrite and key in ds.feature_keys:
            ds.delete(f"features/{key}")
        todo = np.flatnonzero(~ds.encoded_episodes(key))
        for e in tqdm(todo, desc=f"encode {cam}", unit="episode"):
            frames = ds.get(f"frames/{cam}", ds.episode_slice(int(e)))
            with torch.no_grad():
                ds.write_episode_features(key, int(e), encoder.encode(frames, cfg.batch_size), attrs)
        written[cam] = {"key": f"features/{key}", "encoded_now": len(todo), "dim": encoder.dim}
    log.info("encoded %s with %s", list(written), cfg.encoder)
    return {"dataset": ds.path, "encoder": cfg.encoder, "tag": encoder.tag, "features": written}


def _render_missing(dataset: str, cameras: list[str]) -> None:
    from robot_pref.data.dataset import TrajectoryDataset
    from robot_pref.render.render import RenderConfig, render_dataset

    ds = TrajectoryDataset.open(dataset)
    for key in cameras:
        if key in ds.frame_keys and ds.rendered_episodes(key).all():
            continue
        camera, _, size = key.rpartition("_")
        if not camera or not size.isdigit():
            raise ValueError(f"cannot render {key!r}: expected a square frames key CAMERA_SIZE (agentview_84)")
        render_dataset(RenderConfig(dataset=dataset, camera=camera, size=int(size)))


def encode_inputs(train_cfg, reward_dir: str, dataset: str):
    """A pipeline policy's (train config, encode config or None): a spec reading cameras through a frozen
    encoder needs its features cached first; ``encoder: reward`` means the run's fitted reward model."""
    from robot_pref.data.dataset import frame_key
    from robot_pref.rl.config import EncodeConfig
    from robot_pref.rl.obs_spec import ObsSpec

    if not train_cfg.obs:
        return train_cfg, None
    spec = ObsSpec.parse(train_cfg.obs)
    if spec.privileged or spec.end_to_end or not spec.cameras:
        return train_cfg, None
    encoder = f"reward:{reward_dir}" if spec.encoder == "reward" else spec.encoder
    train_cfg = dataclasses.replace(train_cfg, obs={**train_cfg.obs, "encoder": encoder})
    cameras = tuple(c if c.rpartition("_")[2].isdigit() else frame_key(c, spec.size) for c in spec.cameras)
    return train_cfg, EncodeConfig(dataset=dataset, cameras=cameras, encoder=encoder, render=True,
                                   threads=train_cfg.threads)
