"""End-to-end image IQL: bf16 autocast, channels_last encoder, frames on the device, the CUDA-graphed update.

The CUDA tests check that a graphed image run replays the eager one (batches and random shifts drawn from
registered generators); they are skipped on a machine without a GPU (`tools/gpu_check_image.sh` runs them).
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from robot_pref.data import Episode, TrajectoryDataset
from robot_pref.rl import TrainConfig
from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.checkpoint import load_checkpoint
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import CudaGraphUpdate, ObsModel
from robot_pref.rl.networks import ImageEncoder
from robot_pref.rl.train import frames_on_device, make_update, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEY, SIZE, OBS, ACT, N = "frames/cam_40", 40, 3, 2, 200
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False")


def image_data(seed=0):
    rng = np.random.default_rng(seed)
    return (torch.as_tensor(rng.normal(size=(N, OBS)), dtype=torch.float32),
            torch.as_tensor(rng.uniform(-1, 1, (N, ACT)), dtype=torch.float32), rng.random(N).astype(np.float32),
            (rng.random(N) < 0.05).astype(np.float32), torch.as_tensor(rng.integers(0, 256, (N, SIZE, SIZE, 3)),
                                                                    dtype=torch.uint8))


def image_iql(device, amp=False, data=None, batch_size=16):
    """A tiny image IQL (obs + one 40 px camera) and its batches, frames held on ``device``."""
    obs, act, rew, done, frames = data or image_data()
    torch.manual_seed(1)
    model = ObsModel({"obs": (np.zeros(OBS, np.float32), np.ones(OBS, np.float32))}, {KEY: SIZE}, feature_dim=16)
    learner = IQL(model, ACT, hidden=(32, 32), total_steps=50).to(device)
    learner.amp = amp
    batches = TransitionBatches({"obs": obs}, act, rew, done, np.arange(N - 1), batch_size, device, seed=0,
                                frame_keys=(KEY,), device_frames={KEY: frames.to(device)})
    return learner, batches


def run(learner, batches, steps, update=None):
    """Per-step losses of ``steps`` updates (eager unless ``update`` is a graph replay)."""
    update = update or (lambda: learner.update(batches.sample(0), batches.generator))
    losses = []
    for _ in range(steps):
        logs = update()
        losses.append([float(logs[k]) for k in ("v_loss", "q_loss", "actor_loss")])
    return np.array(losses)


def write_image_dataset(path, episodes=4, length=12):
    rng = np.random.default_rng(0)
    ds = TrajectoryDataset.create(path, obs_dim=OBS, action_dim=ACT, state_dim=2, fps=20, env={"task": "toy"})
    for i in range(episodes):
        ds.append_episode(Episode(obs=rng.normal(size=(length, OBS)).astype(np.float32),
                                  action=rng.uniform(-1, 1, (length, ACT)).astype(np.float32),
                                  state=np.zeros((length, 2)), true_reward=rng.random(length).astype(np.float32),
                                  task="toy", seed=i,
                                  frames={"cam_40": rng.integers(0, 255, (length, SIZE, SIZE, 3), dtype=np.uint8)}))
    return ds


# ----------------------------------------------------------------------------- bf16 autocast
def test_bf16_autocast_trains_close_to_fp32_and_really_runs_in_bf16():
    fp32, bf16 = image_iql("cpu"), image_iql("cpu", amp=True)
    initial = torch.cat([p.detach().flatten() for p in fp32[0].parameters()])
    seen = []
    bf16[0].obs_model.encoders[0].convs[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    a, b = run(*fp32, 5), run(*bf16, 5)
    assert set(seen) == {torch.bfloat16} and len(seen) == 10  # the conv encoder ran in bf16 (obs, next obs)
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(b, a, rtol=0.05, atol=1e-3)  # measured: within 2.3%
    assert all(p.dtype == torch.float32 for p in bf16[0].parameters())  # weights (and Adam) stay fp32
    # Adam moves every weight by ~lr whatever its gradient's size, so compare the whole update's direction
    moved = [torch.cat([p.detach().flatten() for p in m[0].parameters()]) - initial for m in (fp32, bf16)]
    assert float(torch.nn.functional.cosine_similarity(*moved, dim=0)) > 0.95  # measured: 0.99


def test_amp_none_is_the_plain_fp32_update():
    """amp off adds nothing to the step: update() equals losses, backward and Adam written out by hand."""
    (learner, batches), (plain, plain_batches) = image_iql("cpu"), image_iql("cpu")
    for _ in range(3):
        learner.update(batches.sample(0), batches.generator)
        loss, _ = plain.losses(plain_batches.sample(0), plain_batches.generator)
        plain.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain.optimizer.step()
        plain.after_step()
        plain.scheduler.step()
    for a, b in zip(learner.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- channels_last
def test_channels_last_encoder_is_bit_identical_on_cpu_and_loads_contiguous_checkpoints():
    torch.manual_seed(0)
    enc = ImageEncoder(SIZE, feature_dim=16)
    convs = [m.weight for m in enc.convs if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    plain = copy.deepcopy(enc).to(memory_format=torch.contiguous_format)  # the layout before channels_last
    assert plain.convs[0].weight.is_contiguous()
    inputs = []
    enc.convs[0].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    frames = torch.randint(0, 256, (8, SIZE, SIZE, 3), dtype=torch.uint8)
    for shift in (False, True):
        a = enc(frames, torch.Generator().manual_seed(1) if shift else None)
        b = plain(frames, torch.Generator().manual_seed(1) if shift else None)
        assert inputs[-1].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b)
        enc.zero_grad()
        plain.zero_grad()
        a.square().sum().backward()
        b.square().sum().backward()
        for p, q in zip(enc.parameters(), plain.parameters()):
            assert torch.equal(p.grad, q.grad)
    # a checkpoint written before channels_last (contiguous tensors) loads, and the layout stays channels_last
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(1.0)
    enc.load_state_dict(plain.state_dict())
    assert enc.convs[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(p, q) for p, q in zip(enc.parameters(), plain.parameters()))


# ----------------------------------------------------------------------------- frames on the device
def test_device_frames_batches_pair_each_frame_with_its_transition_and_resume():
    obs, act, rew, done, _ = image_data()
    obs = torch.arange(N, dtype=torch.float32)[:, None].repeat(1, OBS)  # obs[t] = t
    frames = torch.arange(N, dtype=torch.uint8)[:, None, None, None].expand(N, SIZE, SIZE, 3).contiguous()  # t at t

    def batches():
        return TransitionBatches({"obs": obs}, act, rew, done, np.arange(N - 1), 32, torch.device("cpu"), seed=0,
                                 frame_keys=(KEY,), device_frames={KEY: frames})

    b = batches()
    assert b.frames_on_device
    first = b.sample(0)
    t = first["obs"]["obs"][:, 0]
    assert torch.equal(first["obs"][KEY][:, 0, 0, 0].float(), t)
    assert torch.equal(first["next_obs"][KEY][:, 0, 0, 0].float(), t + 1)
    assert torch.equal(first["next_obs"]["obs"][:, 0], t + 1)
    assert torch.equal(first["reward"], torch.as_tensor(rew)[t.long()])
    assert len(set(t.tolist())) > 20  # random indices, not one row
    state = b.state_dict()
    second = b.sample(1)
    resumed = batches()
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(1)["obs"][KEY], second["obs"][KEY])
    streamed = TransitionBatches({"obs": obs}, act, rew, done, np.arange(N - 1), 32, torch.device("cpu"), seed=0,
                                 frame_keys=(KEY,), read_frames=lambda k, i: frames.numpy()[i])
    with pytest.raises(ValueError, match="resume with --frames-on-device false"):
        b.load_state_dict(streamed.state_dict())
    with pytest.raises(ValueError, match="resume with --frames-on-device true"):
        streamed.load_state_dict(state)
    streamed.close()


class _Frames:
    """The dataset surface `frames_on_device` reads: frame shapes."""

    def shape(self, key):
        return (N, SIZE, SIZE, 3)


def test_auto_keeps_frames_on_the_gpu_only_when_they_take_half_its_free_memory(monkeypatch, caplog):
    nbytes = 2 * N * SIZE * SIZE * 3  # two cameras
    free = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free[-1], 80 * 2**30))
    cuda, keys = torch.device("cuda"), (KEY, "frames/wrist_40")

    def where(choice="auto", resumed=None, device=cuda, frame_keys=keys):
        return frames_on_device(TrainConfig(frames_on_device=choice), _Frames(), frame_keys, device, resumed)

    free.append(2 * nbytes)
    assert where() is True
    free.append(2 * nbytes - 1)
    with caplog.at_level(logging.INFO, logger="robot_pref.rl.train"):
        assert where() is False
    assert "frames stream from the dataset, updates run eagerly" in caplog.text
    assert where("true") is True and where("false") is False
    assert where(resumed=True) is True  # a resumed run keeps its frames where they were, fitting or not
    free.append(10 * nbytes)
    assert where(resumed=False) is False
    assert where(frame_keys=()) is False  # low-dim: nothing to place
    assert where(device=torch.device("cpu")) is False
    with pytest.raises(ValueError, match="keeps the frames in GPU memory, but the device is cpu"):
        where("true", device=torch.device("cpu"))
    with pytest.raises(ValueError, match="must be auto, true or false"):
        where("yes")


def test_frames_on_device_true_on_cpu_is_a_clear_error_and_auto_streams(tmp_path):
    write_image_dataset(tmp_path / "d.zarr")
    common = dict(dataset=str(tmp_path / "d.zarr"), reward_key="true", steps=3, batch_size=8, hidden=(16,),
                  device="cpu", obs_keys=("obs", KEY), log_every=3)
    with pytest.raises(ValueError, match="--frames-on-device true keeps the frames in GPU memory"):
        train(TrainConfig(out=str(tmp_path / "true"), frames_on_device="true", **common))
    info = train(TrainConfig(out=str(tmp_path / "auto"), **common))
    assert info["frames_on_device"] is False and info["steps"] == 3
    with pytest.raises(ValueError, match="--amp must be none or bf16"):
        train(TrainConfig(out=str(tmp_path / "amp"), amp="fp16", **common))


def test_make_update_graphs_image_batches_with_the_augmentation_generator_when_frames_are_on_the_device(caplog):
    learner, batches = image_iql("cpu")
    calls = []

    def graphed_update(sample, generators, augment=None):
        calls.append((generators, augment))
        return lambda: {"replayed": torch.ones(())}

    learner.graphed_update = graphed_update
    update = make_update(TrainConfig(), learner, batches, torch.device("cuda"))
    assert calls == [((batches.generator,), batches.generator)] and "replayed" in update(0)
    obs, act, rew, done, frames = image_data()
    streamed = TransitionBatches({"obs": obs}, act, rew, done, np.arange(N - 1), 16, torch.device("cpu"), seed=0,
                                 frame_keys=(KEY,), read_frames=lambda k, i: frames.numpy()[i])
    with caplog.at_level(logging.INFO, logger="robot_pref.rl.train"):
        update = make_update(TrainConfig(), learner, streamed, torch.device("cuda"))
    assert len(calls) == 1 and "training eagerly: frames come from a host thread" in caplog.text
    assert "v_loss" in update(0)
    streamed.close()


def test_capture_refuses_an_augmentation_generator_it_does_not_register(caplog):
    """Unregistered, the shifts would be the captured ones at every replay: capture fails, training stays eager."""
    learner, batches = image_iql("cpu")
    before = copy.deepcopy(learner.state_dict())
    other = torch.Generator().manual_seed(0)
    assert learner.graphed_update(lambda: batches.sample(0), (batches.generator,), other) is None
    assert "augmentation generator is not among the registered generators" in caplog.text
    assert all(torch.equal(v, learner.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="not among the registered"):
        CudaGraphUpdate(learner, lambda: batches.sample(0), (), other)


# ----------------------------------------------------------------------------- CUDA
@needs_cuda
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_graphed_image_iql_replays_the_eager_run_on_cuda(monkeypatch, amp):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    dev, steps = torch.device("cuda"), 30
    eager_l, eager_b = image_iql(dev, amp)
    initial = copy.deepcopy(eager_l.state_dict())
    eager = run(eager_l, eager_b, steps)
    graph_l, graph_b = image_iql(dev, amp)
    graphed = graph_l.graphed_update(lambda: graph_b.sample(0), (graph_b.generator,), graph_b.generator)
    assert graphed is not None, "capture failed (see the warning)"
    replayed = run(graph_l, graph_b, steps, graphed)
    torch.cuda.synchronize()
    # each step's losses: the replay gathers new batches and draws new shifts, as the eager step does
    np.testing.assert_allclose(replayed, eager, rtol=1e-3, atol=1e-5)
    assert len({tuple(r) for r in replayed}) == steps
    assert torch.equal(graph_b.generator.get_state(), eager_b.generator.get_state())
    moved = max(float((eager_l.state_dict()[k].float() - v.float()).abs().max()) for k, v in initial.items())
    assert moved > 1e-3
    for k, v in eager_l.state_dict().items():
        torch.testing.assert_close(graph_l.state_dict()[k], v, rtol=1e-4, atol=1e-4, msg=k)
    assert graph_l.scheduler.last_epoch == eager_l.scheduler.last_epoch == steps


@needs_cuda
def test_train_on_cuda_keeps_frames_on_the_gpu_and_its_graphed_run_equals_the_eager_one(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    write_image_dataset(tmp_path / "d.zarr", episodes=8, length=20)
    replays = []
    replay = CudaGraphUpdate.__call__
    monkeypatch.setattr(CudaGraphUpdate, "__call__", lambda self: replays.append(1) or replay(self))
    common = dict(dataset=str(tmp_path / "d.zarr"), reward_key="true", steps=40, batch_size=16, hidden=(32, 32),
                  device="cuda", obs_keys=("obs", KEY), log_every=20, save_every=40)
    eager = train(TrainConfig(out=str(tmp_path / "eager"), cuda_graph=False, **common))
    assert not replays
    graphed = train(TrainConfig(out=str(tmp_path / "graph"), **common))
    assert eager["frames_on_device"] and graphed["frames_on_device"] and len(replays) == 40
    a, b = load_checkpoint(tmp_path / "eager" / "last.pt"), load_checkpoint(tmp_path / "graph" / "last.pt")
    assert torch.equal(a["sampler"]["generator"], b["sampler"]["generator"])
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-4, atol=1e-4, msg=k)
