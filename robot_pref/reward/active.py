"""Active query selection: ask about the pairs the reward ensemble disagrees on most.

`DisagreementSampler` is B-Pref's disagreement sampling, offline and pool-based: draw a pool of
candidate pairs the way the uniform sampler does (random episode, random step; identical frames
and repeats removed), score each pair by the spread across ensemble members of the preference
probability P_k(b > a) = sigma(r_k(b) - r_k(a)), and keep the top n. It plugs into the feedback
room's registry as ``--sampler disagreement --reward-model RUN_DIR``.

`active_learning_curve` is the multi-round loop: label a batch, refit, select the next batch with
the new model, and record the reward quality after each round.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.feedback.samplers import UniformSampler, make_sampler
from robot_pref.reward.config import FitRewardConfig
from robot_pref.reward.evaluation import frame_rewards
from robot_pref.reward.models import RewardModel, load_reward_model
from robot_pref.reward.train import fit


class DisagreementSampler(UniformSampler):
    """Top-n pairs of a uniform candidate pool by ensemble disagreement (default pool: 10 n, as B-Pref)."""

    def __init__(self, dataset: TrajectoryDataset, frame_key: str, seed: int = 0,
                 reward_model: str | Path | RewardModel | None = None, pool_size: int = 0, batch_size: int = 256):
        super().__init__(dataset, frame_key, seed)
        if reward_model is None or reward_model == "":
            raise ValueError("the disagreement sampler needs a reward ensemble: pass --reward-model RUN_DIR "
                             "(the --out of `robot-pref fit-reward`)")
        self.model = reward_model if isinstance(reward_model, RewardModel) else load_reward_model(reward_model)
        if self.model.spec.ensemble < 2:
            raise ValueError("disagreement needs an ensemble of at least 2 members; refit with --ensemble 3")
        self.pool_size, self.batch_size = pool_size, batch_size

    def disagreement(self, index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
        """std over members of P_k(b > a), one score per pair."""
        unique, inverse = np.unique(np.concatenate([index_a, index_b]), return_inverse=True)
        r = frame_rewards(self.model, self.ds, self.frame_key, unique, members=True, batch_size=self.batch_size)
        d = r[:, inverse[len(index_a) :]] - r[:, inverse[: len(index_a)]]  # (K, n): r_k(b) - r_k(a)
        return (1.0 / (1.0 + np.exp(-d))).std(0)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = super().sample(max(self.pool_size, n) if self.pool_size else 10 * n)
        top = np.argsort(-self.disagreement(a, b), kind="stable")[:n]
        return a[top], b[top]


def true_order_accuracy(model: RewardModel, ds: TrajectoryDataset, frame_key: str, index_a: np.ndarray,
                        index_b: np.ndarray) -> float:
    """Share of pairs (with distinct true rewards) that r̂ orders like the true reward."""
    true = ds.ground_truth("reward")
    strict = true[index_a] != true[index_b]
    a, b = index_a[strict], index_b[strict]
    r = frame_rewards(model, ds, frame_key, np.concatenate([a, b]))
    return float(np.mean((r[len(a) :] > r[: len(a)]) == (true[b] > true[a])))


def active_learning_curve(ds: TrajectoryDataset, label_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
                          budgets: list[int], cfg: FitRewardConfig, sampler: str = "uniform",
                          test_pairs: int = 2000, pool_size: int = 0, on_round: Callable[[dict], None] | None = None
                          ) -> list[dict]:
    """Reward quality vs number of labels: label a batch, refit, pick the next batch, ... .

    The first batch is always uniform (there is no model to disagree yet); later batches come from
    ``sampler`` ("uniform" or "disagreement" with the latest model). Each round refits from scratch
    on all labels so far and is scored on ``test_pairs`` fixed uniform pairs against the true reward.
    """
    if sampler not in ("uniform", "disagreement"):
        raise ValueError(f"sampler must be 'uniform' or 'disagreement', got {sampler!r}")
    if list(budgets) != sorted(budgets) or budgets[0] <= 0:
        raise ValueError(f"budgets must be positive and increasing, got {budgets}")
    test_a, test_b = make_sampler("uniform", ds, cfg.camera, seed=10_000 + cfg.seed).sample(test_pairs)
    a = b = np.zeros(0, np.int64)
    labels = np.zeros(0, np.int8)
    model, rows = None, []
    for round_, budget in enumerate(budgets):
        seed = cfg.seed + round_
        if model is None or sampler == "uniform":
            picker = make_sampler("uniform", ds, cfg.camera, seed)
        else:
            picker = DisagreementSampler(ds, cfg.camera, seed, reward_model=model, pool_size=pool_size)
        new_a, new_b = picker.sample(budget - len(a))
        a, b = np.concatenate([a, new_a]), np.concatenate([b, new_b])
        labels = np.concatenate([labels, np.asarray(label_fn(new_a, new_b), np.int8)])
        model, report = fit(ds, a, b, labels, dataclasses.replace(cfg, seed=seed), progress=False)
        row = {"sampler": sampler, "labels": int(budget),
               "test_true_order_accuracy": true_order_accuracy(model, ds, cfg.camera, test_a, test_b),
               "spearman": report.get("spearman"), "val_accuracy": report.get("val_accuracy"),
               "epochs": report["epochs"]}
        rows.append(row)
        if on_round:
            on_round(row)
    return rows
