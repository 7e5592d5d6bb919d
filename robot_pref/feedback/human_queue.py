"""The human queue and the people's answers: what `robot-pref label-ui` shows and what it records.

The queue (``<labels>/human_queue.json``, written by ``robot-pref label --labeler hybrid``) lists the pairs
routed to people, highest priority first, with what they must be shown: the goal text, the camera, the
machine's segment (clips of ``segment`` frames every ``segment_stride`` steps, ending at the queried
frame) and the dataset identity it indexes into. It is plain JSON, rewritten atomically by every hybrid
run (a rerun with a larger budget appends pairs; answers already given stay valid, they are keyed by pair).

People's answers live in the labels directory's own `LabelStore` (``store.sqlite``, next to the machine's
answers), one committed transaction per answer, so a killed page server loses nothing already answered.
An answer's key hashes what it is about and who gave it (goal, camera, segment, both frames' identities
-- episode id + step -- and the person), so two people never overwrite each other and one person's
answer to a pair is one row: answering again after an undo replaces it. Its ``meta`` is the provenance:
``source`` "human", ``labeler`` "label-ui", ``person``, ``answered_at`` (unix time), ``time_spent_s``
(from the pair appearing to the key press, measured in the browser), ``choice``, ``reason`` (why it was
routed) and ``frames`` (both frames' identities, checked against the dataset when read back). Statuses: labeled / abstained ("no difference", label -1),
skipped (not a label; the pair stays open to others) and undone (an answer taken back; not a label).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from robot_pref.feedback.store import LABEL_STATUSES, STORE_NAME, Answer, LabelSet, LabelStore

QUEUE_NAME = "human_queue.json"
QUEUE_VERSION = 1
HUMAN = "human"
LABELER = "label-ui"
UNDONE = "undone"  # status of an answer its person took back


@dataclass
class HumanQueue:
    """Pairs (index_a, index_b) routed to people, highest priority first, and how to show them."""

    pairs: list[tuple[int, int]]
    goal: str
    camera: str
    dataset_identity: str
    segment: int = 1
    segment_stride: int = 1
    reasons: list[str] = field(default_factory=list)
    budget: int = 0  # the human budget the queue was cut to (0 = its length)
    created: float = 0.0

    def __len__(self) -> int:
        return len(self.pairs)

    def check_dataset(self, dataset) -> None:
        """Refuse a queue written for another dataset (its indices would point at other frames)."""
        if dataset.identity != self.dataset_identity:
            raise ValueError(f"the queue was written for another dataset than {dataset.path} (identity "
                             f"{self.dataset_identity[:12]}..., this one {dataset.identity[:12]}...): rerun "
                             "`robot-pref label --labeler hybrid` on this dataset to write its queue")


def write_queue(path: str | Path, pairs: list[tuple[int, int]], *, goal: str, camera: str, dataset_identity: str,
                segment: int = 1, segment_stride: int = 1, reasons: list[str] | None = None,
                budget: int = 0) -> Path:
    """Write the queue atomically (a page reading it sees the old queue or the new one)."""
    pairs = [(int(a), int(b)) for a, b in pairs]
    reasons = list(reasons) if reasons is not None else [""] * len(pairs)
    if len(reasons) != len(pairs):
        raise ValueError(f"write_queue got {len(pairs)} pairs but {len(reasons)} reasons")
    queue = HumanQueue(pairs, goal, camera, dataset_identity, int(segment), int(segment_stride), reasons,
                       int(budget), time.time())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": QUEUE_VERSION, **asdict(queue)}))
    os.replace(tmp, path)
    return path


def read_queue(path: str | Path) -> HumanQueue:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no human queue at {path}: write one with `robot-pref label --labeler hybrid "
                                "--hybrid.human queue --out DIR` (it writes DIR/human_queue.json), or pass --queue FILE")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not a human queue (not JSON: {err}); rewrite it with "
                         "`robot-pref label --labeler hybrid`") from err
    if data.pop("version", None) != QUEUE_VERSION:
        raise ValueError(f"{path} is not a version-{QUEUE_VERSION} human queue; rewrite it with "
                         "`robot-pref label --labeler hybrid`")
    data["pairs"] = [(int(a), int(b)) for a, b in data["pairs"]]
    return HumanQueue(**data)


def merge_hint(labels_dir: str | Path) -> str:
    """How people's answers reach the labels: a rerun of the same `robot-pref run` (its label stage's
    fingerprint covers `answers_state`) or, outside a run directory, of the same `robot-pref label`."""
    if (Path(labels_dir).parent / "stages").is_dir():
        return ("merge their answers by rerunning `robot-pref run CONFIG` (the same config): the label stage sees "
                "the new answers, reruns on its cached machine answers and merges theirs, then every stage after it")
    return ("merge their answers by rerunning the same `robot-pref label --labeler hybrid` command (the machine's "
            "answers are cached: nothing is asked again)")


def answers_state(labels_dir: str | Path) -> str:
    """A digest of what people answered through the page in ``labels_dir``'s store ('' when nothing): it
    changes when someone answers, re-answers or undoes, not on skips, machine answers or simulated people.
    Meant for a pipeline label stage's fingerprint: a rerun relabels (merges) once people have answered."""
    path = Path(labels_dir) / STORE_NAME
    if not path.is_file():
        return ""
    with LabelStore(path) as store:
        rows = sorted((a.key, a.status, a.label) for a in human_rows(store)
                      if a.meta.get("labeler") == LABELER and a.status in LABEL_STATUSES)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] if rows else ""


