"""IQL/BC correctness: losses against their definitions, value learning, policy extraction, exact resume."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_pref.data import Episode, TrajectoryDataset
from robot_pref.rl import TrainConfig, load_policy
from robot_pref.rl.train import make_learner, train
from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.bc import BC
from robot_pref.rl.checkpoint import build_obs_model, load_checkpoint
from robot_pref.rl.iql import IQL, expectile_loss
from robot_pref.rl.learner import Learner, ObsModel
from robot_pref.rl.networks import Actor, EnsembleLinear, TwinQ


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def identity_obs_model(dim: int) -> ObsModel:
    return ObsModel({"obs": (np.zeros(dim, np.float32), np.ones(dim, np.float32))}, {}, std_floor=0.0)


def array_batches(obs, action, reward, done, valid, batch_size=256, seed=0) -> TransitionBatches:
    return TransitionBatches({"obs": torch.as_tensor(obs, dtype=torch.float32)},
                             torch.as_tensor(action, dtype=torch.float32), reward, done, valid, batch_size,
                             torch.device("cpu"), seed)


def write_dataset(path, episodes: list[dict], frames_key: str | None = None) -> TrajectoryDataset:
    """A zarr dataset from dicts with obs, action, reward (r(s_t)) and optional frames / terminated."""
    first = episodes[0]
    ds = TrajectoryDataset.create(path, obs_dim=first["obs"].shape[1], action_dim=first["action"].shape[1],
                                  state_dim=2, fps=20, env={"task": "toy"})
    for i, ep in enumerate(episodes):
        T = len(ep["obs"])
        ds.append_episode(Episode(obs=ep["obs"], action=ep["action"], state=np.zeros((T, 2)),
                                  true_reward=ep["reward"], task="toy", seed=i, tier=ep.get("tier", ""),
                                  terminated=ep.get("terminated", False),
                                  frames={frames_key: ep["frames"]} if frames_key else {}))
    return ds


# ----------------------------------------------------------------------------- losses
def test_expectile_loss_matches_definition_and_its_minimiser_is_the_expectile():
    u = torch.linspace(-3, 3, 61)
    for tau in (0.5, 0.7, 0.9):
        expected = torch.where(u < 0, (1 - tau) * u**2, tau * u**2)
        torch.testing.assert_close(expectile_loss(u, tau), expected)
    # argmin_v E[L_tau(x - v)] is the tau-expectile: tau E[(x-v)+] = (1-tau) E[(v-x)+]
    x = torch.tensor([0.0, 0.0, 0.0, 1.0, 4.0])
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.1)
    for _ in range(2000):
        opt.zero_grad()
        expectile_loss(x - v, 0.9).mean().backward()
        opt.step()
    balance = 0.9 * torch.clamp(x - v, min=0).sum() - 0.1 * torch.clamp(v - x, min=0).sum()
    assert abs(balance.item()) < 1e-4
    assert 1.0 < v.item() < 4.0  # far above the mean (1.0): tau = 0.9 leans to the upper tail


def test_no_bootstrapping_through_terminal_transitions():
    torch.manual_seed(0)
    learner = IQL(identity_obs_model(3), 2, hidden=(32, 32))
    with torch.no_grad():  # V = 50 everywhere: any bootstrap would show
        last = learner.v.net[-1]
        last.weight.zero_()
        last.bias.fill_(50.0)
    s, a = torch.randn(8, 3), torch.rand(8, 2) * 2 - 1
    r = torch.arange(8, dtype=torch.float32)
    done = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.float32)
    batch = {"obs": {"obs": s}, "next_obs": {"obs": torch.randn(8, 3)}, "action": a, "reward": r, "done": done}
    _, logs = learner.losses(batch)
    q = learner.q(s, a).detach()
    target = torch.where(done.bool(), r, r + 0.99 * 50.0)
    torch.testing.assert_close(logs["q_loss"], ((q - target) ** 2).mean())


def test_fused_twin_q_equals_two_separate_critics():
    torch.manual_seed(0)
    q = TwinQ(5, 2, (16, 16))
    s, a = torch.randn(7, 5), torch.randn(7, 2)
    layers = [m for m in q.net if isinstance(m, EnsembleLinear)]
    for i in range(2):
        x = torch.cat([s, a], -1)
        for j, layer in enumerate(layers):
            x = x @ layer.weight[i] + layer.bias[i, 0]
            x = torch.relu(x) if j < len(layers) - 1 else x
        torch.testing.assert_close(q(s, a)[i], x.squeeze(-1))
    h = torch.randn(2, 7, 16)  # the CPU multiply-and-sum output layer equals the baddbmm CUDA runs
    torch.testing.assert_close(layers[-1](h), torch.baddbmm(layers[-1].bias, h, layers[-1].weight))


def test_fused_twin_q_gradients_equal_two_separate_critics():
    """The ensemble's backward (stride-0 expanded input, baddbmm) gives each critic its own gradient."""
    torch.manual_seed(0)
    q = TwinQ(5, 2, (16, 16))
    s, a = torch.randn(7, 5), torch.randn(7, 2)
    layers = [m for m in q.net if isinstance(m, EnsembleLinear)]
    (q(s, a) * torch.tensor([[1.0], [-2.0]])).sum().backward()  # different upstream gradient per member
    for i, scale in enumerate((1.0, -2.0)):
        params = [t.detach()[i].clone().requires_grad_() for layer in layers for t in (layer.weight, layer.bias)]
        x = torch.cat([s, a], -1)
        for j in range(len(layers)):
            x = x @ params[2 * j] + params[2 * j + 1]
            x = torch.relu(x) if j < len(layers) - 1 else x
        (scale * x).sum().backward()
        for layer, (w, b) in zip(layers, zip(params[::2], params[1::2])):
            torch.testing.assert_close(layer.weight.grad[i], w.grad)
            torch.testing.assert_close(layer.bias.grad[i], b.grad)


