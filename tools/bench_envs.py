"""Speed of the simulated tasks: reset, step and render rates, each against a baseline in the same run.

    .venv/bin/python tools/bench_envs.py [--tasks lift,cloth_fold] [--steps 150] [--frames 60]

Rows per task: reset with robosuite's default hard_reset=True (baseline) vs TaskEnv's soft reset; steps/s
of robosuite's own step vs TaskEnv.step (which adds a forward pass and recomputed observations); frames/s
of TaskEnv.render at 84x84 with every quality option on (baseline) vs the fast default. A last table
sets each task's TaskEnv steps/s and fast frames/s beside the first task's (Lift: the cloth's target is
>= 30 env steps/s).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from robot_pref.envs import RenderOptions, make_env  # noqa: E402
from robot_pref.envs.tasks import env_kwargs, get_task  # noqa: E402


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def bench(task: str, args) -> list[tuple]:
    import robosuite

    env = make_env(task, seed=0)  # imports the task's module first, which registers its robosuite env
    hard = robosuite.make(get_task(task).env_name, **env_kwargs(task, hard_reset=True))
    rows = []
    hard_resets = rate(hard.reset, args.resets)
    soft_resets = rate(env.reset, args.resets * 20)
    rows.append(("reset/s", "hard_reset=True", hard_resets, "TaskEnv (soft)", soft_resets))
    hard.close()

    rng = np.random.default_rng(0)
    env.reset(seed=0)
    rate(lambda: env.step(rng.uniform(-1, 1, env.action_dim)), 20)  # warm up (robosuite jit-compiles on first use)
    raw = rate(lambda: env.unwrapped.step(rng.uniform(-1, 1, env.action_dim)), args.steps)
    env.reset(seed=0)
    steps = rate(lambda: env.step(rng.uniform(-1, 1, env.action_dim)), args.steps)
    rows.append(("steps/s", "robosuite step", raw, "TaskEnv.step", steps))

    fancy = RenderOptions(shadows=True, reflections=True, multisample=True)
    env.render("agentview", 84, 84, fancy), env.render("agentview", 84, 84)  # build both renderers
    slow = rate(lambda: env.render("agentview", 84, 84, fancy), max(args.frames // 4, 5))
    fast = rate(lambda: env.render("agentview", 84, 84), args.frames)
    rows.append(("frames/s 84x84", "all options on", slow, "fast default", fast))
    env.close()

    print(f"task {task}")
    print(f"{'measure':<16}{'baseline':<18}{'rate':>10}   {'ours':<16}{'rate':>10}{'ratio':>9}")
    for name, base_name, base, ours_name, ours in rows:
        print(f"{name:<16}{base_name:<18}{base:10.1f}   {ours_name:<16}{ours:10.1f}{ours / base:8.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="lift,cloth_fold", help="comma separated; the first is the reference")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--resets", type=int, default=5)
    args = parser.parse_args()

    tasks = [t for t in args.tasks.split(",") if t]
    results = {task: bench(task, args) for task in tasks}
    ref = tasks[0]
    steps = {t: rows[1][4] for t, rows in results.items()}
    frames = {t: rows[2][4] for t, rows in results.items()}
    print(f"\n{'task':<14}{'steps/s':>10}{'vs ' + ref:>12}{'frames/s':>11}{'vs ' + ref:>12}")
    for t in tasks:
        print(f"{t:<14}{steps[t]:10.1f}{steps[t] / steps[ref]:11.2f}x{frames[t]:11.1f}{frames[t] / frames[ref]:11.2f}x")


if __name__ == "__main__":
    main()
