"""Import speed against a baseline measured in the same run, as a table with ratios.

1. LeRobot: `import-lerobot` frames/s (parquet + PyAV decoding + our store's writes) vs LeRobot's own
   `LeRobotDataset` reading every frame of the same videos (run in .venv-lerobot, tools/setup_lerobot.sh;
   skipped when absent). The dataset is synthetic: --episodes x --steps frames of one --size camera,
   written by `export-lerobot`.
2. States-only demos: `import-robomimic` replay steps/s (rebuild the scene per demo, set each state,
   the task's observation, reward and success, write) vs plain MuJoCo setting the same states and
   calling mj_forward on the same model.

    .venv/bin/python tools/bench_import.py [--episodes 20 --steps 100 --size 84 --demos 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEROBOT_PYTHON = ROOT / ".venv-lerobot/bin/python"
LEROBOT_READ = """
import sys, time
from lerobot.datasets.lerobot_dataset import LeRobotDataset
ds = LeRobotDataset("local/bench", root=sys.argv[1])
t = time.perf_counter()
for i in range(len(ds)):
    ds[i]
print(len(ds) / (time.perf_counter() - t))
"""


def synthetic_store(path: Path, episodes: int, steps: int, size: int) -> None:
    from robot_pref.data import Episode, TrajectoryDataset

    rng = np.random.default_rng(0)
    ds = TrajectoryDataset.create(path, obs_dim=8, action_dim=7, state_dim=8, fps=20)
    yy, xx = np.mgrid[:size, :size]
    for e in range(episodes):
        frames = np.empty((steps, size, size, 3), np.uint8)
        for t in range(steps):  # a moving blob on a gradient: compresses like a scene, not like noise
            cx, cy = size * (0.2 + 0.6 * t / steps), size * (0.5 + 0.3 * np.sin(t / 9 + e))
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (size / 6) ** 2)
            frames[t] = np.stack([120 + 100 * blob, 60 + 0.5 * yy, 200 - 150 * blob], -1).clip(0, 255)
        obs = rng.normal(size=(steps, 8)).astype(np.float32)
        ds.append_episode(Episode(obs=obs, action=rng.uniform(-1, 1, (steps, 7)).astype(np.float32), state=obs,
                                  frames={f"front_{size}": frames}, task="bench", goal="to move the blob"))


def bench_lerobot(tmp: Path, args) -> list[tuple[str, float, str]]:
    from robot_pref.data.commands import ExportLerobotConfig, ImportLerobotConfig
    from robot_pref.data.lerobot import export_lerobot, import_lerobot

    synthetic_store(tmp / "synthetic.zarr", args.episodes, args.steps, args.size)
    export_lerobot(ExportLerobotConfig(dataset=str(tmp / "synthetic.zarr"), out=str(tmp / "lerobot")))
    n = args.episodes * args.steps
    from robot_pref.data.lerobot import LeRobotSource

    source = LeRobotSource(tmp / "lerobot")
    t = time.perf_counter()
    for ep in source.episodes():
        source.read(ep)
    decode = n / (time.perf_counter() - t)
    t = time.perf_counter()
    import_lerobot(ImportLerobotConfig(source=str(tmp / "lerobot"), out=str(tmp / "imported.zarr")))
    ours = n / (time.perf_counter() - t)
    rows = [("import-lerobot: read + decode (PyAV)", decode, "frames/s"),
            ("import-lerobot: + write the store", ours, "frames/s")]
    if LEROBOT_PYTHON.exists():
        out = subprocess.run([str(LEROBOT_PYTHON), "-c", LEROBOT_READ, str(tmp / "lerobot")], capture_output=True,
                             text=True, check=True).stdout
        rows.insert(0, ("LeRobotDataset[i] for every frame", float(out.strip().splitlines()[-1]), "frames/s"))
    else:
        print(f"(no {LEROBOT_PYTHON}: run tools/setup_lerobot.sh to measure LeRobot's own reader)")
    return rows


def bench_replay(tmp: Path, args) -> list[tuple[str, float, str]]:
    import h5py
    import mujoco
    from robot_pref.envs import make_env

    from robot_pref.data.commands import ImportRobomimicConfig
    from robot_pref.data.robomimic import import_robomimic

    env = make_env("lift", seed=0)
    raw = env.unwrapped
    xml = raw.sim.model.get_xml()
    path = tmp / "demos.hdf5"
    rng = np.random.default_rng(0)
    demos = []
    with h5py.File(path, "w") as f:  # the layout robosuite's gather_demonstrations_as_hdf5 writes
        f.create_group("data").attrs.update({"env": "Lift", "env_info": json.dumps({"robots": "Panda"})})
        for d in range(args.demos):
            env.reset(seed=d)
            states, actions = [], []
            for _ in range(args.steps):
                states.append(raw.sim.get_state().flatten())
                actions.append(rng.uniform(-1, 1, 7))
                env.step(actions[-1])
            g = f.create_group(f"data/demo_{d + 1}")
            g.attrs["model_file"] = xml
            g["states"], g["actions"] = np.asarray(states), np.asarray(actions)
            demos.append(np.asarray(states))
    env.close()
    model = mujoco.MjModel.from_xml_string(xml)
    data = mujoco.MjData(model)
    t = time.perf_counter()
    for states in demos:
        for s in states:
            data.time, data.qpos[:], data.qvel[:] = s[0], s[1 : 1 + model.nq], s[1 + model.nq :]
            mujoco.mj_forward(model, data)
    plain = args.demos * args.steps / (time.perf_counter() - t)
    t = time.perf_counter()
    import_robomimic(ImportRobomimicConfig(file=str(path), out=str(tmp / "replayed.zarr")))
    ours = args.demos * args.steps / (time.perf_counter() - t)
    return [("MuJoCo set state + mj_forward", plain, "steps/s"), ("import-robomimic states-only replay", ours, "steps/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--demos", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tables = [bench_lerobot(Path(tmp), args), bench_replay(Path(tmp), args)]
    print(f"\n{'':<40}{'rate':>12}  {'unit':<9}{'vs baseline':>12}")
    for rows in tables:
        base = rows[0][1]
        for name, rate, unit in rows:
            print(f"{name:<40}{rate:>12.0f}  {unit:<9}{rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
