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

The ``vlm-like`` kind replaces the rational label + mistake steps by `VLMErrorModel`, an error
model shaped like a real VLM's (accuracy falling as the two frames' true progress gets closer,
position bias, refusals near ties); the mock VLM server answers through the same model, so the
`vlm` code path can be measured against known truth (docs/FEEDBACK.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
    "vlm-like": {},  # answers through VLMErrorModel instead of the rational label and mistakes
}
RATIONAL = {"beta": None, "gamma": 1.0, "eps": 0.0, "skip": 0.0, "equal": 0.0}


@dataclass(frozen=True)
class VLMErrorModel:
    """A simulated VLM's answer to "which of two frames is closer to the goal?" given the gap
    g = |progress_a - progress_b| in [0, 1] (true progress normalised by its range):

        abstain(g)  = abstain * 2^(-g / abstain_halflife)               refusals grow near ties
        correct(g)  = floor + (ceiling - floor) * sigmoid((g - midpoint) / width)

    ``correct`` is the accuracy over answered pairs, averaged over both presentation orders. An
    answered query is *unsure* with probability 2 (1 - correct(g)) and then guesses "Image 1" with
    probability ``position_bias`` (0.5 = no bias); otherwise it answers right. Exact ties (g = 0)
    are always unsure. Defaults: shaped like RL-VLM-F's accuracy-by-gap curve (docs/FEEDBACK.md).
    """

    floor: float = 0.5
    ceiling: float = 0.95
    midpoint: float = 0.15
    width: float = 0.05
    position_bias: float = 0.5
    abstain: float = 0.3
    abstain_halflife: float = 0.05

    def __post_init__(self):
        if not 0.5 <= self.floor <= self.ceiling <= 1.0:
            raise ValueError(f"the error model needs 0.5 <= floor <= ceiling <= 1 (accuracy of a guess is 0.5), "
                             f"got floor={self.floor}, ceiling={self.ceiling}")
        if self.width <= 0 or self.abstain_halflife <= 0:
            raise ValueError(f"width and abstain_halflife must be > 0, got {self.width}, {self.abstain_halflife}")
        if not (0 <= self.position_bias <= 1 and 0 <= self.abstain <= 1):
            raise ValueError(f"position_bias and abstain are probabilities in [0, 1], got "
                             f"{self.position_bias}, {self.abstain}")

    def p_correct(self, gap) -> np.ndarray:
        z = (np.abs(np.asarray(gap, dtype=np.float64)) - self.midpoint) / self.width
        return self.floor + (self.ceiling - self.floor) / (1.0 + np.exp(-z))

    def p_abstain(self, gap) -> np.ndarray:
        return self.abstain * np.exp2(-np.abs(np.asarray(gap, dtype=np.float64)) / self.abstain_halflife)

    def p_unsure(self, gap) -> np.ndarray:
        gap = np.abs(np.asarray(gap, dtype=np.float64))
        return np.where(gap > 0, 2.0 * (1.0 - self.p_correct(gap)), 1.0)

    def answer(self, progress_a, progress_b, u_abstain, u_unsure, u_guess) -> np.ndarray:
        """0 (Image 1) / 1 (Image 2) / -1 (abstain) from true progress and three U[0, 1) draws per pair."""
        pa, pb = np.asarray(progress_a, dtype=np.float64), np.asarray(progress_b, dtype=np.float64)
        u_abstain, u_unsure, u_guess = (np.asarray(u, dtype=np.float64) for u in (u_abstain, u_unsure, u_guess))
        gap = pb - pa
        right = (gap > 0).astype(np.int8)
        guess = (u_guess >= self.position_bias).astype(np.int8)  # 0 = "Image 1" with probability position_bias
        label = np.where(u_unsure < self.p_unsure(gap), guess, right).astype(np.int8)
        label[u_abstain < self.p_abstain(gap)] = -1
        return label

    def settings(self) -> dict:
        return asdict(self)


ERROR_FIELDS = tuple(VLMErrorModel.__dataclass_fields__)


