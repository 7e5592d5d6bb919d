"""Write the small LeRobot dataset that tests/test_lerobot.py imports, with LeRobot's own writer.

Run once in the LeRobot venv (tools/setup_lerobot.sh), then commit tests/fixtures/lerobot_v30/:

    .venv-lerobot/bin/python tools/make_lerobot_fixture.py

Three episodes at 10 fps of a made-up arm: a 4-d action, a 5-d ``observation.state``, a video camera
(``observation.images.front``, AV1 through PyAV, LeRobot's default) and an image camera
(``observation.images.wrist``, PNG in the parquet), ``next.reward`` / ``next.done`` / ``next.success``
and two task texts. A 4 KB video size limit puts episodes 0 and 1 in one video file and episode 2 in a second
while the parquet data of all episodes shares one file, so both of LeRobot's file layouts occur.
``expected.npz`` beside it keeps what went in (actions, states, rewards, source images) and what
LeRobot's own reader decodes from the videos, so the import test compares against LeRobot, not us.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

LENGTHS = (12, 7, 15)
TASKS = ("pick up the red cube", "pick up the red cube", "push the block to the left")
FPS = 10
FRONT, WRIST = (24, 32), (16, 16)


def frame(t: int, e: int, shape: tuple[int, int]) -> np.ndarray:
    """A frame whose brightness tells its step and episode, with a moving square (survives AV1)."""
    h, w = shape
    img = np.full((h, w, 3), (20 + 13 * t + 60 * e) % 200 + 20, np.uint8)
    img[:, :, 1] //= 2
    x = (3 * t) % (w - 6)
    img[h // 4 : h // 4 + 6, x : x + 6] = (250, 250, 40)
    return img


def episode_values(e: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(e)
    T = LENGTHS[e]
    success = np.zeros((T, 1), bool)
    if e != 1:  # episode 1 fails
        success[-3:] = True
    return {
        "action": rng.uniform(-1, 1, (T, 4)).astype(np.float32),
        "observation.state": rng.normal(size=(T, 5)).astype(np.float32),
        "observation.images.front": np.stack([frame(t, e, FRONT) for t in range(T)]),
        "observation.images.wrist": np.stack([frame(t, e + 1, WRIST) for t in range(T)]),
        "next.reward": np.linspace(0, 1, T, dtype=np.float32)[:, None] * (e != 1),
        "next.done": (np.arange(T) == T - 1)[:, None],
        "next.success": success,
    }


def main() -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "tests/fixtures/lerobot_v30"))
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    features = {
        "action": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "gripper"]},
        "observation.state": {"dtype": "float32", "shape": (5,), "names": [f"joint_{i}" for i in range(5)]},
        "observation.images.front": {"dtype": "video", "shape": (*FRONT, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": (*WRIST, 3), "names": ["height", "width", "channels"]},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "next.success": {"dtype": "bool", "shape": (1,), "names": None},
    }
    ds = LeRobotDataset.create("robot_pref/fixture_v30", fps=FPS, features=features, root=out,
                               robot_type="so100_follower", use_videos=True)
    ds.meta.update_chunk_settings(video_files_size_in_mb=0.004)
    expected: dict[str, np.ndarray] = {}
    for e, task in enumerate(TASKS):
        values = episode_values(e)
        for t in range(LENGTHS[e]):
            ds.add_frame({k: v[t] for k, v in values.items()} | {"task": task})
        ds.save_episode(parallel_encoding=False)
        expected |= {f"{k}/{e}": v for k, v in values.items()}
    ds.finalize()
    # what LeRobot's own reader returns (CHW float in [0, 1]) as uint8 HWC
    reader = LeRobotDataset("robot_pref/fixture_v30", root=out)
    for e in range(len(TASKS)):
        start = int(reader.meta.episodes[e]["dataset_from_index"])
        decoded = [reader[start + t]["observation.images.front"] for t in range(LENGTHS[e])]
        expected[f"lerobot_decoded.front/{e}"] = np.stack(
            [(255 * x.permute(1, 2, 0).numpy()).round().astype(np.uint8) for x in decoded])
    np.savez_compressed(out.parent / "lerobot_v30_expected.npz", **expected)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1024:.0f} KB")


if __name__ == "__main__":
    main()
