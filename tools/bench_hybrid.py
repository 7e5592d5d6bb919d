"""Hybrid human/VLM routing on Lift: reward quality and IQL(learned) success vs the human budget.

Every cell is one `robot-pref run` of configs/lift_hybrid.yaml on the same dataset (made once, e.g.
``robot-pref run configs/lift_hybrid.yaml --set run_dir=/tmp/h/base --set stop_after=render``) with
the same 2000 uniform pairs and the same learner; only who answers which pair changes:

    vlm-only      the vlm-like teacher (the simulated VLM) answers every pair
    hybrid-5/10/20  it answers first; the default rule (uncertainty) sends 5 / 10 / 20% to a simulated
                  person (mistake teacher, 2% flips)
    hybrid-10-disagreement  10%, ranked by the vlm-only run's reward-ensemble disagreement after the
                  abstentions (--hybrid.rule disagreement)
    human-only    the simulated person answers every pair (hybrid at 100%: the same person's draws)

Columns: label accuracy vs the true reward (all pairs), the reward's held-out true-order accuracy
(fit-reward's eval) and IQL(learned) success over the eval episodes (one seed: say so when quoting).
Cells run one after another (each relabels the dataset's learned reward).

    .venv/bin/python tools/bench_hybrid.py --dataset /tmp/h/base/dataset.zarr --out /tmp/h/grid
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VLM = ["label.teacher.kind=vlm-like"]


def hybrid(fraction: float, *extra: str) -> list[str]:
    return [*VLM, "label.labeler=hybrid", "label.hybrid.machine=teacher", "label.hybrid.human=teacher",
            f"label.hybrid.fraction={fraction}", *extra]


def cells(out: Path) -> dict[str, list[str]]:
    return {
        "vlm-only": [*VLM, "label.labeler=teacher"],
        "hybrid-5": hybrid(0.05),
        "hybrid-10": hybrid(0.10),
        "hybrid-20": hybrid(0.20),
        "hybrid-10-disagreement": hybrid(0.10, "label.hybrid.rule=disagreement",
                                         f"label.hybrid.reward_model={out / 'vlm-only' / 'reward'}"),
        "human-only": hybrid(1.0),
    }


def run_cell(name: str, sets: list[str], args) -> dict:
    run_dir = Path(args.out) / name
    common = [f"dataset={args.dataset}", f"run_dir={run_dir}", f"label.pairs={args.pairs}",
              f"train.steps={args.steps}", f"eval.episodes={args.episodes}", "policies=[iql-learned]",
              f"fit_reward.seed={args.seed}", f"train.seed={args.seed}"]
    cmd = [sys.executable, "-m", "robot_pref", "run", str(REPO / "configs/lift_hybrid.yaml"),
           *(f"--set={kv}" for kv in [*common, *sets])]
    t0 = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1"))
    if proc.returncode:
        raise SystemExit(f"{name} failed (rc {proc.returncode}); see {run_dir.with_suffix('.log')}")
    report = json.loads((run_dir / "report.json").read_text())
    labels = report["labels"]
    policy = report["policies"].get("iql-learned", {})
    return {"cell": name, "human_labels": labels.get("run_counts", {}).get("human_answered", 0),
            "label_accuracy": labels["quality"]["accuracy"],
            "reward_true_order": report["reward"].get("val_true_order_accuracy"),
            "iql_success": policy.get("success_rate"), "episodes": policy.get("episodes"),
            "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict]) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["| labels | human labels | label accuracy | reward true-order (held-out) | IQL(learned) success |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['cell']} | {r['human_labels']} | {pct(r['label_accuracy'])} | {pct(r['reward_true_order'])} "
              f"| {pct(r['iql_success'])} ({r['episodes']} ep) |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="rendered Lift dataset (frames/agentview_64)")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", type=int, default=2000)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", default="", help="comma-separated subset (default: all, in order)")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    grid = cells(Path(args.out))
    names = args.cells.split(",") if args.cells else list(grid)
    rows = []
    for name in names:
        rows.append(run_cell(name, grid[name], args))
        print(json.dumps(rows[-1]), f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
        (Path(args.out) / "hybrid_table.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    print(f"load average at the end: {open('/proc/loadavg').read().strip()}")


if __name__ == "__main__":
    main()
