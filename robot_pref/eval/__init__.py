"""Policy evaluation in the simulator: rollouts, success rates with confidence intervals, videos."""

from robot_pref.eval.rollout import EvalConfig, evaluate, run_episode, wilson_interval

__all__ = ["EvalConfig", "evaluate", "run_episode", "wilson_interval"]
