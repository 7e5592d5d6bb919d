"""Random batch reads of 84x84 frames: the store's layout and reader against baselines, in one run.

    .venv/bin/python tools/bench_dataset.py [--frames 16384] [--batch 256] [--repeats 15] [--source render]

Frames: by default a few Lift episodes (random actions) rendered at 84x84 through robot_pref.envs and
repeated to --frames, because compression and decode speed depend on real image statistics
(neighbouring frames are alike); ``--source synthetic`` uses smooth noise images instead (no MuJoCo).
Rows (all from the same frames, all in the OS page cache — a cold disk is slower for everyone):
  in-RAM numpy          frames[idx] on an array in memory: the ceiling
  zarr chunks of 64     a plain zarr array chunked 64 frames per file, read with zarr (oindex)
  zarr on the store's shards  the store's layout (256-frame shards, 8-frame lz4hc chunks) read with zarr
  1-frame zstd shards   the first layout (256-frame shards of 1-frame zstd chunks), ShardReader
  store get()           TrajectoryDataset.get: the store's files through ShardReader (direct preads)
  BatchSampler          ds.batches(...) with 2 reader threads prefetching, learner doing nothing
then a learner step of --learner-ms fed by get() in line vs by the prefetching BatchSampler, and a
sequential row: whole episodes in order (as iter_episodes reads them) from the store vs 64-frame chunks.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from robot_pref.data import Episode, TrajectoryDataset
from robot_pref.data.shards import ShardReader

SIZE = 84


def rendered_frames(episodes: int, T: int) -> list[np.ndarray]:
    """Lift episodes under random actions, rendered at SIZE through the envs room's renderer."""
    from robot_pref.envs import make_env

    rng = np.random.default_rng(0)
    out = []
    with make_env("lift", seed=0) as env:
        for e in tqdm(range(episodes), desc="render source frames", unit="episode"):
            env.reset(seed=e)
            frames = []
            for _ in range(T):
                frames.append(env.render("agentview", SIZE, SIZE))
                env.step(rng.uniform(-1, 1, env.action_dim))
            out.append(np.stack(frames))
    return out


