"""`robot-pref relabel`: write r̂(frame) for every frame of a dataset as ``rewards/<key>``.

Frames are read and scored chunk by chunk (a chunk = ``chunk_size`` rows, scored in batches). On GPU
the chunks are spread over Ray actors (one per GPU, each reading its frames straight from the store);
on CPU the work runs in-process, because torch already uses every core there and actors would only
split the same cores and add start-up and transfer costs (see tools/bench_reward.py).

The driver is the only writer: it writes each finished chunk with ``ds.write_reward`` and records the
chunk in the array's attrs, so an interrupted run continues where it stopped. The finished array
carries the model's path and hash and summary statistics of the new reward.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.reward.config import RelabelConfig
from robot_pref.reward.models import SPEC_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)


class ChunkScorer:
    """Scores row ranges of one dataset with one reward model (in-process, or as a Ray actor)."""

    def __init__(self, model_dir: str, dataset: str, frame_key: str, device: str, batch_size: int):
        from robot_pref.reward.models import load_reward_model
        from robot_pref.reward.train import resolve_device

        self.model = load_reward_model(model_dir, resolve_device(device))
        self.ds = TrajectoryDataset.open(dataset)
        self.key, self.batch_size = f"frames/{frame_key}", batch_size

    def score(self, start: int, stop: int) -> tuple[int, int, np.ndarray]:
        out = [self.model.predict(self.ds.get(self.key, slice(s, min(s + self.batch_size, stop))), self.batch_size)
               for s in range(start, stop, self.batch_size)]
        return start, stop, np.concatenate(out).astype(np.float32)


def model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha256()
    for name in (SPEC_FILE, WEIGHTS_FILE):
        h.update((model_dir / name).read_bytes())
    return h.hexdigest()


def reward_attrs(ds: TrajectoryDataset, key: str) -> dict:
    """Attributes of ``rewards/<key>`` (progress, model, stats); {} when it does not exist yet."""
    return dict(ds.root[f"rewards/{key}"].attrs) if key in ds.reward_keys else {}


def reward_stats(ds: TrajectoryDataset, values: np.ndarray) -> dict:
    """Summary of a finished reward array (also per tier: does the reward rank the data sensibly?)."""
    tiers = ds.episode_table()["tier"][ds.episode_of(np.arange(len(values)))]
    return {
        "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "max": float(values.max()),
        "percentiles": {str(q): float(np.percentile(values, q)) for q in (5, 25, 50, 75, 95)},
        "tier_mean": {str(t or "-"): float(values[tiers == t].mean()) for t in np.unique(tiers)},
    }


def _use_ray(cfg: RelabelConfig) -> bool:
    import torch

    return cfg.workers > 0 or (cfg.workers == -1 and (torch.cuda.is_available() or bool(cfg.address)))


def _score_with_ray(cfg: RelabelConfig, frame_key: str, todo: list[tuple[int, int]]):
    """Yield scored chunks from Ray actors, one per GPU (or ``cfg.workers`` of them), as they finish."""
    import ray
    from robot_pref.console import actors_that_fit, init_ray
    from ray.util import ActorPool

    init_ray(cfg.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    n = actors_that_fit(cfg.workers if cfg.workers > 0 else max(gpus, 1), "relabel")
    actor = ray.remote(num_gpus=1 if gpus >= n else 0, num_cpus=1)(ChunkScorer)
    device = cfg.device if gpus >= n else "cpu"
    actors = [actor.remote(str(Path(cfg.reward_model).resolve()), str(Path(cfg.dataset).resolve()), frame_key,
                           device, cfg.batch_size) for _ in range(n)]
    yield from ActorPool(actors).map_unordered(lambda a, c: a.score.remote(*c), todo)


def _score_in_process(cfg: RelabelConfig, frame_key: str, todo: list[tuple[int, int]]):
    scorer = ChunkScorer(cfg.reward_model, cfg.dataset, frame_key, cfg.device, cfg.batch_size)
    for chunk in todo:
        yield scorer.score(*chunk)


def relabel(cfg: RelabelConfig) -> dict:
    """Score every frame of ``cfg.dataset`` with ``cfg.reward_model`` into ``rewards/<cfg.key>`` (resumable)."""
    model_dir = Path(cfg.reward_model)
    if model_dir.suffix == ".safetensors":
        model_dir = model_dir.parent
    if not (model_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} holds no reward model ({SPEC_FILE}); pass the --out directory of "
                                "`robot-pref fit-reward`")
    if not cfg.key or "/" in cfg.key:
        raise ValueError(f"--key must be a plain name (stored as rewards/<key>), got {cfg.key!r}")
    spec = json.loads((model_dir / SPEC_FILE).read_text())
    frame_key = cfg.camera or spec.get("extra", {}).get("camera", "")
    ds = TrajectoryDataset.open(cfg.dataset, "a")
    if ds.n_frames == 0:
        raise DatasetError(f"{ds.path} holds no frames yet; collect episodes before relabeling")
    if frame_key not in ds.frame_keys:
        raise DatasetError(f"{ds.path} has no frames {frame_key!r} (has {ds.frame_keys}); render them or pass --camera")
    unrendered = np.flatnonzero(~ds.rendered_episodes(frame_key))
    if len(unrendered):
        raise DatasetError(f"{len(unrendered)} episodes (first: {unrendered[:5].tolist()}) have no {frame_key!r} "
                           f"frames yet; run `robot-pref render --dataset {ds.path}` first")

    fingerprint = model_fingerprint(model_dir)
    attrs = reward_attrs(ds, cfg.key)
    if cfg.key in ds.reward_keys and attrs.get("model_sha256") != fingerprint:
        if not cfg.overwrite:
            raise DatasetError(f"rewards/{cfg.key} was written by another model ({attrs.get('model')}); pass "
                               "--overwrite to recompute it or choose another --key")
        attrs = {}
    n, size = ds.n_frames, cfg.chunk_size
    chunks = [(s, min(s + size, n)) for s in range(0, n, size)]
    done = {tuple(c) for c in attrs.get("done_chunks", [])}
    todo = [c for c in chunks if c not in done]
    base = {"model": str(model_dir.resolve()), "model_sha256": fingerprint, "model_type": spec["type"],
            "frame_key": frame_key}
    if not todo and attrs.get("complete"):
        log.info("rewards/%s is complete; nothing to do", cfg.key)
        return attrs
    if done:
        log.info("resuming rewards/%s: %d of %d chunks already written", cfg.key, len(done), len(chunks))

    results = _score_with_ray(cfg, frame_key, todo) if _use_ray(cfg) else _score_in_process(cfg, frame_key, todo)
    with tqdm(total=sum(e - s for s, e in todo), desc=f"relabel {cfg.key}", unit="frame") as bar:
        for start, stop, values in results:
            done.add((start, stop))
            ds.write_reward(cfg.key, values, start,
                            attrs={**base, "complete": False, "done_chunks": sorted(map(list, done))})
            bar.update(stop - start)
    values = ds.get(f"rewards/{cfg.key}")
    if np.isnan(values).any():
        raise DatasetError(f"rewards/{cfg.key} still has {int(np.isnan(values).sum())} unwritten frames; rerun relabel")
    final = {**base, "complete": True, "done_chunks": sorted(map(list, done)), "stats": reward_stats(ds, values)}
    ds.write_reward(cfg.key, values[:0], 0, attrs=final)
    print(f"wrote rewards/{cfg.key} ({n} frames): mean {final['stats']['mean']:.3f} std {final['stats']['std']:.3f} "
          f"tier means {final['stats']['tier_mean']}")
    return final
