"""`label(cfg)`: sample pairs, answer them with a labeler, commit every answer to the store.

The driver reads frames, hashes each query and serves what the store already holds; the rest
goes to the labeler: in-process for cheap labelers (teacher, replay), or to Ray actors for vlm
(async client actors, many requests each) and clip (batched scoring, GPU share when present).
A labeler whose one request answers many pairs (progress) runs its own loop (`Labeler.run`)
over the same store, counts and export.
Answers are committed as they arrive, so an interrupted run resumes where it stopped. A stored
unparsable reply is asked again until it has been tried `MAX_TRIES` times; only labels are exported.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.feedback.config import LabelConfig
from robot_pref.feedback.labelers import Labeler, Query, clip_indices, labeler_class
from robot_pref.feedback.samplers import make_sampler
from robot_pref.feedback.store import (FAILED, LABEL_STATUSES, MAX_TRIES, SKIPPED, STORE_NAME, UNPARSABLE, Answer,
                                       LabelStore)

log = logging.getLogger(__name__)
READ_CHUNK = 512  # pairs whose frames are read and hashed at once


def resolve_frame_key(ds: TrajectoryDataset, camera: str) -> str:
    if camera in ds.frame_keys:
        return camera
    matches = [k for k in ds.frame_keys if k.rsplit("_", 1)[0] == camera]
    if len(matches) == 1:
        return matches[0]
    raise DatasetError(f"{ds.path} has {'several' if matches else 'no'} frame arrays for camera {camera!r} "
                       f"(frame keys: {ds.frame_keys}); pass --camera with one of them, or render it with "
                       f"`robot-pref render --dataset {ds.path}`")


def resolve_goal(ds: TrajectoryDataset, goal: str) -> str:
    if goal:
        return goal
    goals = [g for g in ds.episode_table()["goal"].tolist() if g]
    if goals:
        return collections.Counter(goals).most_common(1)[0][0]
    task = ds.env_meta.get("task")
    if task:
        try:
            from robot_pref.envs import get_task

            return get_task(task).goal
        except (ImportError, KeyError, ValueError):
            pass
    raise ValueError(f"{ds.path} records no goal text; pass --goal 'to lift the red cube'")


def resolve_out(cfg: LabelConfig) -> Path:
    data = Path(cfg.dataset).resolve()
    out = Path(cfg.out) if cfg.out else data.parent / f"{data.stem}_labels" / cfg.labeler
    if out.resolve() == data or data in out.resolve().parents:
        raise ValueError(f"--out {out} lies inside the dataset {data}; labels live beside the dataset, "
                         f"e.g. --out {data.parent / 'labels' / cfg.labeler}")
    return out


def read_sides(ds: TrajectoryDataset, frame_key: str, index: np.ndarray, labeler: Labeler) -> np.ndarray:
    """The frames of one side of the queries, or (n, segment, H, W, 3) clips for segment queries."""
    if labeler.segment <= 1:
        return ds.get(f"frames/{frame_key}", index)
    clips = clip_indices(ds, index, labeler.segment, labeler.segment_stride)
    frames = ds.get(f"frames/{frame_key}", clips.reshape(-1))
    return frames.reshape(*clips.shape, *frames.shape[1:])


def sample_pairs(cfg: LabelConfig, ds: TrajectoryDataset, frame_key: str, labeler: Labeler):
    fixed = labeler.fixed_pairs()
    if fixed is not None:
        n = len(fixed[0]) if cfg.pairs <= 0 else min(cfg.pairs, len(fixed[0]))
        return fixed[0][:n], fixed[1][:n]
    options = {k: v for k, v in (("reward_model", cfg.reward_model), ("pool_size", cfg.pool_size)) if v}
    return make_sampler(cfg.sampler, ds, frame_key, cfg.seed, **options).sample(cfg.pairs)


class LabelerActor:
    """Hosts one labeler in a Ray worker; async, so a VLM actor runs many requests at once."""

    def __init__(self, type: str, cfg, goal: str, kwargs: dict):
        self.labeler = labeler_class(type)(cfg, goal, **kwargs)

    async def label(self, queries: list[Query]) -> list[Answer]:
        return await self.labeler.label(queries)

    def info(self) -> dict:
        return {"pid": os.getpid(), "device": str(getattr(self.labeler, "device", "cpu"))}


def start_actors(cfg: LabelConfig, cls: type[Labeler], section, goal: str, kwargs: dict):
    import ray
    from robot_pref.console import actors_that_fit, init_ray

    init_ray(cfg.address)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    options = cls.actor_options(section, cfg.workers, gpus)
    n = actors_that_fit(max(1, cfg.workers), "label", options.get("num_cpus", 1), options.get("num_gpus", 0))
    actor = ray.remote(LabelerActor).options(**options, max_restarts=2, max_task_retries=2)
    return [actor.remote(cls.type, section, goal, kwargs) for _ in range(n)]


def run_remote(actors, batches: Iterator[list[Query]], in_flight: int) -> Iterator[list[Answer]]:
    """Keep ``in_flight`` batches queued over the actors; yield each batch's answers as it finishes."""
    import ray

    pending: dict = {}
    load = [0] * len(actors)
    exhausted = False
    while True:
        while not exhausted and len(pending) < in_flight:
            batch = next(batches, None)
            if batch is None:
                exhausted = True
                break
            i = int(np.argmin(load))
            pending[actors[i].label.remote(batch)] = (i, batch)
            load[i] += 1
        if not pending:
            return
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i, batch = pending.pop(ref)
            load[i] -= 1
            try:
                yield ray.get(ref)
            except ray.exceptions.RayError as err:  # actor died past its restarts: ask again next run
                log.error("labeler actor failed on %d queries: %s", len(batch), err)
                yield [q.answer(-1, FAILED, raw=str(err)[:2000]) for q in batch]


