"""Configs of `robot-pref train` and `robot-pref compare` (no heavy imports: the CLI reads them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from robot_pref.tracking import LogKind


@dataclass
class TrainConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset to train on"})
    out: str = field(default="runs/train", metadata={"help": "run directory (rerunning with the same one resumes)"})
    algo: Literal["iql", "bc", "rwbc"] = field(default="iql", metadata={
        "help": "iql, bc, or rwbc (reward-weighted BC: AWR on the return-to-go of the reward, robot_pref.rl.rwbc)"})
    reward_key: str = field(default="", metadata={
        "help": "'true' = ground-truth reward (the oracle baseline), a learned reward under rewards/, or the "
                "trivial baselines 'zero' and 'constant:<learned key>' (its mean at every frame)"})
    steps: int = 100_000
    batch_size: int = 256
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda, cuda:1 ..."})
    obs_keys: tuple[str, ...] = field(default=("obs",), metadata={
        "help": "observation keys: low-dim arrays (obs) and/or frames (frames/agentview_84); ignored with --obs"})
    obs: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "observation spec (robot_pref.rl.obs_spec), as YAML: {preset: pixels} (proprioception + "
                "agentview and wrist cameras through a frozen encoder) or {preset: privileged} (the flat obs "
                "with object state: oracle baselines only), fields overriding the preset: proprio, cameras, "
                "size, encoder (reward:DIR | resnet18 | open_clip:DIR | conv = trained end to end), features, "
                "frame_stack; empty = obs_keys"})
    hidden: tuple[int, ...] = (256, 256)
    actor: Literal["gaussian", "deterministic"] = "gaussian"
    lr: float = 3e-4
    actor_lr: float = 3e-4
    gamma: float = 0.99
    expectile: float = 0.7
    beta: float = 3.0
    max_weight: float = 100.0
    polyak: float = 0.005
    rwbc_beta: float = field(default=1.0, metadata={
        "help": "rwbc: inverse temperature of exp(beta (z-scored return - V(s)))"})
    rwbc_max_weight: float = field(default=20.0, metadata={"help": "rwbc: weight clip (AWR's 20)"})
    obs_std_floor: float = field(default=0.1, metadata={"help": "floor on the obs std used for normalisation"})
    obs_clip: float = 10.0
    reward_normalize: Literal["none", "minmax", "standardize"] = "none"
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    image_feature_dim: int = 64
    image_shift: int = field(default=4, metadata={"help": "random-shift augmentation in pixels (0 = off)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the losses (pays off for long runs)"})
    cuda_graph: bool = field(default=True, metadata={
        "help": "on CUDA, replay the whole update as one CUDA graph (image observations too when their frames "
                "are on the GPU: --frames-on-device; eager on CPU)"})
    gradients: Literal["auto", "hand", "autograd"] = field(default="auto", metadata={
        "help": "auto: on CPU with low-dim observations the losses' gradients come from a hand-written backward "
                "(robot_pref.rl.hand_backward: autograd's values to float rounding, fewer ops), else from "
                "autograd; hand (refused where it cannot apply) or autograd pin one"})
    amp: Literal["none", "bf16"] = field(default="none", metadata={
        "help": "bf16: the losses' forward under bf16 autocast (backward and Adam stay fp32): the conv encoder "
                "of end-to-end image IQL runs on the GPU's tensor cores; none = fp32, bit-exact"})
    frames_on_device: Literal["auto", "true", "false"] = field(default="auto", metadata={
        "help": "end-to-end image training on CUDA: keep the uint8 frames on the GPU (batches gathered there, "
                "the update CUDA-graphed); auto = when they fit in half the free GPU memory, else stream them "
                "from the dataset (eager updates); true on a CPU device is an error"})
    threads: int = field(default=0, metadata={
        "help": "torch CPU threads; 0 = leave torch's choice (every core when alone, the cores Ray reserved "
                "for it as a pipeline stage); pin 1 on a machine busy with other work"})
    holdout: float = field(default=0.0, metadata={
        "help": "fraction of episodes left out of training (the same ones for every policy and seed), for "
                "offline evaluation on data without a simulator"})
    log_every: int = field(default=1000, metadata={"help": "log.csv row every N steps (0 = at the end only)"})
    save_every: int = field(default=10_000, metadata={"help": "last.pt every N steps (0 = at the end only)"})
    eval_every: int = field(default=0, metadata={"help": "evaluation rollouts every N steps (0 = off)"})
    eval_episodes: int = 10
    eval_workers: int = 1
    log: LogKind = field(default="none", metadata={
        "help": "training log: tensorboard (OUT/tensorboard) or wandb (WANDB_MODE=offline: OUT/wandb): losses, "
                "value statistics, learning rates, and with --eval-every success and a rollout video per evaluation"})
    overwrite: bool = field(default=False, metadata={"help": "start afresh even if OUT/last.pt exists"})


@dataclass
class CompareConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset every contender trains on"})
    out: str = field(default="runs/compare", metadata={"help": "one sub-directory per contender + compare.json/.md"})
    reward_key: str = field(default="", metadata={
        "help": "learned reward under rewards/ for the third contender (empty: only BC and the oracle)"})
    steps: int = 20_000
    seed: int = 0
    device: str = "auto"
    episodes: int = field(default=50, metadata={"help": "evaluation episodes per contender"})
    workers: int = field(default=1, metadata={"help": "evaluation Ray actors"})
    videos: int = 2
    train: dict = field(default_factory=dict, metadata={
        "help": "extra TrainConfig fields for every contender, as YAML (e.g. '{batch_size: 512}')"})


@dataclass
class EncodeConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset whose frames are encoded (written to)"})
    cameras: tuple[str, ...] = field(default=("agentview_84",), metadata={
        "help": "frame keys to encode (rendered first), comma separated: agentview_84,robot0_eye_in_hand_84"})
    encoder: str = field(default="resnet18", metadata={
        "help": "frozen encoder: reward:DIR (a fit-reward output), resnet18[:WEIGHTS.pt] (random or local "
                "weights), open_clip:DIR (local open_clip_config.json + weights); nothing is downloaded"})
    batch_size: int = 256
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda ..."})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's choice)"})
    render: bool = field(default=False, metadata={
        "help": "first render the cameras not rendered yet from the saved states (camera_SIZE keys)"})
    overwrite: bool = field(default=False, metadata={"help": "encode every episode again"})
