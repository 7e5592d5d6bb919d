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
from robot_pref.feedback.hybrid import HUMAN_DIR
from robot_pref.feedback.store import LabelSet, load_labels

TRUTH_NAMES = {0: "a_better", 1: "b_better", -1: "tie"}


def label_quality(labels: LabelSet, reward: np.ndarray, bins: int = 8) -> dict:
    """Accuracy, abstention, confusion and accuracy-by-gap of ``labels`` against per-frame ``reward``."""
    if len(labels) and max(labels.index_a.max(), labels.index_b.max()) >= len(reward):
        raise ValueError(f"labels index frames up to {max(labels.index_a.max(), labels.index_b.max())}, the dataset "
                         f"has {len(reward)}: these labels belong to another dataset")
    gap = reward[labels.index_b].astype(np.float64) - reward[labels.index_a]
    truth = truth_of(labels, reward)
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


def truth_of(labels: LabelSet, reward: np.ndarray) -> np.ndarray:
    """The true answer per pair from per-frame reward: 0 / 1, or -1 for equal rewards."""
    gap = reward[labels.index_b].astype(np.float64) - reward[labels.index_a]
    return np.where(gap > 0, 1, np.where(gap < 0, 0, -1)).astype(np.int8)


def decided_agreement(x: np.ndarray, y: np.ndarray) -> dict:
    """Share of pairs two answerers gave the same side, over pairs both decided (no tie)."""
    both = (x != -1) & (y != -1)
    return {"pairs": int(both.sum()), "agreement": float(np.mean(x[both] == y[both])) if both.any() else None}


def source_quality(labels: LabelSet, reward: np.ndarray | None) -> dict:
    """Per source (machine kind / human): pairs, abstention and, with ground truth, accuracy; on the pairs
    routed to people, the machine's accuracy beside the people's (what routing bought)."""
    source = labels.extra["source"]
    truth = None if reward is None else truth_of(labels, reward)
    out: dict = {}
    for name in sorted(set(source.tolist())):
        sel = source == name
        row = {"pairs": int(sel.sum()), "abstention_rate": float(np.mean(labels.label[sel] == -1))}
        if truth is not None:
            row.update(accuracy_of(labels.label[sel], truth[sel]))
        out[name] = row
    machine = labels.extra.get("machine_label")
    routed = labels.extra.get("route", np.zeros(0, dtype="U1")) != ""
    if truth is not None and machine is not None and routed.any():
        human = routed & (source == "human")
        out["routed"] = {"pairs": int(routed.sum()), "answered_by_people": int(human.sum()),
                         "machine": accuracy_of(machine[human], truth[human]),
                         "people": accuracy_of(labels.label[human], truth[human])}
    return out


def accuracy_of(label: np.ndarray, truth: np.ndarray) -> dict:
    decided = (label >= 0) & (truth != -1)
    return {"accuracy": float(np.mean(label[decided] == truth[decided])) if decided.any() else None,
            "accuracy_pairs": int(decided.sum())}


def human_agreement(labels: LabelSet, human: LabelSet | None) -> dict:
    """Human-human agreement (pairs two people answered, from the hybrid's human/ table) and
    human-machine agreement (pairs a person answered that the machine had labeled)."""
    out: dict = {}
    if "machine_label" in labels.extra:
        sel = labels.extra["source"] == "human"
        out["human_machine"] = decided_agreement(labels.label[sel], labels.extra["machine_label"][sel])
    if human is not None and len(human):
        by_pair: dict = {}
        for a, b, lab, person in zip(human.index_a.tolist(), human.index_b.tolist(), human.label.tolist(),
                                     human.extra["person"].tolist()):
            by_pair.setdefault((a, b), {})[person] = lab
        x, y = [], []
        for answers in by_pair.values():  # every two people on one pair
            votes = list(answers.values())
            for i in range(len(votes)):
                for j in range(i + 1, len(votes)):
                    x.append(votes[i])
                    y.append(votes[j])
        out["human_human"] = {**decided_agreement(np.asarray(x, dtype=np.int8), np.asarray(y, dtype=np.int8)),
                              "pairs_with_several_people": int(sum(len(v) > 1 for v in by_pair.values())),
                              "people": sorted(set(human.extra["person"].tolist()))}
    return out


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
    """Quality vs ground truth; for hybrid labels also per-source accuracy and human agreement (which need
    no ground truth: a real-robot hybrid run reports agreement only)."""
    ds = TrajectoryDataset.open(cfg.dataset)
    labels = load_labels(cfg.labels)
    sourced = "source" in labels.extra
    if not ds.has_ground_truth("reward") and not sourced:
        raise ValueError(f"{cfg.dataset} has no ground-truth reward, so label accuracy cannot be measured; "
                         "report on a simulated dataset (robot-pref collect)")
    reward = ds.ground_truth("reward") if ds.has_ground_truth("reward") else None
    run_file = Path(cfg.labels) / "label_run.json"
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    report = {"dataset": str(cfg.dataset), "labels": str(cfg.labels), "labeler": run.get("labeler", "?"),
              "run_counts": run.get("counts", {}), "cost": cost_summary(labels)}
    if reward is not None:
        report["quality"] = label_quality(labels, reward, cfg.bins)
    if sourced:
        human_dir = Path(cfg.labels) / HUMAN_DIR
        human = load_labels(human_dir) if (human_dir / "labels.npz").is_file() else None
        report["sources"] = source_quality(labels, reward)
        report["agreement"] = human_agreement(labels, human)
    out = Path(cfg.out or cfg.labels)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_report.json").write_text(json.dumps(report, indent=2))
    if reward is not None:
        plot_report(report, out / "label_report.png")
        q = report["quality"]
        print(f"{report['labeler']}: {q['pairs']} pairs, accuracy {_pct(q['accuracy'])} over {q['accuracy_pairs']} "
              f"non-abstained, abstention {_pct(q['abstention_rate'])} -> {out / 'label_report.json'}")
    for name, row in report.get("sources", {}).items():
        if name != "routed":
            print(f"  {name}: {row['pairs']} pairs, accuracy {_pct(row.get('accuracy'))}, "
                  f"abstention {_pct(row['abstention_rate'])}")
    for name, row in report.get("agreement", {}).items():
        print(f"  {name.replace('_', '-')} agreement {_pct(row['agreement'])} over {row['pairs']} pairs")
    return report
