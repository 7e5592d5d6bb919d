"""`robot-pref fit-reward` and `robot-pref relabel` (argument parsing only; torch loads when a command runs)."""

from __future__ import annotations

from robot_pref.reward.config import FitRewardConfig, RelabelConfig


def fit_reward(cfg: FitRewardConfig) -> dict:
    from robot_pref.reward.train import fit_reward as run

    return run(cfg)


def relabel(cfg: RelabelConfig) -> dict:
    from robot_pref.reward.relabel import relabel as run

    return run(cfg)


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "fit-reward", FitRewardConfig, fit_reward,
                help="Fit an image reward ensemble on preference labels (Bradley-Terry); saves checkpoint + eval")
    add_command(sub, "relabel", RelabelConfig, relabel,
                help="Write the learned reward of every frame into the dataset as rewards/<key> (resumable)")
