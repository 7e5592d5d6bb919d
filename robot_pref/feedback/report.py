"""`label_report(cfg)`: how good are the labels? Ground truth is read here, explicitly.

Accuracy is agreement with the true-reward ordering over non-abstained pairs whose true rewards
differ (RL-VLM-F's metric), always beside the abstention rate. Accuracy by true-reward gap shows
whether errors sit on near-ties (expected) or on obvious pairs (a broken labeler).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.feedback.config import LabelReportConfig
from robot_pref.feedback.store import LabelSet, load_labels

TRUTH_NAMES = {0: "a_better", 1: "b_better", -1: "tie"}


def label_quality(labels: LabelSet, reward: np.ndarray, bins: int = 8) -> dict:
    """Accuracy, abstention, confusion and accuracy-by-gap of ``labels`` against per-frame ``reward``."""
    if len(labels) and max(labels.index_a.max(), labels.index_b.max()) >= len(reward):
        raise ValueError(f"labels index frames up to {max(labels.index_a.max(), labels.index_b.max())}, the dataset "
                         f"has {len(reward)}: these labels belong to another dataset")
    gap = reward[labels.index_b].astype(np.float64) - reward[labels.index_a]
    truth = np.sign(gap).astype(np.int8)
    truth[truth == -1] = 0
    truth[gap == 0] = -1
    lab = labels.label
    decided = (lab != -1) & (truth != -1)
    correct = lab == truth
    confusion = {f"truth_{TRUTH_NAMES[t]}": {str(v): int(np.sum((truth == t) & (lab == v))) for v in (0, 1, -1)}
                 for t in (0, 1, -1)}
    by_gap = []
    strict = truth != -1
    if strict.any():
        mag = np.abs(gap[strict])
        edges = np.unique(np.quantile(mag, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, mag, side="right") - 1, 0, max(len(edges) - 2, 0))
        for b in range(max(len(edges) - 1, 1)):
            sel = which == b
            ans = sel & (lab[strict] != -1)
            by_gap.append({"gap_lo": float(edges[b]), "gap_hi": float(edges[min(b + 1, len(edges) - 1)]),
                           "pairs": int(sel.sum()), "answered": int(ans.sum()),
                           "accuracy": float(correct[strict][ans].mean()) if ans.any() else None,
                           "abstention": float(1 - ans.sum() / sel.sum()) if sel.any() else None})
    return {
        "pairs": len(lab),
        "accuracy": float(correct[decided].mean()) if decided.any() else None,
        "accuracy_pairs": int(decided.sum()),
        "abstention_rate": float(np.mean(lab == -1)) if len(lab) else None,
        "true_ties": int(np.sum(truth == -1)),
        "confusion": confusion,
        "by_gap": by_gap,
    }


def cost_summary(labels: LabelSet) -> dict:
    x = labels.extra
    out: dict = {}
    lat = x.get("latency_s", np.zeros(0))
    lat = lat[np.isfinite(lat)] if len(lat) else lat
    if len(lat):
        out["latency_s"] = {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)),
                            "p95": float(np.percentile(lat, 95)), "max": float(lat.max())}
    for name in ("attempts", "prompt_tokens", "completion_tokens", "cost_usd"):
        if name in x:
            out[f"total_{name}"] = float(x[name].sum()) if name == "cost_usd" else int(x[name].sum())
    if len(labels) and "cost_usd" in x:
        out["cost_usd_per_label"] = float(x["cost_usd"].sum() / len(labels))
    return out


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["quality"]["by_gap"]
    mid = [0.5 * (r["gap_lo"] + r["gap_hi"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    acc = [np.nan if r["accuracy"] is None else r["accuracy"] for r in rows]
    axes[0].plot(mid, acc, "o-")
    for x, y, r in zip(mid, acc, rows):
        axes[0].annotate(f"n={r['answered']}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7)
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="|true reward gap|", ylabel="accuracy (non-abstained)", ylim=(0, 1.05),
                title=f"accuracy {_pct(report['quality']['accuracy'])} over {report['quality']['accuracy_pairs']} pairs")
    axes[1].plot(mid, [np.nan if r["abstention"] is None else r["abstention"] for r in rows], "o-", color="C1")
    axes[1].set(xlabel="|true reward gap|", ylabel="abstention rate", ylim=(0, 1.05),
                title=f"abstention {_pct(report['quality']['abstention_rate'])}")
    fig.suptitle(f"{report['labeler']} labels on {Path(report['dataset']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def label_report(cfg: LabelReportConfig) -> dict:
    ds = TrajectoryDataset.open(cfg.dataset)
    if not ds.has_ground_truth("reward"):
        raise ValueError(f"{cfg.dataset} has no ground-truth reward, so label accuracy cannot be measured; "
                         "report on a simulated dataset (robot-pref collect)")
    labels = load_labels(cfg.labels)
    run_file = Path(cfg.labels) / "label_run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    report = {"dataset": str(cfg.dataset), "labels": str(cfg.labels), "labeler": run.get("labeler", "?"),
              "run_counts": run.get("counts", {}),
              "quality": label_quality(labels, ds.ground_truth("reward"), cfg.bins), "cost": cost_summary(labels)}
    out = Path(cfg.out or cfg.labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_report.json").write_text(json.dumps(report, indent=2))
    plot_report(report, out / "label_report.png")
    q = report["quality"]
    print(f"{report['labeler']}: {q['pairs']} pairs, accuracy {_pct(q['accuracy'])} over {q['accuracy_pairs']} "
          f"non-abstained, abstention {_pct(q['abstention_rate'])} -> {out / 'label_report.json'}")
    return report
