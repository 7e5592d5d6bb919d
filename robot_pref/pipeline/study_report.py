"""The study's aggregate report, read from the cells' run directories: study.json, study.md, figures.

Per cell and policy: success with a Wilson 95% CI (its evaluation episodes). Per task x labeler x budget:
mean and IQM over seeds with stratified bootstrap 95% CIs (rliable, percentile method), and the ratio
IQL(learned) / IQL(true) with a bootstrap CI that resamples seeds jointly for both policies (paired).
Over all tasks (when every task has every seed): the same, stratified by task. Label-free policies come
from the first labeler/budget cell of each (task, seed) and stand as baselines beside every labeler.
Every cell is listed, finished or not, and every policy's result, losing ones included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

BASELINE_STYLE = {"iql-true": ("k", "-"), "iql-zero": ("tab:gray", ":"), "iql-constant": ("tab:brown", ":"),
                  "bc": ("tab:purple", "--")}


def wilson(successes: int, n: int) -> list[float]:
    from robot_pref.eval.rollout import wilson_interval

    return [round(v, 4) for v in wilson_interval(successes, n)]


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean (25% trimmed mean over all runs and tasks), rliable's definition."""
    from rliable import metrics

    return float(metrics.aggregate_iqm(scores))


def bootstrap(scores: np.ndarray, reps: int, seed: int = 0) -> dict[str, Any]:
    """Mean and IQM of a (seeds x tasks) matrix with stratified bootstrap 95% CIs (seeds resampled per task)."""
    from rliable import library as rly
    from rliable import metrics

    scores = np.asarray(scores, dtype=float).reshape(len(scores), -1)
    point, ci = rly.get_interval_estimates(
        {"s": scores}, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
        reps=reps, random_state=np.random.RandomState(seed))
    return {"n_seeds": int(scores.shape[0]), "n_tasks": int(scores.shape[1]),
            "mean": float(point["s"][0]), "mean_ci": [float(v) for v in ci["s"][:, 0]],
            "iqm": float(point["s"][1]), "iqm_ci": [float(v) for v in ci["s"][:, 1]]}


def ratio(learned: np.ndarray, true: np.ndarray, reps: int, seed: int = 0) -> dict[str, Any]:
    """mean(learned) / mean(true) over seeds, CI by resampling the seeds of both together (paired: arch's
    IID bootstrap, which rliable builds on; rliable's own estimator resamples each array apart)."""
    from arch.bootstrap import IIDBootstrap

    learned, true = (np.asarray(a, dtype=float).ravel() for a in (learned, true))
    if true.mean() == 0:
        return {"ratio": None, "ci": None, "note": "IQL(true) never succeeded: the ratio is undefined"}

    def of(a, b):  # a resample whose IQL(true) never succeeds has no bound: inf
        return np.array([a.mean() / b.mean() if b.mean() > 0 else np.inf])

    ci = IIDBootstrap(learned, true, seed=np.random.default_rng(seed)).conf_int(of, reps=reps, method="percentile")
    return {"ratio": float(of(learned, true)[0]), "ci": [float(ci[0, 0]), float(ci[1, 0])]}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _eval_curve(policy_dir: Path) -> list[dict] | None:
    """Training-time evaluations of one policy ([{step, success_rate}]), or None where there are none."""
    info = _json(policy_dir / "train_info.json")
    evals = (info or {}).get("evals") or []
    rows = [{"step": int(e["step"]), "success_rate": float(e["success_rate"])} for e in evals
            if isinstance(e, dict) and "step" in e and "success_rate" in e]
    return rows or None


