"""Reward models learned from preference labels: training, evaluation, active queries, relabeling.

Exports are resolved lazily so `robot-pref --help` and the feedback registry do not import torch.
"""

from robot_pref.lazy import lazy_exports

_MODULES = {
    "models": ("ModelSpec", "RewardModel", "load_reward_model", "save_reward_model"),
    "config": ("FitRewardConfig", "RelabelConfig"),
    "train": ("fit", "fit_reward", "make_pairs", "preference_loss"),
    "evaluation": ("evaluate", "frame_rewards"),
    "active": ("DisagreementSampler", "active_learning_curve"),
    "relabel": ("relabel",),
}
__getattr__, __all__ = lazy_exports(__name__, {name: f"robot_pref.reward.{module}"
                                               for module, names in _MODULES.items() for name in names})
