"""FlatAdam: one buffer per parameter group, the same update and the same checkpoints as Adam over the parameters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.bc import BC
from robot_pref.rl.flat_adam import FlatAdam
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import ObsModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OBS, ACT, N, KEY, SIZE = 5, 3, 120, "frames/cam_40", 40


def learner_and_batches(kind="iql", frames=False):
    torch.manual_seed(0)
    keys = {"obs": (np.zeros(OBS, np.float32), np.ones(OBS, np.float32))}
    model = ObsModel(keys, {KEY: SIZE} if frames else {}, std_floor=0.0, feature_dim=8)
    cls = IQL if kind == "iql" else BC
    learner = cls(model, ACT, hidden=(32, 32), total_steps=8, **({"lr": 1e-3} if kind == "iql" else {}))
    gen = torch.Generator().manual_seed(1)
    frames_of = {KEY: torch.randint(0, 256, (N, SIZE, SIZE, 3), dtype=torch.uint8, generator=gen)} if frames else None
    batches = TransitionBatches({"obs": torch.randn(N, OBS, generator=gen)}, torch.rand(N, ACT, generator=gen) * 2 - 1,
                                torch.rand(N, generator=gen).numpy(), np.zeros(N, np.float32), np.arange(N - 1), 16,
                                torch.device("cpu"), 0, (KEY,) if frames else (), device_frames=frames_of)
    return learner, batches


def per_parameter(learner, **adam):
    """A copy of ``learner`` stepped by torch.optim.Adam over its separate parameters (the layout before FlatAdam)."""
    reference = copy.deepcopy(learner)
    flat = reference.optimizer
    reference.optimizer = torch.optim.Adam([{"params": fg.params, "lr": g["lr"]}
                                            for g, fg in zip(flat.param_groups, flat.flat_groups)], **adam)
    reference.scheduler = torch.optim.lr_scheduler.LambdaLR(reference.optimizer, learner.scheduler.lr_lambdas)
    return reference


def train(learner, batches, steps, start=0):
    for step in range(start, start + steps):
        learner.update(batches.sample(step), batches.generator)


def assert_same(ours, theirs):
    """Equal but for the fused kernel's rounding: it runs a tensor's last (len % vector width) elements through
    scalar code, so a parameter of 1-3 elements (the twin Q's output bias, log_std) steps through the vector
    code inside the buffer and may land one ulp apart (measured: 1 element each of 2 and 3)."""
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-9)
    return int((ours != theirs).sum())


def assert_same_parameters(learner, reference):
    unequal = sum(assert_same(p, q) for p, q in zip(learner.parameters(), reference.parameters()))
    assert unequal <= 4


def assert_same_optimizer_state(ours: dict, theirs: dict):
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for pid, state in theirs["state"].items():
        assert ours["state"][pid].keys() == state.keys()
        for key, value in state.items():
            assert ours["state"][pid][key].shape == value.shape
            assert ours["state"][pid][key].stride() == value.stride(), (pid, key)
            assert_same(ours["state"][pid][key], value)


@pytest.mark.parametrize("kind,frames", [("iql", False), ("iql", True), ("bc", False)])
def test_flat_adam_steps_as_fused_adam_over_the_separate_parameters(kind, frames):
    """Same parameters and the same optimizer state_dict (per-parameter layout, strides included) after steps
    with a live lr schedule; conv weights stay channels_last inside the buffer."""
    learner, batches = learner_and_batches(kind, frames)
    optimizer = learner.optimizer
    assert isinstance(optimizer, FlatAdam) and optimizer.defaults["fused"]
    assert [len(g["params"]) for g in optimizer.param_groups] == [1] * len(optimizer.param_groups)
    for fg in optimizer.flat_groups:  # every parameter and its gradient live in the group's two buffers
        assert all(p.untyped_storage().data_ptr() == fg.param.untyped_storage().data_ptr() for p in fg.params)
        assert all(p.grad.untyped_storage().data_ptr() == fg.grad.untyped_storage().data_ptr() for p in fg.params)
    if frames:
        conv = learner.obs_model.encoders[0].convs[0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    reference, reference_batches = per_parameter(learner, fused=True), learner_and_batches(kind, frames)[1]
    start = [p.detach().clone() for p in learner.parameters()]
    train(learner, batches, 6)
    train(reference, reference_batches, 6)
    assert learner.lr() == reference.lr() < 3e-4
    assert all(not torch.equal(p, p0) for p0, p in zip(start, learner.parameters()))
    assert_same_parameters(learner, reference)
    assert_same_optimizer_state(learner.optimizer.state_dict(), reference.optimizer.state_dict())


def test_a_per_parameter_adam_checkpoint_resumes_into_flat_adam_and_back():
    """Checkpoints keep torch.optim.Adam's layout: one written before FlatAdam resumes to the same result, and
    one FlatAdam writes loads into a per-parameter Adam."""
    learner, batches = learner_and_batches(frames=True)
    old = per_parameter(learner, fused=True)
    train(old, batches, 3)
    state, sampler = old.train_state(), batches.state_dict()

    resumed, resumed_batches = learner_and_batches(frames=True)
    resumed.load_train_state(copy.deepcopy(state))
    resumed_batches.load_state_dict(sampler)
    train(resumed, resumed_batches, 3, start=3)
    train(old, batches, 3, start=3)
    assert_same_parameters(resumed, old)

    back = per_parameter(learner_and_batches(frames=True)[0], fused=True)
    back.load_train_state(resumed.train_state())
    assert_same_optimizer_state(back.optimizer.state_dict(), old.optimizer.state_dict())


def test_a_checkpoint_of_another_model_is_refused_with_the_reason():
    learner, _ = learner_and_batches()
    other, _ = learner_and_batches("bc")
    with pytest.raises(ValueError, match="different model"):
        learner.optimizer.load_state_dict(other.optimizer.state_dict())


def test_gradients_dropped_from_outside_and_parameters_moved_are_laid_out_again():
    """``module.zero_grad()`` (grads set to None) and ``module.to(dtype)`` (new tensors for every parameter)
    change nothing in the update: the buffer is rebuilt where it must be, Adam's state carried along."""
    learner, batches = learner_and_batches()
    reference, reference_batches = learner_and_batches()
    for step in range(3):
        learner.zero_grad(set_to_none=True)
        assert all(p.grad is None for p in learner.parameters())
        learner.update(batches.sample(step))
        reference.update(reference_batches.sample(step))
    for p, q in zip(learner.parameters(), reference.parameters()):
        assert torch.equal(p, q)

    before = [p.detach().clone() for p in learner.parameters()]
    learner.double()
    batch = batches.sample(3)
    as_double = {k: {n: t.double() for n, t in v.items()} if isinstance(v, dict) else v.double()
                 for k, v in batch.items()}
    learner.update(as_double)
    optimizer = learner.optimizer
    assert all(fg.param.dtype == torch.float64 and fg.intact() for fg in optimizer.flat_groups)
    assert all(s["exp_avg"].dtype == torch.float64 and s["step"].item() == 4 for s in optimizer.state.values())
    for p0, p in zip(before, learner.parameters()):
        assert p.dtype == torch.float64 and not torch.equal(p.float(), p0)
