"""Reward models learned from preference labels: training, evaluation, active queries, relabeling.

Exports are resolved lazily so `robot-pref --help` and the feedback registry do not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "ModelSpec": "models", "RewardModel": "models", "load_reward_model": "models", "save_reward_model": "models",
    "FitRewardConfig": "config", "RelabelConfig": "config",
    "fit": "train", "fit_reward": "train", "make_pairs": "train", "preference_loss": "train",
    "evaluate": "evaluation", "frame_rewards": "evaluation",
    "DisagreementSampler": "active", "active_learning_curve": "active",
    "relabel": "relabel",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robot_pref.reward' has no attribute {name!r}")
    return getattr(import_module(f"robot_pref.reward.{_EXPORTS[name]}"), name)
