"""`compare(cfg)`: BC, IQL on the true reward (oracle) and IQL on a learned reward, on one dataset.

Each contender trains in ``out/<name>`` (so a rerun resumes or skips finished training) and is
evaluated from its last checkpoint (no selection on evaluation episodes); the table of success
rates with 95% Wilson intervals goes to ``compare.json`` and ``compare.md``. Episodes stop at
success, so a policy that finishes fast has short episodes and a small return: read success first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robot_pref.config import from_dict
from robot_pref.rl.config import CompareConfig, TrainConfig


def contenders(cfg: CompareConfig) -> dict[str, dict[str, Any]]:
    runs = {"bc": {"algo": "bc"}, "iql_true": {"algo": "iql", "reward_key": "true"}}
    if cfg.reward_key:
        runs[f"iql_{cfg.reward_key}"] = {"algo": "iql", "reward_key": cfg.reward_key}
    return runs


def compare(cfg: CompareConfig) -> dict[str, Any]:
    from robot_pref.eval.rollout import EvalConfig, evaluate  # the comparison is train + eval by definition
    from robot_pref.rl.train import train

    if not cfg.dataset:
        raise ValueError("no dataset: pass --dataset PATH.zarr")
    out = Path(cfg.out)
    rows = []
    for name, fields in contenders(cfg).items():
        tcfg = from_dict(TrainConfig, {**cfg.train, "dataset": cfg.dataset, "out": str(out / name),
                                       "steps": cfg.steps, "seed": cfg.seed, "device": cfg.device, **fields})
        info = train(tcfg)
        result = evaluate(EvalConfig(policy=info["checkpoint"], episodes=cfg.episodes, workers=cfg.workers,
                                     videos=cfg.videos, out=str(out / name / "eval")))
        rows.append({"name": name, "algo": tcfg.algo, "reward_key": tcfg.reward_key or "-", "steps": info["steps"],
                     "train_wall_s": info["wall_s"], "success_rate": result["success_rate"], "ci": result["ci"],
                     "mean_return": result["mean_return"], "mean_steps": result["mean_steps"],
                     "episodes": result["episodes"]})
    summary = {"dataset": cfg.dataset, "rows": rows}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    table = format_table(rows)
    (out / "compare.md").write_text(table + "\n")
    print(table)
    return summary


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| policy | reward | updates | train wall (s) | success (95% Wilson CI) | episode steps | return |",
             "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lo, hi = r["ci"]
        lines.append(f"| {r['algo'].upper()} | {r['reward_key']} | {r['steps']} | {r['train_wall_s']:.0f} | "
                     f"{100 * r['success_rate']:.0f}% ({100 * lo:.0f}-{100 * hi:.0f}%, n={r['episodes']}) | "
                     f"{r['mean_steps']:.0f} | {r['mean_return']:.1f} |")
    return "\n".join(lines)
