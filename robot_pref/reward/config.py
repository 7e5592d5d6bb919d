"""Typed configs of `robot-pref fit-reward` and `robot-pref relabel` (light: no torch import)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robot_pref.tracking import LogKind

SOURCES = ("vlm", "clip", "progress", "teacher", "human")  # values of a label table's 'source' column (hybrid)


@dataclass
class FitRewardConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset holding the frames"})
    labels: str = field(default="", metadata={"help": "labels directory written by `robot-pref label --out`"})
    camera: str = field(default="agentview_84", metadata={"help": "frame key (camera_size), e.g. agentview_84"})
    model: Literal["cnn", "resnet18", "clip-head"] = field(
        default="cnn", metadata={"help": "RL-VLM-F CNN, ResNet-18 (random init) or frozen CLIP + trained head"})
    head: Literal["tanh", "linear"] = field(default="tanh", metadata={
        "help": "output head: tanh (RL-VLM-F, r in [-1, 1]) or linear (unbounded; saturation-free, see docs/REWARD.md)"})
    output_l2: float = field(default=0.0, metadata={
        "help": "weight of a mean r^2 penalty: pins the offset and bounds the scale Bradley-Terry leaves free"})
    out: str = field(default="runs/reward", metadata={"help": "run directory: checkpoint, eval.json, eval.png"})
    ensemble: int = field(default=3, metadata={"help": "ensemble members trained together"})
    ties: Literal["drop", "soft"] = field(
        default="drop", metadata={"help": "tie labels (-1): drop them (RL-VLM-F) or train a 0.5 target (B-Pref)"})
    label_noise: str = field(default="0", metadata={
        "help": "label flip rate eps of the noise-aware Bradley-Terry loss: a number, or 'auto' = estimated from "
                "the labels (held-out likelihood of the validation pairs, re-estimated every epoch; docs/REWARD.md)"})
    source_weights: dict[str, float] = field(default_factory=dict, metadata={
        "help": "loss weight per label source (the label table's 'source' column, e.g. {human: 3}); unlisted "
                f"sources and tables without the column weigh 1; sources: {', '.join(SOURCES)}"})
    progress_weight: float = field(default=0.0, metadata={
        "help": "weight of a regression term fitting the reward (affine-calibrated per batch) to the per-frame "
                "progress a progress labeler reported (progress_a/progress_b columns); 0 = off"})
    augment: Literal["none", "shift", "crop"] = field(
        default="shift", metadata={"help": "image augmentation: random shift (pad+crop), random crop, none"})
    pad: int = field(default=4, metadata={"help": "shift augmentation: padding in pixels"})
    crop: int = field(default=76, metadata={"help": "crop augmentation: crop side (centre crop at test time)"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    batch_size: int = field(default=0, metadata={"help": "pairs per member per step; 0 = 64 (cnn/clip), 32 (resnet)"})
    epochs: int = field(default=200, metadata={"help": "maximum passes over the training pairs"})
    patience: int = field(default=20, metadata={"help": "epochs without validation improvement before stopping"})
    val_fraction: float = field(default=0.2, metadata={"help": "fraction of labeled pairs held out"})
    seed: int = field(default=0, metadata={"help": "seed of the split, initialisation and batches"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cuda or cpu"})
    clip_model: str = field(default="ViT-B-32",
                            metadata={"help": "open_clip model name, 'local-dir:/path' or 'hf-hub:org/repo'"})
    clip_pretrained: str = field(default="laion2b_s34b_b79k",
                                 metadata={"help": "open_clip weights tag for a plain model name; 'none' = random"})
    clip_config: str = field(default="", metadata={"help": "JSON file of an extra open_clip architecture to register"})
    cache_mb: int = field(default=4096, metadata={"help": "cache the labeled frames in memory up to this size"})
    eval_frames: int = field(default=20000, metadata={"help": "frames (whole episodes) used for correlations"})
    min_pairs: int = field(default=200, metadata={
        "help": "warn (log and eval.json) when ties, abstentions and failures leave fewer usable labelled pairs"})
    log: LogKind = field(default="none", metadata={
        "help": "training log: tensorboard (OUT/tensorboard) or wandb (WANDB_MODE=offline: OUT/wandb): losses, "
                "validation accuracy per epoch, the final correlations and eval.png"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing checkpoint in --out"})


@dataclass
class RelabelConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset to relabel (opened for writing)"})
    reward_model: str = field(default="", metadata={"help": "run directory of `robot-pref fit-reward`"})
    key: str = field(default="learned", metadata={"help": "name of the reward array: rewards/<key>"})
    camera: str = field(default="", metadata={"help": "frame key; empty = the one the model was trained on"})
    batch_size: int = field(default=256, metadata={"help": "frames per forward pass"})
    chunk_size: int = field(default=4096, metadata={"help": "frames per write: the unit of progress and resume"})
    workers: int = field(default=-1, metadata={
        "help": "Ray actors; -1 = one per GPU (in-process on CPU), 0 = in-process"})
    address: str = field(default="", metadata={"help": "Ray cluster address; empty = local"})
    device: str = field(default="auto", metadata={"help": "auto (cuda if present), cuda or cpu"})
    overwrite: bool = field(default=False, metadata={"help": "recompute rewards/<key> written by another model"})
