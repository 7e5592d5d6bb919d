"""The quickstart end to end, one stage after another (``parallel=false``) vs independent stages at once.

Both runs start from an empty run directory each and use the same config and seeds, so they do the
same work; only the schedule differs. Printed: per-stage wall time and CPU seconds (of the process
that ran the stage: this one, or the stage's Ray task; Ray actors' CPU is not in it), the total wall
time and the whole machine's CPU utilisation over the run, and the success table of both runs, which
must agree within the evaluation's noise. Run it on a quiet machine: other work on the cores shows up
in the utilisation and in both wall times.

    .venv/bin/python tools/bench_pipeline.py [--config configs/quickstart.yaml] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(config: str, run_dir: Path, parallel: bool, sets: list[str]) -> dict:
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray for each run
    cmd = [sys.executable, "-m", "robot_pref", "run", config, f"--set=run_dir={run_dir}",
           f"--set=parallel={str(parallel).lower()}", *[f"--set={kv}" for kv in sets]]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    stages = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "stages").glob("*.json"))}
    return {"run": json.loads((run_dir / "run.json").read_text()), "stages": stages,
            "report": json.loads((run_dir / "report.json").read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both runs")
    ap.add_argument("--out", default="", help="keep both run directories here (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_pipeline_"))
    results = {mode: run(args.config, root / mode, mode == "parallel", args.set)
               for mode in ("sequential", "parallel")}
    seq, par = results["sequential"], results["parallel"]

    print("\n| stage | sequential s | CPU s | parallel s | CPU s | where (parallel) |\n|---|---:|---:|---:|---:|---|")
    for name in seq["run"]["stages_run"]:  # in stage order
        s, p = seq["stages"][name], par["stages"].get(name, {})
        print(f"| {name} | {s['seconds']:.1f} | {s.get('cpu_s', 0):.1f} | {p.get('seconds', 0):.1f} | "
              f"{p.get('cpu_s', 0):.1f} | {'Ray task' if p.get('remote') else 'driver'} |")
    print("\n| schedule | wall s | vs sequential | machine CPU utilisation |\n|---|---:|---:|---:|")
    for mode, r in results.items():
        wall = r["run"]["wall_s"]
        print(f"| {mode} | {wall:.0f} | {seq['run']['wall_s'] / wall:.2f}x | "
              f"{100 * r['run']['machine_cpu_utilization']:.0f}% |")
    print("\n| policy | sequential success (95% CI) | parallel success (95% CI) |\n|---|---|---|")
    for policy, s in seq["report"]["policies"].items():
        p = par["report"]["policies"].get(policy, {})
        cell = lambda r: f"{100 * r['success_rate']:.0f}% ({100 * r['ci'][0]:.0f}-{100 * r['ci'][1]:.0f}%)"  # noqa: E731
        print(f"| {policy} | {cell(s)} | {cell(p) if p else '-'} |")
    print(f"\nrun directories: {root}")


if __name__ == "__main__":
    main()
