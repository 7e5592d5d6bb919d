"""Labels on disk: the durable SQLite answer store and the exported `LabelSet` table.

A labels directory (``robot-pref label --out DIR``, beside the dataset) holds:

    store.sqlite    every answer ever received, keyed by the content hash of its query
                    (both frames or, for index-based labelers, the frames' dataset identity; goal,
                    labeler type + settings, prompt version, endpoint); one commit per answer in
                    WAL mode, so `kill -9` loses at most the answers still in flight and a rerun
                    asks nothing twice
    labels.npz      the exported pairs of the last run: index_a, index_b, label (+ metadata columns)
    labels.csv      the same as a plain table
    label_run.json  the run's settings (never the API key) and counts

Labels: 0 = frame a better, 1 = frame b better, -1 = tie / unsure. A reply no label can be read
from (``unparsable``: garbage, truncated, or an empty/truncated first-stage analysis) is a
failure, not a tie: it is stored with its raw text and its try count, never exported, and asked
again on the next run until `MAX_TRIES` tries per pair. Request failures (``failed``) are not
stored at all, so the next run asks them again.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

STORE_NAME = "store.sqlite"
TABLE_NAME = "labels.npz"
CSV_NAME = "labels.csv"
LABELED, ABSTAINED, UNPARSABLE, SKIPPED, FAILED = "labeled", "abstained", "unparsable", "skipped", "failed"
LABEL_STATUSES = (LABELED, ABSTAINED)  # answers that are labels (skipped, unparsable and failed are not)
MAX_TRIES = 3  # replies asked for per pair, over all runs, while they come back unparsable


@dataclass
class Answer:
    """One labeler answer. ``meta`` holds latency_s, attempts, tokens, cost_usd, scores ..."""

    key: str
    index_a: int
    index_b: int
    label: int
    status: str
    raw: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class LabelSet:
    """Preference labels over dataset frame indices; ``extra`` holds optional per-pair columns."""

    index_a: np.ndarray
    index_b: np.ndarray
    label: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_a = np.asarray(self.index_a, dtype=np.int64).reshape(-1)
        self.index_b = np.asarray(self.index_b, dtype=np.int64).reshape(-1)
        self.label = np.asarray(self.label, dtype=np.int8).reshape(-1)
        n = len(self.label)
        if len(self.index_a) != n or len(self.index_b) != n:
            raise ValueError(f"index_a, index_b and label need one row per pair, got lengths "
                             f"{len(self.index_a)}, {len(self.index_b)}, {n}")
        bad = ~np.isin(self.label, (0, 1, -1))
        if bad.any():
            raise ValueError(f"labels must be 0 (a better), 1 (b better) or -1 (tie/unsure); "
                             f"found {sorted(set(self.label[bad].tolist()))}")
        self.extra = {k: np.asarray(v) for k, v in self.extra.items()}
        for k, v in self.extra.items():
            if len(v) != n:
                raise ValueError(f"extra column {k!r} has {len(v)} rows, the label set has {n}")

    @classmethod
    def from_arrays(cls, index_a, index_b, label, **extra) -> "LabelSet":
        return cls(index_a, index_b, label, extra)

    def __len__(self) -> int:
        return len(self.label)

    @property
    def abstained(self) -> np.ndarray:
        return self.label == -1

    def save(self, path: str | Path) -> Path:
        """Write ``labels.npz`` and ``labels.csv`` into the directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        columns = {"index_a": self.index_a, "index_b": self.index_b, "label": self.label, **self.extra}
        tmp = path / (TABLE_NAME + ".tmp.npz")
        np.savez(tmp, **columns)
        tmp.replace(path / TABLE_NAME)  # atomic: readers see the old table or the new one
        tmp = path / (CSV_NAME + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(columns))
            writer.writerows(zip(*(c.tolist() for c in columns.values())))
        tmp.replace(path / CSV_NAME)
        return path


