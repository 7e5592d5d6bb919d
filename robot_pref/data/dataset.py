"""The trajectory store: one class owns the zarr layout; everything else asks it.

Layout (zarr v3 group)::

    attrs           schema_version, format, fps, env (name, task, kwargs), cameras,
                    n_episodes  <- the commit point of every append
    data/           per-step arrays learners read: obs, action, state, timestamp
    frames/<cam>_<size>   per-step uint8 (T, H, W, 3) camera frames, sharded per frame
    rewards/<key>   per-step learned rewards (one value per frame, written by relabel)
    ground_truth/   per-step true reward and success; read only through `ground_truth()`
    meta/           episode_ends, the per-episode table, render progress per frame key

Conventions: row t of every per-step array is the robot at step t (frame t shows state s_t,
action t is applied in s_t). Reward arrays hold r(s_t), so the reward of transition t -> t+1
is reward[t + 1]; the last step of an episode only has a successor when the episode was
cut by a time-out, never across episodes (see `transition_indices`).

Appends are episode-atomic: all arrays are written first, then `attrs.n_episodes` is bumped
(zarr's LocalStore writes metadata atomically). Rows past the committed length are leftovers of
an interrupted append and are overwritten by the next one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr

SCHEMA_VERSION = 1
FORMAT = "robot_pref.trajectories"
STEP_GROUPS = ("data", "frames", "rewards", "ground_truth")
REQUIRED_DATA_KEYS = ("obs", "action", "state", "timestamp")
EPISODE_COLUMNS = {  # name -> (dtype, fill) of the per-episode table
    "length": ("int64", 0),
    "seed": ("int64", -1),
    "success": ("int8", -1),  # -1 unknown, 0 failed, 1 succeeded (ground truth, see ground_truth())
    "terminated": ("bool", False),  # ended in a true terminal state rather than a time-out
}
EPISODE_TEXT_COLUMNS = ("task", "goal", "tier", "source")
STEP_CHUNK = 4096  # rows per chunk of low-dim arrays
FRAME_SHARD = 256  # frames per shard file; inner chunks hold one frame for random access


class DatasetError(ValueError):
    """A store that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class Episode:
    """One trajectory as produced by a collector, teleop session, importer or rollout."""

    obs: np.ndarray  # (T, obs_dim) low-dim policy observation
    action: np.ndarray  # (T, act_dim) the action actually executed (after clipping/safety)
    state: np.ndarray  # (T, state_dim) flattened simulator state, for re-rendering
    timestamp: np.ndarray | None = None  # (T,) seconds since episode start
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (T, H, W, 3) uint8
    true_reward: np.ndarray | None = None  # (T,) r(s_t), ground truth
    true_success: np.ndarray | None = None  # (T,) bool, ground truth
    task: str = ""
    goal: str = ""
    tier: str = ""
    source: str = ""
    seed: int = -1
    success: bool | None = None
    terminated: bool = False

    def __len__(self) -> int:
        return len(self.action)


def frame_key(camera: str, height: int, width: int | None = None) -> str:
    """Key of a camera's frames at a resolution, e.g. ``agentview_84`` or ``agentview_96x128``."""
    width = height if width is None else width
    return f"{camera}_{height}" if width == height else f"{camera}_{height}x{width}"


