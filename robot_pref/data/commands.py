"""`robot-pref info`, the imports (`import-robomimic`, `import-lerobot`) and the exports."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field


@dataclass
class InfoConfig:
    dataset: str = field(default="", metadata={"help": "path of the zarr dataset"})
    json: bool = field(default=False, metadata={"help": "print the summary as JSON"})
    verify: bool = field(default=False, metadata={"help": "also decode every committed row and frame (slow)"})


def info(cfg: InfoConfig) -> dict:
    from robot_pref.data.dataset import TrajectoryDataset

    ds = TrajectoryDataset.open(cfg.dataset)
    summary = ds.summary()
    if cfg.verify:
        summary["verified"] = ds.verify(progress=True)
    if cfg.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    lines = [
        f"dataset   {s['path']}",
        f"env       {s['env'].get('name', '-')}{' (' + s['env']['source'] + ')' if 'source' in s['env'] else ''}"
        f"  task(s) {', '.join(s['tasks']) or '-'}  fps {s['fps']:g}",
        f"episodes  {s['episodes']}   frames {s['frames']}",
        "arrays:",
    ]
    lines += [f"  {k:<28} {tuple(v)}" for k, v in s["arrays"].items()]
    if s["rendered"]:
        lines.append("cameras (episodes rendered):")
        lines += [f"  {k:<28} {n}/{s['episodes']}" for k, n in s["rendered"].items()]
    lines.append(f"ground truth: {', '.join(s['ground_truth']) or 'none'}")
    lines.append(f"{'tier':<10}{'episodes':>10}{'frames':>10}{'success':>10}")
    for tier, row in s["tiers"].items():
        rate = "-" if row["success_rate"] is None else f"{100 * row['success_rate']:.0f}%"
        lines.append(f"{tier:<10}{row['episodes']:>10}{row['frames']:>10}{rate:>10}")
    if s["success_rate"] is not None:
        lines.append(f"{'all':<10}{s['episodes']:>10}{s['frames']:>10}{100 * s['success_rate']:>9.0f}%")
    if "verified" in s:
        lines.append("verified: " + ", ".join(f"{k} {n} rows" for k, n in s["verified"].items()))
    return "\n".join(lines)


@dataclass
class ImportRobomimicConfig:
    file: str = field(default="", metadata={"help": "robomimic hdf5 file (also the first positional argument)"})
    out: str = field(default="", metadata={"help": "zarr dataset to create"})
    obs_keys: tuple[str, ...] = field(default=(), metadata={
        "help": "low-dim obs keys to concatenate, comma separated, in order (default: robomimic's "
                "robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos,object when present, else all, sorted)"})
    images: bool = field(default=True, metadata={"help": "import uint8 image observations as frames"})
    flip_images: bool = field(default=True, metadata={"help": "flip robosuite's upside-down images upright"})
    filter_key: str = field(default="", metadata={"help": "import only the demos of mask/<key> (e.g. train)"})
    task: str = field(default="", metadata={"help": "task name for the episode table (default: env name, lower case)"})
    goal: str = field(default="", metadata={"help": "goal text for the labeler"})
    terminals: bool = field(default=False, metadata={
        "help": "take a demo's last `dones` as a true terminal state (off: robomimic's dones mean success or "
                "end of demo, and the horizon is a time-out, as for collected data)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


def import_robomimic(cfg: ImportRobomimicConfig) -> dict:
    from robot_pref.data.robomimic import import_robomimic as run

    summary = run(cfg)
    print(format_summary(summary))
    return summary


@dataclass
class ImportLerobotConfig:
    source: str = field(default="", metadata={
        "help": "LeRobotDataset folder, or a repo id already on disk (LeRobot's home or the HF cache; never "
                "downloaded); also the first positional argument"})
    out: str = field(default="", metadata={"help": "zarr dataset to create (an unfinished import there resumes)"})
    task: str = field(default="", metadata={"help": "task name for the episode table (default: the dataset's name)"})
    terminals: bool = field(default=False, metadata={
        "help": "take next.done on an episode's last frame as a true terminal (off: a recording's end is a "
                "time-out)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


def import_lerobot(cfg: ImportLerobotConfig) -> dict:
    from robot_pref.data.lerobot import import_lerobot as run

    summary = run(cfg)
    print(format_summary(summary))
    return summary


@dataclass
class ExportLerobotConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset to export"})
    out: str = field(default="", metadata={"help": "folder of the LeRobotDataset (v3.0) to write"})
    reward_key: str = field(default="", metadata={
        "help": "learned reward rewards/<key> to write as next.reward ('true': the ground truth; default: none)"})
    cameras: tuple[str, ...] = field(default=(), metadata={
        "help": "frame keys to write as videos, comma separated (default: every key rendered for all episodes)"})
    vcodec: str = field(default="libsvtav1", metadata={"help": "video encoder (LeRobot's default AV1: libsvtav1)"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


def export_lerobot(cfg: ExportLerobotConfig) -> dict:
    from robot_pref.data.lerobot import export_lerobot as run

    summary = run(cfg)
    print(f"wrote {summary['path']}: {summary['episodes']} episodes, {summary['frames']} frames, "
          f"videos {', '.join(summary['videos']) or 'none'}, next.reward {summary['reward'] or 'not written'}")
    return summary


@dataclass
class ExportRobomimicConfig:
    dataset: str = field(default="", metadata={"help": "zarr dataset to export"})
    out: str = field(default="", metadata={"help": "robomimic .hdf5 file to write"})
    reward_key: str = field(default="", metadata={
        "help": "learned reward rewards/<key> to write as rewards ('true': the ground truth; default: zeros)"})
    cameras: tuple[str, ...] = field(default=(), metadata={
        "help": "frame keys to write as obs/<camera>_image, comma separated (default: every fully rendered key)"})
    flip_images: bool = field(default=True, metadata={"help": "write images upside down, as robosuite records them"})
    overwrite: bool = field(default=False, metadata={"help": "replace --out if it exists"})


def export_robomimic(cfg: ExportRobomimicConfig) -> dict:
    from robot_pref.data.robomimic import export_robomimic as run

    summary = run(cfg)
    print(f"wrote {summary['path']}: {summary['demos']} demos, {summary['frames']} steps, obs {', '.join(summary['obs'])}"
          f"{', images ' + ', '.join(summary['images']) if summary['images'] else ''}, rewards "
          f"{summary['reward'] or 'zeros'}")
    return summary


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "info", InfoConfig, info, help="Summarise a dataset: episodes, arrays, cameras, tiers, success")
    parser = add_command(sub, "import-robomimic", ImportRobomimicConfig, import_robomimic,
                         help="Convert a robomimic hdf5 dataset (low-dim obs, images, states, rewards) to a "
                         "zarr dataset")
    parser.add_argument("file", nargs="?", default=argparse.SUPPRESS, help="the robomimic .hdf5 file")
    parser = add_command(sub, "import-lerobot", ImportLerobotConfig, import_lerobot,
                         help="Convert a LeRobotDataset (v3.0 or v2.x: actions, state, cameras, tasks, rewards) "
                         "to a zarr dataset")
    parser.add_argument("source", nargs="?", default=argparse.SUPPRESS, help="the LeRobot dataset folder or repo id")
    add_command(sub, "export-robomimic", ExportRobomimicConfig, export_robomimic,
                help="Write a dataset as a robomimic hdf5 file (obs parts, images, states, a learned reward as rewards)")
    add_command(sub, "export-lerobot", ExportLerobotConfig, export_lerobot,
                help="Write a dataset as a LeRobotDataset v3.0 (videos, tasks, a learned reward as next.reward)")
