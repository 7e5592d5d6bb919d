"""The labeler interface and registry: (frame a, frame b, goal) -> 0 / 1 / -1 with metadata.

A labeler is chosen by ``type`` (vlm, clip, teacher, replay, or any registered name / lazy
``"module:Class"``). The cache key of a query hashes what decides its answer: both frames'
bytes (or, for labelers that answer by frame index, the frames' identities: episode id + step,
see `TrajectoryDataset.frame_ids`), the goal text and the labeler's `settings()` (type, model,
prompt version ...), so a rerun never asks twice and a new dataset at the same path never gets
another dataset's answers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from robot_pref.feedback.samplers import resolve
from robot_pref.feedback.store import Answer, LabelSet, answers_to_label_set

LABELERS: dict[str, type | str] = {
    "vlm": "robot_pref.feedback.vlm:VLMLabeler",
    "progress": "robot_pref.feedback.progress:ProgressLabeler",
    "clip": "robot_pref.feedback.clip:ClipLabeler",
    "teacher": "robot_pref.feedback.teacher:TeacherLabeler",
    "replay": "robot_pref.feedback.replay:ReplayLabeler",
    "hybrid": "robot_pref.feedback.hybrid:HybridLabeler",
}


def clip_indices(dataset, index: np.ndarray, segment: int, stride: int = 1) -> np.ndarray:
    """(n, segment) frame indices of the clips ending at ``index``, oldest first, every ``stride`` steps;
    steps before the episode start repeat its first frame."""
    index = np.asarray(index, dtype=np.int64)
    starts = dataset.episode_starts[dataset.episode_of(index)]
    steps = stride * np.arange(segment - 1, -1, -1, dtype=np.int64)
    return np.maximum(index[:, None] - steps[None], starts[:, None])


def register_labeler(name: str, cls: type | str) -> None:
    LABELERS[name] = cls


def labeler_class(type: str) -> type["Labeler"]:
    return resolve(LABELERS, type, "labeler")


@dataclass
class Query:
    key: str
    index_a: int
    index_b: int
    frame_a: np.ndarray | None = None  # uint8 (H, W, 3), or (N, H, W, 3) clips; None for index-based labelers
    frame_b: np.ndarray | None = None

    def answer(self, label: int, status: str, raw: str = "", **meta: Any) -> Answer:
        return Answer(self.key, self.index_a, self.index_b, int(label), status, raw, meta)


class Secret:
    """A string that prints as ``***`` so it cannot leak through logs, reprs or tracebacks."""

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Labeler:
    """Base class. Subclasses set ``type`` and implement `settings` and async `label`."""

    type: ClassVar[str] = ""
    uses_frames: ClassVar[bool] = True  # False: the answer depends on frame indices (ground truth)
    remote: ClassVar[bool] = False  # True: runs inside Ray actors (`actor_options`)
    section: ClassVar[str] = ""  # LabelConfig section of its settings ('' = the type name)
    chunk_size: int = 256  # queries per call
    segment: int = 1  # frames per side: > 1 sends clips ending at the queried frames (`clip_indices`)
    segment_stride: int = 1
    # labelers whose one request answers many pairs (progress) drive their own loop instead of
    # `label`: run(cfg, dataset, frame_key, store, counts, results, bar); None = the pair loop
    run = None

    def __init__(self, cfg: Any, goal: str, dataset=None):
        self.cfg, self.goal = cfg, goal
        self.dataset = dataset  # index-based labelers key on its frame identities

    def settings(self) -> dict:
        """Everything that changes an answer (goes into the cache key; never secrets)."""
        raise NotImplementedError

    async def label(self, queries: list[Query]) -> list[Answer]:
        raise NotImplementedError

    def bind(self, run_cfg: Any) -> None:
        """Read the whole `LabelConfig` of the run before `settings` (the hybrid builds its machine from it)."""

    def label_set(self, answers: list[Answer]) -> LabelSet:
        """The exported table of a run's answers (the hybrid adds its source / person columns)."""
        return answers_to_label_set(answers)

    def fixed_pairs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Pairs this labeler must be asked about (replay), or None to use the sampler."""
        return None

    @classmethod
    def actor_options(cls, cfg: Any, workers: int, cluster_gpus: float) -> dict:
        return {"num_cpus": 1}

    @classmethod
    def in_flight(cls, cfg: Any, n_actors: int) -> int:
        """Batches kept queued over all actors (enough to keep each one busy)."""
        return 2 * n_actors

    @classmethod
    def actor_kwargs(cls, cfg: Any, workers: int) -> dict:
        """Extra constructor arguments read on the driver (e.g. the API key, as a `Secret`)."""
        return {}

    def query_keys(self, index_a: np.ndarray, index_b: np.ndarray, frames_a=None, frames_b=None,
                   frame_ids: Callable[[np.ndarray], list[str]] | None = None) -> list[str]:
        """One sha256 per pair of the labeler's settings and the two frames (pixels, or for index-based labelers
        ``frame_ids`` of them: `TrajectoryDataset.frame_ids`, their identity, unless given)."""
        head = hashlib.sha256(json.dumps({"type": self.type, "goal": self.goal, **self.settings()},
                                         sort_keys=True).encode())
        if not self.uses_frames:
            if self.dataset is None:
                raise ValueError(f"the {self.type} labeler answers by frame index: construct it with the "
                                 "dataset (dataset=...) so its keys name which dataset's frames they mean")
            frame_ids = frame_ids or self.dataset.frame_ids
            ids_a, ids_b = frame_ids(index_a), frame_ids(index_b)
        keys = []
        for i in range(len(index_a)):
            h = head.copy()
            if self.uses_frames:
                for f in (frames_a[i], frames_b[i]):
                    h.update(repr(f.shape).encode())
                    h.update(np.ascontiguousarray(f).tobytes())
            else:
                h.update(f"{ids_a[i]},{ids_b[i]}".encode())
            keys.append(h.hexdigest())
        return keys