def load_labels(path: str | Path) -> LabelSet:
    """Labels written by `robot-pref label --out DIR` (or `LabelSet.save`): a directory or an .npz."""
    path = Path(path)
    table = path if path.suffix == ".npz" else path / TABLE_NAME
    if table.is_file():
        with np.load(table, allow_pickle=False) as data:
            cols = {k: data[k] for k in data.files}
        if "status" in cols:  # tables exported before unparsable replies were failures held them as ties
            keep = np.isin(cols["status"], LABEL_STATUSES)
            cols = {k: v[keep] for k, v in cols.items()}
        return LabelSet(cols.pop("index_a"), cols.pop("index_b"), cols.pop("label"), cols)
    if (path / STORE_NAME).is_file():  # a run killed before its export: everything answered so far
        with LabelStore(path / STORE_NAME) as store:
            return store.label_set()
    raise FileNotFoundError(f"{path} holds no labels ({TABLE_NAME} or {STORE_NAME}); write them with "
                            f"`robot-pref label --out {path}` or LabelSet.save")


class LabelStore:
    """Answers keyed by query hash in SQLite (WAL); each `put` is one committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self.conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS answers (
                key TEXT PRIMARY KEY, index_a INTEGER NOT NULL, index_b INTEGER NOT NULL,
                label INTEGER NOT NULL, status TEXT NOT NULL, raw TEXT, meta TEXT, created REAL);
            CREATE TABLE IF NOT EXISTS runs (
                id INTEGER PRIMARY KEY AUTOINCREMENT, started REAL, finished REAL, config TEXT, counts TEXT);
            """
        )
        self.conn.commit()

    def __enter__(self) -> "LabelStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def put(self, answers: Iterable[Answer]) -> None:
        """Commit answers (failed ones are not stored, so a rerun asks them again)."""
        rows = [(a.key, int(a.index_a), int(a.index_b), int(a.label), a.status, a.raw, json.dumps(a.meta),
                 time.time()) for a in answers if a.status != FAILED]
        if rows:
            with self.conn:
                self.conn.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def get(self, keys: list[str]) -> dict[str, Answer]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT * FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
            out.update((r[0], _row_answer(r)) for r in self.conn.execute(q, chunk))
        return out

    def answers(self) -> list[Answer]:
        return [_row_answer(r) for r in self.conn.execute("SELECT * FROM answers ORDER BY created")]

    def label_set(self) -> LabelSet:
        return answers_to_label_set([a for a in self.answers() if a.status in LABEL_STATUSES])

    def start_run(self, config: dict) -> int:
        with self.conn:
            cur = self.conn.execute("INSERT INTO runs (started, config) VALUES (?, ?)",
                                    (time.time(), json.dumps(config)))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, counts: dict) -> None:
        with self.conn:
            self.conn.execute("UPDATE runs SET finished = ?, counts = ? WHERE id = ?",
                              (time.time(), json.dumps(counts), run_id))


def _row_answer(row) -> Answer:
    key, a, b, label, status, raw, meta, _ = row
    return Answer(key, a, b, label, status, raw or "", json.loads(meta or "{}"))


META_COLUMNS = {  # exported per-pair metadata: name -> (dtype, missing value)
    "latency_s": (np.float32, np.nan), "attempts": (np.int16, 0), "prompt_tokens": (np.int32, 0),
    "completion_tokens": (np.int32, 0), "cost_usd": (np.float64, 0.0),
}
OPTIONAL_COLUMNS = {  # exported only when some answer has them (progress: predicted progress, request; images sent)
    "progress_a": (np.float32, np.nan), "progress_b": (np.float32, np.nan), "gap": (np.float32, np.nan),
    "request": ("U64", ""), "images": (np.int16, 0),
}


def answers_to_label_set(answers: list[Answer]) -> LabelSet:
    extra = {"key": np.asarray([a.key for a in answers], dtype="U64"),
             "status": np.asarray([a.status for a in answers], dtype="U16")}
    optional = {k: v for k, v in OPTIONAL_COLUMNS.items() if any(k in a.meta for a in answers)}
    for name, (dtype, missing) in {**META_COLUMNS, **optional}.items():
        extra[name] = np.asarray([a.meta.get(name, missing) for a in answers], dtype=dtype)
    return LabelSet([a.index_a for a in answers], [a.index_b for a in answers],
                    [a.label for a in answers], extra)