def answer_key(queue: HumanQueue, frame_ids: tuple[str, str], person: str) -> str:
    """What one person's answer is about: the shown frames (by identity), goal, camera, segment."""
    about = {"type": LABELER, "goal": queue.goal, "camera": queue.camera, "segment": queue.segment,
             "segment_stride": queue.segment_stride, "frames": list(frame_ids), "person": person}
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()


def about_frames_of(answer: Answer, dataset) -> bool:
    """Whether the frames an answer recorded are still the dataset's frames at its indices."""
    if "frames" not in answer.meta:
        return True
    if max(answer.index_a, answer.index_b) >= dataset.n_frames:
        return False
    return dataset.frame_ids(np.asarray([answer.index_a, answer.index_b])) == answer.meta["frames"]


def human_rows(store: LabelStore, dataset=None) -> list[Answer]:
    """Every stored human answer (any status), oldest first; with ``dataset``, only those about its frames
    (the frame identities an answer recorded match the dataset's at those indices: kept across appends,
    dropped after an overwrite). Simulated people's answers record none and are kept."""
    rows = [a for a in store.answers() if a.meta.get("source") == HUMAN]
    if dataset is not None:
        rows = [a for a in rows if about_frames_of(a, dataset)]
    return rows


def human_answers(labels_dir: str | Path, dataset=None) -> LabelSet:
    """What people answered so far (labels and "no difference"; skipped and undone answers are not labels),
    one row per person and pair, with columns ``source`` ("human"), ``person``, ``key``, ``labeler``,
    ``answered_at`` and ``time_spent_s``; with ``dataset``, only answers about its frames (`human_rows`)."""
    path = Path(labels_dir) / STORE_NAME
    rows = []
    if path.is_file():
        with LabelStore(path) as store:
            rows = [a for a in human_rows(store, dataset) if a.status in LABEL_STATUSES]
    return LabelSet([a.index_a for a in rows], [a.index_b for a in rows], [a.label for a in rows], {
        "source": np.full(len(rows), HUMAN, dtype="U16"),
        "person": np.asarray([a.meta.get("person", "?") for a in rows], dtype="U64"),
        "key": np.asarray([a.key for a in rows], dtype="U64"),
        "labeler": np.asarray([a.meta.get("labeler", "") for a in rows], dtype="U32"),
        "answered_at": np.asarray([a.meta.get("answered_at", np.nan) for a in rows], dtype=np.float64),
        "time_spent_s": np.asarray([a.meta.get("time_spent_s", np.nan) for a in rows], dtype=np.float32)})


def human_answer(queue: HumanQueue, dataset, pair: tuple[int, int], person: str, label: int, status: str,
                 **meta) -> Answer:
    """One person's answer to a queued pair, with its provenance (see the module docstring)."""
    frames = dataset.frame_ids(np.asarray(pair, dtype=np.int64))
    return Answer(answer_key(queue, tuple(frames), person), int(pair[0]), int(pair[1]), int(label), status, "",
                  {"source": HUMAN, "labeler": LABELER, "person": person, "answered_at": time.time(),
                   "frames": frames, "dataset_identity": queue.dataset_identity, **meta})
