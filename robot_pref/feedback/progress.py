"""Progress labeler: GVL-style task-completion queries through any OpenAI-compatible VLM.

One request sends K frames of one episode in shuffled order with the goal text and asks each
frame's task completion in percent (GVL, arXiv 2411.04549: shuffling breaks the model's habit of
reading progress off the frame order). The answer yields the K(K-1)/2 pairs among those frames
(earlier frame as a, later as b; label from the predicted progress, -1 where equal), each with
its predicted progress gap, written to the same label store: one row per pair, keyed by the
request's content hash and the pair, with the request as provenance. The request's usage
(tokens, cost, attempts, images) is counted once, on its first pair.

Frames per request: one at a random step of each of K equal slices of the episode (the whole
episode is covered). Requests are fixed by ``--seed``, so a rerun asks only what is missing.
Budgets: ``--budget`` requests and ``--gvl.max-images`` images per run. A reply without one
``Frame i: p%`` line per frame (or cut off) is ``unparsable``, kept with its text and asked again
until `MAX_TRIES` tries, never exported: the same rules as the `vlm` labeler.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass

import numpy as np

from robot_pref.feedback.config import ProgressConfig
from robot_pref.feedback.store import ABSTAINED, FAILED, LABEL_STATUSES, LABELED, MAX_TRIES, UNPARSABLE, Answer
from robot_pref.feedback.vlm import RequestFailed, VLMLabeler, encode_image, endpoint_settings, reply_problem

PROMPT_VERSION = "gvl/1"
INTRO = ("You are an expert roboticist tasked to predict task completion percentages for frames of a robot "
         "trying {goal}. The task completion percentages are between 0 and 100, where 100 corresponds to full task "
         "completion. Note that these frames are in random order, so please pay attention to the individual frames "
         "when reasoning about task completion percentage.")
ANSWER_FORMAT = ("Reply with exactly {k} lines, one per frame in the order shown, each in the format "
                 "'Frame i: p%' where p is that frame's task completion percentage (0 to 100), and nothing else.")
_FRAME_LINE = re.compile(r"^(?:frame|image)\s*#?\s*(\d+)\s*[:=\-]\s*(\d+(?:\.\d+)?)\s*(?:%.*)?$", re.IGNORECASE)


def parse_progress(text: str | None, k: int) -> tuple[list[float] | None, str | None]:
    """Per-frame completion in percent (in the order shown) from ``Frame i: p%`` lines, or
    (None, why not). Markdown, list bullets and other lines are ignored; every frame 1..k must
    appear (a repeated frame only with the same value) and each value must lie in [0, 100]."""
    values: dict[int, float] = {}
    for line in (text or "").splitlines():
        line = re.sub(r"[*_`]", "", line).strip().lstrip("-•>").strip()
        m = _FRAME_LINE.match(line)
        if not m:
            continue
        i, v = int(m.group(1)), float(m.group(2))
        if not 1 <= i <= k:
            return None, f"frame {i} named, only frames 1..{k} were sent"
        if not 0.0 <= v <= 100.0:
            return None, f"frame {i}: {v}% is outside 0..100"
        if values.get(i, v) != v:
            return None, f"frame {i} given two values ({values[i]}% and {v}%)"
        values[i] = v
    missing = [i for i in range(1, k + 1) if i not in values]
    if missing:
        return None, f"no 'Frame i: p%' line for frame(s) {missing}"
    return [values[i] for i in range(1, k + 1)], None


def expand_pairs(frames: np.ndarray, shown: np.ndarray, progress: list[float]):
    """The K(K-1)/2 pairs of one answer: (index_a, index_b, label, progress_a, progress_b) per pair,
    a = the earlier frame. ``frames`` are time-ordered dataset indices, ``shown[j]`` the position in
    ``frames`` of the j-th frame sent, ``progress[j]`` its answer in percent."""
    p = np.empty(len(frames))
    p[shown] = np.asarray(progress, dtype=np.float64) / 100.0
    out = []
    for i in range(len(frames)):
        for j in range(i + 1, len(frames)):
            label = -1 if p[i] == p[j] else int(p[j] > p[i])
            out.append((int(frames[i]), int(frames[j]), label, float(p[i]), float(p[j])))
    return out


@dataclass
class ProgressRequest:
    key: str
    frames: np.ndarray  # time-ordered dataset indices
    shown: np.ndarray  # presentation order: positions into ``frames``
    pair_keys: list[str]


def sample_groups(ds, frame_key: str, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` requests: (frames (n, k) time-ordered indices, shown (n, k) permutations), fixed by ``seed``."""
    table = ds.episode_table()
    ok = np.flatnonzero(ds.rendered_episodes(frame_key) & (table["length"] >= k))
    if len(ok) == 0:
        raise ValueError(f"no rendered episode of {ds.path} has {k} frames for a progress request; lower "
                         f"--gvl.frames or render the dataset (robot-pref render --dataset {ds.path})")
    rng = np.random.default_rng(seed)
    ep = rng.choice(ok, n)
    length = table["length"][ep][:, None]
    steps = np.floor((np.arange(k)[None] + rng.random((n, k))) * length / k).astype(np.int64)
    frames = table["start"][ep][:, None] + np.minimum(steps, length - 1)
    shown = np.argsort(rng.random((n, k)), axis=1)
    return frames, shown


