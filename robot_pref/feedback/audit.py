"""`robot-pref label-audit`: several labelers on the same work, measured against ground truth.

Every labeler YAML is a `robot-pref label` config (``labeler: teacher`` + ``teacher: {kind: vlm-like}``,
``labeler: progress`` + ``gvl: {...}`` ...); the audit fills in the dataset, camera, pair count and
seed, so pair labelers answer the same sampled pairs and progress labelers the same frame groups
of the same episodes. Each runs through `label` into its own directory (cached: a rerun asks
nothing), and one table compares them: accuracy over non-abstained pairs by normalised
true-progress gap bin, abstention, value-order correlation (VOC: Spearman of predicted progress
with frame order within each request, progress labelers), HTTP requests, images, tokens, cost and
wall time per correct label. Written as audit.json, audit.md and audit.png.

``--mock`` serves vlm/progress labelers from a local `MockVLM` answering from the dataset's
hidden ground truth through the vlm-like error model, to compare query designs at known accuracy.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
from pathlib import Path

import numpy as np

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.feedback.config import LabelAuditConfig, LabelConfig
from robot_pref.feedback.store import LabelSet, load_labels

log = logging.getLogger(__name__)
ENDPOINT_LABELERS = {"vlm": "vlm", "progress": "gvl"}  # labeler type -> its endpoint section


def value_order_correlation(labels: LabelSet) -> float | None:
    """Mean over requests of Spearman(predicted progress, frame index): 1 = the frames' true order."""
    from scipy.stats import spearmanr

    x = labels.extra
    if "request" not in x or "progress_a" not in x:
        return None
    rhos = []
    for req in np.unique(x["request"]):
        sel = x["request"] == req
        frames = dict(zip(labels.index_a[sel].tolist(), x["progress_a"][sel].tolist()))
        frames.update(zip(labels.index_b[sel].tolist(), x["progress_b"][sel].tolist()))
        idx, prog = np.array(list(frames)), np.array(list(frames.values()))
        if len(idx) > 2 and np.ptp(prog) > 0:
            rhos.append(spearmanr(idx, prog).statistic)
    return float(np.mean(rhos)) if rhos else None


def audit_metrics(labels: LabelSet, reward: np.ndarray, edges: list[float], summary: dict) -> dict:
    """Accuracy by normalised true gap, abstention, VOC, and cost per correct label."""
    r = reward.astype(np.float64)
    scale = np.ptp(r) or 1.0
    diff = r[labels.index_b] - r[labels.index_a]
    gap = np.abs(diff) / scale
    truth = (diff > 0).astype(np.int8)
    decided = (labels.label != -1) & (diff != 0)
    correct = decided & (labels.label == truth)
    by_gap = []
    for lo, hi in itertools.pairwise(edges):
        sel = (gap > lo) & (gap <= hi)
        ans = sel & decided
        by_gap.append({"gap_lo": lo, "gap_hi": hi, "pairs": int(sel.sum()), "answered": int(ans.sum()),
                       "accuracy": float(correct[ans].mean()) if ans.any() else None,
                       "abstention": float(np.mean(labels.label[sel] == -1)) if sel.any() else None})
    x = labels.extra
    total = {k: float(x[k].sum()) if k in x else 0.0 for k in ("attempts", "images", "prompt_tokens",
                                                                 "completion_tokens", "cost_usd")}
    n_correct = int(correct.sum())
    per = (lambda v: v / n_correct if n_correct else None)
    return {
        "labels": len(labels), "true_ties": int(np.sum(diff == 0)),
        "accuracy": float(correct[decided].mean()) if decided.any() else None,
        "abstention": float(np.mean(labels.label == -1)) if len(labels) else None,
        "voc": value_order_correlation(labels), "by_gap": by_gap, "correct": n_correct,
        "requests": int(total["attempts"]), "images": int(total["images"]),
        "tokens": int(total["prompt_tokens"] + total["completion_tokens"]), "cost_usd": total["cost_usd"],
        "wall_s": summary.get("wall_s"),
        "per_correct": {"requests": per(total["attempts"]), "images": per(total["images"]),
                        "cost_usd": per(total["cost_usd"]),
                        "wall_s": per(summary.get("wall_s") or 0.0)},
    }


