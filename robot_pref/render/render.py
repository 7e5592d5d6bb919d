"""`robot-pref render`: re-render camera frames of a dataset from its saved simulator states.

Ray actors (`EpisodeRenderer`) each rebuild the env from the dataset's ``attrs["env"]`` and render the
episodes handed to them; the driver is the only process that writes the zarr store (zarr has no
multi-writer locking) and marks each episode rendered right after writing it, so a killed render
resumes where it stopped and never leaves a half-written episode marked done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from robot_pref.resources import resolve_workers

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # episodes queued per actor: the next one is already there when the current one finishes


@dataclass
class RenderConfig:
    dataset: str = field(default="", metadata={"help": "path of the zarr dataset (opened for writing)"})
    camera: str = field(default="agentview", metadata={"help": "MuJoCo camera name"})
    size: int = field(default=84, metadata={"help": "square frame size; --height/--width override it"})
    height: int | None = field(default=None, metadata={"help": "frame height (default: --size)"})
    width: int | None = field(default=None, metadata={"help": "frame width (default: --size)"})
    actors: int = field(default=0, metadata={"help": "Ray actors rendering in parallel (one CPU each; 0 = one per core)"})
    address: str | None = field(default=None, metadata={"help": "Ray cluster address (default: local Ray)"})
    shadows: bool = field(default=False, metadata={"help": "render shadows (slower)"})
    reflections: bool = field(default=False, metadata={"help": "render reflections (slower)"})
    multisample: bool = field(default=False, metadata={"help": "multisample anti-aliasing (slower)"})
    mesh_detail: float = field(default=1.0, metadata={
        "help": "fraction of each visual mesh's triangles drawn (Lift at 64 px, 0.3: 2.2x the frames/s in "
                "software GL, 1.4%% of pixels off by > 16/255; tools/bench_render.py)"})
    overwrite: bool = field(default=False, metadata={"help": "delete existing frames of this key and re-render all"})

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height or self.size, self.width or self.size)


def render_dataset(cfg: RenderConfig) -> dict:
    """Render every not-yet-rendered episode of ``cfg.dataset`` into ``frames/<camera>_<size>``.

    Returns the key and what this call did: episodes/frames rendered, episodes skipped as already
    done, frames per actor, setup seconds (actor start + env build), render seconds/fps (first
    episode sent to last episode written) and the CPU seconds actors and driver spent meanwhile.
    """
    import ray
    from tqdm import tqdm

    from robot_pref.data.dataset import DatasetError, TrajectoryDataset, frame_key
    from robot_pref.envs.mesh_detail import check_detail
    from robot_pref.render.actors import EpisodeRenderer

    height, width = cfg.shape
    if height <= 0 or width <= 0 or cfg.actors < 0:
        raise ValueError(f"frame size must be positive and --actors >= 0 (0 = one per core), got {height}x{width}, "
                         f"{cfg.actors} actors")
    ds = TrajectoryDataset.open(cfg.dataset, "a")
    env_meta = ds.env_meta
    if not env_meta:
        raise DatasetError(
            f"{cfg.dataset} has no env metadata (attrs['env'] is empty), so its scene cannot be rebuilt; "
            "render datasets written by `robot-pref collect`, or re-collect this one"
        )
    states = ds.get("state")
    missing = np.isnan(states).any(axis=1) if states.shape[1] else np.ones(len(states), bool)
    if missing.any():
        raise DatasetError(
            f"{cfg.dataset} lacks simulator states for {int(missing.sum())} of {len(states)} frames (e.g. episode "
            f"{int(ds.episode_of(np.flatnonzero(missing)[:1])[0])}); frames can only be rendered from saved "
            "states (data/state): re-collect the data or import it with its states"
        )
    key = frame_key(cfg.camera, height, width)
    options = {"shadows": cfg.shadows, "reflections": cfg.reflections, "multisample": cfg.multisample,
               "mesh_detail": check_detail(cfg.mesh_detail)}
    if not cfg.overwrite:
        ds.check_frame_render(key, options)  # before any actor starts
    done = np.zeros(ds.n_episodes, bool) if cfg.overwrite else ds.rendered_episodes(key)
    todo = [int(e) for e in np.flatnonzero(~done)]
    result = {"key": key, "episodes": 0, "frames": 0, "skipped": int(done.sum()), "actors": 0,
              "frames_per_actor": [], "setup_seconds": 0.0, "render_seconds": 0.0, "fps": 0.0,
              "actor_cpu_seconds": [], "driver_cpu_seconds": 0.0, "options": options}
    if not todo:
        log.info("frames/%s: all %d episodes already rendered (use --overwrite to re-render)", key, ds.n_episodes)
        return result

    from robot_pref.console import actors_that_fit, init_ray

    init_ray(cfg.address)
    n_actors = actors_that_fit(min(resolve_workers(cfg.actors), len(todo)), "render")
    # GPU GL needs a visible GPU: Ray hides all GPUs from actors that request none
    gpus = ray.cluster_resources().get("GPU", 0)
    remote = ray.remote(num_cpus=1, num_gpus=min(1.0, gpus / n_actors) if gpus else 0)(EpisodeRenderer)
    actors = [remote.remote(env_meta, cfg.camera, height, width, options) for _ in range(n_actors)]
    start = time.perf_counter()
    try:
        try:
            infos = ray.get([a.setup.remote() for a in actors])
        except ray.exceptions.RayTaskError as err:
            raise DatasetError(f"cannot rebuild the scene of {cfg.dataset} from attrs['env'] "
                               f"(task {env_meta.get('task')!r}): {err.cause}") from err.cause
        if cfg.camera not in infos[0]["cameras"]:
            raise ValueError(f"{env_meta.get('name', 'the scene')} has no camera {cfg.camera!r}; "
                             f"choose --camera from {infos[0]['cameras']}")
        if infos[0]["state_dim"] != states.shape[1]:
            raise DatasetError(f"{cfg.dataset} stores states of dim {states.shape[1]} but the env rebuilt from "
                               f"attrs['env'] has state dim {infos[0]['state_dim']}; the metadata does not "
                               "match the data (another task or robosuite version?)")
        setup_seconds = time.perf_counter() - start
        if cfg.overwrite and key in ds.frame_keys:  # only now that the scene and camera are known good
            ds.delete(f"frames/{key}")
        ds.create_frames(key, height, width, render=options)
        slices = {e: ds.episode_slice(e) for e in todo}
        per_actor = [0] * n_actors
        queue = iter(todo)
        pending: dict = {}  # object ref -> (actor index, episode)

        def submit(i: int) -> None:
            episode = next(queue, None)
            if episode is not None:
                ref = actors[i].render_episode.remote(states[slices[episode]])
                pending[ref] = (i, episode)

        start, cpu_start = time.perf_counter(), time.process_time()
        total = sum(s.stop - s.start for s in slices.values())
        with tqdm(total=total, unit="frame", desc=f"render {key}", dynamic_ncols=True) as bar:
            for i in range(n_actors):
                for _ in range(IN_FLIGHT):
                    submit(i)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                i, episode = pending.pop(ref)
                submit(i)
                frames = ray.get(ref)
                ds.write_episode_frames(key, episode, frames)
                per_actor[i] += len(frames)
                bar.update(len(frames))
        seconds, driver_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        actor_cpu = ray.get([a.cpu_seconds.remote() for a in actors])
    finally:
        for actor in actors:
            ray.kill(actor)
    result.update(episodes=len(todo), frames=total, actors=n_actors, frames_per_actor=per_actor,
                  setup_seconds=setup_seconds, render_seconds=seconds, fps=total / max(seconds, 1e-9),
                  actor_cpu_seconds=actor_cpu, driver_cpu_seconds=driver_cpu)
    log.info("frames/%s: rendered %d episodes (%d frames) with %d actors at %.1f frames/s",
             key, len(todo), total, n_actors, result["fps"])
    return result