def collect_results(cfg, cells, failures: dict[str, str]) -> list[dict]:
    """One row per cell: its status and, per policy, the evaluation's success with a Wilson CI."""
    from robot_pref.pipeline.study import CELL_MARKER

    rows = []
    for cell in cells:
        run_dir = Path(cfg.out_dir) / "cells" / cell.id
        marker = _json(run_dir / CELL_MARKER)
        status = "failed" if cell.id in failures else "finished" if marker else "not finished"
        policies = {}
        for policy in cell.policies:
            info = _json(run_dir / "eval" / policy / "eval_info.json")
            entry: dict[str, Any] = {"curve": _eval_curve(run_dir / "policies" / policy)}
            if info and "successes" in info:
                entry.update(successes=int(info["successes"]), episodes=int(info["episodes"]),
                             success_rate=info["successes"] / info["episodes"],
                             ci=wilson(int(info["successes"]), int(info["episodes"])))
            policies[policy] = entry
        rows.append({"cell": cell.id, "task": cell.task, "labeler": cell.labeler, "budget": cell.budget,
                     "seed": cell.seed, "status": status, "error": failures.get(cell.id),
                     "wall_s": (marker or {}).get("wall_s"), "policies": policies})
    return rows


def _scores(rows: list[dict], cfg) -> dict[tuple, dict[int, float]]:
    """(task, labeler, budget, policy) -> {seed: success}; label-free policies filed under every labeler/budget."""
    out: dict[tuple, dict[int, float]] = {}
    for row in rows:
        for policy, entry in row["policies"].items():
            if "success_rate" not in entry:
                continue
            groups = ([(lab, b) for lab in cfg.labelers for b in cfg.budgets] if policy in cfg.shared_policies
                      else [(row["labeler"], row["budget"])])
            for labeler, budget in groups:
                out.setdefault((row["task"], labeler, budget, policy), {})[row["seed"]] = entry["success_rate"]
    return out


def aggregate(cfg, rows: list[dict]) -> dict[str, Any]:
    scores = _scores(rows, cfg)
    per_group = []
    for (task, labeler, budget, policy), by_seed in sorted(scores.items(), key=lambda kv: str(kv[0])):
        seeds = sorted(by_seed)
        per_group.append({"task": task, "labeler": labeler, "budget": budget, "policy": policy, "seeds": seeds,
                          "scores": [by_seed[s] for s in seeds],
                          **bootstrap(np.array([by_seed[s] for s in seeds]), cfg.bootstrap_reps)})
    ratios = []
    for (task, labeler, budget, policy), learned in sorted(scores.items(), key=lambda kv: str(kv[0])):
        true = scores.get((task, labeler, budget, "iql-true"), {})
        seeds = sorted(set(learned) & set(true))
        if policy != "iql-learned" or not seeds:
            continue
        ratios.append({"task": task, "labeler": labeler, "budget": budget, "seeds": seeds,
                       **ratio(np.array([learned[s] for s in seeds]), np.array([true[s] for s in seeds]),
                               cfg.bootstrap_reps)})
    over_tasks = []  # stratified by task: needs the same seeds in every task
    for labeler in cfg.labelers:
        for budget in cfg.budgets:
            for policy in cfg.policies:
                cols = [scores.get((task, labeler, budget, policy), {}) for task in cfg.tasks]
                seeds = sorted(set.intersection(*(set(c) for c in cols))) if cols else []
                if len(cfg.tasks) < 2 or not seeds:
                    continue
                matrix = np.array([[c[s] for c in cols] for s in seeds])
                over_tasks.append({"labeler": labeler, "budget": budget, "policy": policy, "seeds": seeds,
                                   **bootstrap(matrix, cfg.bootstrap_reps)})
    return {"groups": per_group, "ratios": ratios, "over_tasks": over_tasks}


