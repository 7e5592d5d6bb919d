"""The update's fused shortcuts equal the plain computations they replace (to float tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import ObsModel
from robot_pref.rl.networks import EnsembleLinear
from test_flat_adam import per_parameter


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_iql(obs_dim=5, act_dim=3, **kw) -> tuple[IQL, TransitionBatches]:
    torch.manual_seed(0)
    keys = {"obs": (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))}
    learner = IQL(ObsModel(keys, {}, std_floor=0.0), act_dim, hidden=(32, 32), **kw)
    n = 200
    gen = torch.Generator().manual_seed(1)
    batches = TransitionBatches({"obs": torch.randn(n, obs_dim, generator=gen)},
                               torch.rand(n, act_dim, generator=gen) * 2 - 1,
                               torch.rand(n, generator=gen).numpy(), np.zeros(n, np.float32),
                               np.arange(n - 1), 64, torch.device("cpu"), 0)
    return learner, batches


@pytest.mark.parametrize("shared_input", [False, True])
def test_cpu_one_column_layer_equals_baddbmm_in_values_and_gradients(shared_input):
    """The twin Q's output layer on CPU (one addmm per member) is the batched matmul CUDA runs."""
    torch.manual_seed(0)
    layer = EnsembleLinear(2, 16, 1)
    x = torch.randn(7, 16) if shared_input else torch.randn(2, 7, 16)
    upstream = torch.randn(2, 7, 1)  # a different gradient per member and sample
    results = []
    for forward in (layer, lambda h: torch.baddbmm(layer.bias, h.expand(2, 7, 16), layer.weight)):
        h = x.clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        out = forward(h)
        out.backward(upstream)
        results.append((out.detach(), h.grad, layer.weight.grad, layer.bias.grad))
    assert results[0][0].shape == (2, 7, 1)
    for ours, reference in zip(*results):
        torch.testing.assert_close(ours, reference)


def test_target_update_is_polyak_averaging_of_every_critic_parameter():
    learner, batches = small_iql(polyak=0.1)
    with torch.no_grad():  # targets apart from the online critics, so the average shows
        for p in learner.q_target.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in learner.q_target.parameters()]
    learner.update(batches.sample(0))
    for old, online, new in zip(before, learner.q.parameters(), learner.q_target.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
        assert not torch.equal(new, old)


def test_fused_adam_step_equals_per_parameter_adam():
    """Fused Adam (one kernel per parameter group) is not bit-identical to the per-parameter loop, but
    agrees to float tolerance over steps with a live lr schedule on both groups."""
    learner, batches = small_iql(lr=1e-3, actor_lr=2e-3, total_steps=8)
    assert learner.optimizer.defaults["fused"]
    reference = per_parameter(learner, foreach=False, fused=False)
    start = [p.clone() for p in learner.parameters()]
    for step in range(6):
        batch = batches.sample(step)
        learner.update(batch)
        reference.update(batch)
    assert learner.lr() == reference.lr() < 2e-3
    for p0, p, q in zip(start, learner.parameters(), reference.parameters()):
        assert not torch.equal(p, p0)
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
