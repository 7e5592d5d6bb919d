"""The quickstart end to end, one stage after another (``parallel=false``) vs independent stages at once.

Both runs start from an empty run directory each and use the same config and seeds, so they do the
same work; only the schedule differs. Printed: per-stage wall time and CPU seconds (of the process
that ran the stage: this one, or the stage's Ray task; Ray actors' CPU is not in it), the total wall
time and the whole machine's CPU utilisation over the run, and the success table of both runs, which
must agree within the evaluation's noise. Run it on a quiet machine: other work on the cores shows up
in the utilisation and in both wall times.

Machines of one kind differ from day to day (the quickstart took 291 s on 2026-11-28 and 647 s on
2026-12-07, both sequential on 2 cores, with nearly the same settings), so the run starts with two probes of this machine's speed, printed
with the tables: one-thread GFLOP/s of a 256x256x256 matmul (the trainings' kind of work) and ms per
robosuite Lift step (collect and evaluation: Python controller code). Compare wall times across days
together with them.

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


def machine_speed() -> dict:
    """Two probes, ~10 s, in a fresh process: GFLOP/s of a one-thread 256^3 matmul, ms per robosuite Lift step."""
    probe = """
import json, os, time
import numpy as np, torch
torch.set_num_threads(1)
a, b = torch.randn(256, 256), torch.randn(256, 256)
for _ in range(50): a @ b
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 3.0:
    for _ in range(50): a @ b
    n += 50
gflops = n * 2 * 256 ** 3 / (time.perf_counter() - start) / 1e9
from robot_pref.envs import make_env
with make_env("lift", seed=0) as env:
    env.reset()
    action = np.zeros(env.action_dim)
    for _ in range(10): env.step(action)
    start = time.perf_counter()
    for _ in range(50): env.step(action)
    step_ms = (time.perf_counter() - start) * 20
print(json.dumps({"matmul_gflops_1thread": round(gflops, 1), "lift_step_ms": round(step_ms, 2),
                  "loadavg_1min": os.getloadavg()[0]}))
"""
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both runs")
    ap.add_argument("--out", default="", help="keep both run directories here (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_pipeline_"))
    speed = machine_speed()
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
    print(f"\nthis machine before the runs: {speed['matmul_gflops_1thread']} GFLOP/s (one-thread 256^3 matmul), "
          f"{speed['lift_step_ms']} ms per Lift step, load average {speed['loadavg_1min']:.2f}")
    print(f"run directories: {root}")


if __name__ == "__main__":
    main()