def curves(cfg, rows: list[dict]) -> list[dict]:
    """Success over training steps per (task, policy[, labeler, budget]): mean over seeds, bootstrap CI per step."""
    grouped: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        for policy, entry in row["policies"].items():
            if entry.get("curve"):
                key = (row["task"], policy) if policy in cfg.shared_policies else (
                    row["task"], policy, row["labeler"], row["budget"])
                grouped.setdefault(key, {})[row["seed"]] = entry["curve"]
    out = []
    for key, by_seed in sorted(grouped.items(), key=lambda kv: str(kv[0])):
        steps = sorted(set.intersection(*({p["step"] for p in c} for c in by_seed.values())))
        if not steps:
            continue
        matrix = np.array([[{p["step"]: p["success_rate"] for p in c}[s] for s in steps] for c in by_seed.values()])
        mean, lo, hi = _mean_ci_per_column(matrix, cfg.bootstrap_reps)
        out.append({"task": key[0], "policy": key[1], "labeler": key[2] if len(key) > 2 else None,
                    "budget": key[3] if len(key) > 2 else None, "seeds": sorted(by_seed), "steps": steps,
                    "mean": mean, "ci_low": lo, "ci_high": hi})
    return out


def _mean_ci_per_column(matrix: np.ndarray, reps: int) -> tuple[list[float], list[float], list[float]]:
    from rliable import library as rly

    point, ci = rly.get_interval_estimates({"c": matrix}, lambda x: x.mean(axis=0), reps=reps,
                                           random_state=np.random.RandomState(0))
    return [float(v) for v in point["c"]], [float(v) for v in ci["c"][0]], [float(v) for v in ci["c"][1]]


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f}"


def _ci(ci: list[float] | None) -> str:
    return "–" if not ci else f"[{_pct(ci[0])}, {_pct(ci[1])}]"


def write_markdown(path: Path, summary: dict) -> None:
    agg, lines = summary["aggregate"], [f"# Study {summary['name']}", ""]
    lines += [f"{summary['cells_finished']}/{summary['cells_total']} cells finished in {summary['wall_s']:.0f} s "
              f"(load average at the end: {summary['loadavg']}); evaluation: {summary['episodes']} episodes per "
              f"policy on seeds {summary['eval_seeds']} (never used for a choice). Success in %, 95% CIs.", ""]
    lines += ["## Per task, labeler and query budget (over seeds)", "",
              "| task | labeler | budget | policy | seeds | mean [CI] | IQM [CI] | per seed |",
              "|---|---|---|---|---|---|---|---|"]
    for g in agg["groups"]:
        lines.append(f"| {g['task']} | {g['labeler']} | {g['budget']} | {g['policy']} | {len(g['seeds'])} | "
                     f"{_pct(g['mean'])} {_ci(g['mean_ci'])} | {_pct(g['iqm'])} {_ci(g['iqm_ci'])} | "
                     f"{', '.join(_pct(s) for s in g['scores'])} |")
    lines += ["", "## IQL(learned) / IQL(true)", "", "| task | labeler | budget | seeds | ratio [CI] |",
              "|---|---|---|---|---|"]
    for r in agg["ratios"]:
        value = "undefined (IQL(true) 0%)" if r["ratio"] is None else (
            f"{r['ratio']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]")
        lines.append(f"| {r['task']} | {r['labeler']} | {r['budget']} | {len(r['seeds'])} | {value} |")
    if agg["over_tasks"]:
        lines += ["", "## Over all tasks (stratified bootstrap by task)", "",
                  "| labeler | budget | policy | seeds | mean [CI] | IQM [CI] |", "|---|---|---|---|---|---|"]
        for g in agg["over_tasks"]:
            lines.append(f"| {g['labeler']} | {g['budget']} | {g['policy']} | {len(g['seeds'])} | "
                         f"{_pct(g['mean'])} {_ci(g['mean_ci'])} | {_pct(g['iqm'])} {_ci(g['iqm_ci'])} |")
    lines += ["", "## Every cell", "", "| cell | status | policy | success [Wilson CI] | wall s |",
              "|---|---|---|---|---|"]
    for row in summary["cells"]:
        for policy, e in row["policies"].items() or {"–": {}}.items():
            result = (f"{e['successes']}/{e['episodes']} = {_pct(e['success_rate'])} {_ci(e['ci'])}"
                      if "success_rate" in e else "no evaluation")
            lines.append(f"| {row['cell']} | {row['status']}{' (' + row['error'] + ')' if row['error'] else ''} | "
                         f"{policy} | {result} | {row['wall_s'] or '–'} |")
    lines += [""] + [f"![{Path(f).stem}]({Path(f).name})" for f in summary["figures"]]
    path.write_text("\n".join(lines) + "\n")


