"""Offline RL: IQL and BC on trajectory datasets, checkpoints and the deployable `Policy`.

`robot_pref.rl.train.train(cfg)` trains, `robot_pref.rl.compare.compare(cfg)` runs the baseline
comparison, `load_policy(path)` loads a checkpoint for eval/rollout/hardware. Names here are
imported lazily so that reading the configs (the CLI does) does not pull in torch.
"""

from robot_pref.lazy import lazy_exports

_EXPORTS = {
    "Policy": "robot_pref.rl.checkpoint",
    "load_policy": "robot_pref.rl.checkpoint",
    "TrainConfig": "robot_pref.rl.config",
    "CompareConfig": "robot_pref.rl.config",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
