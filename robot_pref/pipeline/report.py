"""The run report: report.html (a results page), report.md (terminals, GitHub) and report.json.

Built only from files the stages wrote. Both pages are Jinja2 templates (``templates/``) over one context:
a "what this run says" summary first (success with Wilson CIs, the learned reward against the true one,
warnings where a number cannot be trusted), then each stage's details. Every link is relative to the run
directory, so the directory can be moved or served as it is.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"
LEARNED, TRUE = "iql-learned", "iql-true"  # the policies whose success ratio the summary gives


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


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


def _eval_curves(run_dir: Path, policies: list[str]) -> dict[str, list[dict]]:
    """Each policy's training-time evaluations (``eval_curve.csv``, written by train with ``eval_every``)."""
    curves = {}
    for policy in policies:
        path = run_dir / "policies" / policy / "eval_curve.csv"
        if path.exists():
            with path.open() as fh:
                rows = [{k: float(v) if k != "step" else int(v) for k, v in r.items() if v not in (None, "")}
                        for r in csv.DictReader(fh)]
            if rows:
                curves[policy] = rows
    return curves


def _success_curves(run_dir: Path, curves: dict[str, list[dict]]) -> str | None:
    """One PNG: success over training steps per policy, its Wilson 95% CI as a band."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for policy, rows in curves.items():
        steps = [r["step"] for r in rows]
        line, = ax.plot(steps, [r["success_rate"] for r in rows], marker="o", ms=3, label=policy)
        ax.fill_between(steps, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=line.get_color(),
                        alpha=0.15, lw=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("success (held-out seeds)")
    ax.set_title("training-time evaluation, Wilson 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = run_dir / "success_curves.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out.name


def _examples(info: dict, eval_dir: Path, run_dir: Path) -> list[dict]:
    """A success and a failure video of one policy where both were recorded (else the first two recorded)."""
    recorded = [r for r in info.get("per_episode", []) if r.get("video")]
    picks = [next((r for r in recorded if r["success"]), None), next((r for r in recorded if not r["success"]), None)]
    picks = [r for r in picks if r]
    picks += [r for r in recorded if r not in picks][: max(0, 2 - len(picks))]
    return [{"src": os.path.relpath(eval_dir / r["video"], run_dir), "episode": r["episode"],
             "success": bool(r["success"]), "steps": r.get("steps")} for r in picks]


def _shown_path(path: Path, run_dir: Path) -> str:
    """Relative to the run directory when inside it (the page moves with it), else as given."""
    inside = path.resolve().is_relative_to(run_dir.resolve())
    return os.path.relpath(path, run_dir) if inside else str(path)


def _checkpoint_note(cfg: Any, train: dict) -> str:
    if cfg.checkpoint != "best":
        return "last"
    best = (train.get("result") or {}).get("best") or {}
    step = f" (step {best['step']})" if best.get("step") is not None else ""
    return f"best{step}: oracle-selected"


def _ci_overlaps(success: list[dict]) -> list[tuple[str, str]]:
    return [(a["policy"], b["policy"]) for a, b in itertools.combinations(success, 2)
            if a["ci"][0] <= b["ci"][1] and b["ci"][0] <= a["ci"][1]]


def trust_warnings(cfg: Any, labels: dict, reward: dict, success: list[dict]) -> list[str]:
    """Where this run's numbers cannot be trusted, one sentence each (what is wrong, and what to do)."""
    out = list(reward.get("warnings", []))  # fit-reward's own (too few usable pairs)
    quality = labels.get("quality", {})
    if quality.get("accuracy") is not None and quality["accuracy"] < 0.5:
        out.append(f"the labels disagree with the true reward on {_pct(1 - quality['accuracy'])} of the "
                   f"{quality.get('accuracy_pairs', '?')} answered pairs: the annotation is anti-correlated with "
                   "the task (check the goal text, the prompt, or swapped image order)")
    if reward.get("val_accuracy") is not None and reward["val_accuracy"] < 0.5:
        out.append(f"the learned reward orders held-out pairs against their labels (accuracy "
                   f"{_pct(reward['val_accuracy'])} < 50%): the reward is anti-correlated with the annotation")
    for key, where in (("spearman", "over all frames"), ("spearman_within_episode", "within episodes")):
        if reward.get(key) is not None and reward[key] < 0:
            out.append(f"the learned reward is anti-correlated with the true reward {where} (Spearman "
                       f"{reward[key]:.2f}): policies trained on it optimise the wrong thing")
    overlaps = _ci_overlaps(success)
    if overlaps:
        pairs = ", ".join(f"{a} / {b}" for a, b in overlaps)
        out.append(f"95% CIs overlap ({pairs}): these success rates cannot be told apart; evaluate more episodes "
                   f"(eval.episodes = {cfg.eval.episodes} now) or more seeds")
    if cfg.checkpoint == "best":
        out.append("checkpoint: best picks each policy's checkpoint by its success in the simulator during "
                   "training: oracle model selection, which a real task does not have; the success rates are "
                   "optimistic. Use checkpoint: last (the default) for numbers that compare honestly")
    return out


