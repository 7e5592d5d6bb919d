"""Pair samplers: which two frames to ask about. Plugins by type name.

A sampler proposes candidate pairs; the base class drops pairs of one index, repeated pairs
and pairs of identical frames (RL-VLM-F drops those: no preference can be read from them) and
draws again until it has ``n``. Higher rooms plug in by name without feedback importing them:
the registry accepts lazy ``"module:Class"`` entries ("disagreement" lives in robot_pref.reward).
"""

from __future__ import annotations

import hashlib
import importlib
import logging

import numpy as np

from robot_pref.data.dataset import DatasetError, TrajectoryDataset

log = logging.getLogger(__name__)

SAMPLERS: dict[str, type | str] = {
    "disagreement": "robot_pref.reward.active:DisagreementSampler",
}


def register_sampler(name: str, cls: type | str) -> None:
    """Register a sampler class, or a lazy ``"module:Class"`` path, under a type name."""
    SAMPLERS[name] = cls


def resolve(registry: dict[str, type | str], name: str, what: str) -> type:
    """Look a plugin up by type name, importing lazy ``module:Class`` entries on first use."""
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}")
    entry = registry[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            entry = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{what} {name!r} points at {registry[name]!r}, which cannot be imported "
                             f"({err}); is that part of robot_pref installed?") from err
        registry[name] = entry
    return entry


def make_sampler(type: str, dataset: TrajectoryDataset, frame_key: str, seed: int, **options) -> "PairSampler":
    return resolve(SAMPLERS, type, "sampler")(dataset, frame_key, seed, **options)


class PairSampler:
    """Base: frames of rendered episodes only; subclasses implement `propose`."""

    max_rounds = 50

    def __init__(self, dataset: TrajectoryDataset, frame_key: str, seed: int = 0):
        if frame_key not in dataset.frame_keys:
            raise DatasetError(f"{dataset.path} has no frames {frame_key!r} (has {dataset.frame_keys}); "
                               f"render them with `robot-pref render --dataset {dataset.path}`")
        self.ds, self.frame_key = dataset, frame_key
        self.rng = np.random.default_rng(seed)
        table = dataset.episode_table()
        ok = dataset.rendered_episodes(frame_key) & (table["length"] > 0)
        self.episodes = np.flatnonzero(ok)
        if len(self.episodes) == 0:
            raise DatasetError(f"no episode of {dataset.path} has rendered {frame_key!r} frames; run "
                               f"`robot-pref render --dataset {dataset.path}` first")
        self.starts, self.lengths = table["start"], table["length"]

    def propose(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` distinct pairs (index_a, index_b) of different-looking frames."""
        a_out: list[np.ndarray] = []
        b_out: list[np.ndarray] = []
        seen: set[tuple[int, int]] = set()
        have = 0
        for _ in range(self.max_rounds):
            if have >= n:
                break
            a, b = self.propose(max(2 * (n - have), 16))
            keep = np.zeros(len(a), dtype=bool)
            for i, pair in enumerate(zip(a.tolist(), b.tolist())):
                if pair[0] != pair[1] and min(pair) >= 0 and (min(pair), max(pair)) not in seen:
                    seen.add((min(pair), max(pair)))
                    keep[i] = True
            a, b = a[keep], b[keep]
            same = self._identical(a, b)
            for pa, pb in zip(a[same].tolist(), b[same].tolist()):
                seen.discard((min(pa, pb), max(pa, pb)))  # identical frames: never asked
            a, b = a[~same][: n - have], b[~same][: n - have]
            a_out.append(a)
            b_out.append(b)
            have += len(a)
        if have < n:
            log.warning("found only %d distinct pairs of different frames (asked for %d)", have, n)
        return np.concatenate(a_out).astype(np.int64), np.concatenate(b_out).astype(np.int64)

    def _identical(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        key = f"frames/{self.frame_key}"
        idx = np.unique(np.concatenate([a, b]))
        digest = {int(i): hashlib.blake2b(f.tobytes(), digest_size=16).digest() for i, f in zip(idx, self._frames(key, idx))}
        return np.asarray([digest[i] == digest[j] for i, j in zip(a.tolist(), b.tolist())], dtype=bool)

    def _frames(self, key: str, idx: np.ndarray):
        for s in range(0, len(idx), 1024):
            yield from self.ds.get(key, idx[s : s + 1024])


class UniformSampler(PairSampler):
    """RL-VLM-F: a random episode and a random time index for each side."""

    def propose(self, n):
        def side():
            ep = self.rng.choice(self.episodes, n)
            return self.starts[ep] + (self.rng.random(n) * self.lengths[ep]).astype(np.int64)

        return side(), side()


class SameTimeSampler(PairSampler):
    """Both frames at the same time index of two different episodes (RL-VLM-F's cloth variant)."""

    def __init__(self, dataset, frame_key, seed=0):
        super().__init__(dataset, frame_key, seed)
        if len(self.episodes) < 2:
            raise DatasetError("the same-time sampler needs at least two rendered episodes; use --sampler uniform")

    def propose(self, n):
        ep_a = self.rng.choice(self.episodes, n)
        ep_b = self.rng.choice(self.episodes, n)
        t = (self.rng.random(n) * self.lengths[ep_a]).astype(np.int64)
        valid = (ep_a != ep_b) & (t < self.lengths[ep_b])
        return np.where(valid, self.starts[ep_a] + t, -1), np.where(valid, self.starts[ep_b] + t, -1)


SAMPLERS.update({"uniform": UniformSampler, "same-time": SameTimeSampler})