def test_gaussian_actor_nll_equals_normal_log_prob():
    torch.manual_seed(0)
    actor = Actor(4, 3, (16,))
    with torch.no_grad():
        actor.log_std.copy_(torch.tensor([-7.0, 0.3, 2.5]))  # below and above the clamp [-5, 2]
    s, a = torch.randn(9, 4), torch.rand(9, 3) * 2 - 1
    std = torch.exp(torch.tensor([-5.0, 0.3, 2.0]))
    expected = -torch.distributions.Normal(actor(s), std).log_prob(a).sum(-1)
    torch.testing.assert_close(actor.nll(s, a), expected)


# ----------------------------------------------------------------------------- value learning
def test_value_converges_to_discounted_return_on_a_chain():
    """Chain s0 -> ... -> s5 (terminal), reward 1 on entering s5: V(s_k) = gamma^(4-k)."""
    n, gamma = 5, 0.9
    obs = np.eye(n + 1, dtype=np.float32)  # frames s0..s5
    reward_next = np.zeros(n + 1, np.float32)
    reward_next[n - 1] = 1.0  # transition s4 -> s5 gets r(s5)
    done = np.zeros(n + 1, np.float32)
    done[n - 1] = 1.0
    torch.manual_seed(0)
    learner = IQL(identity_obs_model(n + 1), 1, hidden=(64, 64), lr=3e-3, gamma=gamma, polyak=0.05)
    batches = array_batches(obs, np.zeros((n + 1, 1)), reward_next, done, np.arange(n), batch_size=32)
    for step in range(1500):
        learner.update(batches.sample(step))
    v = learner.v(torch.as_tensor(obs[:n])).detach().numpy()
    np.testing.assert_allclose(v, gamma ** np.arange(n - 1, -1, -1), atol=0.05)



def test_train_aligns_reward_of_the_next_state_through_a_real_dataset(tmp_path):
    """A chain dataset s0 -> ... -> s5 (terminal) whose learned reward array r(s_t) is 1 only on s5 (and 5 on s0,
    which no transition enters): through `train()` only reward[t + 1] gives V(s_k) = gamma^(4-k); reward[t]
    would give V(s0) ~ 5 and V(s4) = 0."""
    n, gamma = 5, 0.9
    obs = np.eye(n + 1, dtype=np.float32)
    episodes = [{"obs": obs, "action": np.zeros((n + 1, 1), np.float32), "reward": np.zeros(n + 1, np.float32),
                 "terminated": True} for _ in range(8)]
    ds = write_dataset(tmp_path / "chain.zarr", episodes)
    r = np.zeros(n + 1, np.float32)
    r[0], r[n] = 5.0, 1.0
    ds.write_reward("learned", np.tile(r, 8), start=0)
    cfg = TrainConfig(dataset=str(tmp_path / "chain.zarr"), out=str(tmp_path / "iql"), reward_key="learned",
                      steps=1500, batch_size=32, hidden=(64, 64), lr=3e-3, gamma=gamma, polyak=0.05,
                      obs_std_floor=0.0, log_every=500, save_every=1500, seed=0, device="cpu")
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "iql" / "last.pt")
    learner = make_learner(cfg, build_obs_model(ckpt["policy"]), 1)
    learner.load_train_state(ckpt)
    with torch.no_grad():
        v = learner.v(learner.obs_model.normalize("obs", torch.as_tensor(obs[:n]))).numpy()
    np.testing.assert_allclose(v, gamma ** np.arange(n - 1, -1, -1), atol=0.05)

