"""B-Pref simulated teachers (Lee et al. 2021), from the dataset's ground-truth reward.

A queried frame stands for the segment of ``segment`` frames ending at it (1 = the frame alone,
as RL-VLM-F queries). With segment returns R_a, R_b, applied in B-Pref's order:

    skip      drop the query if max(R_a, R_b) < thres_skip             (not a label)
    equal     -1 if |R_a - R_b| < thres_equal
    myopic    R = sum_k gamma^(H-1-k) r_k  (recent steps weigh more)
    label     rational: 1[R_a < R_b];  stochastic: P(b) = softmax(beta [R_a, R_b])_b
    mistake   flip the label with probability eps

Thresholds are fractions of the average segment return. Random draws are derived from the
query's hash, so the same query gets the same answer however runs are batched or resumed.
"""

from __future__ import annotations

import numpy as np

from robot_pref.feedback.config import TeacherConfig
from robot_pref.feedback.labelers import Labeler, Query
from robot_pref.feedback.store import ABSTAINED, LABELED, SKIPPED, Answer

PRESETS = {  # B-Pref's teachers: one irrationality each, the rest perfectly rational
    "oracle": {},
    "stochastic": {"beta": 1.0},
    "myopic": {"gamma": 0.9},
    "mistake": {"eps": 0.1},
    "skip": {"skip": 0.1},
    "equal": {"equal": 0.1},
}
RATIONAL = {"beta": None, "gamma": 1.0, "eps": 0.0, "skip": 0.0, "equal": 0.0}


def teacher_params(cfg: TeacherConfig) -> dict:
    params = {**RATIONAL, **PRESETS[cfg.kind]}
    params.update({k: getattr(cfg, k) for k in RATIONAL if getattr(cfg, k) is not None})
    return params


def segment_returns(reward: np.ndarray, starts: np.ndarray, index: np.ndarray, segment: int, gamma: float):
    """(undiscounted, discounted) returns of the segments ending at ``index`` (clipped at episode starts)."""
    plain = np.zeros(len(index))
    disc = np.zeros(len(index))
    for k in range(segment):  # k = steps before the queried frame; weight gamma^k = gamma^(H-1-pos)
        t = index - k
        ok = t >= starts
        r = np.where(ok, reward[np.maximum(t, 0)], 0.0)
        plain += r
        disc += gamma**k * r
    return plain, disc


def key_uniforms(keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two independent U[0, 1) numbers per query from its sha256 key."""
    u = np.asarray([[int(k[0:13], 16), int(k[13:26], 16)] for k in keys], dtype=np.float64) / 16.0**13
    return u[:, 0], u[:, 1]


class TeacherLabeler(Labeler):
    type = "teacher"
    uses_frames = False
    chunk_size = 4096

    def __init__(self, cfg: TeacherConfig, goal: str, dataset=None):
        super().__init__(cfg, goal, dataset)
        if dataset is None or not dataset.has_ground_truth("reward"):
            raise ValueError("the teacher labeler needs a dataset with ground-truth reward (simulated data); "
                             "use --labeler vlm or clip for real-robot data")
        if cfg.segment < 1:
            raise ValueError(f"--teacher.segment must be >= 1, got {cfg.segment}")
        self.params = teacher_params(cfg)
        self.reward = dataset.ground_truth("reward").astype(np.float64)
        self.starts = dataset.episode_starts[dataset.episode_of(np.arange(dataset.n_frames))]
        self.avg_return = float(np.mean(self.reward)) * cfg.segment

    def settings(self) -> dict:
        thresholds = self.params["skip"] > 0 or self.params["equal"] > 0  # relative to the dataset's mean return
        return {**self.params, "segment": self.cfg.segment, "seed": self.cfg.seed,
                **({"avg_return": self.avg_return} if thresholds else {})}

    def decide(self, index_a: np.ndarray, index_b: np.ndarray, keys: list[str]):
        """Labels (0/1/-1) and a skip mask, vectorised over pairs."""
        p = self.params
        seg = self.cfg.segment
        ra, da = segment_returns(self.reward, self.starts[index_a], index_a, seg, p["gamma"])
        rb, db = segment_returns(self.reward, self.starts[index_b], index_b, seg, p["gamma"])
        u_label, u_mistake = key_uniforms(keys)
        skip = np.maximum(ra, rb) < p["skip"] * self.avg_return if p["skip"] > 0 else np.zeros(len(ra), bool)
        equal = np.abs(ra - rb) < p["equal"] * self.avg_return if p["equal"] > 0 else np.zeros(len(ra), bool)
        if p["beta"] is None:
            label = (da < db).astype(np.int8)
        else:
            prob_b = 1.0 / (1.0 + np.exp(-p["beta"] * (db - da)))
            label = (u_label < prob_b).astype(np.int8)
        flip = u_mistake < p["eps"]
        label = np.where(flip, 1 - label, label).astype(np.int8)
        label[equal] = -1
        return label, skip, ra, rb

    async def label(self, queries: list[Query]) -> list[Answer]:
        ia = np.asarray([q.index_a for q in queries], dtype=np.int64)
        ib = np.asarray([q.index_b for q in queries], dtype=np.int64)
        label, skip, ra, rb = self.decide(ia, ib, [q.key for q in queries])
        return [q.answer(-1 if s else int(lab), SKIPPED if s else (ABSTAINED if lab == -1 else LABELED),
                         return_a=float(a), return_b=float(b))
                for q, lab, s, a, b in zip(queries, label, skip, ra, rb)]