def write_report(cfg: Any, run_dir: Path, stage_names: list[str]) -> dict:
    """Collect the numbers of a (resolved) run into report.json, report.md and report.html."""
    import jinja2

    from robot_pref.data import TrajectoryDataset

    run_dir = Path(run_dir)
    stages = {name: _read_json(run_dir / "stages" / f"{name}.json") for name in stage_names}

    def link(path: Path) -> str:  # relative, so the run directory can be moved or served as is
        return os.path.relpath(path, run_dir)

    dataset = TrajectoryDataset.open(cfg.dataset).summary()
    labels = _read_json(Path(cfg.label.out) / "label_report.json")
    reward = _read_json(Path(cfg.fit_reward.out) / "eval.json")
    policies, examples, success = {}, {}, []
    for policy in cfg.policies:
        eval_dir = run_dir / "eval" / policy
        info = _read_json(eval_dir / "eval_info.json")
        if not info:
            continue
        policies[policy] = {k: v for k, v in info.items() if k != "per_episode"}
        if info.get("offline"):  # no simulator: scored against the recorded actions (robot_pref.eval.offline)
            continue
        examples[policy] = _examples(info, eval_dir, run_dir)
        policies[policy]["examples"] = [e["src"] for e in examples[policy]]
        success.append({"policy": policy, "rate": info["success_rate"], "ci": info["ci"],
                        "successes": info.get("successes"), "episodes": info["episodes"],
                        "mean_return": info.get("mean_return"),
                        "checkpoint": _checkpoint_note(cfg, stages.get(f"train_{policy}", {}))})
    offline = {p: i for p, i in policies.items() if i.get("offline")}
    notes = trust_warnings(cfg, labels, reward, success)
    eval_curves = _eval_curves(run_dir, list(cfg.policies))
    report = {
        "name": cfg.name,
        "config": dataclasses.asdict(cfg),
        "stage_seconds": {name: s.get("seconds") for name, s in stages.items()},
        "stage_cpu_seconds": {name: s.get("cpu_s") for name, s in stages.items()},
        "dataset": dataset,
        "labels": labels,
        "reward": reward,
        "policies": policies,
        "checkpoint": {"name": cfg.checkpoint, "oracle_selection": cfg.checkpoint == "best"},
        "eval_curves": eval_curves,
        "warnings": notes,
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str))

    def plot(path: Path) -> str | None:
        return link(path) if path.exists() else None

    rates = {s["policy"]: s["rate"] for s in success}
    page = {
        "name": cfg.name, "task": cfg.collect.task, "checkpoint": cfg.checkpoint, "warnings": notes,
        "success": success, "examples": examples, "offline": offline,
        "ratio": (rates[LEARNED] / rates[TRUE]) if rates.get(TRUE) and LEARNED in rates else None,
        "dataset": dataset, "labels": labels, "dataset_path": _shown_path(Path(dataset["path"]), run_dir), "quality": labels.get("quality", {}), "cost": labels.get("cost", {}),
        "labeler": labels.get("labeler", cfg.label.labeler), "reward": reward,
        "usable_pairs": sum(reward.get("counts", {}).get(k, 0) for k in ("train_pairs", "val_pairs")) or None,
        "min_pairs": cfg.fit_reward.min_pairs,
        "label_plot": plot(Path(cfg.label.out) / "label_report.png"),
        "reward_plot": plot(Path(cfg.fit_reward.out) / "eval.png"),
        "curves": _learning_curves(run_dir, list(cfg.policies)),
        "success_curves": _success_curves(run_dir, eval_curves), "eval_curves": eval_curves,
        "stages": [{"name": name, "seconds": s.get("seconds"), "cpu_s": s.get("cpu_s"), "remote": s.get("remote"),
                    "utilisation": s["cpu_s"] / s["seconds"] if s.get("cpu_s") is not None and s.get("seconds")
                    else None} for name, s in stages.items() if s],
        "run": _read_json(run_dir / "run.json"),
    }
    # a number a stage did not write (an older eval.json, a skipped label report) shows as "-"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.ChainableUndefined,
                             autoescape=jinja2.select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    known = lambda x: None if isinstance(x, jinja2.Undefined) else x  # noqa: E731
    env.filters.update(pct=lambda x, digits=1: _pct(known(x), digits), num=lambda x, fmt=".3f": _num(known(x), fmt))
    for name in ("report.md", "report.html"):
        (run_dir / name).write_text(env.get_template(name).render(**page))
    return report
