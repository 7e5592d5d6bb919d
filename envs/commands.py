"""`robot-pref collect`: scripted episodes of a simulated task into a zarr dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class CollectConfig:
    task: str = field(default="lift", metadata={"help": "task name: lift, stack, door or cloth_fold"})
    tier: Literal["mixed", "expert", "medium", "random"] = field(
        default="mixed", metadata={"help": "collector quality; mixed cycles expert, medium, random"})
    episodes: int = field(default=30, metadata={"help": "number of episodes to add"})
    out: str = field(default="data/lift.zarr", metadata={"help": "dataset path; appends if it exists"})
    workers: int = field(default=0, metadata={
        "help": "Ray actors collecting in parallel (1 = in process, 0 = one per core)"})
    cameras: tuple[str, ...] = field(default=(), metadata={
        "help": "cameras to render online, comma separated (e.g. agentview); empty = states only"})
    size: int = field(default=84, metadata={"help": "square frame size in pixels"})
    seed: int = field(default=0, metadata={"help": "run seed; episode i gets a seed derived from (seed, i)"})
    horizon: int | None = field(default=None, metadata={"help": "steps per episode (default: the task's)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing dataset instead of appending"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: local)"})


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "collect", CollectConfig, "robot_pref.envs.collect:collect",
                help="Collect scripted episodes (expert/medium/random/mixed) of a simulated task")