def test_bandit_with_mixed_data_picks_the_better_action_and_v_reaches_the_expectile():
    """One state; 20% of the data takes a=+0.5 (reward 1), 80% a=-0.5 (reward 0); every step terminal."""
    rng = np.random.default_rng(0)
    m = 2000
    good = rng.random(m) < 0.2
    action = np.where(good, 0.5, -0.5)[:, None].astype(np.float32)
    obs = np.zeros((m, 1), np.float32)
    reward = good.astype(np.float32)
    tau, p = 0.7, good.mean()
    torch.manual_seed(0)
    learner = IQL(identity_obs_model(1), 1, hidden=(32, 32), lr=1e-3, actor_lr=1e-3, beta=10.0, expectile=tau,
                  polyak=0.05, total_steps=1500)
    batches = array_batches(obs, action, reward, np.ones(m, np.float32), np.arange(m - 1))
    for step in range(1500):
        learner.update(batches.sample(step))
    v = learner.v(torch.zeros(1, 1)).item()
    expectile = tau * p / (tau * p + (1 - tau) * (1 - p))  # solves tau p (1 - v) = (1 - tau)(1 - p) v
    assert v == pytest.approx(expectile, abs=0.03)
    a = learner.actor(torch.zeros(1, 1)).item()
    assert a > 0.4, f"IQL should pick the rewarded action +0.5, got {a:.2f}"


def test_bc_recovers_a_linear_expert(tmp_path):
    rng = np.random.default_rng(1)
    W = rng.normal(size=(4, 2)).astype(np.float32) * 0.2
    episodes = []
    for _ in range(20):
        obs = rng.normal(size=(50, 4)).astype(np.float32) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -2.0, 5.0]
        obs = obs.astype(np.float32)
        episodes.append({"obs": obs, "action": (obs - [0.0, 1.0, -2.0, 5.0]).astype(np.float32) @ W,
                         "reward": np.zeros(50, np.float32)})
    write_dataset(tmp_path / "lin.zarr", episodes)
    train(TrainConfig(dataset=str(tmp_path / "lin.zarr"), out=str(tmp_path / "bc"), algo="bc", steps=1500,
                      hidden=(64, 64), actor_lr=1e-3, log_every=500, save_every=1500, seed=0))
    policy = load_policy(tmp_path / "bc" / "last.pt", device="cpu")
    test = rng.normal(size=(200, 4)).astype(np.float32) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -2.0, 5.0]
    expert = (test - [0.0, 1.0, -2.0, 5.0]) @ W
    pred = policy.act(test.astype(np.float32))
    assert pred.shape == (200, 2)
    assert np.mean((pred - expert) ** 2) < 0.05 * np.var(expert)
    single = policy.act(test[0].astype(np.float32))
    np.testing.assert_allclose(single, pred[0], atol=1e-5)


# ----------------------------------------------------------------------------- exact resume
def _crash_after(monkeypatch, n: int) -> None:
    original = Learner.update
    calls = {"n": 0}

    def update(self, *args, **kwargs):
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        calls["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Learner, "update", update)


@pytest.mark.parametrize("with_frames", [False, True])
def test_resume_after_a_crash_gives_identical_parameters(tmp_path, monkeypatch, with_frames):
    rng = np.random.default_rng(0)
    key = "frames/cam_40" if with_frames else None
    episodes = [{"obs": rng.normal(size=(12, 3)).astype(np.float32),
                 "action": rng.uniform(-1, 1, (12, 2)).astype(np.float32),
                 "reward": rng.random(12).astype(np.float32), "terminated": i == 0,
                 "frames": rng.integers(0, 255, (12, 40, 40, 3), dtype=np.uint8)} for i in range(4)]
    write_dataset(tmp_path / "d.zarr", episodes, "cam_40" if with_frames else None)
    common = dict(dataset=str(tmp_path / "d.zarr"), reward_key="true", steps=30, batch_size=16, hidden=(32, 32),
                  save_every=10, log_every=5, seed=3, device="cpu",
                  obs_keys=("obs", key) if with_frames else ("obs",))
    train(TrainConfig(out=str(tmp_path / "straight"), **common))
    with monkeypatch.context() as m:
        _crash_after(m, 25)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(TrainConfig(out=str(tmp_path / "resumed"), **common))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["step"] == 20
    info = train(TrainConfig(out=str(tmp_path / "resumed"), **common))
    assert info["steps"] == 30
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["sampler"]["generator"], b["sampler"]["generator"])
    rows = lambda p: [r["step"] for r in csv.DictReader(open(p / "log.csv"))]  # noqa: E731
    assert rows(tmp_path / "resumed") == rows(tmp_path / "straight") == [str(s) for s in range(5, 31, 5)]
    with pytest.raises(ValueError, match="different settings"):
        train(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "beta": 1.0}))


