"""`robot-pref fit-reward` and `robot-pref relabel` (argument parsing only; torch loads when a command runs)."""

from __future__ import annotations

from robot_pref.reward.config import FitRewardConfig, RelabelConfig


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "fit-reward", FitRewardConfig, "robot_pref.reward.train:fit_reward",
                help="Fit an image reward ensemble on preference labels (Bradley-Terry); saves checkpoint + eval")
    add_command(sub, "relabel", RelabelConfig, "robot_pref.reward.relabel:relabel",
                help="Write the learned reward of every frame into the dataset as rewards/<key> (resumable)")