def label_pairs(cfg: LabelConfig, ds: TrajectoryDataset, frame_key: str, labeler: Labeler, section, goal: str,
                kwargs: dict, store: LabelStore, counts: collections.Counter, results: list, bar) -> None:
    """The pair loop: sample pairs, serve cached answers, ask the rest (in-process or Ray actors)."""
    cls = type(labeler)
    index_a, index_b = sample_pairs(cfg, ds, frame_key, labeler)
    n = len(index_a)
    results.extend([None] * n)
    counts["pairs"] = n
    bar.reset(total=n)
    positions: dict[str, list[int]] = {}  # query key -> pair positions (equal content asks once)
    earlier: dict[str, Answer] = {}  # query key -> its stored unparsable reply, asked again now

    def record(pos: int, ans: Answer, cached: bool) -> None:
        results[pos] = dataclasses.replace(ans, index_a=int(index_a[pos]), index_b=int(index_b[pos]))
        if ans.status == FAILED:
            counts["failed"] += 1
        elif ans.status == UNPARSABLE:
            counts["unparsable"] += 1
            counts["given_up"] += ans.meta.get("tries", 1) >= MAX_TRIES
        elif ans.status == SKIPPED:
            counts["skipped"] += 1
        else:
            counts["cached" if cached else "answered"] += 1
            counts["abstained"] += ans.label == -1
        bar.update(1)

    def count_try(ans: Answer, before: Answer | None) -> None:
        """Number the model's replies to this pair over all runs; earlier unparsable texts are kept."""
        if ans.status == FAILED or (before is None and ans.status != UNPARSABLE):  # no reply, or a first label
            return
        ans.meta["tries"] = (before.meta.get("tries", 1) if before else 0) + 1
        if before:
            ans.meta["earlier_raw"] = [*before.meta.get("earlier_raw", []), before.raw]

    def batches() -> Iterator[list[Query]]:
        """Uncached queries in the labeler's batch size, honouring the query budget."""
        asked, todo = 0, []
        for s in range(0, n, READ_CHUNK):
            ia, ib = index_a[s : s + READ_CHUNK], index_b[s : s + READ_CHUNK]
            fa = fb = None
            if cls.uses_frames:
                fa, fb = (read_sides(ds, frame_key, idx, labeler) for idx in (ia, ib))
            keys = labeler.query_keys(ia, ib, fa, fb)
            cached = store.get(keys)
            for j, key in enumerate(keys):
                retry = key in cached and cached[key].status == UNPARSABLE and (
                    cached[key].meta.get("tries", 1) < MAX_TRIES)
                if key in cached and not retry:
                    record(s + j, cached[key], cached=True)
                elif key in positions:
                    positions[key].append(s + j)
                elif not cfg.budget or asked < cfg.budget:
                    if retry:
                        earlier[key] = cached[key]
                    positions[key] = [s + j]
                    todo.append(Query(key, int(ia[j]), int(ib[j]), None if fa is None else fa[j],
                                      None if fb is None else fb[j]))
                    asked += 1
                    if len(todo) >= labeler.chunk_size:
                        yield todo
                        todo = []
            bar.set_postfix(counts, refresh=False)
        if todo:
            yield todo

    actors = start_actors(cfg, cls, section, goal, kwargs) if cls.remote else []
    if actors:
        stream = run_remote(actors, batches(), cls.in_flight(section, len(actors)))
    else:
        stream = (asyncio.run(labeler.label(batch)) for batch in batches())
    try:
        for answers in stream:
            for ans in answers:
                count_try(ans, earlier.get(ans.key))
            store.put(answers)  # one transaction per arriving batch (VLM: per answer)
            for ans in answers:
                for pos in positions.pop(ans.key):
                    record(pos, ans, cached=False)
            bar.set_postfix(counts, refresh=False)
    finally:
        for actor in actors:  # free their CPUs / GPU shares for the next stage now
            import ray

            ray.kill(actor)