def test_missing_reward_and_nan_rewards_are_clear_errors(tmp_path):
    rng = np.random.default_rng(0)
    ep = {"obs": rng.normal(size=(6, 2)).astype(np.float32), "action": np.zeros((6, 1), np.float32),
          "reward": np.zeros(6, np.float32)}
    ds = write_dataset(tmp_path / "d.zarr", [ep])
    with pytest.raises(ValueError, match="--reward-key true"):
        train(TrainConfig(dataset=str(tmp_path / "d.zarr"), out=str(tmp_path / "a"), steps=2))
    with pytest.raises(KeyError, match="robot-pref relabel"):
        train(TrainConfig(dataset=str(tmp_path / "d.zarr"), out=str(tmp_path / "b"), steps=2, reward_key="vlm"))
    ds = TrajectoryDataset.open(tmp_path / "d.zarr", "a")
    ds.write_reward("half", np.ones(3), start=0)  # rows 3.. stay NaN
    with pytest.raises(ValueError, match="NaN"):
        train(TrainConfig(dataset=str(tmp_path / "d.zarr"), out=str(tmp_path / "c"), steps=2, reward_key="half"))


def test_log_and_save_every_zero_mean_at_the_end_only_and_negative_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    ep = {"obs": rng.normal(size=(6, 2)).astype(np.float32), "action": np.zeros((6, 1), np.float32),
          "reward": np.zeros(6, np.float32)}
    write_dataset(tmp_path / "d.zarr", [ep])
    common = dict(dataset=str(tmp_path / "d.zarr"), reward_key="true", steps=7, batch_size=4, hidden=(8, 8),
                  device="cpu")
    info = train(TrainConfig(out=str(tmp_path / "a"), log_every=0, save_every=0, **common))
    rows = (tmp_path / "a" / "log.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("7,")  # the header and the last step
    assert info["steps"] == 7 and load_checkpoint(tmp_path / "a" / "last.pt")["step"] == 7
    with pytest.raises(ValueError, match="must be >= 0"):
        train(TrainConfig(out=str(tmp_path / "b"), save_every=-1, **common))
    assert not (tmp_path / "b" / "last.pt").exists()


# ----------------------------------------------------------------------------- learning
def point_mass_dataset(path, rng, n_expert=15, n_random=60, horizon=12):
    """2-D point mass, s' = clip(s + 0.15 a), r(s) = -|s|; experts head to the origin, the rest is random."""
    episodes = []
    for i in range(n_expert + n_random):
        s = rng.uniform(-1, 1, 2)
        obs, act, rew = [], [], []
        for _ in range(horizon):
            a = np.clip(-s / 0.15, -1, 1) if i < n_expert else rng.uniform(-1, 1, 2)
            obs.append(s.copy())
            act.append(a)
            rew.append(-np.linalg.norm(s))
            s = np.clip(s + 0.15 * a, -1, 1)
        episodes.append({"obs": np.array(obs, np.float32), "action": np.array(act, np.float32),
                         "reward": np.array(rew, np.float32), "tier": "expert" if i < n_expert else "random"})
    return write_dataset(path, episodes)


def rollout_distance(policy, rng, n=50, horizon=12) -> float:
    s = rng.uniform(-1, 1, (n, 2))
    for _ in range(horizon):
        s = np.clip(s + 0.15 * policy.act(s.astype(np.float32)), -1, 1)
    return float(np.linalg.norm(s, axis=1).mean())


def test_iql_beats_bc_on_mixed_quality_data(tmp_path):
    point_mass_dataset(tmp_path / "pm.zarr", np.random.default_rng(0))
    common = dict(dataset=str(tmp_path / "pm.zarr"), steps=1500, hidden=(64, 64), batch_size=128, lr=1e-3,
                  actor_lr=1e-3, gamma=0.9, polyak=0.02, log_every=500, save_every=1500, seed=0)
    train(TrainConfig(out=str(tmp_path / "bc"), algo="bc", **common))
    train(TrainConfig(out=str(tmp_path / "iql"), algo="iql", reward_key="true", beta=5.0, **common))
    d_bc = rollout_distance(load_policy(tmp_path / "bc" / "last.pt", "cpu"), np.random.default_rng(1))
    d_iql = rollout_distance(load_policy(tmp_path / "iql" / "last.pt", "cpu"), np.random.default_rng(1))
    d_start = rollout_distance(type("Still", (), {"act": lambda self, s: np.zeros_like(s)})(), np.random.default_rng(1))
    assert d_iql < 0.15, (d_iql, d_bc)
    assert d_iql < 0.5 * d_bc < 0.5 * d_start, (d_iql, d_bc, d_start)


# ----------------------------------------------------------------------------- CUDA graph support (CPU-testable parts)
def test_checkpoint_of_a_graphed_run_resumes_an_eager_one():
    """A CUDA-graphed run keeps the lr in device tensors set by the schedule on a step tensor; the tensor
    schedule equals LambdaLR's, and its checkpoint holds plain floats, so it resumes eagerly to the same result."""
    obs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    data = (obs, np.zeros((50, 1)), np.ones(50, np.float32), np.zeros(50, np.float32), np.arange(49))

    def run(steps, state=None, tensor_lr=False):
        torch.manual_seed(0)
        learner = IQL(identity_obs_model(3), 1, hidden=(16,), total_steps=6)
        batches = array_batches(*data, batch_size=8)
        if state:
            learner.load_train_state(state)
            batches.load_state_dict(state["sampler"])
        start = learner.scheduler.last_epoch
        for step in range(start, start + steps):
            learner.update(batches.sample(step))
        if tensor_lr:  # as CudaGraphUpdate leaves the groups: lr tensors set from the step tensor
            t = torch.tensor(float(learner.scheduler.last_epoch), dtype=torch.float64)
            groups = zip(learner.optimizer.param_groups, learner.scheduler.base_lrs, learner.scheduler.lr_lambdas)
            for i, (g, base, f) in enumerate(groups):
                g["lr"] = torch.as_tensor(base * f(t), dtype=torch.float32)
                assert float(g["lr"]) == pytest.approx(learner.scheduler.get_last_lr()[i], rel=1e-6)
        return learner, {**learner.train_state(), "sampler": batches.state_dict()}

    straight, _ = run(5)
    _, state = run(2, tensor_lr=True)
    assert all(type(g["lr"]) is float for g in state["optimizer"]["param_groups"])
    assert state["scheduler"]["_last_lr"] == pytest.approx([3e-4, 3e-4 * 0.5 * (1 + np.cos(np.pi * 2 / 6))])
    resumed, _ = run(3, state)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.lr() == pytest.approx(3e-4 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))