def load_spec(path: str) -> tuple[str, dict]:
    from robot_pref.config import load_yaml

    values = dict(load_yaml(path) or {})
    if "labeler" not in values:
        raise ValueError(f"{path} names no labeler; write e.g. 'labeler: teacher' and 'teacher: {{kind: oracle}}'")
    return str(values.pop("name", Path(path).stem)), values


def label_audit(cfg: LabelAuditConfig) -> dict:
    from robot_pref.config import from_dict
    from robot_pref.feedback.mock_server import MockVLM, TruthTable
    from robot_pref.feedback.run import label, resolve_frame_key
    from robot_pref.feedback.teacher import VLMErrorModel

    if not cfg.labelers:
        raise ValueError("pass the labelers to compare: --labelers oracle.yaml,vlm_like.yaml,progress.yaml")
    if len(cfg.gap_bins) < 2 or list(cfg.gap_bins) != sorted(cfg.gap_bins):
        raise ValueError(f"--gap-bins needs at least two increasing edges, got {cfg.gap_bins}")
    ds = TrajectoryDataset.open(cfg.dataset)
    if not ds.has_ground_truth("reward"):
        raise ValueError(f"{cfg.dataset} has no ground-truth reward: the audit measures labelers against it; "
                         "use a simulated dataset (robot-pref collect)")
    specs = [load_spec(p) for p in cfg.labelers]
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"labeler names repeat ({names}); give each YAML a distinct 'name:'")
    data = Path(cfg.dataset).resolve()
    out = Path(cfg.out) if cfg.out else data.parent / f"{data.stem}_labels" / "audit"
    frame_key = resolve_frame_key(ds, cfg.camera)
    reward = ds.ground_truth("reward")
    rows = {}
    with contextlib.ExitStack() as stack:
        mock = None
        if cfg.mock:
            mock = stack.enter_context(MockVLM(truth=TruthTable(ds, frame_key), errors=VLMErrorModel(),
                                               progress_noise=cfg.mock_progress_noise))
        for name, values in specs:
            values = {**values, "dataset": cfg.dataset, "camera": frame_key, "pairs": cfg.pairs, "seed": cfg.seed,
                      "out": str(out / name), "progress": cfg.progress}
            lc = from_dict(LabelConfig, values)
            section = ENDPOINT_LABELERS.get(lc.labeler)
            if mock is not None and section:
                getattr(lc, section).base_url = mock.url
            summary = label(lc)
            rows[name] = {"labeler": lc.labeler, "counts": summary["counts"],
                          **audit_metrics(load_labels(out / name), reward, list(cfg.gap_bins), summary)}
    report = {"dataset": str(cfg.dataset), "pairs": cfg.pairs, "seed": cfg.seed, "mock": cfg.mock,
              "gap_bins": list(cfg.gap_bins), "labelers": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=2))
    (out / "audit.md").write_text(markdown(report))
    plot_audit(report, out / "audit.png")
    print(markdown(report))
    return report


def _f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown(report: dict) -> str:
    edges = report["gap_bins"]
    bins = [f"acc ({lo:g}, {hi:g}]" for lo, hi in itertools.pairwise(edges)]
    head = ["labeler", "type", "labels", "accuracy", "abstention", *bins, "VOC", "requests", "images", "tokens",
            "cost $/correct", "wall s/correct"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in report["labelers"].items():
        cells = [name, r["labeler"], str(r["labels"]), _f(r["accuracy"]), _f(r["abstention"]),
                 *(f"{_f(b['accuracy'])} (n={b['answered']})" for b in r["by_gap"]), _f(r["voc"]),
                 str(r["requests"]), str(r["images"]), str(r["tokens"]), _f(r["per_correct"]["cost_usd"], ".2g"),
                 _f(r["per_correct"]["wall_s"], ".2g")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_audit(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in report["labelers"].items():
        mid = [0.5 * (b["gap_lo"] + b["gap_hi"]) for b in r["by_gap"]]
        axes[0].plot(mid, [np.nan if b["accuracy"] is None else b["accuracy"] for b in r["by_gap"]], "o-", label=name)
        axes[1].plot(mid, [np.nan if b["abstention"] is None else b["abstention"] for b in r["by_gap"]], "o-",
                     label=name)
    axes[0].axhline(0.5, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="normalised true-progress gap", ylabel="accuracy (non-abstained)", ylim=(0, 1.05))
    axes[1].set(xlabel="normalised true-progress gap", ylabel="abstention", ylim=(0, 1.05))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"label audit on {Path(report['dataset']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
