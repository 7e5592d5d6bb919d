"""LeRobot datasets in and out: `import-lerobot` reads a LeRobotDataset folder, `export-lerobot` writes one.

A LeRobotDataset (codebase v3.0; v2.1/v2.0 are read too) is ``meta/info.json`` (fps, robot type,
features), per-episode metadata, parquet tables of per-frame values and, for ``video`` features, mp4
files. v3.0 packs many episodes into each parquet/mp4 file (``meta/episodes/*.parquet`` says which
file and from which video timestamp); v2.x has one parquet file and one mp4 per episode and camera.
Parquet is read with pyarrow, one episode at a time (a row filter on ``episode_index``), and videos
are decoded with PyAV, so a dataset larger than RAM imports.

How an episode becomes one of ours (rows are LeRobot's frames, in ``frame_index`` order):

- ``action`` <- ``action`` exactly; ``obs`` <- ``observation.state`` (then
  ``observation.environment_state`` where present), in ``attrs.obs_keys``. There is no simulator
  state: ``state`` holds ``observation.state`` too, and the dataset cannot be re-rendered.
- frames: every ``video`` / ``image`` feature (``observation.images.<cam>``) -> ``frames/<cam>_<H>x<W>``,
  marked rendered. A video frame is the one shown at the row's ``timestamp`` (+ the episode's
  ``from_timestamp`` in v3.0), as LeRobot's own reader picks it.
- ``timestamp`` <- ``timestamp``; fps and ``robot_type`` go to ``attrs.env``; the episode's task text
  is its ``goal``.
- ground truth (fenced off in ``ground_truth/``): LeRobot's ``next.reward`` / ``next.success`` at row
  t belong to the state after action t, so they are shifted like robomimic's rewards (`shift_next`);
  ``success`` <- any ``next.success``. ``next.done`` marks the last frame of an episode (or a sim's
  termination); it is taken as a true terminal only with ``terminals=True``: a recording's end is a
  time-out.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robot_pref.data.dataset import DatasetError, Episode, frame_key
from robot_pref.data.imports import check_resumed, export_reward, open_export, open_import, shift_next

VERSIONS = ("v2.0", "v2.1", "v3.0")
STATE_KEYS = ("observation.state", "observation.environment_state")
GROUND_TRUTH_KEYS = ("next.reward", "next.done", "next.success")
INDEX_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def camera_name(key: str) -> str:
    """``observation.images.front`` -> ``front``; ``observation.image`` -> ``image``."""
    return key.removeprefix("observation.images.").removeprefix("observation.").replace(".", "_").replace("/", "_")


def resolve_source(source: str) -> Path:
    """A local LeRobotDataset folder, or a repo id already on disk (LeRobot's home or the HF hub cache).

    Nothing is downloaded: a repo id that is not on disk is an error saying how to get it.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "meta/info.json").is_file():
            raise DatasetError(f"{path} is not a LeRobot dataset (no meta/info.json); point at the folder that "
                               "holds meta/, data/ and videos/")
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    home = Path(os.environ.get("HF_LEROBOT_HOME", Path(constants.HF_HOME) / "lerobot")) / source
    if (home / "meta/info.json").is_file():
        return home
    if source.count("/") == 1:
        try:
            return Path(snapshot_download(source, repo_type="dataset", local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
            pass
    raise DatasetError(
        f"{source} is neither a folder nor a LeRobot repo id on this machine (looked in {home} and the Hugging "
        f"Face cache {constants.HF_HUB_CACHE}); robot-pref never downloads: fetch it first, e.g. "
        f"`huggingface-cli download --repo-type dataset {source}`, or pass the dataset's folder")


@dataclass
class EpisodeFiles:
    """Where one LeRobot episode's rows and frames are."""

    index: int
    length: int
    tasks: list[str]
    data: Path
    videos: dict[str, tuple[Path, float]]  # video key -> (mp4 file, timestamp of the episode's first frame)


def _column(table, key: str, n: int) -> np.ndarray:
    """A pyarrow column as numpy: fixed-size lists (vector features) become (n, dim)."""
    import pyarrow as pa

    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type):
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(n, -1)
    return np.asarray(col.to_numpy(zero_copy_only=False))


class LeRobotSource:
    """Reads one LeRobotDataset folder (v3.0 or v2.x) episode by episode."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        info_path = self.root / "meta/info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{info_path} cannot be read ({err}); copy the dataset's meta/ folder again") from err
        self.version = str(self.info.get("codebase_version"))
        if self.version not in VERSIONS:
            raise DatasetError(
                f"{info_path}: codebase_version {self.version!r} is not one robot-pref reads ({', '.join(VERSIONS)}); "
                "convert it with LeRobot's own converters (lerobot.datasets.v30.convert_dataset_v21_to_v30 for "
                "v2.1, after v1.x -> v2.1) and import the result")
        self.features: dict[str, dict] = self.info.get("features", {})
        self.fps = float(self.info["fps"])
        if "action" not in self.features:
            raise DatasetError(f"{info_path} declares no 'action' feature (it has {sorted(self.features)}); "
                               "robot-pref needs actions to train policies")
        self.obs_keys = [k for k in STATE_KEYS if k in self.features]
        if not self.obs_keys:
            raise DatasetError(f"{info_path} declares no {STATE_KEYS[0]!r} feature (it has {sorted(self.features)}); "
                               "robot-pref needs a low-dim robot state as the policy's observation")
        self.cameras = [k for k, f in self.features.items() if f.get("dtype") in ("video", "image")]
        self.video_keys = [k for k in self.cameras if self.features[k]["dtype"] == "video"]
        self.tasks = self._tasks()

    # ------------------------------------------------------------------ metadata
    def _read_parquet(self, path: Path, what: str, **kw: Any):
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DatasetError(f"{path} is missing ({what}); copy the dataset again from its source")
        try:
            return pq.read_table(path, **kw)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ... for damaged files
            raise DatasetError(f"{path} cannot be read as parquet ({what}: {type(err).__name__}: {err}); "
                               "the file is damaged: copy it again from the dataset's source") from err

    def _jsonl(self, name: str) -> list[dict]:
        path = self.root / "meta" / name
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, ValueError) as err:
            raise DatasetError(f"{path} cannot be read ({err}); copy the dataset's meta/ folder again") from err

    def _tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            table = self._read_parquet(self.root / "meta/tasks.parquet", "the task texts")
            names = [n for n in table.column_names if n != "task_index"]
            text = table.column("task" if "task" in names else names[0]).to_pylist()
            return dict(zip(table.column("task_index").to_pylist(), text))
        return {int(r["task_index"]): r["task"] for r in self._jsonl("tasks.jsonl")}

    def episodes(self) -> list[EpisodeFiles]:
        """Every episode in ``episode_index`` order with its files."""
        out = []
        if self.version == "v3.0":
            files = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
            if not files:
                raise DatasetError(f"{self.root}/meta/episodes holds no parquet files; copy the dataset's meta/ again")
            for path in files:
                for row in self._read_parquet(path, "episode metadata").to_pylist():
                    data = self.root / self.info["data_path"].format(
                        chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
                    videos = {k: (self.root / self.info["video_path"].format(
                        video_key=k, chunk_index=row[f"videos/{k}/chunk_index"],
                        file_index=row[f"videos/{k}/file_index"]), float(row[f"videos/{k}/from_timestamp"]))
                        for k in self.video_keys}
                    out.append(EpisodeFiles(int(row["episode_index"]), int(row["length"]), list(row["tasks"]),
                                            data, videos))
        else:
            size = int(self.info.get("chunks_size", 1000))
            for row in self._jsonl("episodes.jsonl"):
                e = int(row["episode_index"])
                where = {"episode_chunk": e // size, "episode_index": e}
                videos = {k: (self.root / self.info["video_path"].format(video_key=k, **where), 0.0)
                          for k in self.video_keys}
                out.append(EpisodeFiles(e, int(row["length"]), list(row["tasks"]),
                                        self.root / self.info["data_path"].format(**where), videos))
        return sorted(out, key=lambda e: e.index)

    # ------------------------------------------------------------------ one episode
    def read(self, ep: EpisodeFiles) -> dict[str, np.ndarray]:
        """The episode's per-frame values by feature key (cameras as uint8 (T, H, W, 3))."""
        what = f"episode {ep.index}"
        keys = [k for k in self.features if self.features[k]["dtype"] != "video"]
        table = self._read_parquet(ep.data, what, columns=keys, filters=[("episode_index", "==", ep.index)])
        T = table.num_rows
        if T != ep.length:
            raise DatasetError(f"{ep.data}: episode {ep.index} has {T} rows, its metadata says {ep.length} frames; "
                               "the table and meta/ disagree: copy the dataset again from its source")
        order = np.argsort(_column(table, "frame_index", T), kind="stable")
        values = {k: _column(table, k, T)[order] for k in keys if self.features[k]["dtype"] != "image"}
        for k in self.cameras:
            values[k] = (self._images(table, k, ep, order) if self.features[k]["dtype"] == "image"
                         else self._video(k, ep, values["timestamp"].astype(np.float64)))
        return values

    def _images(self, table, key: str, ep: EpisodeFiles, order: np.ndarray) -> np.ndarray:
        import io

        from PIL import Image

        rows = table.column(key).to_pylist()
        frames = []
        for i in order:
            cell = rows[i] or {}
            if not cell.get("bytes"):
                raise DatasetError(f"{ep.data}: episode {ep.index} frame {i} of {key} holds no image bytes "
                                   f"(path {cell.get('path')!r}); re-save the dataset with embedded images")
            frames.append(np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")))
        return self._check_shape(np.stack(frames), key, ep.data, ep)

    def _check_shape(self, frames: np.ndarray, key: str, path: Path, ep: EpisodeFiles) -> np.ndarray:
        shape = tuple(self.features[key]["shape"])
        if shape[-1] != 3:  # LeRobot 2.0 wrote (C, H, W) for some datasets
            shape = shape[1:] + shape[:1]
        if frames.shape[1:] != shape:
            raise DatasetError(f"{path}: episode {ep.index} {key} frames are {frames.shape[1:]}, meta/info.json says "
                               f"{shape}; the file does not belong to this dataset: copy it again")
        return frames

    def _video(self, key: str, ep: EpisodeFiles, timestamps: np.ndarray) -> np.ndarray:
        path, start = ep.videos[key]
        if not path.is_file():
            raise DatasetError(f"{path} is missing (video {key} of episode {ep.index}); copy the dataset's videos/ "
                               "folder again (a Hub download with download_videos=False leaves them out)")
        frames = decode_video(path, start + timestamps, 0.5 / self.fps, f"episode {ep.index}")
        return self._check_shape(frames, key, path, ep)

    def episode(self, ep: EpisodeFiles, task: str, terminals: bool) -> Episode:
        v = self.read(ep)
        obs = np.concatenate([v[k].reshape(ep.length, -1) for k in self.obs_keys], axis=1).astype(np.float32)
        reward = v["next.reward"].reshape(-1).astype(np.float32) if "next.reward" in v else None
        success = v["next.success"].reshape(-1).astype(bool) if "next.success" in v else None
        done = v["next.done"].reshape(-1).astype(bool) if "next.done" in v else None
        goal = "; ".join(ep.tasks) if ep.tasks else self.tasks.get(int(v["task_index"][0]), "")
        return Episode(
            obs=obs, action=v["action"].reshape(ep.length, -1).astype(np.float32),
            state=v["observation.state"].reshape(ep.length, -1).astype(np.float64),
            timestamp=v["timestamp"].astype(np.float64),
            frames={frame_key(camera_name(k), *v[k].shape[1:3]): v[k] for k in self.cameras},
            true_reward=None if reward is None else shift_next(reward),
            true_success=None if success is None else shift_next(success),
            task=task, goal=goal, source="lerobot", seed=-1,
            success=None if success is None else bool(success.any()),
            terminated=bool(terminals and done is not None and done[-1]),
        )


def decode_video(path: Path, times: np.ndarray, tolerance: float, what: str) -> np.ndarray:
    """RGB frames of ``path`` shown at ``times`` (seconds), decoded with PyAV from the nearest keyframe.

    Every time needs a frame within ``tolerance``; a video shorter than its table is an error.
    """
    import av

    got_t, got_f = [], []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            container.seek(max(int((times[0] - tolerance) / stream.time_base), 0), stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.time is None or frame.time < times[0] - tolerance:
                    continue
                if frame.time > times[-1] + tolerance:
                    break
                got_t.append(frame.time)
                got_f.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as err:
        raise DatasetError(f"{path} cannot be decoded ({what}: {err}); the video is damaged: copy it again") from err
    if not got_f:
        raise DatasetError(f"{path} has no frames between {times[0]:.3f} s and {times[-1]:.3f} s ({what}, "
                           f"{len(times)} rows in the table); the video is truncated or belongs to other data")
    got = np.asarray(got_t)
    nearest = np.abs(got[None, :] - times[:, None]).argmin(1)
    off = np.abs(got[nearest] - times)
    if (off > tolerance).any():
        bad = int(np.argmax(off > tolerance))
        raise DatasetError(
            f"{path}: frame count mismatch for {what}: the table has {len(times)} rows up to {times[-1]:.3f} s, the "
            f"video has {len(got_f)} frames in that span (row {bad} at {times[bad]:.3f} s has none within "
            f"{tolerance:.3f} s); the video and the parquet table disagree: copy both again from the source")
    return np.stack([got_f[i] for i in nearest])


def import_lerobot(cfg) -> dict[str, Any]:
    """Import every episode of ``cfg.source`` into ``cfg.out`` (resuming a partial import); returns the summary."""
    from tqdm import tqdm

    if not cfg.source or not cfg.out:
        raise ValueError("give the LeRobot dataset and --out, e.g. `robot-pref import-lerobot ./my_dataset "
                         "--out data/real.zarr`")
    root = resolve_source(cfg.source)
    src = LeRobotSource(root)
    episodes = src.episodes()
    if not episodes:
        raise DatasetError(f"{root} holds no episodes")
    dims = {k: int(np.prod(src.features[k]["shape"])) for k in src.obs_keys}
    name = cfg.source if not Path(cfg.source).expanduser().exists() else root.resolve().name
    env = {"source": "lerobot", "name": name, "robot_type": src.info.get("robot_type"),
           "codebase_version": src.version, "obs_dims": dims, "renderable": False,
           "cameras": {camera_name(k): k for k in src.cameras},
           "features": src.features, "tasks": sorted(set(src.tasks.values()))}
    ds = open_import(cfg.out, {"format": "lerobot", "path": str(root.resolve()), "task": cfg.task,
                               "terminals": cfg.terminals},
                     cfg.overwrite, env=env, obs_dim=sum(dims.values()),
                     action_dim=int(np.prod(src.features["action"]["shape"])),
                     state_dim=int(np.prod(src.features["observation.state"]["shape"])), fps=src.fps,
                     obs_keys=src.obs_keys)
    done = check_resumed(ds, [e.length for e in episodes], str(root))
    task = cfg.task or name.rsplit("/", 1)[-1]
    for ep in tqdm(episodes[done:], desc=f"import {name}", unit="episode", initial=done, total=len(episodes)):
        episode = src.episode(ep, task, cfg.terminals)
        try:
            ds.append_episode(episode)
        except DatasetError as err:
            raise DatasetError(f"{root} episode {ep.index}: {err}") from err
    return ds.summary()


# ---------------------------------------------------------------------------------------------- export
CHUNKS_SIZE, DATA_FILE_MB, VIDEO_FILE_MB = 1000, 100, 200  # LeRobot's defaults for files per folder and sizes
FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
VIDEO_OPTIONS = {"g": "2", "crf": "30", "preset": "12"}  # LeRobot's libsvtav1 settings (GOP 2: cheap seeks)


class _Rolling:
    """Writes to chunk-XXX/file-YYY files, starting the next file once one reaches ``limit_mb``."""

    def __init__(self, root: Path, pattern: str, limit_mb: float):
        self.root, self.pattern, self.limit = root, pattern, limit_mb * 2**20
        self.chunk = self.file = 0
        self.path: Path | None = None

    def next_path(self) -> Path:
        """The file the next episode goes to (a new one when the current is full)."""
        if self.path is not None and self.path.is_file() and self.path.stat().st_size >= self.limit:
            self.close()
            self.chunk, self.file = (self.chunk + 1, 0) if self.file == CHUNKS_SIZE - 1 else (self.chunk, self.file + 1)
        if self.path is None:
            self.path = self.root / self.pattern.format(chunk_index=self.chunk, file_index=self.file)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.open(self.path)
        return self.path

    def open(self, path: Path) -> None: ...

    def close(self) -> None:
        self.path = None


class _ParquetFiles(_Rolling):
    def __init__(self, root: Path, schema):
        super().__init__(root, "data/" + FILE + ".parquet", DATA_FILE_MB)
        self.schema, self.writer = schema, None

    def open(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.writer = pq.ParquetWriter(path, self.schema)

    def write(self, table) -> None:
        self.next_path()
        self.writer.write_table(table)  # one row group per episode

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        super().close()


class _VideoFiles(_Rolling):
    """One camera's mp4 files; episodes follow each other in a file, frame pts counting on."""

    def __init__(self, root: Path, key: str, fps, height: int, width: int, codec: str):
        super().__init__(root, f"videos/{key}/" + FILE + ".mp4", VIDEO_FILE_MB)
        self.fps, self.size, self.codec = fps, (height, width), codec
        self.container = self.stream = None
        self.frames = 0

    def open(self, path: Path) -> None:
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise; errors only
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(self.codec, rate=self.fps,
                                                options=VIDEO_OPTIONS if self.codec == "libsvtav1" else {})
        self.stream.height, self.stream.width = self.size
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def write(self, frames: np.ndarray) -> tuple[Path, float, float]:
        """Encode one episode's frames; returns (file, from_timestamp, to_timestamp) as LeRobot records them."""
        import av

        path = self.next_path()
        start = self.frames
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            self.frames += 1
            self.container.mux(self.stream.encode(frame))
        return path, start / float(self.fps), self.frames / float(self.fps)

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None
        super().close()


def _index(path: Path) -> tuple[int, int]:
    """(chunk_index, file_index) of a chunk-XXX/file-YYY path."""
    return int(path.parent.name.removeprefix("chunk-")), int(path.stem.removeprefix("file-"))


def _stats(x: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics (min, max, mean, std, count, quantiles) over axis 0."""
    x = np.asarray(x, np.float64)
    out = {name: getattr(np, name)(x, axis=0) for name in ("min", "max", "mean", "std")}
    out |= {f"q{int(q * 100):02d}": np.quantile(x, q, axis=0) for q in (0.01, 0.10, 0.50, 0.90, 0.99)}
    out = {k: np.atleast_1d(v).tolist() for k, v in out.items()}
    return out | {"count": [len(x)]}


def export_lerobot(cfg) -> dict[str, Any]:
    """Write ``cfg.dataset`` as a LeRobotDataset v3.0 at ``cfg.out``; returns a short summary.

    Written into ``<out>.partial`` and renamed at the end, so ``out`` is complete or absent.
    ``observation.state`` <- obs, ``action`` <- action, every fully rendered frame key -> a video
    feature (the camera's LeRobot key when the data came from LeRobot, else
    ``observation.images.<camera>``), ``timestamp`` = frame_index / fps (LeRobot finds video frames by
    it), the goal text as the task. With ``reward_key``, ``next.reward[t]`` = reward[t + 1] (LeRobot's
    reward of the state after action t; the last frame repeats its own), ``true`` for the ground truth.
    """
    import shutil
    from fractions import Fraction

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    ds, out = open_export(cfg.dataset, cfg.out, cfg.overwrite, "robot-pref export-lerobot --dataset data/real.zarr "
                          "--out exports/real_lerobot --reward-key learned")
    if ds.n_episodes == 0:
        raise DatasetError(f"{cfg.dataset} holds no episodes to export")
    reward = export_reward(ds, cfg.reward_key)
    cameras = list(cfg.cameras) or [k for k in ds.frame_keys if ds.rendered_episodes(k).all()]
    for key in cameras:
        if key not in ds.frame_keys or not ds.rendered_episodes(key).all():
            raise DatasetError(f"frames/{key} is not rendered for every episode of {cfg.dataset} (frame keys: "
                               f"{ds.frame_keys}); run `robot-pref render` or choose --cameras")
    known = ds.env_meta.get("cameras") if isinstance(ds.env_meta.get("cameras"), dict) else {}  # LeRobot's keys
    video_keys = {k: known.get(k.rpartition("_")[0], f"observation.images.{k.rpartition('_')[0]}") for k in cameras}
    fps = int(ds.fps) if float(ds.fps).is_integer() else ds.fps
    A, D = ds.shape("action")[1], ds.shape("obs")[1]
    imported = ds.env_meta.get("features", {}) if ds.attrs.get("obs_keys") == ["observation.state"] else {}
    features: dict[str, dict] = {  # a LeRobot import keeps its per-number names (motors, joints)
        k: {"dtype": "float32", "shape": [n], "names": imported.get(k, {}).get("names")}
        for k, n in (("action", A), ("observation.state", D))}
    for key, lk in video_keys.items():
        h, w = ds.shape(f"frames/{key}")[1:3]
        if h % 2 or w % 2:
            raise DatasetError(f"frames/{key} are {h}x{w}; video (yuv420p) needs even sizes: render at an even size")
        features[lk] = {"dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                        "info": {"video.height": h, "video.width": w, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                                 "video.is_depth_map": False, "video.fps": fps, "video.channels": 3,
                                 "has_audio": False}}
    if reward is not None:
        features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    features["next.done"] = {"dtype": "bool", "shape": [1], "names": None}
    for k in INDEX_KEYS:
        features[k] = {"dtype": "float32" if k == "timestamp" else "int64", "shape": [1], "names": None}

    table = ds.episode_table()
    texts = [g or t for g, t in zip(table["goal"].tolist(), table["task"].tolist())]
    tasks = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    schema = pa.schema([(k, pa.list_(pa.float32(), f["shape"][0]) if f["shape"] != [1] else
                         {"float32": pa.float32(), "int64": pa.int64(), "bool": pa.bool_()}[f["dtype"]])
                        for k, f in features.items() if f["dtype"] != "video"])
    data = _ParquetFiles(partial, schema)
    videos = {lk: _VideoFiles(partial, lk, Fraction(fps).limit_denominator(), *features[lk]["shape"][:2], cfg.vcodec)
              for lk in video_keys.values()}
    rows = []
    obs, action = ds.get("obs"), ds.get("action")
    for e in tqdm(range(ds.n_episodes), desc=f"export {out.name}", unit="episode"):
        sl = ds.episode_slice(e)
        T = sl.stop - sl.start
        cols = {"action": action[sl], "observation.state": obs[sl]}
        if reward is not None:
            r = reward[sl]
            cols["next.reward"] = np.concatenate([r[1:], r[-1:]]).astype(np.float32)
        cols["next.done"] = np.arange(T) == T - 1
        cols |= {"timestamp": (np.arange(T) / float(fps)).astype(np.float32), "frame_index": np.arange(T),
                 "episode_index": np.full(T, e), "index": np.arange(sl.start, sl.stop),
                 "task_index": np.full(T, tasks[texts[e]])}
        arrays = [pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(cols[f.name], np.float32).reshape(-1)),
                                                    f.type.list_size)
                  if pa.types.is_fixed_size_list(f.type) else pa.array(cols[f.name], type=f.type) for f in schema]
        data.write(pa.Table.from_arrays(arrays, schema=schema))
        row = {"episode_index": e, "tasks": [texts[e]], "length": T, "dataset_from_index": sl.start,
               "dataset_to_index": sl.stop}
        row["data/chunk_index"], row["data/file_index"] = _index(data.path)
        for key, lk in video_keys.items():
            frames = ds.get(f"frames/{key}", sl)
            path, start, stop = videos[lk].write(frames)
            c, f = _index(path)
            row |= {f"videos/{lk}/chunk_index": c, f"videos/{lk}/file_index": f,
                    f"videos/{lk}/from_timestamp": start, f"videos/{lk}/to_timestamp": stop}
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        rows.append(row)
    data.close()
    for v in videos.values():
        v.close()
    (partial / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), partial / "meta/episodes/chunk-000/file-000.parquet")
    # tasks: a pandas frame indexed by the task text (LeRobot reads it with pandas.read_parquet)
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "pandas_version": "2.2.0",
                   "creator": {"library": "pyarrow", "version": pa.__version__},
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}]}
    task_table = pa.table({"task_index": pa.array(list(tasks.values()), pa.int64()), "task": list(tasks)})
    pq.write_table(task_table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}),
                   partial / "meta/tasks.parquet")
    stats = {"action": _stats(action), "observation.state": _stats(obs)}
    if reward is not None:
        stats["next.reward"] = _stats(np.concatenate([reward[ds.episode_slice(e)][1:] for e in range(ds.n_episodes)]
                                                     )[:, None])
    sample = [int(ds.episode_starts[e] + (ds.episode_ends[e] - ds.episode_starts[e]) // 2)
              for e in range(0, ds.n_episodes, max(1, ds.n_episodes // 256))]  # middle frames of <= 256 episodes
    for key, lk in video_keys.items():  # per channel in [0, 1], shaped (3, 1, 1) as LeRobot's image stats
        pixels = ds.get(f"frames/{key}", np.asarray(sample)).reshape(-1, 3) / 255.0
        stats[lk] = {k: np.asarray(v).reshape(3, 1, 1).tolist() if k != "count" else v
                     for k, v in _stats(pixels).items()}
    (partial / "meta/stats.json").write_text(json.dumps(stats, indent=2))
    env = ds.env_meta
    info = {"codebase_version": "v3.0", "robot_type": env.get("robot_type") or env.get("name") or None,
            "total_episodes": ds.n_episodes, "total_frames": ds.n_frames, "total_tasks": len(tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB,
            "fps": fps, "splits": {"train": f"0:{ds.n_episodes}"},
            "data_path": "data/" + FILE + ".parquet",
            "video_path": "videos/{video_key}/" + FILE + ".mp4" if video_keys else None, "features": features}
    (partial / "meta/info.json").write_text(json.dumps(info, indent=4))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return {"path": str(out), "episodes": ds.n_episodes, "frames": ds.n_frames, "videos": list(video_keys.values()),
            "reward": cfg.reward_key or None}
