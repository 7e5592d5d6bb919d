"""Bradley-Terry training of a reward ensemble on preference-labeled frame pairs.

Reads top to bottom: labels -> targets -> train/validation split -> cached inputs -> the losses
(Bradley-Terry, the flip-rate estimate, the progress regression) -> the training loop with early
stopping -> `fit` (all of it on one dataset) -> `fit_reward` (the CLI step: files in, checkpoint +
evaluation out).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from typing import Any
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.reward.config import SOURCES, FitRewardConfig
from robot_pref.reward.models import (SPEC_FILE, WEIGHTS_FILE, ModelSpec, RewardModel, autocast, default_device,
                                      save_reward_model)
from robot_pref.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- labels
@dataclass
class Pairs:
    """Labeled pairs as training targets: y = P(b better) = 0 (a better), 1 (b better), 0.5 (tie).

    ``a``/``b``: frame indices (N,) from `make_pairs`, or (N, S) clips once `fit` expands each side to the
    segment the labeler was shown; a clip scores the sum of its frames' rewards. ``w``: loss weight per
    pair (its label source's); ``pa``/``pb``: the progress (0..1) a progress labeler reported for each
    side, NaN where none."""

    a: np.ndarray
    b: np.ndarray
    y: np.ndarray  # float32
    w: np.ndarray | None = None  # float32, default 1
    pa: np.ndarray | None = None  # float32, default NaN
    pb: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.a)
        self.w = np.ones(n, np.float32) if self.w is None else np.asarray(self.w, np.float32)
        self.pa = np.full(n, np.nan, np.float32) if self.pa is None else np.asarray(self.pa, np.float32)
        self.pb = np.full(n, np.nan, np.float32) if self.pb is None else np.asarray(self.pb, np.float32)

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, idx: np.ndarray) -> "Pairs":
        return Pairs(self.a[idx], self.b[idx], self.y[idx], self.w[idx], self.pa[idx], self.pb[idx])

    @property
    def decided(self) -> "Pairs":
        """Pairs with a strict preference (what accuracy is measured on)."""
        return self.subset(self.y != 0.5)


def make_pairs(index_a, index_b, label, ties: str = "drop", weight=None, progress_a=None, progress_b=None) -> Pairs:
    """Labels {0, 1, -1} -> targets. Ties are dropped (RL-VLM-F) or kept as a soft 0.5 (B-Pref / Uni-RLHF).
    ``weight``, ``progress_a``, ``progress_b``: optional per-label columns carried along (see `Pairs`)."""
    a, b, label = (np.asarray(x) for x in (index_a, index_b, label))
    if not np.isin(label, (0, 1, -1)).all():
        raise ValueError(f"labels must be 0 (a better), 1 (b better) or -1 (tie), got {sorted(set(label.tolist()))}")
    if ties not in ("drop", "soft"):
        raise ValueError(f"ties must be 'drop' or 'soft', got {ties!r}")
    keep = (label != -1) & (a != b) if ties == "drop" else np.ones(len(label), bool)
    y = np.where(label == -1, 0.5, label).astype(np.float32)
    pick = lambda x: None if x is None else np.asarray(x)[keep]  # noqa: E731
    return Pairs(a[keep].astype(np.int64), b[keep].astype(np.int64), y[keep], pick(weight), pick(progress_a),
                 pick(progress_b))


def source_weights(source: np.ndarray | None, weights: dict[str, float], n: int) -> np.ndarray:
    """Per-label loss weights from the label table's ``source`` column (e.g. human answers higher in a
    hybrid run); unlisted sources, and tables without the column, weigh 1."""
    unknown = sorted(set(weights) - set(SOURCES))
    if unknown:
        raise ValueError(f"fit_reward.source_weights names unknown sources {unknown}; label sources are "
                         f"{list(SOURCES)} (the label table's 'source' column)")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"fit_reward.source_weights must be finite numbers >= 0, got {bad}")
    w = np.ones(n, np.float32)
    if source is not None:
        source = np.asarray(source).astype(str)
        for name, value in weights.items():
            w[source == name] = value
    return w


def parse_label_noise(value: str) -> float | None:
    """``label_noise`` as a fixed flip rate, or None for 'auto' (estimated from the labels)."""
    if str(value).strip().lower() == "auto":
        return None
    try:
        eps = float(value)
    except ValueError:
        raise ValueError(f"label_noise must be a flip rate in [0, 0.5) or 'auto', got {value!r}") from None
    if not 0 <= eps < 0.5:
        raise ValueError(f"label_noise must be a flip rate in [0, 0.5) or 'auto', got {value!r}")
    return eps


def split_pairs(pairs: Pairs, val_fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_val = int(round(val_fraction * len(pairs)))
    return pairs.subset(order[n_val:]), pairs.subset(order[:n_val])


# ---------------------------------------------------------------------------------------- inputs
class InputCache:
    """Inputs of the trained part (pixels, or frozen CLIP features) for the labeled frames.

    Frames are read from the dataset in batches once and kept in memory when they fit in ``cache_mb``
    (CLIP features always do: the encoder runs once per frame); otherwise each batch is read again.
    """

    def __init__(self, model: RewardModel, ds: TrajectoryDataset, frame_key: str, indices: np.ndarray,
                 cache_mb: float = 4096, batch_size: int = 512):
        self.model, self.ds, self.key = model, ds, f"frames/{frame_key}"
        self.index = np.unique(np.asarray(indices, dtype=np.int64))
        per_frame = 4 * 1024 if not model.image_input else 3 * model.spec.height * model.spec.width
        self.values = None
        if not model.image_input or len(self.index) * per_frame <= cache_mb * 2**20:
            chunks = [model.inputs(ds.get(self.key, self.index[i : i + batch_size]))
                      for i in tqdm(range(0, len(self.index), batch_size), desc="reading frames", leave=False)]
            self.values = torch.cat(chunks).to(model.device) if chunks else None  # on the GPU when there is one

    def __call__(self, frame_indices: np.ndarray) -> torch.Tensor:
        """Inputs of frames of any index shape (e.g. (K, B)) -> (*shape, ...)."""
        flat = np.asarray(frame_indices).reshape(-1)
        if self.values is not None:
            x = self.values[torch.from_numpy(np.searchsorted(self.index, flat)).to(self.values.device)]
        else:
            x = self.model.inputs(self.ds.get(self.key, flat))
        return x.reshape(tuple(np.shape(frame_indices)) + tuple(x.shape[1:]))


# ---------------------------------------------------------------------------------------- loss
def preference_loss(r_a: torch.Tensor, r_b: torch.Tensor, y: torch.Tensor, label_noise: float = 0.0,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry cross-entropy on the logits [r(a), r(b)], optionally noise-aware.

        P(b > a)  = exp r_b / (exp r_a + exp r_b) = sigma(r_b - r_a)            (Bradley-Terry)
        P~(b > a) = (1 - eps) sigma(r_b - r_a) + eps (1 - sigma(r_b - r_a))     (labels flipped w.p. eps)
        loss      = -[y log P~(b > a) + (1 - y) log P~(a > b)]                  (y = 0.5 for a soft tie)

    With eps = 0 this is the plain cross-entropy; with eps > 0 a confidently "wrong" label costs at
    most -log eps, so the few flipped labels cannot dominate the fit. Returns the per-row mean, each
    pair's term times ``weight`` if given.
    """
    d = r_b - r_a
    keep, flip = math.log1p(-label_noise), (math.log(label_noise) if label_noise > 0 else -math.inf)
    log_p_b = torch.logaddexp(keep + F.logsigmoid(d), flip + F.logsigmoid(-d))
    log_p_a = torch.logaddexp(keep + F.logsigmoid(-d), flip + F.logsigmoid(d))
    nll = -(y * log_p_b + (1 - y) * log_p_a)
    return (nll if weight is None else nll * weight).mean(-1)


