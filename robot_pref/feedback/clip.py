"""CLIP labeler: prefer the frame whose open_clip embedding is closer to the goal text.

score(x) = cos(e(x), e(goal)), or with a baseline prompt the VLM-RM goal-baseline projection
(Rocamonde et al. 2023): R(x) = 1 - 1/2 ||(e(x) - g) P||^2, P = alpha d d^T / ||d||^2 + (1 - alpha) I,
d = g - b, on unit embeddings (alpha = 0 gives back the cosine). A score gap within ``margin``
answers -1. Frames are preprocessed in torch as one batch (resize shortest side, centre crop,
normalise) and scored in minibatches, on CUDA when the process sees one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from robot_pref.feedback.config import ClipConfig
from robot_pref.feedback.labelers import Labeler, Query
from robot_pref.feedback.store import ABSTAINED, LABELED, Answer

PREPROCESS_VERSION = "torch-bicubic/1"


def pick_device(requested: str) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--clip.device cuda, but this process sees no CUDA device (a Ray actor sees one only "
                         "when the cluster has GPUs); use --clip.device auto or cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def clip_actor_options(cfg: ClipConfig, cluster_gpus: float) -> dict:
    """A GPU share per actor when the cluster has GPUs (and the config allows one), else CPU only."""
    if cluster_gpus > 0 and cfg.device != "cpu":
        return {"num_cpus": 1, "num_gpus": cfg.gpu_fraction}
    if cfg.device == "cuda":
        raise ValueError("--clip.device cuda, but the Ray cluster has no GPUs; use --clip.device auto or cpu")
    return {"num_cpus": 1}


class ClipScorer:
    def __init__(self, cfg: ClipConfig, goal: str, device: str = "cpu"):
        import open_clip
        import torch

        if cfg.model_config:
            open_clip.add_model_config(cfg.model_config)
        torch.manual_seed(cfg.seed)  # only matters for random-init models
        pretrained = None if cfg.model.startswith("local-dir:") else (cfg.pretrained or None)
        self.model = open_clip.create_model(cfg.model, pretrained=pretrained, device=device).eval()
        self.device, self.batch_size = device, cfg.batch_size
        pp = self.model.visual.preprocess_cfg
        self.size = tuple(pp["size"]) if isinstance(pp["size"], (tuple, list)) else (pp["size"],) * 2
        self.mean = torch.tensor(pp["mean"], device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pp["std"], device=device).view(1, 3, 1, 1)
        tokenizer = open_clip.get_tokenizer(cfg.model)
        with torch.no_grad():
            text = [goal] + ([cfg.baseline] if cfg.baseline else [])
            emb = self.model.encode_text(tokenizer(text).to(device)).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
        self.goal = emb[0]
        self.projection = None
        if cfg.baseline:
            d = emb[0] - emb[1]
            d = d / d.norm()
            eye = torch.eye(len(d), device=device)
            self.projection = cfg.alpha * torch.outer(d, d) + (1 - cfg.alpha) * eye

    def preprocess(self, frames: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2).float() / 255
        h, w = x.shape[-2:]
        scale = max(self.size[0] / h, self.size[1] / w)  # shortest side to the model's size, then centre crop
        nh, nw = max(self.size[0], round(h * scale)), max(self.size[1], round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (nh - self.size[0]) // 2, (nw - self.size[1]) // 2
        x = x[..., top : top + self.size[0], left : left + self.size[1]]
        return (x - self.mean) / self.std

    def score(self, frames: np.ndarray) -> np.ndarray:
        """One goal score per uint8 (N, H, W, 3) frame."""
        import torch

        out = []
        with torch.no_grad():
            for s in range(0, len(frames), self.batch_size):
                e = self.model.encode_image(self.preprocess(frames[s : s + self.batch_size])).float()
                e = e / e.norm(dim=-1, keepdim=True)
                if self.projection is None:
                    out.append(e @ self.goal)
                else:
                    y = (e - self.goal) @ self.projection
                    out.append(1 - 0.5 * (y * y).sum(-1))
        return torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32)


class ClipLabeler(Labeler):
    type = "clip"
    remote = True

    def __init__(self, cfg: ClipConfig, goal: str, dataset=None):
        super().__init__(cfg, goal, dataset)
        self.chunk_size = max(1, cfg.batch_size // 2)  # pairs per call: one minibatch of frames
        self._scorer: ClipScorer | None = None

    @property
    def device(self) -> str:
        return pick_device(self.cfg.device)

    @property
    def scorer(self) -> ClipScorer:
        if self._scorer is None:  # loaded in the actor, not on the driver
            self._scorer = ClipScorer(self.cfg, self.goal, self.device)
        return self._scorer

    def settings(self) -> dict:
        c = self.cfg
        arch = hashlib.sha256(Path(c.model_config).read_bytes()).hexdigest() if c.model_config else ""
        return {"model": c.model, "pretrained": c.pretrained, "model_config_sha256": arch, "seed": c.seed,
                "baseline": c.baseline, "alpha": c.alpha if c.baseline else None, "margin": c.margin,
                "preprocess": PREPROCESS_VERSION}

    @classmethod
    def actor_options(cls, cfg: ClipConfig, workers: int, cluster_gpus: float) -> dict:
        return clip_actor_options(cfg, cluster_gpus)

    async def label(self, queries: list[Query]) -> list[Answer]:
        if not queries:
            return []
        scores = self.scorer.score(np.stack([q.frame_a for q in queries] + [q.frame_b for q in queries]))
        sa, sb = scores[: len(queries)], scores[len(queries):]
        out = []
        for q, a, b in zip(queries, sa.tolist(), sb.tolist()):
            tie = abs(b - a) <= self.cfg.margin
            out.append(q.answer(-1 if tie else int(b > a), ABSTAINED if tie else LABELED,
                                score_a=a, score_b=b, device=self.device))
        return out
