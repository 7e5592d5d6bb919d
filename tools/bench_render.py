"""Frames/s of raw `mujoco.Renderer` vs `robot-pref render` (render_dataset) with 1 and 2 Ray actors.

One run: collect a small mixed Lift dataset (states only), render every saved state with a bare
set-state + `mujoco.Renderer` loop in this process (the baseline: same scene, camera, size and render
options), then with `render_dataset` on 1 and on 2 actors. The render rate counts from the first
episode sent to the last episode written (frames copied back and stored in zarr); end-to-end adds
actor start and scene build. Targets: 1 actor >= 0.9x raw, 2 actors >= 1.8x 1 actor.
CPU s is the CPU time the baseline loop, or the actors plus the driver, spent meanwhile: frames per
CPU second show the pipeline's overhead even when other processes share the cores (wall-clock
scaling to 2 actors needs 2 idle cores).

Software GL (llvmpipe) runs single-threaded here, as in every render actor (LP_NUM_THREADS=1), so
baseline and actors render alike.

A second table renders the same states with 1 actor at each ``--mesh-details`` fraction of the visual
meshes' triangles (`RenderConfig.mesh_detail`): frames/s against full detail, and how far the frames
are from the full-detail ones (mean |difference| per channel, share of pixels off by more than 16 of 255).

    .venv/bin/python tools/bench_render.py [--episodes 8 --steps 50 --repeat 2 --size 84 --camera agentview]
                                           [--mesh-details 0.5,0.3,0.1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("LP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def collect(path: str, episodes: int, steps: int) -> str:
    from robot_pref.data.dataset import TrajectoryDataset
    from robot_pref.envs import make_env
    from robot_pref.envs.collectors import collect_episode

    with make_env("lift") as env:
        ds = TrajectoryDataset.create(path, obs_dim=env.obs_dim, action_dim=env.action_dim,
                                      state_dim=env.state_dim, fps=env.control_freq, env=env.meta())
        rng = np.random.default_rng(0)
        for _ in range(episodes):
            ds.append_episode(collect_episode(env, "mixed", rng, horizon=steps))
    return path


def raw_render(path: str, camera: str, height: int, width: int, options: dict) -> tuple[float, float, np.ndarray]:
    """The baseline: mj_forward on each saved state and one `mujoco.Renderer.render`, nothing else."""
    import mujoco

    from robot_pref.data.dataset import TrajectoryDataset
    from robot_pref.envs import TaskEnv

    ds = TrajectoryDataset.open(path)
    states = ds.get("state")
    env = TaskEnv.from_meta(ds.env_meta)
    env.reset()  # robosuite hides its visualisation sites here, as in every collected frame
    model, data = env.sim.model._model, env.sim.data._data
    model.vis.global_.offwidth, model.vis.global_.offheight = max(model.vis.global_.offwidth, width), \
        max(model.vis.global_.offheight, height)
    if not options["multisample"]:
        model.vis.quality.offsamples = 0
    renderer = mujoco.Renderer(model, height, width)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = options["shadows"]
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = options["reflections"]
    scene_option = mujoco.MjvOption()  # the geom groups robosuite shows (and TaskEnv.render): visual meshes
    scene_option.geomgroup[0] = int(env.kwargs.get("render_collision_mesh", False))
    scene_option.geomgroup[1] = int(env.kwargs.get("render_visual_mesh", True))
    frames = np.empty((len(states), height, width, 3), np.uint8)
    nq, nv = model.nq, model.nv
    start, cpu = time.perf_counter(), time.process_time()
    for t, state in enumerate(states):
        data.time, data.qpos[:], data.qvel[:] = state[0], state[1:1 + nq], state[1 + nq:1 + nq + nv]
        mujoco.mj_forward(model, data)
        renderer.update_scene(data, camera=camera, scene_option=scene_option)
        frames[t] = renderer.render()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    renderer.close()
    env.close()
    return seconds, cpu, frames


def drawn_triangles(path: str, detail: float) -> int:
    """Triangles of the scene's meshes a renderer at ``detail`` draws."""
    from robot_pref.data.dataset import TrajectoryDataset
    from robot_pref.envs import TaskEnv
    from robot_pref.envs.mesh_detail import meshes_at_detail

    env = TaskEnv.from_meta(TrajectoryDataset.open(path).env_meta)
    model = env.sim.model._model
    with meshes_at_detail(model, detail):
        total = int(model.mesh_facenum[[model.geom_dataid[g] for g in range(model.ngeom)
                                        if model.geom_dataid[g] >= 0 and model.geom_group[g] == 1]].sum())
    env.close()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="steps per episode")
    parser.add_argument("--camera", default="agentview")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each method; the fastest is shown")
    parser.add_argument("--shadows", action="store_true")
    parser.add_argument("--reflections", action="store_true")
    parser.add_argument("--multisample", action="store_true")
    parser.add_argument("--mesh-details", default="0.5,0.3,0.1", help="comma-separated mesh_detail values (< 1)")
    args = parser.parse_args()
    details = [float(d) for d in args.mesh_details.split(",") if d]

    import ray

    from robot_pref.data.dataset import TrajectoryDataset
    from robot_pref.render import RenderConfig, render_dataset

    options = {"shadows": args.shadows, "reflections": args.reflections, "multisample": args.multisample}
    names = ["raw mujoco.Renderer", "render, 1 actor", "render, 2 actors"]
    best: dict[str, tuple] = {}  # name -> (frames, render s, CPU s, end-to-end s) of the fastest run
    by_detail: dict[float, tuple] = {}  # mesh_detail -> (render s of the fastest run, frames)
    same = True
    with tempfile.TemporaryDirectory() as tmp:
        path = collect(os.path.join(tmp, "lift.zarr"), args.episodes, args.steps)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for _ in range(args.repeat):  # interleaved, so a burst of load from other processes hits all alike
            seconds, cpu, raw_frames = raw_render(path, args.camera, args.size, args.size, options)
            runs = [(names[0], len(raw_frames), seconds, cpu, seconds)]
            for actors in (1, 2):
                cfg = RenderConfig(dataset=path, camera=args.camera, size=args.size, actors=actors,
                                   overwrite=True, **options)
                result = render_dataset(cfg)
                cpu = sum(result["actor_cpu_seconds"]) + result["driver_cpu_seconds"]
                runs.append((names[actors], result["frames"], result["render_seconds"], cpu,
                             result["render_seconds"] + result["setup_seconds"]))
                same &= np.array_equal(TrajectoryDataset.open(path).get(f"frames/{result['key']}"), raw_frames)
            for name, n, *times in runs:
                if name not in best or times[0] < best[name][1]:
                    best[name] = (n, *times)
            for detail in details:
                result = render_dataset(RenderConfig(dataset=path, camera=args.camera, size=args.size, actors=1,
                                                     overwrite=True, mesh_detail=detail, **options))
                if detail not in by_detail or result["render_seconds"] < by_detail[detail][0]:
                    frames = TrajectoryDataset.open(path).get(f"frames/{result['key']}")
                    by_detail[detail] = (result["render_seconds"], frames)
        triangles = {d: drawn_triangles(path, d) for d in [1.0, *details]}
        ray.shutdown()
    rows = [(name, *best[name]) for name in names]

    raw_fps, one_fps, raw_per_cpu = rows[0][1] / rows[0][2], rows[1][1] / rows[1][2], rows[0][1] / rows[0][3]
    print(f"\nLift {args.camera} {args.size}x{args.size}, {args.episodes} episodes x {args.steps} steps, "
          f"options {options}, {os.cpu_count()} CPUs, best of {args.repeat} runs (load avg {os.getloadavg()[0]:.1f})")
    print(f"{'method':<22}{'frames':>7}{'render s':>9}{'frames/s':>9}{'vs raw':>7}{'vs 1 actor':>11}"
          f"{'CPU s':>7}{'frames/CPU s':>13}{'vs raw':>7}{'end-to-end s':>13}")
    for name, n, seconds, cpu, total in rows:
        fps, per_cpu = n / seconds, n / cpu
        print(f"{name:<22}{n:>7}{seconds:>9.2f}{fps:>9.1f}{fps / raw_fps:>7.2f}{fps / one_fps:>11.2f}"
              f"{cpu:>7.2f}{per_cpu:>13.1f}{per_cpu / raw_per_cpu:>7.2f}{total:>13.2f}")
    print(f"frames of both render runs identical to the raw loop: {'yes' if same else 'NO'}")
    print("targets: 1 actor >= 0.90x raw, 2 actors >= 1.80x 1 actor")
    if details:
        print(f"\nmesh_detail, 1 actor (full detail = the '{names[1]}' row)")
        print(f"{'mesh_detail':>11}{'triangles':>10}{'frames/s':>9}{'vs full':>8}{'mean |diff|':>12}{'px off >16':>11}")
        n, full_seconds = rows[1][1], rows[1][2]
        print(f"{1.0:>11.2f}{triangles[1.0]:>10}{n / full_seconds:>9.1f}{1.0:>8.2f}{0.0:>12.3f}{0.0:>10.2f}%")
        for detail in details:
            seconds, frames = by_detail[detail]
            diff = np.abs(frames.astype(np.int16) - raw_frames)
            print(f"{detail:>11.2f}{triangles[detail]:>10}{n / seconds:>9.1f}{full_seconds / seconds:>8.2f}"
                  f"{diff.mean():>12.3f}{(diff.max(-1) > 16).mean() * 100:>10.2f}%")


if __name__ == "__main__":
    main()
