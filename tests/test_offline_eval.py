"""Offline evaluation (no simulator): held-out episodes stay out of training and are scored by action error
and by the learned value's ranking against their annotated return."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robot_pref.eval.offline import OfflineEvalConfig, evaluate_offline
from robot_pref.rl import TrainConfig
from robot_pref.rl.train import holdout_episodes, train
from test_rl import write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def level_dataset(path, n=12, horizon=10):
    """Episode e sits at level l_e (its observation) and earns l_e per step; the action is 0.5 * l_e."""
    levels = np.linspace(-1, 1, n).astype(np.float32)
    episodes = [{"obs": np.full((horizon, 1), lv, np.float32), "action": np.full((horizon, 1), 0.5 * lv, np.float32),
                 "reward": np.full(horizon, lv, np.float32)} for lv in levels]
    return write_dataset(path, episodes), levels


def test_held_out_episodes_are_left_out_and_scored_with_the_value_ranking(tmp_path):
    ds, levels = level_dataset(tmp_path / "d.zarr")
    held = holdout_episodes(ds.n_episodes, 0.25)
    assert len(held) == 3 and held == holdout_episodes(ds.n_episodes, 0.25)  # the same for every run
    common = dict(dataset=str(tmp_path / "d.zarr"), holdout=0.25, steps=800, batch_size=64, hidden=(32, 32),
                  lr=1e-3, actor_lr=1e-3, gamma=0.9, log_every=400, save_every=800, seed=0, device="cpu")
    info = train(TrainConfig(out=str(tmp_path / "iql"), reward_key="true", **common))
    assert info["transitions"] == (ds.n_episodes - 3) * 9  # no transition of a held-out episode
    train(TrainConfig(out=str(tmp_path / "bc"), algo="bc", **common))

    iql = evaluate_offline(OfflineEvalConfig(policy=str(tmp_path / "iql/last.pt"), dataset=ds.path,
                                             out=str(tmp_path / "eval_iql")))
    assert iql["held_out_episodes"] == held and iql["episodes"] == 3 and iql["frames"] == 30
    assert [r["episode"] for r in iql["per_episode"] if r["held_out"]] == held
    # V(level) grows with the level, so it ranks unseen episodes exactly by their return
    assert iql["value_return_spearman"] == pytest.approx(1.0)
    bc = evaluate_offline(OfflineEvalConfig(policy=str(tmp_path / "bc/last.pt"), dataset=ds.path,
                                            out=str(tmp_path / "eval_bc")))
    assert bc["value_return_spearman"] is None  # BC has no value
    # BC interpolates the linear expert to held-out levels: small error, of the size of the training error
    assert bc["action_mse"] < 0.01 and bc["train_action_mse"] < 0.01
    assert json.loads((tmp_path / "eval_bc/eval_info.json").read_text())["scored_on"] == "held-out episodes"


def test_holdout_that_leaves_nothing_to_train_is_an_error():
    with pytest.raises(ValueError, match="nothing to train on"):
        holdout_episodes(3, 0.9)
    assert holdout_episodes(3, 0.0) == []
