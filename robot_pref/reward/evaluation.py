"""How good is a learned reward: held-out preference accuracy, and, where the dataset has ground truth,
agreement with the true reward's ordering and correlation with it (all frames and within episodes).

Ground truth is read here explicitly (`ds.ground_truth`) and only for reporting, never for training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.reward.models import RewardModel
from robot_pref.reward.train import Pairs


def frame_rewards(model: RewardModel, ds: TrajectoryDataset, frame_key: str, indices: np.ndarray,
                  members: bool = False, batch_size: int = 256) -> np.ndarray:
    """r̂ of dataset frames, read in batches: (N,) ensemble mean, or (K, N) with ``members``."""
    indices = np.asarray(indices, dtype=np.int64)
    out = [model.predict_members(ds.get(f"frames/{frame_key}", indices[i : i + batch_size]), batch_size)
           for i in range(0, len(indices), batch_size)]
    r = np.concatenate(out, axis=1) if out else np.zeros((model.spec.ensemble, 0), np.float32)
    return r if members else r.mean(0)


def eval_episodes(ds: TrajectoryDataset, frame_key: str, max_frames: int, seed: int = 0) -> np.ndarray:
    """Rendered episodes to evaluate on: all when they fit in ``max_frames``, else a tier-balanced sample."""
    table = ds.episode_table()
    eps = np.flatnonzero(ds.rendered_episodes(frame_key))
    if table["length"][eps].sum() <= max_frames:
        return eps
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(eps[table["tier"][eps] == t])) for t in np.unique(table["tier"][eps])]
    chosen, frames = [], 0
    while any(queues) and frames < max_frames:
        for q in queues:
            if q and frames < max_frames:
                e = q.pop()
                chosen.append(e)
                frames += int(table["length"][e])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _corr(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan")
    return float(stats.spearmanr(x, y).statistic), float(stats.pearsonr(x, y).statistic)


def evaluate(model: RewardModel, ds: TrajectoryDataset, frame_key: str, val_pairs: Pairs,
             eval_frames: int = 20000) -> dict:
    """The numbers every fit reports (see the module docstring)."""
    val = val_pairs.decided
    clips = np.concatenate([val.a, val.b]).reshape(2 * len(val), -1)  # (2N, S): a frame is a clip of one
    r = frame_rewards(model, ds, frame_key, clips.ravel()).reshape(clips.shape).sum(-1)
    ra, rb = r[: len(val)], r[len(val) :]
    report: dict = {"val_decided_pairs": len(val),
                    "val_accuracy": (float(np.average((rb > ra) == (val.y > 0.5), weights=val.w))  # as `validate`
                                     if val.w.sum() > 0 else None)}
    if not ds.has_ground_truth("reward"):
        return report
    true = ds.ground_truth("reward")
    true_a, true_b = (true[c.reshape(len(val), -1)].sum(-1) for c in (val.a, val.b))  # segment returns
    strict = true_a != true_b
    true_b_better = true_b > true_a
    report["val_true_order_pairs"] = int(strict.sum())

    def agreement(b_better: np.ndarray) -> float | None:
        return float(np.mean(b_better[strict] == true_b_better[strict])) if strict.any() else None

    report["val_true_order_accuracy"] = agreement(rb > ra)
    report["label_agreement_with_truth"] = agreement(val.y > 0.5)
    eps = eval_episodes(ds, frame_key, eval_frames)
    slices = [ds.episode_slice(int(e)) for e in eps]
    idx = np.concatenate([np.arange(s.start, s.stop) for s in slices]) if slices else np.zeros(0, np.int64)
    pred = frame_rewards(model, ds, frame_key, idx)
    report["spearman"], report["pearson"] = _corr(pred, true[idx])
    within, offset = [], 0
    for s in slices:
        n = s.stop - s.start
        c = _corr(pred[offset : offset + n], true[s])
        offset += n
        if not np.isnan(c[0]):
            within.append(c)
    report["spearman_within_episode"] = float(np.mean([c[0] for c in within])) if within else None
    report["pearson_within_episode"] = float(np.mean([c[1] for c in within])) if within else None
    report["eval_episodes"], report["eval_frames"] = len(eps), len(idx)
    return report


def plot_episodes(model: RewardModel, ds: TrajectoryDataset, frame_key: str, path: str | Path,
                  per_tier: int = 2) -> str:
    """Learned reward (left axis) and true reward (right axis, if known) along a few episodes per tier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = ds.episode_table()
    rendered = ds.rendered_episodes(frame_key)
    tiers = sorted(set(table["tier"][rendered].tolist()))
    fig, axes = plt.subplots(len(tiers), per_tier, figsize=(4 * per_tier, 2.6 * len(tiers)), squeeze=False)
    true = ds.ground_truth("reward") if ds.has_ground_truth("reward") else None
    for row, tier in zip(axes, tiers):
        eps = np.flatnonzero(rendered & (table["tier"] == tier))[:per_tier]
        for ax, e in zip(row, eps):
            s = ds.episode_slice(int(e))
            ax.plot(frame_rewards(model, ds, frame_key, np.arange(s.start, s.stop)), color="C0", label="learned")
            ax.set_ylabel("learned r", color="C0")
            ax.set_title(f"{tier or '-'} · episode {e}", fontsize=9)
            ax.set_xlabel("step")
            if true is not None:
                ax2 = ax.twinx()
                ax2.plot(true[s], color="C1", alpha=0.8, label="true r")
                ax2.set_ylabel("true r", color="C1")
        for ax in row[len(eps) :]:
            ax.axis("off")
    fig.suptitle(f"{model.spec.type} x{model.spec.ensemble} reward along episodes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def format_report(report: dict) -> str:
    """A few lines for the terminal."""
    def f(x):
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

    lines = [f"pairs: {report.get('counts', {})}  epochs: {report.get('epochs', '-')}  "
             f"label noise: {f(report.get('label_noise'))}",
             f"held-out preference accuracy (vs labels): {f(report.get('val_accuracy'))} "
             f"on {report.get('val_decided_pairs')} pairs"]
    if "spearman" in report:
        lines += [f"held-out accuracy vs true-reward order:   {f(report['val_true_order_accuracy'])} "
                  f"(labels themselves agree {f(report['label_agreement_with_truth'])})",
                  f"r̂ vs true reward, all frames:    spearman {f(report['spearman'])}  "
                  f"pearson {f(report['pearson'])}",
                  f"r̂ vs true reward, within episode: spearman {f(report['spearman_within_episode'])}  "
                  f"pearson {f(report['pearson_within_episode'])}  ({report['eval_episodes']} episodes, "
                  f"{report['eval_frames']} frames)"]
    return "\n".join(lines)