def synthetic_frames(rng: np.random.Generator, T: int) -> np.ndarray:
    """Smooth scenes with a moving blob and sensor noise: compress roughly like rendered frames."""
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    base = np.stack([xx * 2, yy * 2, (xx + yy)], -1) + rng.uniform(0, 60, size=3)
    out = np.empty((T, SIZE, SIZE, 3), np.uint8)
    cx, cy = rng.uniform(20, 64, size=2)
    for t in range(T):
        cx, cy = np.clip([cx + rng.normal(0, 1.5), cy + rng.normal(0, 1.5)], 10, 74)
        blob = 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60)[..., None]
        out[t] = np.clip(base + blob + rng.normal(0, 2, size=(SIZE, SIZE, 3)), 0, 255)
    return out


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16384)
    ap.add_argument("--episode", type=int, default=160, help="frames per episode")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--learner-ms", type=float, default=20.0,
                    help="a simulated learner step (sleeps, releasing the GIL like a GPU step)")
    ap.add_argument("--dir", default=None, help="where to write the stores (default: a temp dir, removed)")
    ap.add_argument("--source", choices=("render", "synthetic"), default="render")
    ap.add_argument("--source-episodes", type=int, default=3, help="rendered episodes, repeated to --frames")
    args = ap.parse_args()

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench_dataset_"))
    rng = np.random.default_rng(0)
    n_eps = args.frames // args.episode
    key = f"frames/agentview_{SIZE}"
    try:
        ds = TrajectoryDataset.create(root / "store.zarr", obs_dim=19, action_dim=7, state_dim=32, fps=20,
                                      overwrite=True)
        shape = (n_eps * args.episode, SIZE, SIZE, 3)
        chunked = zarr.create_array(root / "chunk64.zarr", shape=shape, chunks=(64, SIZE, SIZE, 3), dtype="uint8",
                                    overwrite=True)
        first = zarr.create_array(root / "first.zarr", shape=shape, chunks=(1, SIZE, SIZE, 3),
                                  shards=(256, SIZE, SIZE, 3), dtype="uint8", overwrite=True)
        source = rendered_frames(args.source_episodes, args.episode) if args.source == "render" else None
        ram = np.empty(shape, np.uint8)
        for e in tqdm(range(n_eps), desc="write", unit="episode"):
            T = args.episode
            frames = source[e % len(source)] if source else synthetic_frames(rng, T)
            ram[e * T:(e + 1) * T] = frames
            ds.append_episode(Episode(obs=rng.normal(size=(T, 19)), action=rng.normal(size=(T, 7)),
                                      state=rng.normal(size=(T, 32)), frames={key.split("/")[1]: frames}))
        chunked[:] = ram
        first[:] = ram
        first_reader = ShardReader.for_array(zarr.open_array(root / "first.zarr"))
        ds = TrajectoryDataset.open(root / "store.zarr")
        n = ds.n_frames
        sharded = ds.root[key]
        batches = [rng.integers(0, n, args.batch) for _ in range(args.repeats + 1)]
        it = iter(range(10**9))

        def batch():
            return batches[next(it) % len(batches)]

        def zarr_read(arr):
            idx = np.unique(batch())  # zarr wants sorted unique indices
            return arr.oindex[idx]

        sampler = iter(ds.batches([key], args.batch, seed=1, workers=2, prefetch=4, in_memory=False))
        rows = [
            ("in-RAM numpy", timed(lambda: ram[batch()], args.repeats)),
            ("zarr chunks of 64 (zarr)", timed(lambda: zarr_read(chunked), max(3, args.repeats // 3))),
            ("zarr on the store's shards", timed(lambda: zarr_read(sharded), max(3, args.repeats // 3))),
            ("1-frame zstd shards (reader)", timed(lambda: first_reader.read(batch()), args.repeats)),
            ("store get() (ShardReader)", timed(lambda: ds.get(key, batch()), args.repeats)),
            ("BatchSampler, 2 threads", timed(lambda: next(sampler), args.repeats)),
        ]
        step = args.learner_ms / 1e3
        fed = [("learner + get() in line", timed(lambda: (ds.get(key, batch()), time.sleep(step)), args.repeats)),
               ("learner + BatchSampler", timed(lambda: (next(sampler), time.sleep(step)), args.repeats))]
        b = next(sampler)
        assert np.array_equal(ds.get(key, batches[0]), ram[batches[0]]) and np.array_equal(b[key], ram[b["index"]])
        ep_store = timed(lambda: [ds.get(key, ds.episode_slice(e)) for e in range(min(n_eps, 20))], 3)
        ep_first = timed(lambda: [first_reader.read(np.arange(e * args.episode, (e + 1) * args.episode))
                                  for e in range(min(n_eps, 20))], 3)
        ep_chunk = timed(lambda: [chunked[e * args.episode:(e + 1) * args.episode] for e in range(min(n_eps, 20))], 3)
        ref = dict(rows)["zarr chunks of 64 (zarr)"]
        same_files = dict(rows)["zarr on the store's shards"]
        disk = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
                for p in (root / "store.zarr" / "frames", root / "chunk64.zarr", root / "first.zarr")}
        print(f"\n{n} frames {SIZE}x{SIZE}, random batches of {args.batch} (median of {args.repeats}); "
              f"{args.source} frames on disk: store {disk['frames']:.0f} MiB, 1-frame zstd shards "
              f"{disk['first.zarr']:.0f} MiB, chunk64 {disk['chunk64.zarr']:.0f} MiB, "
              f"raw {ram.nbytes / 2**20:.0f} MiB")
        print(f"{'reader':<30}{'ms/batch':>10}{'frames/s':>12}{'vs chunks64':>13}{'vs zarr on shards':>19}")
        for name, sec in rows:
            print(f"{name:<30}{1e3 * sec:>10.1f}{args.batch / sec:>12.0f}{ref / sec:>12.1f}x{same_files / sec:>18.1f}x")
        print(f"\nlearner step of {args.learner_ms:g} ms + a batch{'':<8}{'ms/step':>10}{'vs in line':>12}")
        for name, sec in fed:
            print(f"{name:<38}{1e3 * sec:>10.1f}{fed[0][1] / sec:>11.2f}x")
        print(f"\n{'sequential (whole episodes)':<30}{'':>10}{'frames/s':>12}{'vs chunks64':>13}")
        k = min(n_eps, 20) * args.episode
        print(f"{'store (ShardReader)':<30}{'':>10}{k / ep_store:>12.0f}{ep_chunk / ep_store:>12.1f}x")
        print(f"{'1-frame zstd shards (reader)':<30}{'':>10}{k / ep_first:>12.0f}{ep_chunk / ep_first:>12.1f}x")
        print(f"{'zarr chunks of 64 (zarr)':<30}{'':>10}{k / ep_chunk:>12.0f}{1.0:>12.1f}x")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
