"""Replay recorded labels (Uni-RLHF / Preference Transformer style) so human labels collected
elsewhere train the same reward model.

Accepted files: ``.npz`` / ``.json`` with arrays ``indices_1``, ``indices_2``, ``labels`` (aliases
``human_label``, ``label``), or a ``.csv`` with those columns. Labels are 0 (first better), 1
(second better), -1 or 0.5 (tie); one-hot rows [1, 0] / [0, 1] / [0.5, 0.5] are accepted too.
Indices are frame indices (rows) of the dataset being labeled.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from robot_pref.feedback.config import ReplayConfig
from robot_pref.feedback.labelers import Labeler, Query
from robot_pref.feedback.store import ABSTAINED, LABELED, Answer

ALIASES = {"indices_1": ("indices_1", "index_a"), "indices_2": ("indices_2", "index_b"),
           "labels": ("labels", "human_label", "label")}


def read_recorded(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"replay file {path} does not exist; pass --replay.path to a recorded label file")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            cols = {k: data[k] for k in data.files}
    elif path.suffix == ".json":
        cols = {k: np.asarray(v) for k, v in json.loads(path.read_text()).items()}
    elif path.suffix == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = {k: np.asarray([float(r[k]) for r in rows]) for k in (rows[0] if rows else {})}
    else:
        raise ValueError(f"replay file {path}: unsupported suffix {path.suffix!r}; use .npz, .json or .csv")
    out = {}
    for name, aliases in ALIASES.items():
        found = [a for a in aliases if a in cols]
        if not found:
            raise ValueError(f"replay file {path} has no {' / '.join(aliases)} column (has {sorted(cols)})")
        out[name] = np.asarray(cols[found[0]])
    out["labels"] = normalise_labels(out["labels"], path)
    return out


def normalise_labels(labels: np.ndarray, path) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim == 2 and labels.shape[1] == 2:  # one-hot / soft: [p(first), p(second)]
        labels = np.where(labels[:, 0] == labels[:, 1], -1, np.argmax(labels, axis=1))
    labels = np.where(labels == 0.5, -1, labels)
    if not np.isin(labels, (0, 1, -1)).all():
        raise ValueError(f"replay file {path}: labels must be 0, 1, -1 (or 0.5 / one-hot), "
                         f"found {sorted(set(labels[~np.isin(labels, (0, 1, -1))].tolist()))[:5]}")
    return labels.astype(np.int8)


class ReplayLabeler(Labeler):
    type = "replay"
    uses_frames = False
    chunk_size = 4096

    def __init__(self, cfg: ReplayConfig, goal: str, dataset=None):
        super().__init__(cfg, goal, dataset)
        rec = read_recorded(cfg.path)
        self.ia = rec["indices_1"].astype(np.int64)
        self.ib = rec["indices_2"].astype(np.int64)
        n = dataset.n_frames if dataset is not None else None
        if n is not None and len(self.ia) and (min(self.ia.min(), self.ib.min()) < 0
                                               or max(self.ia.max(), self.ib.max()) >= n):
            raise ValueError(f"replay file {cfg.path} indexes frames up to {max(self.ia.max(), self.ib.max())}, "
                             f"the dataset has {n}; the labels were recorded against another dataset")
        self.table = {(a, b): lab for a, b, lab in zip(self.ia.tolist(), self.ib.tolist(), rec["labels"].tolist())}
        self.digest = hashlib.sha256(Path(cfg.path).read_bytes()).hexdigest()

    def settings(self) -> dict:
        return {"file_sha256": self.digest}

    def fixed_pairs(self):
        return self.ia, self.ib

    async def label(self, queries: list[Query]) -> list[Answer]:
        out = []
        for q in queries:
            lab = self.table[(q.index_a, q.index_b)]
            out.append(q.answer(lab, ABSTAINED if lab == -1 else LABELED))
        return out