def plot_budgets(path: Path, cfg, groups: list[dict]) -> None:
    """Per task: IQM success vs query budget per labeler (learned-reward policies), baselines as bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(4.5 * len(cfg.tasks), 3.6), squeeze=False)
    budgets = sorted(cfg.budgets)
    for ax, task in zip(axes[0], cfg.tasks):
        mine = [g for g in groups if g["task"] == task]
        for policy in cfg.shared_policies:
            g = next((g for g in mine if g["policy"] == policy), None)
            if g:
                color, style = BASELINE_STYLE.get(policy, ("tab:olive", "-."))
                ax.axhline(g["iqm"], color=color, ls=style, label=f"{policy} (no labels)")
                ax.axhspan(*g["iqm_ci"], color=color, alpha=0.08)
        for k, labeler in enumerate(cfg.labelers):
            for policy, marker in zip([p for p in cfg.policies if p not in cfg.shared_policies], "os^vD"):
                pts = sorted((g["budget"], g) for g in mine if g["labeler"] == labeler and g["policy"] == policy)
                if not pts:
                    continue
                x = [b for b, _ in pts]
                y = np.array([g["iqm"] for _, g in pts])
                err = np.array([[g["iqm"] - g["iqm_ci"][0], g["iqm_ci"][1] - g["iqm"]] for _, g in pts]).T
                ax.errorbar(x, y, yerr=err, marker=marker, color=f"C{k}", capsize=3, label=f"{policy} / {labeler}")
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(task)
        ax.set_xlabel("query budget (labelled pairs)")
        ax.set_ylabel("success (IQM over seeds, 95% CI)")
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, cfg, rows: list[dict]) -> None:
    """Per task: success over training steps per policy (mean over seeds, bootstrap 95% band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.tasks), figsize=(4.5 * len(cfg.tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], cfg.tasks):
        for k, c in enumerate(r for r in rows if r["task"] == task):
            label = c["policy"] if c["labeler"] is None else f"{c['policy']} / {c['labeler']} / {c['budget']}"
            ax.plot(c["steps"], c["mean"], marker=".", color=f"C{k}", label=label)
            ax.fill_between(c["steps"], c["ci_low"], c["ci_high"], color=f"C{k}", alpha=0.15)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{task}: training-time evaluations")
        ax.set_xlabel("training step")
        ax.set_ylabel("success (mean over seeds)")
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_study_report(cfg, cells, failures: dict[str, str], wall_s: float) -> dict:
    out = Path(cfg.out_dir)
    rows = collect_results(cfg, cells, failures)
    agg = aggregate(cfg, rows)
    learning = curves(cfg, rows)
    figures = [out / "success_vs_budget.png"]
    plot_budgets(figures[0], cfg, agg["groups"])
    if learning:
        figures.append(out / "training_curves.png")
        plot_curves(figures[1], cfg, learning)
    summary = {"name": cfg.name, "wall_s": round(wall_s, 1), "loadavg": Path("/proc/loadavg").read_text().split()[:3]
               if Path("/proc/loadavg").exists() else None, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "episodes": cfg.episodes, "eval_seeds": f"{cfg.eval_seed}-{cfg.eval_seed + cfg.episodes - 1}",
               "cells_total": len(rows), "cells_finished": sum(r["status"] == "finished" for r in rows),
               "cells": rows, "aggregate": agg, "curves": learning, "figures": [str(f) for f in figures]}
    (out / "study.json").write_text(json.dumps(summary, indent=2))
    write_markdown(out / "study.md", summary)
    return summary