class TrajectoryDataset:
    """A zarr v3 trajectory store. Create with `create`, open with `open`."""

    def __init__(self, root: zarr.Group, path: str, writable: bool):
        self.root = root
        self.path = path
        self.writable = writable
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ open / create
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        obs_dim: int,
        action_dim: int,
        state_dim: int,
        fps: float,
        env: Mapping[str, Any] | None = None,
        obs_keys: Sequence[str] = (),
        overwrite: bool = False,
    ) -> "TrajectoryDataset":
        path = str(path)
        if Path(path).exists() and not overwrite:
            raise DatasetError(
                f"{path} already exists; open it with TrajectoryDataset.open(path, 'a') to append, "
                "or pass overwrite=True (CLI: --overwrite) to replace it"
            )
        root = zarr.open_group(path, mode="w", zarr_format=3)
        root.attrs.update(
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "fps": float(fps),
                "env": dict(env or {}),
                "obs_keys": list(obs_keys),
                "n_episodes": 0,
            }
        )
        for group in STEP_GROUPS + ("meta",):
            root.create_group(group)
        for key, dim, dtype in (
            ("obs", obs_dim, "float32"),
            ("action", action_dim, "float32"),
            ("state", state_dim, "float64"),
        ):
            root["data"].create_array(key, shape=(0, dim), chunks=(STEP_CHUNK, dim), dtype=dtype)
        root["data"].create_array("timestamp", shape=(0,), chunks=(STEP_CHUNK,), dtype="float64")
        meta = root["meta"]
        meta.create_array("episode_ends", shape=(0,), chunks=(STEP_CHUNK,), dtype="int64")
        for name, (dtype, fill) in EPISODE_COLUMNS.items():
            meta.create_array(name, shape=(0,), chunks=(STEP_CHUNK,), dtype=dtype, fill_value=fill)
        for name in EPISODE_TEXT_COLUMNS:
            meta.create_array(name, shape=(0,), chunks=(STEP_CHUNK,), dtype=str)
        meta.create_group("rendered")
        return cls(root, path, writable=True)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "TrajectoryDataset":
        """Open an existing store, ``mode='r'`` to read or ``'a'`` to append and write."""
        path = str(path)
        if mode not in ("r", "a"):
            raise DatasetError(f"mode must be 'r' or 'a', got {mode!r}")
        if not Path(path).exists() and "://" not in path:
            raise DatasetError(f"{path} does not exist; create it with `robot-pref collect --out {path}`")
        try:
            root = zarr.open_group(path, mode="r" if mode == "r" else "r+", zarr_format=3)
        except Exception as err:  # zarr raises several types for "not a group"
            raise DatasetError(
                f"{path} is not a robot_pref dataset (no readable zarr v3 group: {err}); "
                "point at a store written by `robot-pref collect` or `robot-pref import-robomimic`"
            ) from err
        attrs = dict(root.attrs)
        if attrs.get("format") != FORMAT:
            raise DatasetError(
                f"{path} is a zarr group but not a robot_pref dataset (attrs.format={attrs.get('format')!r}); "
                "convert it with `robot-pref import-robomimic` or collect a new one"
            )
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise DatasetError(
                f"{path} has schema version {version}, this robot_pref reads version {SCHEMA_VERSION}; "
                "install the robot_pref release that wrote it, or re-collect/re-import the data"
            )
        ds = cls(root, path, writable=mode == "a")
        ds._validate()
        return ds

    def _validate(self) -> None:
        missing = [f"{g}/{k}" for g, keys in (("data", REQUIRED_DATA_KEYS), ("meta", ("episode_ends",))) for k in keys
                   if g not in self.root or k not in self.root[g]]
        if missing:
            raise DatasetError(
                f"{self.path} is missing {', '.join(missing)}; the store is incomplete or was written by "
                "another tool. Re-create it (robot-pref collect / import-robomimic)"
            )
        n_ep, n = self.n_episodes, self.n_frames
        ends = self.root["meta/episode_ends"]
        if ends.shape[0] < n_ep:
            raise DatasetError(
                f"{self.path}: attrs.n_episodes={n_ep} but meta/episode_ends holds {ends.shape[0]} rows; "
                "the store was truncated (copied partially?). Copy it again from its source"
            )
        for group in STEP_GROUPS:
            for key, arr in self.root[group].arrays():
                if arr.shape[0] < n:
                    raise DatasetError(
                        f"{self.path}: {group}/{key} has {arr.shape[0]} rows but the committed episodes "
                        f"span {n} steps; the store was truncated. Copy it again from its source"
                    )

    # ------------------------------------------------------------------ shape of the data
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def n_episodes(self) -> int:
        return int(self.root.attrs["n_episodes"])

    @property
    def episode_ends(self) -> np.ndarray:
        if "episode_ends" not in self._cache:
            self._cache["episode_ends"] = self.root["meta/episode_ends"][: self.n_episodes].astype(np.int64)
        return self._cache["episode_ends"]

    @property
    def episode_starts(self) -> np.ndarray:
        ends = self.episode_ends
        return np.concatenate([[0], ends[:-1]]).astype(np.int64)

    @property
    def n_frames(self) -> int:
        ends = self.episode_ends
        return int(ends[-1]) if len(ends) else 0

    @property
    def fps(self) -> float:
        return float(self.root.attrs["fps"])

    @property
    def env_meta(self) -> dict:
        return dict(self.root.attrs.get("env", {}))

    def episode_slice(self, episode: int) -> slice:
        if not 0 <= episode < self.n_episodes:
            raise IndexError(f"episode {episode} out of range (dataset has {self.n_episodes})")
        return slice(int(self.episode_starts[episode]), int(self.episode_ends[episode]))

    def episode_of(self, indices: np.ndarray) -> np.ndarray:
        """Episode id of each frame index."""
        return np.searchsorted(self.episode_ends, np.asarray(indices), side="right")

    def transition_indices(self) -> np.ndarray:
        """Frame indices t that have a successor t+1 in the same episode (valid (s, a, r, s') rows).

        The last step of an episode is excluded: its successor was never observed. A true terminal
        is marked on the step *before* it, via `terminal_flags`.
        """
        mask = np.ones(self.n_frames, dtype=bool)
        mask[self.episode_ends - 1] = False
        return np.flatnonzero(mask)

    def terminal_flags(self) -> np.ndarray:
        """done[t] = 1 where s_{t+1} is the true terminal state of an episode that terminated."""
        done = np.zeros(self.n_frames, dtype=np.float32)
        term = self.episode_table()["terminated"].astype(bool)
        ends = self.episode_ends[term]
        done[ends[ends >= 2] - 2] = 1.0
        return done

    def keys(self, group: str) -> list[str]:
        return sorted(k for k, _ in self.root[group].arrays()) if group in self.root else []

    @property
    def frame_keys(self) -> list[str]:
        return self.keys("frames")

    @property
    def reward_keys(self) -> list[str]:
        return self.keys("rewards")

    def shape(self, key: str) -> tuple[int, ...]:
        arr = self._array(key)
        return (self.n_frames,) + tuple(arr.shape[1:])

    # ------------------------------------------------------------------ reading
    def _array(self, key: str) -> zarr.Array:
        group = key.split("/", 1)[0]
        if group == "ground_truth":
            raise DatasetError(
                "ground truth is kept apart from learner inputs; read it explicitly with "
                "dataset.ground_truth(name)"
            )
        if "/" not in key:
            key = f"data/{key}"
        if key not in self.root:
            raise KeyError(f"{self.path} has no array {key!r}; available: {self.available_keys()}")
        return self.root[key]

    def available_keys(self) -> list[str]:
        return [f"{g}/{k}" for g in ("data", "frames", "rewards") for k in self.keys(g)]

    def get(self, key: str, indices: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of a per-step array. ``key`` is ``obs``, ``frames/agentview_84``, ``rewards/vlm`` ...

        Low-dim arrays are read once and kept in memory; frames are read from disk per call (one
        inner chunk per frame), so datasets larger than RAM work.
        """
        arr = self._array(key)
        is_frames = key.startswith("frames/")
        if indices is None:
            indices = slice(0, self.n_frames)
        if not is_frames:
            cached = self._cache.get(key)
            if cached is None:
                cached = self._cache[key] = np.asarray(arr[: self.n_frames])
            return cached[indices]
        if isinstance(indices, slice):
            return np.asarray(arr[indices])
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.n_frames):
            raise IndexError(f"frame indices must lie in [0, {self.n_frames}), got {indices.min()}..{indices.max()}")
        order = np.argsort(indices, kind="stable")
        unique, inverse = np.unique(indices[order], return_inverse=True)
        rows = np.asarray(arr.oindex[unique]) if len(unique) else np.zeros((0,) + arr.shape[1:], arr.dtype)
        out = np.empty((len(indices),) + arr.shape[1:], dtype=arr.dtype)
        out[order] = rows[inverse]
        return out

    def get_batch(self, indices: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
        return {k: self.get(k, indices) for k in keys}

    def ground_truth(self, name: str = "reward") -> np.ndarray:
        """Explicit access to ground truth (true reward r(s_t) or per-step success)."""
        key = f"ground_truth/{name}"
        if key not in self.root:
            raise KeyError(
                f"{self.path} holds no ground truth {name!r} (available: {self.keys('ground_truth')}); "
                "it exists only for simulated data with a known reward"
            )
        return np.asarray(self.root[key][: self.n_frames])

    def has_ground_truth(self, name: str = "reward") -> bool:
        return f"ground_truth/{name}" in self.root

    def episode_table(self) -> dict[str, np.ndarray]:
        n = self.n_episodes
        ends = self.episode_ends
        table = {"episode": np.arange(n), "start": self.episode_starts, "end": ends}
        for name in list(EPISODE_COLUMNS) + list(EPISODE_TEXT_COLUMNS):
            table[name] = np.asarray(self.root[f"meta/{name}"][:n])
        return table

    def episode(self, episode: int, keys: Sequence[str] = ("obs", "action")) -> dict[str, np.ndarray]:
        sl = self.episode_slice(episode)
        return {k: self.get(k, sl) for k in keys}

    def iter_episodes(self, keys: Sequence[str] = ("obs", "action")) -> Iterator[dict[str, np.ndarray]]:
        for e in range(self.n_episodes):
            yield self.episode(e, keys)

    # ------------------------------------------------------------------ writing
    def _require_writable(self) -> None:
        if not self.writable:
            raise DatasetError(f"{self.path} was opened read-only; open it with mode='a' to write")

    def _invalidate(self) -> None:
        self._cache.clear()

    def _step_arrays(self) -> dict[str, zarr.Array]:
        return {f"{g}/{k}": a for g in STEP_GROUPS for k, a in self.root[g].arrays()}

    def create_frames(self, key: str, height: int, width: int) -> zarr.Array:
        """Create (or return) the frames array for a camera/resolution, sized to the dataset."""
        self._require_writable()
        group = self.root["frames"]
        if key in group:
            arr = group[key]
            if tuple(arr.shape[1:]) != (height, width, 3):
                raise DatasetError(
                    f"frames/{key} exists with frame shape {tuple(arr.shape[1:])}, not {(height, width, 3)}; "
                    "use another key or delete the array first"
                )
            return arr
        arr = group.create_array(
            key,
            shape=(self.n_frames, height, width, 3),
            chunks=(1, height, width, 3),
            shards=(FRAME_SHARD, height, width, 3),
            dtype="uint8",
            fill_value=0,
        )
        self.root["meta/rendered"].create_array(key, shape=(self.n_episodes,), chunks=(STEP_CHUNK,),
                                                dtype="bool", fill_value=False)
        return arr

    def rendered_episodes(self, key: str) -> np.ndarray:
        """Which episodes have their frames under ``key`` written (resumable rendering)."""
        if f"meta/rendered/{key}" not in self.root:
            return np.zeros(self.n_episodes, dtype=bool)
        done = np.zeros(self.n_episodes, dtype=bool)
        arr = self.root[f"meta/rendered/{key}"]
        m = min(arr.shape[0], self.n_episodes)
        done[:m] = arr[:m]
        return done

    def write_episode_frames(self, key: str, episode: int, frames: np.ndarray) -> None:
        """Write one episode's frames, then mark it rendered (so a crash loses at most this episode)."""
        self._require_writable()
        sl = self.episode_slice(episode)
        arr = self.root[f"frames/{key}"]
        if frames.shape != (sl.stop - sl.start,) + tuple(arr.shape[1:]):
            raise DatasetError(
                f"episode {episode} has {sl.stop - sl.start} steps of frame shape {tuple(arr.shape[1:])}, "
                f"got frames of shape {frames.shape}"
            )
        arr[sl] = frames
        self.root[f"meta/rendered/{key}"][episode] = True

    def write_reward(self, key: str, values: np.ndarray, start: int = 0, attrs: Mapping | None = None) -> None:
        """Write rows [start, start+len) of the learned reward ``rewards/<key>`` (created NaN-filled)."""
        self._require_writable()
        group = self.root["rewards"]
        if key not in group:
            group.create_array(key, shape=(self.n_frames,), chunks=(STEP_CHUNK,), dtype="float32",
                               fill_value=float("nan"))
        arr = group[key]
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if start + len(values) > self.n_frames:
            raise DatasetError(f"reward rows {start}:{start + len(values)} exceed the {self.n_frames} frames")
        arr[start : start + len(values)] = values
        if attrs:
            arr.attrs.update(dict(attrs))
        self._cache.pop(f"rewards/{key}", None)

    def delete(self, key: str) -> None:
        """Remove a frames or rewards array (never data/ or ground truth)."""
        self._require_writable()
        group, name = key.split("/", 1)
        if group not in ("frames", "rewards"):
            raise DatasetError(f"only frames/ and rewards/ arrays can be deleted, not {key!r}")
        del self.root[group][name]
        if group == "frames" and name in self.root["meta/rendered"]:
            del self.root["meta/rendered"][name]
        self._invalidate()

    def append_episode(self, ep: Episode) -> int:
        """Append one episode atomically; returns its index."""
        self._require_writable()
        T = len(ep)
        if T == 0:
            raise DatasetError("cannot append an empty episode")
        values: dict[str, np.ndarray] = {
            "data/obs": np.asarray(ep.obs, np.float32),
            "data/action": np.asarray(ep.action, np.float32),
            "data/state": np.asarray(ep.state, np.float64),
            "data/timestamp": (np.asarray(ep.timestamp, np.float64) if ep.timestamp is not None
                               else np.arange(T, dtype=np.float64) / self.fps),
        }
        if ep.true_reward is not None:
            values["ground_truth/reward"] = np.asarray(ep.true_reward, np.float32)
        if ep.true_success is not None:
            values["ground_truth/success"] = np.asarray(ep.true_success, bool)
        for key, frames in ep.frames.items():
            values[f"frames/{key}"] = np.asarray(frames, np.uint8)
        arrays = self._step_arrays()
        for key, value in values.items():
            if len(value) != T:
                raise DatasetError(f"episode field {key} has {len(value)} rows, the episode has {T} steps")
            if key in arrays and tuple(value.shape[1:]) != tuple(arrays[key].shape[1:]):
                raise DatasetError(
                    f"episode field {key} has per-step shape {tuple(value.shape[1:])}, the dataset stores "
                    f"{tuple(arrays[key].shape[1:])}; check the task/env config matches the dataset"
                )
        n, e = self.n_frames, self.n_episodes
        for key, value in values.items():
            if key not in arrays:
                self._create_step_array(key, value)
                arrays = self._step_arrays()
        for key, arr in arrays.items():
            arr.resize((n + T,) + tuple(arr.shape[1:]))
            if key in values:
                arr[n : n + T] = values[key]
            else:  # an array this episode does not provide (a learned reward, unrendered frames)
                arr[n : n + T] = arr.fill_value
        meta = self.root["meta"]
        row = {
            "episode_ends": n + T,
            "length": T,
            "seed": ep.seed,
            "success": -1 if ep.success is None else int(bool(ep.success)),
            "terminated": bool(ep.terminated),
            "task": ep.task,
            "goal": ep.goal,
            "tier": ep.tier,
            "source": ep.source,
        }
        for name, value in row.items():
            arr = meta[name]
            arr.resize((e + 1,))
            arr[e : e + 1] = np.asarray([value], dtype=object if isinstance(value, str) else arr.dtype)
        for key, arr in meta["rendered"].arrays():
            arr.resize((e + 1,))
            arr[e] = f"frames/{key}" in values
        self.root.attrs["n_episodes"] = e + 1  # commit
        self._invalidate()
        return e

    def _create_step_array(self, key: str, value: np.ndarray) -> None:
        group, name = key.split("/", 1)
        n = self.n_frames
        if group == "frames":
            if value.ndim != 4 or value.shape[-1] != 3:
                raise DatasetError(f"{key}: frames must be uint8 (T, H, W, 3), got shape {value.shape}")
            # earlier episodes stay unrendered (meta/rendered False) until `robot-pref render`
            self.create_frames(name, value.shape[1], value.shape[2])
            return
        fill = False if value.dtype == bool else float("nan")
        self.root[group].create_array(name, shape=(n,) + value.shape[1:], chunks=(STEP_CHUNK,) + value.shape[1:],
                                      dtype=value.dtype, fill_value=fill)

    def update_attrs(self, **attrs: Any) -> None:
        self._require_writable()
        json.dumps(attrs)  # fail early on values zarr cannot store
        self.root.attrs.update(attrs)

    # ------------------------------------------------------------------ statistics
    def compute_stats(self, keys: Sequence[str] = ("obs", "action")) -> dict[str, dict[str, list]]:
        """Normalisation stats (mean, std, min, max) of low-dim arrays, stored in attrs['stats']."""
        stats = {}
        for key in keys:
            x = self.get(key).astype(np.float64)
            stats[key] = {
                "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                "min": x.min(0).tolist(), "max": x.max(0).tolist(),
            }
        if self.writable:
            self.root.attrs["stats"] = stats
        return stats

    def stats(self, key: str) -> dict[str, np.ndarray]:
        stats = self.root.attrs.get("stats", {})
        if key not in stats:
            stats = self.compute_stats(sorted(set(stats) | {key}))
        return {k: np.asarray(v, np.float32) for k, v in stats[key].items()}

    def summary(self) -> dict[str, Any]:
        """What `robot-pref info` prints."""
        table = self.episode_table()
        tiers: dict[str, dict[str, Any]] = {}
        for tier in sorted(set(table["tier"].tolist())):
            sel = table["tier"] == tier
            known = table["success"][sel] >= 0
            tiers[tier or "-"] = {
                "episodes": int(sel.sum()),
                "frames": int(table["length"][sel].sum()),
                "success_rate": float(table["success"][sel][known].mean()) if known.any() else None,
            }
        known = table["success"] >= 0
        return {
            "path": self.path,
            "episodes": self.n_episodes,
            "frames": self.n_frames,
            "fps": self.fps,
            "env": self.env_meta,
            "arrays": {k: list(self.shape(k)) for k in self.available_keys()},
            "ground_truth": self.keys("ground_truth"),
            "rendered": {k: int(self.rendered_episodes(k).sum()) for k in self.frame_keys},
            "tiers": tiers,
            "tasks": sorted(set(table["task"].tolist())),
            "success_rate": float(table["success"][known].mean()) if known.any() else None,
        }