def error_model(cfg: TeacherConfig) -> VLMErrorModel | None:
    """The vlm-like kind's model from ``--teacher.floor`` ... (unset fields keep the defaults); None
    for the B-Pref kinds."""
    given = {k: getattr(cfg, k) for k in ERROR_FIELDS if getattr(cfg, k) is not None}
    if cfg.kind != "vlm-like":
        if given:
            raise ValueError(f"--teacher.{'/'.join(sorted(given))} shape the vlm-like error model; "
                             f"pass --teacher.kind vlm-like (or drop them for the {cfg.kind} teacher)")
        return None
    clash = [k for k in ("beta", "eps") if getattr(cfg, k) is not None]
    if clash:
        raise ValueError(f"--teacher.{'/'.join(clash)} do not apply to the vlm-like teacher, whose errors come "
                         "from its error model (--teacher.floor, --teacher.ceiling ...); drop them")
    return VLMErrorModel(**given)


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


def key_uniforms(keys: list[str], n: int = 2) -> tuple[np.ndarray, ...]:
    """``n`` (at most 4) independent U[0, 1) numbers per query from its sha256 hex key."""
    u = np.asarray([[int(k[13 * i : 13 * (i + 1)], 16) for i in range(n)] for k in keys],
                   dtype=np.float64).reshape(len(keys), n) / 16.0**13
    return tuple(u[:, i] for i in range(n))


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
        self.errors = error_model(cfg)
        self.reward = dataset.ground_truth("reward").astype(np.float64)
        self.starts = dataset.episode_starts[dataset.episode_of(np.arange(dataset.n_frames))]
        self.avg_return = float(np.mean(self.reward)) * cfg.segment
        self.return_range = float(np.ptp(self.reward)) * cfg.segment or 1.0  # normalises the vlm-like gap

    def settings(self) -> dict:
        thresholds = self.params["skip"] > 0 or self.params["equal"] > 0  # relative to the dataset's mean return
        return {**self.params, "segment": self.cfg.segment, "seed": self.cfg.seed,
                **({"avg_return": self.avg_return} if thresholds else {}),
                **({"errors": self.errors.settings(), "return_range": self.return_range} if self.errors else {})}

    def decide(self, index_a: np.ndarray, index_b: np.ndarray, keys: list[str]):
        """Labels (0/1/-1) and a skip mask, vectorised over pairs."""
        p = self.params
        seg = self.cfg.segment
        ra, da = segment_returns(self.reward, self.starts[index_a], index_a, seg, p["gamma"])
        rb, db = segment_returns(self.reward, self.starts[index_b], index_b, seg, p["gamma"])
        u_label, u_mistake, u_guess = key_uniforms(keys, 3)
        skip = np.maximum(ra, rb) < p["skip"] * self.avg_return if p["skip"] > 0 else np.zeros(len(ra), bool)
        equal = np.abs(ra - rb) < p["equal"] * self.avg_return if p["equal"] > 0 else np.zeros(len(ra), bool)
        if self.errors is not None:  # u_mistake decides abstention, u_label unsureness, u_guess the guess
            label = self.errors.answer(da / self.return_range, db / self.return_range, u_mistake, u_label, u_guess)
        else:
            if p["beta"] is None:
                label = (da < db).astype(np.int8)
            else:
                prob_b = 1.0 / (1.0 + np.exp(-p["beta"] * (db - da)))
                label = (u_label < prob_b).astype(np.int8)
            label = np.where(u_mistake < p["eps"], 1 - label, label).astype(np.int8)
        label[equal] = -1
        return label, skip, ra, rb

    def noise_keys(self, index_a: np.ndarray, index_b: np.ndarray) -> list[str]:
        """Keys of the random draws (mistakes, unsure answers, guesses): `query_keys` of the frames' content
        instead of their identity, so two collects of the same data get the same labels; the answer store,
        keyed by identity, still never serves a new dataset another one's answers."""
        return self.query_keys(index_a, index_b, frame_ids=self.dataset.content_frame_ids)

    async def label(self, queries: list[Query]) -> list[Answer]:
        ia = np.asarray([q.index_a for q in queries], dtype=np.int64)
        ib = np.asarray([q.index_b for q in queries], dtype=np.int64)
        label, skip, ra, rb = self.decide(ia, ib, self.noise_keys(ia, ib))
        return [q.answer(-1 if s else int(lab), SKIPPED if s else (ABSTAINED if lab == -1 else LABELED),
                         return_a=float(a), return_b=float(b))
                for q, lab, s, a, b in zip(queries, label, skip, ra, rb)]
