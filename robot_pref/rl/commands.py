"""`robot-pref train` and `robot-pref compare`."""

from __future__ import annotations


def train(cfg) -> dict:
    from robot_pref.rl.train import train as run

    info = run(cfg)
    print(f"trained {info['algo']} for {info['steps']} steps in {info['wall_s']:.0f} s -> {info['checkpoint']}")
    return info


def register(sub) -> None:
    from robot_pref.config import add_command
    from robot_pref.rl.config import CompareConfig, EncodeConfig, TrainConfig

    add_command(sub, "train", TrainConfig, train,
                help="Train IQL or BC offline on a dataset (reward: --reward-key true or a learned key)")
    add_command(sub, "encode", EncodeConfig, "robot_pref.rl.features:encode_features",
                help="Encode frames once with a frozen encoder into features/ (resumable), for pixel policies")
    add_command(sub, "compare", CompareConfig, "robot_pref.rl.compare:compare",
                help="Train BC, IQL on the true reward and IQL on a learned reward; evaluate and tabulate")