def test_failed_cuda_graph_capture_undoes_its_warm_up_and_training_continues_eagerly(monkeypatch, caplog):
    """Capture runs warm-up steps first; when it then fails (here: no GPU), the learner, its Adam state and
    the sampler's generator are as before, so the eager run that follows is the one that never tried."""
    import contextlib

    class Stream:
        def wait_stream(self, other):
            pass

    class FailingGraph:
        def register_generator_state(self, generator):
            raise RuntimeError("no CUDA here")

    for name, fake in {"device": lambda d: contextlib.nullcontext(), "stream": lambda s: contextlib.nullcontext(),
                       "Stream": Stream, "current_stream": Stream, "CUDAGraph": FailingGraph}.items():
        monkeypatch.setattr(torch.cuda, name, fake)
    obs = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    data = (obs, np.zeros((50, 1)), np.ones(50, np.float32), np.zeros(50, np.float32), np.arange(49))

    def run(steps, try_graph_at=None):
        torch.manual_seed(0)
        learner = IQL(identity_obs_model(3), 1, hidden=(16,), total_steps=6)
        batches = array_batches(*data, batch_size=8)
        for step in range(steps):
            if step == try_graph_at:
                assert learner.graphed_update(lambda: batches.sample(0), (batches.generator,)) is None
            learner.update(batches.sample(step))
        return learner

    for at in (0, 2):  # fresh Adam state (dropped again) and existing state (restored)
        tried, straight = run(4, try_graph_at=at), run(4)
        for a, b in zip(straight.state_dict().values(), tried.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert all(type(g["lr"]) is float and not g["capturable"] for g in tried.optimizer.param_groups)
    assert "CUDA graph capture failed, training eagerly: RuntimeError: no CUDA here" in caplog.text
