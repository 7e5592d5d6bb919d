"""Who gets which queued pair: leases, overlap and undo over the people's answers in the label store.

The store is the only durable state: on start the session reads every answer given on this queue
(`human_rows`, keyed as the queue shows its pairs), so a restarted server knows who answered what.
Leases live in memory: a pair shown to a person is reserved for them for ``lease_s`` seconds
(a killed server forgets its leases; they would have expired anyway). A pair is offered to a person
who has neither answered nor skipped it, while its answers plus others' live leases are fewer than it
needs: one, or two for the first ``overlap`` share of the queue (human-human agreement; its highest-
priority pairs, like the simulated people's overlap). Undo takes back a person's latest answer (or
skip), as many times as they like, and shows that pair again.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from robot_pref.feedback.human_queue import UNDONE, HumanQueue, answer_key, human_answer, human_rows
from robot_pref.feedback.labelers import clip_indices
from robot_pref.feedback.store import ABSTAINED, LABEL_STATUSES, LABELED, SKIPPED, Answer, LabelStore

CHOICES = {"left": (0, LABELED), "right": (1, LABELED), "equal": (-1, ABSTAINED), "skip": (-1, SKIPPED)}
DONE_STATUSES = (*LABEL_STATUSES, SKIPPED)  # a person is not shown a pair again after these


class Conflict(Exception):
    """A request the page cannot honour (the pair went to someone else, was answered already ...)."""


@dataclass
class Lease:
    person: str
    position: int
    expires: float


class LabelSession:
    def __init__(self, queue: HumanQueue, dataset, store: LabelStore, lease_s: float = 300.0, overlap: float = 0.0,
                 clock: Callable[[], float] = time.time):
        if not 0 <= overlap <= 1:
            raise ValueError(f"--overlap is a share of the queue in [0, 1], got {overlap}")
        if lease_s <= 0:
            raise ValueError(f"--lease-s must be > 0 seconds, got {lease_s}")
        queue.check_dataset(dataset)
        self.queue, self.ds, self.store, self.lease_s, self.clock = queue, dataset, store, lease_s, clock
        self.position = {pair: i for i, pair in enumerate(queue.pairs)}
        shared = int(round(overlap * len(queue)))
        self.need = [2 if i < shared else 1 for i in range(len(queue))]
        self.latest: dict[tuple[str, int], Answer] = {}  # (person, position) -> their current answer row
        self.leases: dict[str, Lease] = {}  # person -> the pair they are shown
        for row in human_rows(store, dataset):
            pos = self.position.get((row.index_a, row.index_b))
            person = row.meta.get("person", "")
            if pos is not None and row.key == answer_key(queue, tuple(row.meta["frames"]), person):
                self.latest[person, pos] = row

    # ------------------------------------------------------------------ state
    def answered_by(self, pos: int) -> set[str]:
        return {p for (p, i), a in self.latest.items() if i == pos and a.status in LABEL_STATUSES}

    def done_for(self, person: str, pos: int) -> bool:
        row = self.latest.get((person, pos))
        return row is not None and row.status in DONE_STATUSES

    def leased_by_others(self, person: str, pos: int) -> int:
        return sum(lease.position == pos and p != person for p, lease in self.leases.items())

    def open_for(self, person: str, pos: int) -> bool:
        return (not self.done_for(person, pos)
                and len(self.answered_by(pos)) + self.leased_by_others(person, pos) < self.need[pos])

    def expire(self) -> None:
        now = self.clock()
        self.leases = {p: lease for p, lease in self.leases.items() if lease.expires > now}

    def lease(self, person: str, pos: int) -> int:
        self.leases[person] = Lease(person, pos, self.clock() + self.lease_s)
        return pos

    # ------------------------------------------------------------------ requests
    def next_for(self, person: str) -> int | None:
        """The pair shown to ``person``: the one they hold, else the first open one (leased to them)."""
        self.expire()
        held = self.leases.get(person)
        if held is not None and not self.done_for(person, held.position):
            return self.lease(person, held.position)  # a reload shows the same pair and renews its lease
        self.leases.pop(person, None)
        return next((self.lease(person, pos) for pos in range(len(self.queue)) if self.open_for(person, pos)), None)

    def answer(self, person: str, pair: tuple[int, int], choice: str, time_spent_s: float) -> Answer:
        """Commit ``person``'s answer to ``pair`` (one transaction) and release its lease."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {sorted(CHOICES)}, got {choice!r}")
        pos = self.position.get((int(pair[0]), int(pair[1])))
        if pos is None:
            raise Conflict(f"pair {tuple(pair)} is not in this queue (was it rewritten? reload the page)")
        self.expire()
        held = self.leases.get(person)
        if self.done_for(person, pos):
            raise Conflict(f"you answered pair {tuple(pair)} already (press u to undo your last answer)")
        if not (held is not None and held.position == pos) and not self.open_for(person, pos):
            raise Conflict(f"pair {tuple(pair)} went to someone else while it was open here; here is another one")
        label, status = CHOICES[choice]
        row = human_answer(self.queue, self.ds, self.queue.pairs[pos], person, label, status, choice=choice,
                           time_spent_s=round(float(time_spent_s), 3), reason=self.reason(pos))
        self.store.put([row])
        self.latest[person, pos] = row
        if held is not None and held.position == pos:
            del self.leases[person]
        return row

    def undo(self, person: str) -> int:
        """Take back ``person``'s latest answer or skip (stored as undone) and show that pair again."""
        mine = [(a.meta.get("answered_at", 0.0), pos) for (p, pos), a in self.latest.items()
                if p == person and a.status in DONE_STATUSES]
        if not mine:
            raise Conflict("nothing to undo: you have no answers on this queue")
        pos = max(mine)[1]
        row = self.latest[person, pos]
        undone = dataclasses.replace(row, status=UNDONE, meta={**row.meta, "undone_at": self.clock(),
                                                               "undone_status": row.status})
        self.store.put([undone])
        self.latest[person, pos] = undone
        return self.lease(person, pos)

    # ------------------------------------------------------------------ what the page shows
    def reason(self, pos: int) -> str:
        return self.queue.reasons[pos] if pos < len(self.queue.reasons) else ""

    def clip(self, index: int) -> list[int]:
        """Frame indices shown for one side: the queried frame, or the clip ending at it (oldest first)."""
        if self.queue.segment <= 1:
            return [int(index)]
        return clip_indices(self.ds, np.asarray([index]), self.queue.segment, self.queue.segment_stride)[0].tolist()

    def pair_view(self, pos: int | None) -> dict | None:
        if pos is None:
            return None
        a, b = self.queue.pairs[pos]
        return {"position": pos, "a": a, "b": b, "reason": self.reason(pos), "need": self.need[pos],
                "left": self.clip(a), "right": self.clip(b)}

    def progress(self, person: str) -> dict:
        answers = [(p, a) for (p, _), a in self.latest.items() if a.status in LABEL_STATUSES]
        return {"done": len({pos for (_, pos), a in self.latest.items() if a.status in LABEL_STATUSES}),
                "queue": len(self.queue), "budget": self.queue.budget or len(self.queue), "answers": len(answers),
                "mine": sum(p == person for p, _ in answers),
                "can_undo": any(p == person and a.status in DONE_STATUSES for (p, _), a in self.latest.items())}