NOISE_GRID = np.round(np.arange(0.0, 0.451, 0.005), 3)  # candidate flip rates
TEMPERATURE_GRID = np.geomspace(0.05, 20.0, 41)  # candidate scales of the reward difference


def estimate_label_noise(d: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """The flip rate eps that best explains held-out labels ``y`` given the model's reward differences
    ``d`` = r(b) - r(a): argmax over eps of max over a temperature t of

        sum_i w_i log[(1 - eps) sigma(t d_i) + eps sigma(-t d_i)]   (for y_i = 1; mirrored for y_i = 0)

    with w_i the pair's source weight (default 1), the same weighting as the training loss, so a source
    weighted 0 does not set the flip rate the others are trained with.

    The temperature absorbs a miscalibrated scale (an unsure model is explained by a small t, not by
    flips), so eps measures the labels the model contradicts confidently: the flip-rate plateau of the
    noise-aware Bradley-Terry model. Grid search over `NOISE_GRID` x `TEMPERATURE_GRID` (cheap: a few
    thousand held-out pairs); ties go to the smaller eps."""
    d, y = np.asarray(d, np.float64), np.asarray(y, np.float64)
    w = np.ones_like(d) if weight is None else np.asarray(weight, np.float64)
    if len(d) == 0 or w.sum() <= 0:
        return 0.0
    z = TEMPERATURE_GRID[:, None] * d[None] / (np.std(d) + 1e-8)  # (T, N), scale-free in r
    log_s, log_1ms = -np.logaddexp(0, -z), -np.logaddexp(0, z)  # log sigma(z), log sigma(-z)
    keep, flip = np.log1p(-NOISE_GRID)[:, None, None], np.log(np.maximum(NOISE_GRID, 1e-300))[:, None, None]
    log_p_b = np.logaddexp(keep + log_s, flip + log_1ms)  # (E, T, N)
    log_p_a = np.logaddexp(keep + log_1ms, flip + log_s)
    loglik = (w * (y * log_p_b + (1 - y) * log_p_a)).sum(-1).max(-1)  # (E,): best temperature per eps
    return float(NOISE_GRID[int(np.argmax(loglik > loglik.max() - 1e-9))])


def progress_loss(r: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Regression of rewards ``r`` (K, N) on reported progress ``p`` (K, N; NaN = none): per member, the
    mean squared error of the best non-decreasing affine map of r to p (least squares within the batch),
    relative to var(p), i.e. 1 - corr(r, p)^2 where the correlation is positive and 1 otherwise. Free in
    the reward's offset and scale, which Bradley-Terry leaves free too. Summed over members; 0 for a
    member with fewer than 3 progress frames in the batch."""
    m = torch.isfinite(p).to(r.dtype)
    n = m.sum(-1)
    p = torch.nan_to_num(p)
    mean = lambda x: (m * x).sum(-1) / n.clamp(min=1)  # noqa: E731
    rc, pc = r - mean(r)[:, None], p - mean(p)[:, None]
    cov, var_r, var_p = mean(rc * pc), mean(rc * rc), mean(pc * pc)
    loss = 1 - F.relu(cov).square() / (var_r * var_p + 1e-8)
    return torch.where((n >= 3) & (var_p > 0), loss, torch.zeros_like(loss)).sum()


def clip_rewards(model: RewardModel, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Rewards (K, N) of N clips ``x`` ((N, S, *input) shared, or (K, N, S, *input) per member) as the sum of
    their S frames' rewards, the B-Pref / Preference Transformer segment return; a frame is a clip of one."""
    axis = x.ndim - (3 if model.image_input else 1) - 1  # the clip axis, before the per-frame input dims
    n, s = x.shape[axis - 1], x.shape[axis]
    r = model(x.reshape(x.shape[: axis - 1] + (n * s,) + x.shape[axis + 1 :]), **kwargs)  # (K, N*S)
    return r.view(r.shape[0], n, s).sum(-1)


@torch.no_grad()
def pair_rewards(model: RewardModel, inputs: InputCache, pairs: Pairs,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member rewards (K, N) of both sides of ``pairs`` (eval mode, no augmentation)."""
    model.eval()
    ra, rb = [], []
    for i in range(0, len(pairs), batch_size):
        with autocast(model.device):
            ra.append(clip_rewards(model, inputs(pairs.a[i : i + batch_size])).cpu())
            rb.append(clip_rewards(model, inputs(pairs.b[i : i + batch_size])).cpu())
    k = model.spec.ensemble
    cat = lambda xs: torch.cat(xs, 1) if xs else torch.zeros(k, 0)  # noqa: E731
    return cat(ra), cat(rb)


def validate(model: RewardModel, inputs: InputCache, pairs: Pairs, label_noise: float | None) -> dict[str, float]:
    """Loss and preference accuracy of the ensemble mean on held-out pairs (ties excluded from accuracy),
    both weighted by each pair's source weight like the training loss, so early stopping and the best
    epoch follow the sources the fit trusts (a source weighted 0 does not count); with ``label_noise``
    None, also the flip rate estimated from them (`estimate_label_noise`), which the loss then uses."""
    ra, rb = pair_rewards(model, inputs, pairs)
    ra, rb, y, w = ra.mean(0), rb.mean(0), torch.from_numpy(pairs.y), torch.from_numpy(pairs.w)
    decided = (y != 0.5) & (w > 0)
    correct = ((rb > ra) == (y > 0.5)).float()
    acc = ((w * correct)[decided].sum() / w[decided].sum()).item() if decided.any() else float("nan")
    eps = estimate_label_noise((rb - ra).numpy(), pairs.y, pairs.w) if label_noise is None else label_noise
    loss = preference_loss(ra, rb, y, eps, w / w.mean()).item() if w.sum() > 0 else float("nan")  # weighted mean
    return {"loss": loss, "accuracy": acc, "label_noise": eps}


# ---------------------------------------------------------------------------------------- training loop
def train(model: RewardModel, inputs: InputCache, train_pairs: Pairs, val_pairs: Pairs, cfg: FitRewardConfig,
          progress: bool = True, tracker: Tracker | None = None) -> list[dict]:
    """Adam on the summed per-member BT loss (each pair weighted by its source's weight; + ``output_l2``
    * mean r^2; + ``progress_weight`` * `progress_loss` where progress was reported); each member sees
    its own shuffle of the training pairs. With ``label_noise: auto`` the flip rate starts at 0 and is
    re-estimated from the validation pairs after every epoch (`estimate_label_noise`), an EM-style
    alternation that never reads the labeler's settings.

    Early stopping on validation accuracy (loss breaks ties); the best weights are restored.
    Returns the per-epoch history (also logged per epoch to ``tracker``).
    """
    tracker = tracker or Tracker()
    if len(train_pairs) < 2:
        raise ValueError(f"only {len(train_pairs)} usable training pairs; label more pairs (ties are dropped "
                         "with --ties drop) or lower --val-fraction")
    fixed_noise = parse_label_noise(cfg.label_noise)
    if fixed_noise is None and not len(val_pairs):
        raise ValueError("label_noise: auto estimates the flip rate on held-out pairs; set val_fraction > 0 "
                         "or give a number")
    noise = 0.0 if fixed_noise is None else fixed_noise
    device = model.device
    k = model.spec.ensemble
    batch = cfg.batch_size or (32 if model.spec.type == "resnet18" else 64)
    batch = min(batch, len(train_pairs))
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.Adam(model.ensemble.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    y_all, w_all = torch.from_numpy(train_pairs.y), torch.from_numpy(train_pairs.w)
    p_all = torch.from_numpy(np.concatenate([train_pairs.pa, train_pairs.pb]))  # sides a then b
    regress = cfg.progress_weight > 0
    best, best_state, bad, history = None, None, 0, []
    steps = len(train_pairs) // batch
    bar = tqdm(range(cfg.epochs), desc=f"fit {model.spec.type} x{k}", disable=not progress)
    for epoch in bar:
        model.train()
        order = np.stack([rng.permutation(len(train_pairs)) for _ in range(k)])  # (K, N)
        t0, losses = time.perf_counter(), []
        for s in range(steps):
            idx = order[:, s * batch : (s + 1) * batch]  # (K, B): member k's minibatch
            x = torch.cat([inputs(train_pairs.a[idx]), inputs(train_pairs.b[idx])], dim=1)  # (K, 2B, S, ...)
            with autocast(device):
                r = clip_rewards(model, x, per_member=True, augment=True)  # (K, 2B)
            loss = preference_loss(r[:, :batch], r[:, batch:], y_all[idx].to(device), noise,
                                   w_all[idx].to(device)).sum()
            loss = loss + cfg.output_l2 * r.square().mean(-1).sum()  # BT is shift-invariant: pin r near 0
            if regress:
                p = p_all[np.concatenate([idx, idx + len(train_pairs)], axis=1)].to(device)  # (K, 2B) as r
                loss = loss + cfg.progress_weight * progress_loss(r.float(), p)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())  # no per-step .item(): it would sync the GPU every step
        row = {"epoch": epoch, "train_loss": torch.stack(losses).mean().item() / k,
               "pairs_per_s": steps * batch / (time.perf_counter() - t0)}  # each member trains on as many
        if len(val_pairs):
            val = validate(model, inputs, val_pairs, fixed_noise)
            row.update(val_loss=val["loss"], val_accuracy=val["accuracy"], label_noise=noise)
            score = (np.nan_to_num(val["accuracy"], nan=0.0), -val["loss"])
            if best is None or score > best:
                best, best_state, bad = score, copy.deepcopy(model.ensemble.state_dict()), 0
                best_epoch = epoch
            else:
                bad += 1
            noise = val["label_noise"]  # auto: the estimate from this epoch's model, used in the next
        history.append(row)
        tags = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "val/accuracy",
                "pairs_per_s": "perf/pairs_per_s", "label_noise": "train/label_noise"}
        tracker.scalars({tags[k_]: v for k_, v in row.items() if k_ in tags} | {"lr": cfg.lr}, epoch)
        bar.set_postfix({k_: f"{v:.3f}" for k_, v in row.items() if k_ in ("train_loss", "val_accuracy")})
        if bad >= cfg.patience:
            break
    if best_state is not None:
        model.ensemble.load_state_dict(best_state)
        history[best_epoch]["best"] = True
    return history


# ---------------------------------------------------------------------------------------- fit
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return default_device()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no GPU; use --device auto or cpu")
    return torch.device(name)


def build_model(cfg: FitRewardConfig, ds: TrajectoryDataset) -> RewardModel:
    """A fresh model for frames ``cfg.camera`` of ``ds``, configured from ``cfg``."""
    if cfg.camera not in ds.frame_keys:
        raise DatasetError(f"{ds.path} has no frames {cfg.camera!r} (has {ds.frame_keys}); render them with "
                           f"`robot-pref render --dataset {ds.path}` or pick --camera from that list")
    _, h, w, _ = ds.shape(f"frames/{cfg.camera}")
    clip_config = None
    if cfg.model == "clip-head" and cfg.clip_config:
        clip_config = json.loads(Path(cfg.clip_config).read_text())
    pretrained = None if cfg.clip_pretrained.lower() in ("", "none") else cfg.clip_pretrained
    spec = ModelSpec(type=cfg.model, ensemble=cfg.ensemble, head=cfg.head, height=h, width=w, augment=cfg.augment,
                     pad=cfg.pad, crop=cfg.crop, clip_model=cfg.clip_model, clip_pretrained=pretrained,
                     clip_model_config=clip_config, extra={"camera": cfg.camera})
    return RewardModel(spec, seed=cfg.seed).to(resolve_device(cfg.device))


def check_rendered(ds: TrajectoryDataset, frame_key: str, indices: np.ndarray) -> None:
    """Labels must point at rendered frames (unrendered rows are all-black fill)."""
    indices = np.asarray(indices)
    if len(indices) and (indices.min() < 0 or indices.max() >= ds.n_frames):
        raise DatasetError(f"labels reference frames {indices.min()}..{indices.max()} but {ds.path} has "
                           f"{ds.n_frames}; the labels belong to another dataset")
    missing = ~ds.rendered_episodes(frame_key)[ds.episode_of(indices)]
    if missing.any():
        raise DatasetError(f"{missing.sum()} labeled frames lie in episodes without rendered {frame_key!r} frames; "
                           f"run `robot-pref render --dataset {ds.path}` first")


def usable_pairs_warning(counts: dict[str, int], min_pairs: int) -> str | None:
    """A sentence when ties, abstentions and failed answers leave fewer than ``min_pairs`` pairs to fit on."""
    usable = counts["train_pairs"] + counts["val_pairs"]
    if usable >= min_pairs:
        return None
    lost = [f"{counts['labels'] - usable} of {counts['labels']} labels were ties or abstentions"]
    if counts.get("failed"):
        lost.append(f"{counts['failed']} more pairs got no label (failed, unparsable or skipped)")
    return (f"only {usable} usable labelled pairs (fewer than min_pairs={min_pairs}): {'; '.join(lost)}; the "
            "reward model is fit on too little to trust. Label more pairs, or lower the abstentions "
            "(e.g. --ties soft, a less strict prompt)")


def fit(ds: TrajectoryDataset, index_a, index_b, label, cfg: FitRewardConfig, progress: bool = True,
        tracker: Tracker | None = None, failed: int = 0, segment: int = 1,
        segment_stride: int = 1, extra: dict[str, np.ndarray] | None = None) -> tuple[RewardModel, dict]:
    """Split, train and evaluate a reward ensemble on labeled pairs of ``ds``. Returns (model, report);
    ``failed`` (pairs that got no label: failed, unparsable, skipped) only enters the warnings. With
    ``segment`` > 1 each labeled index stands for the clip of that many frames ending at it (every
    ``segment_stride`` steps, as the labeler was shown), scored as the sum of its frames' rewards.
    ``extra``: the label table's optional columns: ``source`` (for ``source_weights``) and
    ``progress_a``/``progress_b`` (for ``progress_weight``)."""
    from robot_pref.feedback.labelers import clip_indices
    from robot_pref.reward.evaluation import evaluate

    extra = extra or {}
    weight = source_weights(extra.get("source"), cfg.source_weights, len(np.asarray(label)))
    if cfg.progress_weight > 0 and not ("progress_a" in extra and np.isfinite(extra["progress_a"]).any()):
        raise ValueError("progress_weight > 0 needs per-frame progress in the labels (progress_a/progress_b "
                         "columns, written by `robot-pref label --labeler progress`); set progress_weight: 0")
    if cfg.progress_weight > 0 and segment > 1:
        raise ValueError("progress_weight regresses frame rewards on frame progress; segment labels have none")
    pairs = make_pairs(index_a, index_b, label, cfg.ties, weight, extra.get("progress_a"), extra.get("progress_b"))
    clip = lambda index: clip_indices(ds, index, segment, segment_stride)  # noqa: E731  (N,) -> (N, segment)
    pairs = dataclasses.replace(pairs, a=clip(pairs.a), b=clip(pairs.b))
    check_rendered(ds, cfg.camera, np.concatenate([pairs.a.ravel(), pairs.b.ravel()]))
    label = np.asarray(label)
    counts = {"labels": int(len(label)), "ties": int((label == -1).sum()), "failed": int(failed),
              "segment": int(segment)}
    if "source" in extra:
        counts["sources"] = {str(k): int(v) for k, v in zip(*np.unique(np.asarray(extra["source"]).astype(str),
                                                                        return_counts=True))}
    train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    model = build_model(cfg, ds)
    inputs = InputCache(model, ds, cfg.camera, np.concatenate([pairs.a.ravel(), pairs.b.ravel()]), cfg.cache_mb)
    counts.update(train_pairs=len(train_pairs), val_pairs=len(val_pairs))
    warnings = [w for w in [usable_pairs_warning(counts, cfg.min_pairs)] if w]
    for warning in warnings:  # before training: the training may fail on too few pairs
        log.warning("%s", warning)
    history = train(model, inputs, train_pairs, val_pairs, cfg, progress, tracker)
    model.spec.extra.update(counts=counts, config=asdict(cfg))
    best = next((row for row in history if row.get("best")), history[-1])
    report = {"counts": counts, "warnings": warnings, "epochs": len(history), "history": history,
              "label_noise": best.get("label_noise", parse_label_noise(cfg.label_noise)),  # auto: as estimated
              **evaluate(model, ds, cfg.camera, val_pairs, cfg.eval_frames)}
    return model.eval(), report


def fit_reward(cfg: FitRewardConfig) -> dict:
    """`robot-pref fit-reward`: labels directory -> checkpoint + eval.json + eval.png in ``cfg.out``."""
    from robot_pref.feedback import load_labels
    from robot_pref.reward.evaluation import format_report, plot_episodes

    out = Path(cfg.out)
    if (out / WEIGHTS_FILE).exists() and not cfg.overwrite:
        raise ValueError(f"{out} already holds a reward model; pass --overwrite to replace it or choose another --out")
    ds = TrajectoryDataset.open(cfg.dataset)
    labels = load_labels(cfg.labels)
    run_file = Path(cfg.labels) / "label_run.json"  # the label run's counts: failed answers are not labels
    label_run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    label_counts, shown = label_run.get("counts", {}), label_run.get("settings", {})  # what the labeler was shown
    with open_tracker(cfg.log, out, out.name, asdict(cfg)) as tracker:
        model, report = fit(ds, labels.index_a, labels.index_b, labels.label, cfg, tracker=tracker,
                            failed=sum(int(label_counts.get(k, 0)) for k in ("failed", "unparsable", "skipped")),
                            segment=int(shown.get("segment", 1)), segment_stride=int(shown.get("segment_stride", 1)),
                            extra=labels.extra)
        save_reward_model(model, out)
        report["plot"] = plot_episodes(model, ds, cfg.camera, out / "eval.png")
        tracker.scalars({f"eval/{k}": report[k] for k in ("val_accuracy", "val_true_order_accuracy", "spearman",
                                                          "pearson", "spearman_within_episode")
                         if isinstance(report.get(k), (int, float))}, report["epochs"])
        tracker.image("eval/learned_vs_true_reward", out / "eval.png", report["epochs"])
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"saved {out / WEIGHTS_FILE}, {out / SPEC_FILE}, {out / 'eval.json'}, {out / 'eval.png'}")
    return report