class ProgressLabeler(VLMLabeler):
    type = "progress"
    section = "gvl"
    remote = False  # one asyncio client in the driver keeps --gvl.concurrency requests in flight
    requests_batch = 64  # requests whose frames are read, hashed and asked at once

    def __init__(self, cfg: ProgressConfig, goal: str, dataset=None, **kwargs):
        super().__init__(cfg, goal, dataset, **kwargs)
        if cfg.frames < 2:
            raise ValueError(f"--gvl.frames must be >= 2 (a pair needs two frames), got {cfg.frames}")

    def settings(self) -> dict:
        return {**endpoint_settings(self.cfg), "prompt_version": PROMPT_VERSION, "frames": self.cfg.frames}

    @property
    def pairs_per_request(self) -> int:
        return self.cfg.frames * (self.cfg.frames - 1) // 2

    def request(self, frames: np.ndarray, shown: np.ndarray, pixels: np.ndarray) -> ProgressRequest:
        """The request's content hash (goal, settings, the frames as sent) and its pairs' keys."""
        h = hashlib.sha256(json.dumps({"type": self.type, "goal": self.goal, **self.settings()},
                                      sort_keys=True).encode())
        for j in shown:
            h.update(repr(pixels[j].shape).encode())
            h.update(np.ascontiguousarray(pixels[j]).tobytes())
        key = h.hexdigest()
        k = len(frames)
        pair_keys = [hashlib.sha256(f"{key}/{i},{j}".encode()).hexdigest() for i in range(k) for j in range(i + 1, k)]
        return ProgressRequest(key, frames, shown, pair_keys)

    def messages(self, pixels: list[np.ndarray]) -> list[dict]:
        content = [{"type": "text", "text": INTRO.format(goal=self.goal)}]
        for j, frame in enumerate(pixels):
            content += [{"type": "text", "text": f"Frame {j + 1}:"},
                        {"type": "image_url", "image_url": {"url": encode_image(frame, self.cfg)}}]
        content.append({"type": "text", "text": ANSWER_FORMAT.format(k=len(pixels))})
        return [{"role": "user", "content": content}]

    async def ask_progress(self, req: ProgressRequest, pixels: np.ndarray) -> list[Answer]:
        """One request -> one Answer per pair (all ``failed`` or all ``unparsable`` when it gave no progress)."""
        async with self._sem:
            t0 = time.perf_counter()
            usage = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0}
            try:
                text, finish = await self.complete(self.messages([pixels[j] for j in req.shown]), usage)
            except RequestFailed as err:
                return self._answers(req, None, FAILED, str(err), {"latency_s": time.perf_counter() - t0, **usage})
        problem = reply_problem(text, finish)
        progress, why = (None, problem) if problem else parse_progress(text, len(req.frames))
        cost = (usage["prompt_tokens"] * self.cfg.price_input_per_mtok
                + usage["completion_tokens"] * self.cfg.price_output_per_mtok) / 1e6
        meta = {"latency_s": time.perf_counter() - t0, "cost_usd": cost, "model": self.cfg.model, **usage,
                **({"reason": why} if why else {})}
        return self._answers(req, progress, UNPARSABLE if progress is None else LABELED, text, meta)

    def _answers(self, req: ProgressRequest, progress, status: str, raw: str, meta: dict) -> list[Answer]:
        common = {"request": req.key, "frames": req.frames[req.shown].tolist()}
        if progress is None:
            rows = [(int(req.frames[i]), int(req.frames[j]), -1, None, None)
                    for i in range(len(req.frames)) for j in range(i + 1, len(req.frames))]
        else:
            rows = expand_pairs(req.frames, req.shown, progress)
        meta = {**meta, "images": len(req.frames)}
        usage = ("attempts", "prompt_tokens", "completion_tokens", "cost_usd", "images")
        out = []
        for n, (key, (a, b, label, pa, pb)) in enumerate(zip(req.pair_keys, rows)):
            m = {**common, **{k: v for k, v in meta.items() if n == 0 or k not in usage}}  # usage once per request
            if pa is not None:
                m.update(progress_a=pa, progress_b=pb, gap=pb - pa)
            out.append(Answer(key, a, b, label, ABSTAINED if status == LABELED and label == -1 else status, raw, m))
        return out

    async def label(self, queries):
        raise TypeError("the progress labeler asks about frame groups, not pairs: run it through "
                        "`robot-pref label --labeler progress` (robot_pref.feedback.run.label)")

    def run(self, cfg, ds, frame_key: str, store, counts, results: list, bar) -> None:
        """Ask the requests of this run, committing each answer's pairs as it arrives; fills
        ``results`` (one Answer per pair asked or cached) and ``counts``."""
        k = self.cfg.frames
        n_req = math.ceil(max(cfg.pairs, 0) / self.pairs_per_request)
        frames, shown = sample_groups(ds, frame_key, n_req, k, cfg.seed)
        counts.update(requests=n_req, requests_cached=0, requests_asked=0, images_sent=0,
                      pairs=n_req * self.pairs_per_request)
        bar.reset(total=n_req)
        limit = cfg.budget or math.inf
        if self.cfg.max_images:
            limit = min(limit, self.cfg.max_images // k)
        asked = 0

        def record(answers: list[Answer], cached: bool) -> None:
            results.extend(answers)
            head = answers[0]
            if head.status == UNPARSABLE:
                counts["unparsable"] += len(answers)
                counts["given_up"] += len(answers) * (head.meta.get("tries", 1) >= MAX_TRIES)
            elif head.status == FAILED:
                counts["failed"] += len(answers)
            else:
                counts["cached" if cached else "answered"] += len(answers)
                counts["abstained"] += sum(a.label == -1 for a in answers)
            counts["requests_cached" if cached else "requests_asked"] += 1
            bar.update(1)
            bar.set_postfix(counts, refresh=False)

        async def ask_all(todo) -> None:
            self._bind()
            try:
                tasks = [asyncio.ensure_future(self.ask_progress(req, px)) for req, px, _ in todo]
                earlier = {req.key: before for req, _, before in todo}
                for fut in asyncio.as_completed(tasks):
                    answers = await fut
                    before = earlier[answers[0].meta["request"]]
                    for ans in answers:  # number the replies over all runs, as for vlm
                        if ans.status != FAILED and (before is not None or ans.status == UNPARSABLE):
                            ans.meta["tries"] = (before.meta.get("tries", 1) if before else 0) + 1
                            if before:
                                ans.meta["earlier_raw"] = [*before.meta.get("earlier_raw", []), before.raw]
                    store.put(answers)
                    counts["images_sent"] += k
                    record(answers, cached=False)
            finally:
                await self.aclose()

        for s in range(0, n_req, self.requests_batch):
            todo = []
            for fr, sh in zip(frames[s : s + self.requests_batch], shown[s : s + self.requests_batch]):
                pixels = ds.get(f"frames/{frame_key}", fr)
                req = self.request(fr, sh, pixels)
                stored = store.get(req.pair_keys)
                before = stored.get(req.pair_keys[0])
                if len(stored) == len(req.pair_keys) and all(a.status in LABEL_STATUSES for a in stored.values()):
                    record([stored[key] for key in req.pair_keys], cached=True)
                elif before is not None and before.status == UNPARSABLE and before.meta.get("tries", 1) >= MAX_TRIES:
                    record([stored.get(key, before) for key in req.pair_keys], cached=True)
                elif asked < limit:
                    todo.append((req, pixels, before if before is not None and before.status == UNPARSABLE else None))
                    asked += 1
            if todo:
                asyncio.run(ask_all(todo))
