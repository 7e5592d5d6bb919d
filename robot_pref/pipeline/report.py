"""The run report: report.md (+ report.html) and report.json, built only from files the stages wrote."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
from pathlib import Path
from typing import Any


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _learning_curves(run_dir: Path, policies: list[str]) -> str | None:
    """One PNG of the training losses of every policy (from each run's log.csv)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for policy in policies:
        path = run_dir / "policies" / policy / "log.csv"
        if path.exists():
            with path.open() as fh:
                series[policy] = list(csv.DictReader(fh))
    if not series:
        return None
    not_learning = {"step", "time_s", "wall_s", "updates_per_s", "actor_lr"}  # bookkeeping, not curves
    columns = sorted({k for rows in series.values() for k in (rows[0] if rows else {})} - not_learning)
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False)
    for ax in axes.flat[len(columns):]:
        ax.axis("off")
    for ax, col in zip(axes.flat, columns):
        for policy, rows in series.items():
            pts = [(float(r["step"]), float(r[col])) for r in rows if r.get(col) not in (None, "")]
            if pts:
                ax.plot(*zip(*pts), label=policy)
        ax.set_title(col)
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out = run_dir / "learning_curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out.name


def write_report(cfg: Any, run_dir: Path, stage_names: list[str]) -> dict:
    """Collect the numbers of a (resolved) run into report.json, report.md and report.html."""
    from robot_pref.data import TrajectoryDataset

    stages = {name: _read_json(run_dir / "stages" / f"{name}.json") for name in stage_names}

    def link(path: Path) -> str:  # relative, so the run directory can be moved or served as is
        return os.path.relpath(path, run_dir)

    dataset = TrajectoryDataset.open(cfg.dataset).summary()
    labels = _read_json(Path(cfg.label.out) / "label_report.json")
    reward = _read_json(Path(cfg.fit_reward.out) / "eval.json")
    policies = {}
    for policy in cfg.policies:
        info = _read_json(run_dir / "eval" / policy / "eval_info.json")
        if info:
            policies[policy] = {k: v for k, v in info.items() if k != "per_episode"}
    report = {
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "stage_seconds": {name: s.get("seconds") for name, s in stages.items()},
        "dataset": dataset,
        "labels": labels,
        "reward": reward,
        "policies": policies,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
    curves = _learning_curves(run_dir, list(cfg.policies))

    md = [f"# Run `{cfg.name}`", "", f"Config: `config.json` · numbers: `report.json`", "",
          "## Stages", "", "| stage | seconds |", "|---|---:|"]
    md += [f"| {name} | {_num(s, '.1f')} |" for name, s in report["stage_seconds"].items()]
    md += ["", "## Dataset", "", f"`{dataset['path']}`: {dataset['episodes']} episodes, {dataset['frames']} frames, "
           f"task(s) {', '.join(dataset['tasks'])}", "", "| tier | episodes | frames | success |", "|---|---:|---:|---:|"]
    md += [f"| {t} | {r['episodes']} | {r['frames']} | {_pct(r['success_rate'])} |" for t, r in dataset["tiers"].items()]
    quality, cost = labels.get("quality", {}), labels.get("cost", {})
    md += ["", "## Labels", "", f"Labeler: `{labels.get('labeler', cfg.label.labeler)}`", "",
           "| pairs | accuracy vs true reward | abstention | cost (USD) |", "|---:|---:|---:|---:|",
           f"| {quality.get('pairs', '-')} | {_pct(quality.get('accuracy'))} | {_pct(quality.get('abstention_rate'))} "
           f"| {_num(cost.get('total_cost_usd'), '.4f')} |"]
    if (Path(cfg.label.out) / "label_report.png").exists():
        md += ["", f"![label accuracy by true-reward gap]({link(Path(cfg.label.out) / 'label_report.png')})"]
    md += ["", "## Reward model", "", "| held-out label accuracy | held-out true-order accuracy | Spearman | Pearson "
           "| Spearman within episode |", "|---:|---:|---:|---:|---:|",
           f"| {_pct(reward.get('val_accuracy'))} | {_pct(reward.get('val_true_order_accuracy'))} "
           f"| {_num(reward.get('spearman'))} | {_num(reward.get('pearson'))} "
           f"| {_num(reward.get('spearman_within_episode'))} |"]
    if (Path(cfg.fit_reward.out) / "eval.png").exists():
        md += ["", f"![learned vs true reward along episodes]({link(Path(cfg.fit_reward.out) / 'eval.png')})"]
    md += ["", "## Policies", "", "| policy | success | 95% CI | mean true return | episodes | videos |",
           "|---|---:|---:|---:|---:|---|"]
    for policy, info in policies.items():
        ci = info.get("ci") or [None, None]
        videos = ", ".join(f"[{Path(v).name}]({link(Path(v))})" for v in info.get("videos", [])[:3]) or "-"
        md.append(f"| {policy} | {_pct(info.get('success_rate'))} | {_pct(ci[0])} – {_pct(ci[1])} "
                  f"| {_num(info.get('mean_return'), '.1f')} | {info.get('episodes', '-')} | {videos} |")
    if curves:
        md += ["", "## Learning curves", "", f"![learning curves]({curves})"]
    text = "\n".join(md) + "\n"
    (run_dir / "report.md").write_text(text)
    (run_dir / "report.html").write_text(_html(cfg.name, text))
    return report


def _html(title: str, markdown: str) -> str:
    """A dependency-free HTML view: tables as <pre>, images inline."""
    body = []
    for line in markdown.splitlines():
        if line.startswith("!["):
            src = line[line.index("(") + 1 : -1]
            body.append(f'<img src="{html.escape(src)}" style="max-width:100%">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line:
            body.append(f"<pre>{html.escape(line)}</pre>")
    return (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto}pre{margin:0}</style>"
            + "\n".join(body))
