"""The hand-written backward (robot_pref.rl.hand_backward) against autograd, and where `robot-pref train` uses it."""

from __future__ import annotations

import csv
import itertools
import json

import numpy as np
import pytest
import torch

from robot_pref.rl import TrainConfig
from robot_pref.rl.bc import BC
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import ObsModel
from robot_pref.rl.rwbc import RWBC
from robot_pref.rl.train import train
from test_rl import point_mass_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS, ACT, BATCH = 11, 4, 64


def lowdim_model() -> ObsModel:
    return ObsModel({"obs": (np.zeros(OBS, np.float32), np.ones(OBS, np.float32))}, {})


def a_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"obs": {"obs": torch.randn(BATCH, OBS, generator=g)},
            "next_obs": {"obs": torch.randn(BATCH, OBS, generator=g)},
            "action": torch.rand(BATCH, ACT, generator=g) * 2 - 1, "reward": torch.randn(BATCH, generator=g),
            "done": (torch.rand(BATCH, generator=g) < 0.2).float()}


def trained_params(learner):
    return [(name, p) for name, p in learner.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("cls, actor, hidden", list(itertools.product(
    (IQL, BC, RWBC), ("gaussian", "deterministic"), ((32, 32), (8, 8, 8)))))
def test_hand_gradients_equal_autograd_for_every_parameter(cls, actor, hidden):
    torch.manual_seed(0)
    learner = cls(lowdim_model(), ACT, hidden=hidden, actor=actor)
    if learner.actor.log_std is not None:  # inside, below, above and exactly at a bound of the log-std clamp
        with torch.no_grad():
            learner.actor.log_std.copy_(torch.tensor([0.3, -6.0, 2.5, 2.0]))
    batch = a_batch()
    loss, autograd_logs = learner.losses(batch)
    learner.optimizer.zero_grad()
    loss.backward()
    expected = {name: p.grad.clone() for name, p in trained_params(learner)}

    for group in learner.optimizer.flat_groups:  # a parameter the hand backward misses keeps its NaN
        group.grad.fill_(float("nan"))
    with torch.no_grad():
        logs = learner.hand_gradients(batch)
    for name, p in trained_params(learner):
        scale = expected[name].abs().max().clamp(min=1e-6)
        torch.testing.assert_close(p.grad / scale, expected[name] / scale, rtol=0, atol=2e-6, msg=name)
    # the forward is the networks' own: the logged values are autograd's bit for bit
    assert logs.keys() == autograd_logs.keys()
    for key, value in autograd_logs.items():
        assert torch.equal(logs[key], value), key


def test_an_update_with_hand_gradients_steps_like_the_autograd_update():
    """Same init, same batches: 30 updates through the optimizer and target networks stay together."""
    runs = []
    for mode in ("hand", "autograd"):
        torch.manual_seed(0)
        learner = IQL(lowdim_model(), ACT, hidden=(32, 32), total_steps=30)
        init = {k: v.clone() for k, v in learner.state_dict().items()}
        learner.choose_gradients(mode)
        assert learner.hand_backward == (mode == "hand")
        losses = [float(learner.update(a_batch(seed))["q_loss"]) for seed in range(30)]
        runs.append((learner.state_dict(), losses))
    (hand, hand_losses), (auto, auto_losses) = runs
    np.testing.assert_allclose(hand_losses, auto_losses, rtol=1e-4)
    for key, value in auto.items():
        torch.testing.assert_close(hand[key], value, rtol=1e-4, atol=1e-5, msg=key)
    moved = max(float((hand[k] - init[k]).abs().max()) for k in ("q.net.0.weight", "v.net.0.weight", "actor.log_std",
                                                                 "q_target.net.2.weight"))
    assert moved > 1e-3  # far beyond the tolerance: the runs agree on where the updates took them


def test_auto_uses_the_hand_backward_only_where_it_applies():
    learner = IQL(lowdim_model(), ACT, hidden=(16,))
    learner.choose_gradients("auto")
    assert learner.hand_backward

    images = ObsModel({"obs": (np.zeros(3, np.float32), np.ones(3, np.float32))}, {"frames/cam_32": 32})
    learner = IQL(images, ACT, hidden=(16,))
    learner.choose_gradients("auto")
    assert not learner.hand_backward
    with pytest.raises(ValueError, match="image encoder.*--gradients auto or autograd"):
        learner.choose_gradients("hand")

    learner = BC(lowdim_model(), ACT, hidden=(16,))
    learner.amp = True
    learner.choose_gradients("auto")
    assert not learner.hand_backward
    learner.amp = False
    learner.choose_gradients("autograd")
    assert not learner.hand_backward
    with pytest.raises(ValueError, match="auto, hand or autograd"):
        learner.choose_gradients("manual")


def test_train_runs_the_hand_backward_on_cpu_and_records_it(tmp_path):
    point_mass_dataset(tmp_path / "pm.zarr", np.random.default_rng(0))
    common = dict(dataset=str(tmp_path / "pm.zarr"), reward_key="true", steps=200, hidden=(32, 32), batch_size=64,
                  log_every=50, save_every=200, seed=0, device="cpu")
    infos = {mode: train(TrainConfig(out=str(tmp_path / mode), gradients=mode, **common))
             for mode in ("auto", "autograd")}
    assert infos["auto"]["gradients"] == "hand" and infos["autograd"]["gradients"] == "autograd"
    logged = {mode: [float(r["q_loss"]) for r in csv.DictReader(open(tmp_path / mode / "log.csv"))] for mode in infos}
    np.testing.assert_allclose(logged["auto"], logged["autograd"], rtol=1e-3)
    saved = json.loads((tmp_path / "auto" / "train_info.json").read_text())
    assert saved["gradients"] == "hand"
