"""`robot-pref eval`."""

from __future__ import annotations


def evaluate(cfg) -> dict:
    from robot_pref.eval.rollout import evaluate as run

    info = run(cfg)
    lo, hi = info["ci"]
    print(f"{info['task']}: success {info['successes']}/{info['episodes']} = {100 * info['success_rate']:.0f}% "
          f"(95% CI {100 * lo:.0f}-{100 * hi:.0f}%), mean return {info['mean_return']:.1f}")
    return info


def register(sub) -> None:
    from robot_pref.config import add_command
    from robot_pref.eval.rollout import EvalConfig

    add_command(sub, "eval", EvalConfig, evaluate,
                help="Roll a policy out in the simulator: success rate with a Wilson interval, returns, videos")
