"""The trajectory store: one class owns the zarr layout; everything else asks it.

Layout (zarr v3 group)::

    attrs           schema_version, format, fps, env (name, task, kwargs), cameras,
                    n_episodes  <- the commit point of every append
    data/           per-step arrays learners read: obs, action, state, timestamp
    frames/<cam>_<size>   per-step uint8 (T, H, W, 3) camera frames, sharded per frame; attrs.render: the
                    render options of frames `robot-pref render` drew (shadows, mesh_detail, ...)
    rewards/<key>   per-step learned rewards (one value per frame, written by relabel)
    features/<key>  per-step float32 (N, D) frozen-encoder features of a frames key (written by encode,
                    per episode: meta/encoded/<key> marks the episodes done; created on first write)
    ground_truth/   per-step true reward and success; read only through `ground_truth()`
    meta/           episode_ends, the per-episode table, render progress per frame key,
                    episode_id (a uuid4 per episode: its identity, see `frame_ids`)

Training reads random batches through `batches` (robot_pref.data.sampler.BatchSampler: background
threads prefetch, frames stay on disk unless they fit in RAM).

Conventions: row t of every per-step array is the robot at step t (frame t shows state s_t,
action t is applied in s_t). Reward arrays hold r(s_t), so the reward of transition t -> t+1
is reward[t + 1]; the last step of an episode only has a successor when the episode was
cut by a time-out, never across episodes (see `transition_indices`).

Appends are episode-atomic: all arrays are written first, then `attrs.n_episodes` is bumped.
zarr's LocalStore writes every chunk and metadata file to a temporary file and renames it into
place, so a killed writer leaves each file either old or new, never half-written; rows past the
committed length are leftovers of an interrupted append and are overwritten by the next one.
Arrays are written with ``write_empty_chunks`` on, so every committed row has its chunk file and
a deleted file is reported as a truncated store instead of silently reading as the fill value;
every chunk carries a crc32c, so corrupt bytes fail on read (`verify` reads everything).

Identity: each episode gets a fresh uuid4 in ``meta/episode_id`` when it is appended, so an
overwritten store (same path, new data) or a rewritten leftover row has new ids, while appends
keep every earlier episode's id. Answers that depend on frame *indices* (ground-truth teachers,
replayed labels) key on `frame_ids` (episode id + step), never on bare row numbers. Stores
written before this column derive each episode's id from its content (states, actions, true
reward); the column is filled with those derived ids on their next append. Frames and learned
rewards are derived data (re-rendered from states, fitted): writing them keeps the identity.

Frames are zarr v3 shards of `FRAME_SHARD` (256) frames, so a million frames are ~4k files, made of
inner chunks of a few frames (8 at 84x84, see `frame_chunk_rows`) compressed with blosc lz4hc: a
random frame costs one small byte range and one fast decode (`robot_pref.data.shards.ShardReader`).
Measured on rendered Lift frames (84x84): one-frame zstd chunks compress 2.7x and take ~78 us to
decode (zstd's per-call set-up dominates); 8-frame lz4hc chunks compress 10.8x (neighbouring frames
are alike) and decode in ~12 us, and read episodes in order 50x faster (tools/bench_dataset.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from robot_pref.data.shards import ShardReader

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
EPISODE_ID = "episode_id"  # optional text column: stores from before it derive ids from content
STEP_CHUNK = 4096  # rows per chunk of low-dim arrays
FRAME_SHARD = 256  # frames per shard file
FRAME_CHUNK_BYTES = 192 * 1024  # at most this many raw bytes per inner chunk: 8 frames of 84x84


class DatasetError(ValueError):
    """A store that cannot be used as asked; the message names the problem and the fix."""


def _create(group: zarr.Group, name: str, compressor: Any = None, **kw: Any) -> zarr.Array:
    """Every array is compressed (zstd by default) with a crc32c per chunk: corrupt bytes fail on read."""
    return group.create_array(name, compressors=(compressor or ZstdCodec(), Crc32cCodec()), **kw)


def frame_chunk_rows(height: int, width: int) -> int:
    """Frames per inner chunk: the largest power of two up to 8 whose chunk stays within FRAME_CHUNK_BYTES."""
    rows = 1
    while rows < 8 and 2 * rows * height * width * 3 <= FRAME_CHUNK_BYTES:
        rows *= 2
    return rows


def _is_dataset_or_empty(path: Path) -> bool:
    if path.is_dir() and not any(path.iterdir()):
        return True
    try:
        return json.loads((path / "zarr.json").read_text())["attributes"]["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _writing():
    """zarr config for array handles that write: keep chunks equal to the fill value as files."""
    return zarr.config.set({"array.write_empty_chunks": True})


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
        self._cache: dict[str, np.ndarray] = {}  # low-dim arrays, episode ends, render flags
        self._arrays: dict[str, zarr.Array] = {}  # open array handles (opening reads zarr.json)
        self._readers: dict[str, ShardReader | None] = {}

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
        if Path(path).exists() and not _is_dataset_or_empty(Path(path)):
            raise DatasetError(
                f"refusing to overwrite {path}: it is not a robot_pref dataset (overwrite would delete it); "
                "choose a new output path"
            )
        with _writing():
            root = zarr.open_group(path, mode="w", zarr_format=3)
        root.attrs.update(
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "fps": float(fps),
                "env": dict(env or {}),
                "obs_keys": list(obs_keys),
                "n_episodes": 0,
                "empty_chunks_written": True,  # stores from before this flag may lack all-fill chunks
            }
        )
        for group in STEP_GROUPS + ("meta",):
            root.create_group(group)
        for key, dim, dtype in (
            ("obs", obs_dim, "float32"),
            ("action", action_dim, "float32"),
            ("state", state_dim, "float64"),
        ):
            _create(root["data"], key, shape=(0, dim), chunks=(STEP_CHUNK, dim), dtype=dtype)
        _create(root["data"], "timestamp", shape=(0,), chunks=(STEP_CHUNK,), dtype="float64")
        meta = root["meta"]
        _create(meta, "episode_ends", shape=(0,), chunks=(STEP_CHUNK,), dtype="int64")
        for name, (dtype, fill) in EPISODE_COLUMNS.items():
            _create(meta, name, shape=(0,), chunks=(STEP_CHUNK,), dtype=dtype, fill_value=fill)
        for name in (*EPISODE_TEXT_COLUMNS, EPISODE_ID):
            _create(meta, name, shape=(0,), chunks=(STEP_CHUNK,), dtype=str)
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
            if (Path(path) / "zarr.json").is_file() and (Path(path) / "meta").is_dir():
                raise DatasetError(
                    f"{path}/zarr.json cannot be read ({type(err).__name__}: {err}): the store's root metadata "
                    "is corrupt. Copy the dataset again from its source"
                ) from err
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
        if ds.writable:
            ds._remove_leftovers()
        return ds

    def _remove_leftovers(self, min_age_s: float = 60.0) -> None:
        """Delete the temporary files of writes that a killed writer never renamed into place.

        zarr's LocalStore writes ``<name>.<uuid>.partial`` then renames it; only a file older than
        ``min_age_s`` is removed, never one a live writer is still filling.
        """
        now = time.time()
        for folder, _, files in os.walk(self.path):
            for name in files:
                leftover = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    if name.endswith(".partial") and now - leftover.stat().st_mtime > min_age_s:
                        leftover.unlink()

    def _validate(self) -> None:
        try:
            self._check_structure()
            missing = self._missing_chunks() if self.root.attrs.get("empty_chunks_written") else []
        except DatasetError:
            raise
        except Exception as err:  # a corrupt zarr.json of an array or a damaged chunk of meta/
            raise DatasetError(
                f"{self.path} cannot be read ({type(err).__name__}: {err}); some metadata or chunk file is "
                "corrupt. Copy the dataset again from its source"
            ) from err
        ends = self.episode_ends
        if not missing and len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            raise DatasetError(f"{self.path}: meta/episode_ends is not strictly increasing; the store is corrupt")
        if missing:
            raise DatasetError(
                f"{self.path} is truncated: {len(missing)} chunk file(s) of committed rows are missing "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}). Copy the dataset again "
                "from its source (or re-render the frames key named)"
            )

    def _check_structure(self) -> None:
        n_ep = self.root.attrs.get("n_episodes")
        if not isinstance(n_ep, int) or n_ep < 0:
            raise DatasetError(f"{self.path}: attrs.n_episodes={n_ep!r} is not a count; the root zarr.json was edited")
        required = [f"data/{k}" for k in REQUIRED_DATA_KEYS] + [
            f"meta/{k}" for k in ("episode_ends", *EPISODE_COLUMNS, *EPISODE_TEXT_COLUMNS)]
        present = {f"{g}/{k}" for g in ("data", "meta") if g in self.root for k, _ in self.root[g].arrays()}
        missing = [k for k in required if k not in present]
        missing += [g for g in STEP_GROUPS + ("meta/rendered",) if g not in self.root]
        if missing:
            raise DatasetError(
                f"{self.path} is missing {', '.join(missing)}; the store is incomplete or was written by "
                "another tool. Re-create it (robot-pref collect / import-robomimic)"
            )
        for key in ("meta/episode_ends", *(f"meta/{k}" for k in (*EPISODE_COLUMNS, *EPISODE_TEXT_COLUMNS))
                    ) + ((f"meta/{EPISODE_ID}",) if f"meta/{EPISODE_ID}" in self.root else ()):
            if self.root[key].shape[0] < n_ep:
                raise DatasetError(
                    f"{self.path}: attrs.n_episodes={n_ep} but {key} holds {self.root[key].shape[0]} rows; "
                    "the store was truncated (copied partially?). Copy it again from its source"
                )
        n = self.n_frames
        for key, arr in self._step_arrays().items():
            if arr.shape[0] < n:
                raise DatasetError(
                    f"{self.path}: {key} has {arr.shape[0]} rows but the committed episodes "
                    f"span {n} steps; the store was truncated. Copy it again from its source"
                )
            if key.startswith("frames/") and (arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8):
                raise DatasetError(f"{self.path}: {key} is {arr.dtype} {arr.shape}, frames must be uint8 (N, H, W, 3)")
        for key in ("data/obs", "data/action", "data/state"):
            if self.root[key].ndim != 2:
                raise DatasetError(f"{self.path}: {key} has shape {self.root[key].shape}, expected (N, dim)")

    def _missing_chunks(self) -> list[str]:
        """Chunk files that committed rows need but that are gone (a truncated copy, a deleted file).

        Learned rewards are skipped (unwritten rows are NaN by design), as are frames of episodes not
        rendered yet and render-progress flags (a lost flag only means an episode is rendered again).
        """
        root = Path(self.path)
        if not root.is_dir():
            return []
        n, n_ep = self.n_frames, self.n_episodes
        needs: dict[str, np.ndarray] = {}
        for key, arr in self._step_arrays().items():
            if key.startswith("frames/"):
                rendered = self.rendered_episodes(key.split("/", 1)[1])
                rows = [np.arange(s, e) for s, e in zip(self.episode_starts[rendered], self.episode_ends[rendered])]
                needs[key] = np.concatenate(rows) if rows else np.zeros(0, np.int64)
            elif not key.startswith("rewards/"):
                needs[key] = np.arange(n)
        for name in ("episode_ends", *EPISODE_COLUMNS, *EPISODE_TEXT_COLUMNS, EPISODE_ID):
            if f"meta/{name}" in self.root:
                needs[f"meta/{name}"] = np.arange(n_ep)
        missing = []
        for key, rows in needs.items():
            meta = self.root[key].metadata
            if getattr(meta.chunk_key_encoding, "name", None) != "default" or not len(rows):
                continue
            sep = meta.chunk_key_encoding.separator
            tail = "".join(sep + "0" for _ in meta.shape[1:])
            for chunk in np.unique(rows // meta.chunk_grid.chunk_shape[0]):
                name = f"c{sep}{chunk}{tail}"
                if not (root / key / name).is_file():
                    missing.append(f"{key}/{name}")
        return missing

    # ------------------------------------------------------------------ shape of the data
    @property
    def attrs(self) -> dict:
        return dict(self.root.attrs)

    @property
    def n_episodes(self) -> int:
        return int(self.root.attrs["n_episodes"])

    @property
    def episode_ends(self) -> np.ndarray:
        return self._bounds()[1]

    @property
    def episode_starts(self) -> np.ndarray:
        return self._bounds()[0]

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the committed episodes, read once per handle and write."""
        if "episode_ends" not in self._cache:
            ends = self.root["meta/episode_ends"][: self.n_episodes].astype(np.int64)
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            ends.flags.writeable = starts.flags.writeable = False
            self._cache["episode_starts"], self._cache["episode_ends"] = starts, ends
        return self._cache["episode_starts"], self._cache["episode_ends"]

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

    @property
    def episode_ids(self) -> np.ndarray:
        """Identity of each committed episode (str): a uuid4 written at append, or, for stores from
        before ``meta/episode_id``, ``derived-<sha256>`` of the episode's states, actions and true reward."""
        if "episode_ids" not in self._cache:
            if f"meta/{EPISODE_ID}" in self.root:
                ids = np.asarray(self.root[f"meta/{EPISODE_ID}"][: self.n_episodes]).astype(str)
            else:
                ids = self._derived_episode_ids()
            ids.flags.writeable = False
            self._cache["episode_ids"] = ids
        return self._cache["episode_ids"]

    def _derived_episode_ids(self) -> np.ndarray:
        arrays = [self.get("state"), self.get("action")]
        if self.has_ground_truth("reward"):
            arrays.append(self.ground_truth("reward"))
        ids = []
        for s, e in zip(self.episode_starts, self.episode_ends):
            h = hashlib.sha256()
            for a in arrays:
                h.update(np.ascontiguousarray(a[s:e]).tobytes())
            ids.append("derived-" + h.hexdigest()[:32])
        return np.asarray(ids, dtype=str)

    @property
    def identity(self) -> str:
        """One digest of every episode's identity: changes on append, overwrite and any episode rewrite."""
        return hashlib.sha256("\n".join(self.episode_ids.tolist()).encode()).hexdigest()

    def frame_ids(self, indices: np.ndarray) -> list[str]:
        """``"<episode id>:<step>"`` of each frame index: what an index-based answer is about.

        Stable across appends (earlier episodes keep their ids and steps), different in any other
        dataset written at the same path.
        """
        return self._with_steps(self.episode_ids, indices)

    def content_frame_ids(self, indices: np.ndarray) -> list[str]:
        """``"<episode content hash>:<step>"`` of each frame index: unlike `frame_ids`, equal for the frames of
        bit-identical episodes (states, actions, true reward) in any dataset, e.g. two collects of one seed."""
        if "content_ids" not in self._cache:
            self._cache["content_ids"] = self._derived_episode_ids()
        return self._with_steps(self._cache["content_ids"], indices)

    def _with_steps(self, episode_ids: np.ndarray, indices: np.ndarray) -> list[str]:
        rows = self._frame_rows(indices)
        ep = self.episode_of(rows)
        steps = rows - self.episode_starts[ep]
        return [f"{episode_ids[e]}:{t}" for e, t in zip(ep.tolist(), steps.tolist())]

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
    @staticmethod
    def _full_key(key: str) -> str:
        return key if "/" in key else f"data/{key}"

    def _array(self, key: str) -> zarr.Array:
        key = self._full_key(key)
        arr = self._arrays.get(key)
        if arr is not None:
            return arr
        if key.split("/", 1)[0] == "ground_truth":
            raise DatasetError(
                "ground truth is kept apart from learner inputs; read it explicitly with "
                "dataset.ground_truth(name)"
            )
        if key not in self.root:
            raise KeyError(f"{self.path} has no array {key!r}; available: {self.available_keys()}")
        with _writing():
            arr = self._arrays[key] = self.root[key]
        return arr

    def available_keys(self) -> list[str]:
        return [f"{g}/{k}" for g in ("data", "frames", "rewards", "features") for k in self.keys(g)]

    def _damaged(self, key: str, err: Exception) -> DatasetError:
        return DatasetError(
            f"{self.path}: reading {key} failed ({type(err).__name__}: {err}); the store is damaged. "
            f"Check the whole store with `robot-pref info --dataset {self.path} --verify`; copy it again from "
            "its source (damaged frames: delete the key and render again)"
        )

    def get(self, key: str, indices: np.ndarray | slice | None = None) -> np.ndarray:
        """Rows of a per-step array. ``key`` is ``obs``, ``frames/agentview_84``, ``rewards/vlm`` ...

        Low-dim arrays are read once and kept in memory (read-only: copy before changing them in
        place); frames are read from disk per call (one small byte range per frame), so datasets
        larger than RAM work. Indices may be unsorted and repeated; rows come back in their order.
        """
        key = self._full_key(key)
        arr = self._array(key)
        if indices is None:
            indices = slice(0, self.n_frames)
        if not key.startswith("frames/"):
            cached = self._cache.get(key)
            if cached is None:
                try:
                    cached = np.asarray(arr[: self.n_frames])
                except Exception as err:
                    raise self._damaged(key, err) from err
                cached.flags.writeable = False
                self._cache[key] = cached
            return cached[indices]
        rows = self._frame_rows(indices)
        self._require_rendered(key, rows)
        try:
            return self._read_frames(key, arr, rows)
        except Exception as err:
            raise self._damaged(key, err) from err

    def _frame_rows(self, indices: np.ndarray | slice | Sequence[int]) -> np.ndarray:
        """Frame indices as int64 rows: a slice, a boolean mask, or integers (negative count from the end)."""
        n = self.n_frames
        if isinstance(indices, slice):
            return np.arange(*indices.indices(n), dtype=np.int64)
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise IndexError(f"a boolean frame mask must have shape ({n},), got {idx.shape}")
            return np.flatnonzero(idx)
        if idx.ndim != 1 or (len(idx) and idx.dtype.kind not in "iu"):
            raise IndexError(f"frame indices must be a 1-D integer array, got {idx.dtype} of shape {idx.shape}")
        rows = idx.astype(np.int64)
        if len(rows) and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"frame indices must lie in [-{n}, {n}), got {rows.min()}..{rows.max()}")
        return np.where(rows < 0, rows + n, rows)

    def _require_rendered(self, key: str, rows: np.ndarray) -> None:
        name = key.split("/", 1)[1]
        done = self._cache.get(f"rendered/{name}")
        if done is None:
            done = self._cache[f"rendered/{name}"] = self.rendered_episodes(name)
        todo = ~done[self.episode_of(rows)]
        if todo.any():
            first = int(self.episode_of(rows[todo][:1])[0])
            camera, _, size = name.rpartition("_")
            raise DatasetError(
                f"{key}: {int(todo.sum())} of the {len(rows)} requested frames belong to episodes not rendered "
                f"yet (e.g. episode {first}; {int(done.sum())}/{len(done)} rendered). Run `robot-pref render "
                f"--dataset {self.path} --camera {camera} --size {size}` first, or read only rendered episodes "
                "(`rendered_episodes(key)`)"
            )

    def _read_frames(self, key: str, arr: zarr.Array, rows: np.ndarray) -> np.ndarray:
        if key not in self._readers:
            self._readers[key] = ShardReader.for_array(arr)
        reader = self._readers[key]
        if reader is not None:
            return reader.read(rows)
        order = np.argsort(rows, kind="stable")  # zarr wants sorted unique indices
        unique, inverse = np.unique(rows[order], return_inverse=True)
        out = np.empty((len(rows),) + arr.shape[1:], dtype=arr.dtype)
        if len(unique):
            out[order] = np.asarray(arr.oindex[unique])[inverse]
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
        try:
            return np.asarray(self.root[key][: self.n_frames])
        except Exception as err:
            raise self._damaged(key, err) from err

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

    def verify(self, progress: bool = False) -> dict[str, int]:
        """Decode every committed row (low-dim, ground truth, episode table, rendered frames).

        `open` already checks the structure and that every needed chunk file exists; this also reads
        them, which finds corrupt bytes (slow on big stores: every rendered frame is read). Returns
        rows checked per array; raises DatasetError naming the first damaged array.
        """
        from tqdm import tqdm

        checked = {}
        for key in self.keys("data") + [f"rewards/{k}" for k in self.reward_keys]:
            checked[key] = len(self.get(key))
        for name in self.keys("ground_truth"):
            checked[f"ground_truth/{name}"] = len(self.ground_truth(name))
        try:
            checked["meta"] = len(self.episode_table()["length"])
        except Exception as err:
            raise self._damaged("meta/", err) from err
        for name in self.frame_keys:
            episodes = np.flatnonzero(self.rendered_episodes(name))
            for e in tqdm(episodes, desc=f"verify frames/{name}", unit="episode", disable=not progress):
                checked[f"frames/{name}"] = checked.get(f"frames/{name}", 0) + len(
                    self.get(f"frames/{name}", self.episode_slice(int(e))))
        return checked

    def batches(self, keys: Sequence[str], batch_size: int = 256, **options: Any):
        """Endless random batches read in background threads; see `robot_pref.data.sampler.BatchSampler`."""
        from robot_pref.data.sampler import BatchSampler

        return BatchSampler(self, keys, batch_size, **options)

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _write(self):
        """Every write runs inside this: checks the mode, writes empty chunks, drops stale caches."""
        if not self.writable:
            raise DatasetError(f"{self.path} was opened read-only; open it with mode='a' to write")
        try:
            with _writing():
                yield
        finally:
            self._invalidate()

    def _require_writable(self) -> None:
        if not self.writable:
            raise DatasetError(f"{self.path} was opened read-only; open it with mode='a' to write")

    def _invalidate(self) -> None:
        self._cache.clear()
        self._arrays.clear()
        self._readers.clear()

    def _step_arrays(self) -> dict[str, zarr.Array]:
        return {f"{g}/{k}": a for g in STEP_GROUPS for k, a in self.root[g].arrays()}

    def create_frames(self, key: str, height: int, width: int, render: Mapping[str, Any] | None = None) -> zarr.Array:
        """Create (or return) the frames array for a camera/resolution, sized to the dataset.

        ``render`` (the renderer's options) is recorded on a new array and must equal what an existing
        array recorded: one key never mixes frames drawn two ways."""
        with self._write():
            group = self.root["frames"]
            if key in group:
                arr = group[key]
                if tuple(arr.shape[1:]) != (height, width, 3):
                    raise DatasetError(
                        f"frames/{key} exists with frame shape {tuple(arr.shape[1:])}, not {(height, width, 3)}; "
                        "use another key or delete the array first"
                    )
                self.check_frame_render(key, render)
                return arr
            arr = _create(
                group,
                key,
                compressor=BloscCodec(cname="lz4hc", clevel=5, shuffle="noshuffle", typesize=1),
                shape=(self.n_frames, height, width, 3),
                chunks=(frame_chunk_rows(height, width), height, width, 3),
                shards=(FRAME_SHARD, height, width, 3),
                dtype="uint8",
                fill_value=0,
            )
            if render is not None:
                arr.attrs["render"] = dict(render)
            _create(self.root["meta/rendered"], key, shape=(self.n_episodes,), chunks=(STEP_CHUNK,),
                    dtype="bool", fill_value=False)
            return arr

    def frame_render_options(self, key: str) -> dict | None:
        """The render options recorded for ``frames/<key>`` (None: frames collected online or imported)."""
        recorded = self._array(f"frames/{key}").attrs.get("render")
        return None if recorded is None else dict(recorded)

    def check_frame_render(self, key: str, render: Mapping[str, Any] | None) -> None:
        """Refuse to add frames drawn with other render options than ``frames/<key>`` recorded."""
        recorded = self.frame_render_options(key) if key in self.frame_keys else None
        if render is not None and recorded is not None and recorded != dict(render):
            changed = {k: (recorded.get(k), v) for k, v in render.items() if recorded.get(k) != v}
            raise DatasetError(
                f"frames/{key} was rendered with {recorded}, not {dict(render)} (recorded vs requested: {changed}); "
                "render with the same options to finish it, or pass --overwrite to re-render every episode"
            )

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
        """Write one episode's frames, then mark it rendered (so a crash loses at most this episode).

        One writer at a time: episodes share 256-frame shard files, and zarr has no locking.
        """
        with self._write():
            sl = self.episode_slice(episode)
            arr = self.root[f"frames/{key}"]
            frames = np.asarray(frames)
            if frames.shape != (sl.stop - sl.start,) + tuple(arr.shape[1:]) or frames.dtype != np.uint8:
                raise DatasetError(
                    f"episode {episode} has {sl.stop - sl.start} steps of uint8 frames {tuple(arr.shape[1:])}, "
                    f"got {frames.dtype} frames of shape {frames.shape}"
                )
            arr[sl] = frames
            self.root[f"meta/rendered/{key}"][episode] = True

    def write_reward(self, key: str, values: np.ndarray, start: int = 0, attrs: Mapping | None = None) -> None:
        """Write rows [start, start+len) of the learned reward ``rewards/<key>`` (created NaN-filled)."""
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if start < 0 or start + len(values) > self.n_frames:
            raise DatasetError(f"reward rows {start}:{start + len(values)} exceed the {self.n_frames} frames")
        with self._write():
            group = self.root["rewards"]
            if key not in group:
                _create(group, key, shape=(self.n_frames,), chunks=(STEP_CHUNK,), dtype="float32",
                        fill_value=float("nan"))
            arr = group[key]
            arr[start : start + len(values)] = values
            if attrs:
                arr.attrs.update(dict(attrs))

    @property
    def feature_keys(self) -> list[str]:
        return self.keys("features")

    def encoded_episodes(self, key: str) -> np.ndarray:
        """Which episodes have their features under ``features/<key>`` written (resumable encoding)."""
        done = np.zeros(self.n_episodes, dtype=bool)
        if f"meta/encoded/{key}" in self.root:
            arr = self.root[f"meta/encoded/{key}"]
            m = min(arr.shape[0], self.n_episodes)
            done[:m] = arr[:m]
        return done

    def feature_attrs(self, key: str) -> dict:
        return dict(self.root[f"features/{key}"].attrs) if f"features/{key}" in self.root else {}

    def write_episode_features(self, key: str, episode: int, values: np.ndarray, attrs: Mapping | None = None) -> None:
        """Write one episode's (T, D) features, then mark it encoded (a crash loses at most this episode).

        The array is created NaN-filled on first write and grows with episodes appended since (their rows
        stay NaN and unmarked until encoded). ``attrs`` (the encoder) must match the array's: one key, one
        encoder."""
        values = np.asarray(values, np.float32)
        sl = self.episode_slice(episode)
        if values.ndim != 2 or len(values) != sl.stop - sl.start:
            raise DatasetError(f"episode {episode} has {sl.stop - sl.start} steps; features must be (T, D), "
                               f"got {values.shape}")
        with self._write():
            group = self.root.require_group("features")
            flags = self.root.require_group("meta").require_group("encoded")
            if key not in group:
                _create(group, key, shape=(self.n_frames, values.shape[1]), chunks=(STEP_CHUNK, values.shape[1]),
                        dtype="float32", fill_value=float("nan"))
                _create(flags, key, shape=(self.n_episodes,), chunks=(STEP_CHUNK,), dtype="bool", fill_value=False)
                if attrs:
                    group[key].attrs.update(dict(attrs))
            arr, done = group[key], flags[key]
            if attrs and dict(arr.attrs) != dict(attrs):
                raise DatasetError(f"features/{key} was encoded by {dict(arr.attrs)}, not {dict(attrs)}; "
                                   f"delete it (dataset.delete('features/{key}')) or choose another key")
            if arr.shape[1] != values.shape[1]:
                raise DatasetError(f"features/{key} holds {arr.shape[1]}-dim features, got {values.shape[1]}")
            if arr.shape[0] < self.n_frames:  # episodes appended since the first encode
                old = arr.shape[0]
                arr.resize((self.n_frames, arr.shape[1]))
                arr[old:] = np.nan
            if done.shape[0] < self.n_episodes:
                old = done.shape[0]
                done.resize((self.n_episodes,))
                done[old:] = False
            arr[sl] = values
            done[episode] = True

    def delete(self, key: str) -> None:
        """Remove a frames, rewards or features array (never data/ or ground truth)."""
        group, _, name = key.partition("/")
        if group not in ("frames", "rewards", "features") or not name:
            raise DatasetError(f"only frames/, rewards/ and features/ arrays can be deleted, not {key!r}")
        with self._write():
            del self.root[group][name]
            if group == "frames" and name in self.root["meta/rendered"]:
                del self.root["meta/rendered"][name]
            if group == "features" and "meta/encoded" in self.root and name in self.root["meta/encoded"]:
                del self.root["meta/encoded"][name]

    def _episode_values(self, ep: Episode) -> dict[str, np.ndarray]:
        """The per-step arrays of ``ep`` by store key, checked against the store before anything is written."""
        T = len(ep.action) if ep.action is not None else 0
        if T == 0:
            raise DatasetError("cannot append an empty episode (no actions)")
        for name in ("obs", "action", "state"):
            if getattr(ep, name) is None:
                raise DatasetError(f"episode field {name} is missing; every episode needs obs, action and state")
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
            frames = np.asarray(frames)
            if "/" in key or not key:
                raise DatasetError(f"frame key {key!r} must be a plain name like {frame_key('agentview', 84)!r}")
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(
                    f"episode frames {key!r} must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}; "
                    "convert float images with (255 * x).round().astype(np.uint8)"
                )
            values[f"frames/{key}"] = frames
        ndim = {"data/obs": 2, "data/action": 2, "data/state": 2, "data/timestamp": 1,
                "ground_truth/reward": 1, "ground_truth/success": 1}
        arrays = self._step_arrays()
        for key, value in values.items():
            if key in ndim and value.ndim != ndim[key]:
                raise DatasetError(f"episode field {key} has shape {value.shape}, expected {ndim[key]} dimension(s)")
            if len(value) != T:
                raise DatasetError(f"episode field {key} has {len(value)} rows, the episode has {T} steps")
            if key in arrays and tuple(value.shape[1:]) != tuple(arrays[key].shape[1:]):
                raise DatasetError(
                    f"episode field {key} has per-step shape {tuple(value.shape[1:])}, the dataset stores "
                    f"{tuple(arrays[key].shape[1:])}; check the task/env config matches the dataset"
                )
            if key in ("data/obs", "data/action") and not np.isfinite(value).all():
                raise DatasetError(f"episode field {key} holds NaN or inf values; fix the collector/importer")
        return values

    def append_episode(self, ep: Episode) -> int:
        """Append one episode atomically; returns its index.

        Every array is written first and `attrs.n_episodes` last: a process killed in between leaves
        the store at its previous episode count, and the next append overwrites the leftover rows.
        """
        self._require_writable()
        values = self._episode_values(ep)
        T = len(ep.action)
        with self._write():
            n, e = self.n_frames, self.n_episodes
            arrays = self._step_arrays()
            for key, value in values.items():
                if key not in arrays:
                    self._create_step_array(key, value, n)
            for key, arr in self._step_arrays().items():
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
                EPISODE_ID: uuid.uuid4().hex,  # a new identity, also when this row held a killed append's leftovers
            }
            if EPISODE_ID not in meta:  # a store from before identities: keep the ids derived until now
                derived = self._derived_episode_ids()
                _create(meta, EPISODE_ID, shape=(e,), chunks=(STEP_CHUNK,), dtype=str)
                if e:
                    meta[EPISODE_ID][:e] = np.asarray(derived.tolist(), dtype=object)
            for name, value in row.items():
                arr = meta[name]
                arr.resize((e + 1,))
                arr[e : e + 1] = np.asarray([value], dtype=object if isinstance(value, str) else arr.dtype)
            for key, arr in meta["rendered"].arrays():
                arr.resize((e + 1,))
                arr[e] = f"frames/{key}" in values
            self.root.attrs["n_episodes"] = e + 1  # commit
        return e

    def _create_step_array(self, key: str, value: np.ndarray, n: int) -> None:
        group, name = key.split("/", 1)
        if group == "frames":
            # earlier episodes stay unrendered (meta/rendered False) until `robot-pref render`
            self.create_frames(name, value.shape[1], value.shape[2])
            return
        fill = False if value.dtype == bool else float("nan")
        arr = _create(self.root[group], name, shape=(n,) + value.shape[1:], chunks=(STEP_CHUNK,) + value.shape[1:],
                      dtype=value.dtype, fill_value=fill)
        if n:  # earlier episodes did not record it: write the fill so every committed row has its chunk
            arr[:n] = fill

    def update_attrs(self, **attrs: Any) -> None:
        self._require_writable()
        json.dumps(attrs)  # fail early on values zarr cannot store
        self.root.attrs.update(attrs)

    # ------------------------------------------------------------------ statistics
    def compute_stats(self, keys: Sequence[str] = ("obs", "action")) -> dict[str, dict[str, list]]:
        """Normalisation stats (mean, std, min, max over frames; NaN rows ignored) of low-dim arrays.

        Stored in attrs['stats'] (when writable) with the frame count ``n`` they cover, so `stats`
        recomputes them once episodes were appended.
        """
        stats = dict(self.root.attrs.get("stats", {}))
        for key in keys:
            if self._full_key(key).startswith("frames/"):
                raise DatasetError(f"stats are for low-dim arrays; frames {key!r} are normalised as x / 255")
            x = self.get(key).astype(np.float64).reshape(self.n_frames, -1)
            x = x[~np.isnan(x).any(1)]
            if not len(x):
                raise DatasetError(f"{key} has no rows without NaN in {self.path}; nothing to compute stats from")
            shape = self.shape(key)[1:]
            stats[key] = {name: getattr(np, name)(x, axis=0).reshape(shape).tolist()
                          for name in ("mean", "std", "min", "max")}
            stats[key]["n"] = self.n_frames
        if self.writable:
            self.root.attrs["stats"] = stats
        self._cache["stats"] = stats
        return {k: stats[k] for k in keys}

    def stats(self, key: str) -> dict[str, np.ndarray]:
        """mean/std/min/max of a low-dim array as float32, computed (and stored) when missing or stale."""
        stats = self._cache.get("stats") or self.root.attrs.get("stats", {})
        if stats.get(key, {}).get("n") != self.n_frames:
            stats = {key: self.compute_stats([key])[key]}
        return {k: np.asarray(v, np.float32) for k, v in stats[key].items() if k != "n"}

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