def label(cfg: LabelConfig) -> dict:
    """Label ``cfg.pairs`` pairs of ``cfg.dataset`` into ``cfg.out``; returns the run's counts."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    ds = TrajectoryDataset.open(cfg.dataset)
    frame_key = resolve_frame_key(ds, cfg.camera)
    goal = resolve_goal(ds, cfg.goal)
    out = resolve_out(cfg)
    cls = labeler_class(cfg.labeler)
    section = getattr(cfg, cls.section or cfg.labeler, None)
    kwargs = cls.actor_kwargs(section, max(1, cfg.workers))
    labeler = cls(section, goal, dataset=ds, **kwargs)
    labeler.bind(cfg)
    out.mkdir(parents=True, exist_ok=True)
    store = LabelStore(out / STORE_NAME)
    settings = {"type": cls.type, "goal": goal, "frame_key": frame_key, **labeler.settings()}
    run_id = store.start_run({"config": dataclasses.asdict(cfg), "settings": settings})
    results: list[Answer | None] = []  # one per pair of this run (None: not asked)
    counts = collections.Counter({k: 0 for k in ("answered", "cached", "abstained", "failed", "skipped",
                                                 "unparsable", "given_up")})
    unit = "request" if labeler.run is not None else "pair"
    bar = tqdm(total=0, desc=f"label[{cls.type}]", unit=unit, disable=not cfg.progress)
    try:
        if labeler.run is not None:  # one request answers many pairs (progress): the labeler's own loop
            labeler.run(cfg, ds, frame_key, store, counts, results, bar)
        else:
            label_pairs(cfg, ds, frame_key, labeler, section, goal, kwargs, store, counts, results, bar)
    finally:
        bar.close()
        if "pairs" in counts:  # the work was planned: export what this run holds (also when interrupted)
            done = [a for a in results if a is not None and a.status in LABEL_STATUSES]
            labeler.label_set(done).save(out)
            counts.update({"labels": len(done), "not_asked": counts["pairs"] - sum(a is not None for a in results)})
            summary = {"dataset": str(cfg.dataset), "dataset_identity": ds.identity, "out": str(out),
                       "labeler": cls.type, "frame_key": frame_key,
                       "goal": goal, "settings": settings, "counts": dict(counts),
                       "wall_s": round(time.perf_counter() - t0, 3), "config": dataclasses.asdict(cfg)}
            (out / "label_run.json").write_text(json.dumps(summary, indent=2, default=str))
            store.finish_run(run_id, dict(counts))
        store.close()  # a sampling error leaves the previous export as it was
    if counts["not_asked"] and (cfg.budget or getattr(section, "max_images", 0)):
        log.warning("budget reached (--budget %d%s): %d pairs not asked; rerun to continue (answers are cached)",
                    cfg.budget, f", --gvl.max-images {section.max_images}" if getattr(section, "max_images", 0) else "",
                    counts["not_asked"])
    if counts["failed"]:
        log.warning("%d queries failed after retries; rerun to ask them again", counts["failed"])
    if counts["unparsable"] > counts["given_up"]:
        log.warning("%d replies held no label (kept with their text in %s, not exported); rerun to ask them "
                    "again (at most %d tries per pair)", counts["unparsable"] - counts["given_up"], out / STORE_NAME,
                    MAX_TRIES)
    if counts["given_up"]:
        log.warning("%d pairs gave no label in %d tries and are not asked again", counts["given_up"], MAX_TRIES)
    log.info("labels: %s -> %s", dict(counts), out)
    return summary
