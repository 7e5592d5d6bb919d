"""The study's baselines: trivial rewards (zero, constant), reward-weighted BC, per-policy training overrides,
training-time evaluation curves and their plot in the run report."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_pref.data import Episode, TrajectoryDataset
from robot_pref.rl import TrainConfig, load_policy
from robot_pref.rl.batches import scale_rewards, transition_rewards
from robot_pref.rl.rwbc import RWBC, rwbc_weights, standardized_returns
from robot_pref.rl.train import prepare, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def no_truth_dataset(path, episodes=6, T=20, seed=0) -> TrajectoryDataset:
    """Episodes with no ground-truth reward at all (a real-robot import), and a learned reward."""
    rng = np.random.default_rng(seed)
    ds = TrajectoryDataset.create(path, obs_dim=3, action_dim=2, state_dim=1, fps=20, env={"task": "toy"})
    for i in range(episodes):
        ds.append_episode(Episode(obs=rng.normal(size=(T, 3)), action=rng.uniform(-1, 1, (T, 2)),
                                  state=np.zeros((T, 1)), task="toy", seed=i))
    ds.write_reward("learned", rng.normal(2.0, 3.0, ds.n_frames).astype(np.float32))
    return ds


def test_zero_and_constant_rewards_read_no_ground_truth(tmp_path):
    ds = no_truth_dataset(tmp_path / "d.zarr")
    assert not ds.has_ground_truth("reward")
    with pytest.raises(KeyError, match="no ground truth"):
        transition_rewards(ds, "true")  # proves the arrays below were made without it
    learned = ds.get("rewards/learned")
    zero = transition_rewards(ds, "zero")
    assert zero.dtype == np.float32 and zero.shape == (ds.n_frames,) and not zero.any()
    constant = transition_rewards(ds, "constant:learned")
    np.testing.assert_allclose(constant, np.full(ds.n_frames, learned.mean()), rtol=1e-5)
    # the constant is the mean of the reward IQL(learned) trains on: after its normalisation, not before
    minmax = lambda r: scale_rewards(r, "minmax", 1.0, 0.0)  # noqa: E731
    expected = (learned.mean() - learned.min()) / (learned.max() - learned.min())
    np.testing.assert_allclose(transition_rewards(ds, "constant:learned", minmax), expected, rtol=1e-5)
    assert not transition_rewards(ds, "zero", minmax).any()
    with pytest.raises(ValueError, match="ground truth"):
        transition_rewards(ds, "constant:true")
    with pytest.raises(ValueError, match="unknown reward key"):
        transition_rewards(ds, "mean:learned")

    # through train's own preparation: every sampled transition carries the constant; training runs
    common = dict(dataset=str(tmp_path / "d.zarr"), steps=20, batch_size=16, hidden=(16, 16), log_every=10,
                  device="cpu", reward_normalize="minmax")
    cfg = TrainConfig(out=str(tmp_path / "const"), reward_key="constant:learned", **common)
    _, _, batches = prepare(cfg, ds, torch.device("cpu"))
    torch.testing.assert_close(batches.sample(0)["reward"], torch.full((16,), float(expected)))
    for key in ("zero", "constant:learned"):
        info = train(dataclasses.replace(cfg, reward_key=key, out=str(tmp_path / key.replace(":", "_"))))
        assert info["steps"] == 20 and info["reward_key"] == key and math.isfinite(info["last_losses"]["q_loss"])


def test_rwbc_returns_and_weights_on_known_inputs():
    # two episodes, gamma 0.5: R = r + 0.5 R' backwards -> [1.25, 0.5, 1] and [3, 2]
    ret = standardized_returns(np.array([1, 0, 1, 2, 2], np.float32), np.array([3, 5]), 0.5)
    raw = np.array([1.25, 0.5, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(ret, (raw - raw.mean()) / raw.std(), rtol=1e-5)
    w = rwbc_weights(torch.tensor([1.0, 0.0, -1.0, 5.0]), torch.tensor([0.0, 0.0, 0.0, 1.0]), beta=2.0,
                     max_weight=20.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(2.0), 1.0, math.exp(-2.0), 20.0]))


def test_rwbc_clones_the_actions_that_returned_more():
    """One state, actions +0.5 (return 1) and -0.5 (return 0) equally often: BC would average them to 0."""
    from test_rl import array_batches, identity_obs_model

    rng = np.random.default_rng(0)
    m = 2000
    good = rng.random(m) < 0.5
    action = np.where(good, 0.5, -0.5)[:, None].astype(np.float32)
    z = (good - good.mean()) / good.std()  # batches carry the z-scored return-to-go as "reward"
    torch.manual_seed(0)
    learner = RWBC(identity_obs_model(1), 1, hidden=(32, 32), lr=3e-3, actor_lr=3e-3, beta=2.0, total_steps=600)
    batches = array_batches(np.zeros((m, 1), np.float32), action, z.astype(np.float32), np.ones(m, np.float32),
                            np.arange(m - 1))
    for step in range(600):
        logs = learner.update(batches.sample(step))
    assert learner.v(torch.zeros(1, 1)).item() == pytest.approx(0.0, abs=0.1)  # V = the mean z-scored return
    assert float(logs["weight_mean"].max()) == pytest.approx(math.exp(2.0), rel=0.2)
    assert learner.actor(torch.zeros(1, 1)).item() > 0.3


def test_rwbc_trains_through_train_and_loads_as_a_policy(tmp_path):
    no_truth_dataset(tmp_path / "d.zarr")
    info = train(TrainConfig(dataset=str(tmp_path / "d.zarr"), out=str(tmp_path / "rwbc"), algo="rwbc",
                             reward_key="learned", steps=30, batch_size=16, hidden=(16, 16), log_every=10,
                             device="cpu"))
    assert info["algo"] == "rwbc" and set(info["last_losses"]) >= {"v_loss", "actor_loss", "weight_mean"}
    policy = load_policy(info["checkpoint"], device="cpu")
    assert policy.act({"obs": np.zeros(3, np.float32)}).shape == (2,)
    with open(tmp_path / "rwbc" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [10, 20, 30]


# ----------------------------------------------------------------------------- pipeline
def _stages(tmp_path, **fields):
    from robot_pref.pipeline.run import RunConfig, build_stages, _fingerprint

    cfg = RunConfig(name="x", run_dir=str(tmp_path / "run"),
                    policies=("iql-learned", "iql-true", "iql-zero", "iql-constant", "bc", "rwbc"), **fields)
    return {s.name: (s, _fingerprint(s.config)) for s in build_stages(cfg.resolved())}


def test_pipeline_policies_train_the_right_algorithm_on_the_right_reward(tmp_path):
    stages = _stages(tmp_path)
    got = {name: (s.config.algo, s.config.reward_key, s.needs) for name, (s, _) in stages.items()
           if name.startswith("train_")}
    assert got == {"train_iql-learned": ("iql", "learned", ("relabel",)),
                   "train_iql-true": ("iql", "true", ("collect",)),
                   "train_iql-zero": ("iql", "zero", ("collect",)),
                   "train_iql-constant": ("iql", "constant:learned", ("relabel",)),
                   "train_bc": ("bc", "", ("collect",)),
                   "train_rwbc": ("rwbc", "learned", ("relabel",))}


def test_policy_train_overrides_reach_only_their_stage(tmp_path):
    from robot_pref.config import from_dict
    from robot_pref.pipeline.run import RunConfig

    base = _stages(tmp_path)
    changed = _stages(tmp_path, policy_train={"bc": {"steps": 7, "actor": "deterministic"}, "rwbc.rwbc_beta": 2})
    assert changed["train_bc"][0].config.steps == 7 and changed["train_bc"][0].config.actor == "deterministic"
    assert changed["train_rwbc"][0].config.rwbc_beta == 2.0 and isinstance(changed["train_rwbc"][0].config.rwbc_beta,
                                                                           float)
    differs = sorted(name for name in base if base[name][1] != changed[name][1])
    assert differs == ["train_bc", "train_rwbc"]
    assert base["train_iql-learned"][0].config.steps == 100_000

    # a dotted --set on the command line lands in the same place
    cfg = from_dict(RunConfig, {"policy_train.bc.steps": 9, "policy_train": {"bc": {"steps": 8, "batch_size": 4}}})
    assert (cfg.train_for("bc").steps, cfg.train_for("bc").batch_size, cfg.train_for("iql-true").steps) == (
        9, 4, 100_000)
    bad = {"bc": {"stepz": 1}}, {"bc": {"steps": "many"}}, {"dqn": {"steps": 1}}, {"bc": {"algo": "iql"}}, {"bc": 3}
    messages = ("policy_train.bc.stepz", "policy_train.bc.steps: expected a whole number", "no policy 'dqn'",
                "policy_train.bc.algo: set by the pipeline", "expected a mapping")
    for overrides, message in zip(bad, messages):
        with pytest.raises(ValueError, match=message):
            RunConfig(policy_train=overrides).train_for("bc")


def test_training_time_and_final_evaluation_seeds_never_overlap(tmp_path):
    from robot_pref.eval.rollout import EvalConfig
    from robot_pref.rl.train import TRAINING_EVAL_SEED

    _stages(tmp_path, train=TrainConfig(eval_every=10, eval_episodes=5))  # defaults: 1000.. and 10000..
    with pytest.raises(ValueError, match="overlap the final evaluation"):
        _stages(tmp_path, train=TrainConfig(eval_every=10, eval_episodes=5),
                eval=EvalConfig(seed=TRAINING_EVAL_SEED - 10, episodes=50))


@pytest.fixture(scope="module")
def lift_dataset(tmp_path_factory):
    from robot_pref.envs.collect import collect
    from robot_pref.envs.commands import CollectConfig

    root = tmp_path_factory.mktemp("lift")
    collect(CollectConfig(task="lift", tier="expert", episodes=2, horizon=15, workers=1, out=str(root / "lift.zarr")))
    ds = TrajectoryDataset.open(root / "lift.zarr", mode="a")
    ds.write_reward("learned", np.random.default_rng(0).normal(size=ds.n_frames).astype(np.float32))
    return root / "lift.zarr"


def test_eval_curve_is_written_on_held_out_seeds(lift_dataset, tmp_path):
    out = tmp_path / "rwbc"
    info = train(TrainConfig(dataset=str(lift_dataset), out=str(out), algo="rwbc", reward_key="learned", steps=20,
                             hidden=(16, 16), log_every=10, device="cpu", eval_every=10, eval_episodes=2, seed=3))
    with open(out / "eval_curve.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10, 20]
    for row in rows:
        step_info = json.loads((out / "eval" / f"step_{row['step']}" / "eval_info.json").read_text())
        assert [e["seed"] for e in step_info["per_episode"]] == [10_003, 10_004]
        assert (int(row["first_seed"]), int(row["last_seed"]), int(row["episodes"])) == (10_003, 10_004, 2)
        assert int(row["successes"]) == step_info["successes"]
        assert float(row["ci_low"]) == pytest.approx(step_info["ci"][0])
    assert [e["step"] for e in info["evals"]] == [10, 20]


def test_run_report_plots_success_over_training_steps(tmp_path):
    from robot_pref.pipeline.report import write_report
    from robot_pref.pipeline.run import build_stages
    from test_report import build_tiny_run

    run_dir = tmp_path / "run"
    cfg = build_tiny_run(run_dir)
    curve = [{"step": 10, "success_rate": 0.0, "ci_low": 0.0, "ci_high": 0.49, "successes": 0, "episodes": 5,
              "first_seed": 10_000, "last_seed": 10_004, "mean_return": 1.0},
             {"step": 20, "success_rate": 0.6, "ci_low": 0.23, "ci_high": 0.88, "successes": 3, "episodes": 5,
              "first_seed": 10_000, "last_seed": 10_004, "mean_return": 2.0}]
    with open(run_dir / "policies" / "bc" / "eval_curve.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(curve[0]))
        w.writeheader()
        w.writerows(curve)
    report = write_report(cfg, run_dir, [s.name for s in build_stages(cfg)])
    assert list(report["eval_curves"]) == ["bc"]
    assert [(r["step"], r["success_rate"], r["ci_high"]) for r in report["eval_curves"]["bc"]] == [
        (10, 0.0, 0.49), (20, 0.6, 0.88)]
    assert (run_dir / "success_curves.png").stat().st_size > 5000
    html = (run_dir / "report.html").read_text()
    assert 'id="success-curves" src="success_curves.png"' in html and "bc 2 points of 5 episodes" in html
    assert "(seeds 10000–10004)" in html
    assert "](success_curves.png)" in (run_dir / "report.md").read_text()


def test_robomimic_peer_trains_with_robomimic_and_rolls_out_through_our_evaluation(lift_dataset, tmp_path):
    """robomimic's BC on our export, a few steps; the adapter feeds it what the export wrote, and our eval runs it."""
    import importlib.util

    import h5py

    from robot_pref.data.commands import ExportRobomimicConfig
    from robot_pref.data.robomimic import export_robomimic
    from robot_pref.eval.robomimic_policy import RobomimicPolicy
    from robot_pref.eval.rollout import EvalConfig, evaluate

    spec = importlib.util.spec_from_file_location("robomimic_peer", Path(__file__).parents[1] / "tools/robomimic_peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    hdf5 = tmp_path / "lift.hdf5"
    export_robomimic(ExportRobomimicConfig(dataset=str(lift_dataset), out=str(hdf5), reward_key="learned"))
    ckpt = peer.train_peer("bc", str(lift_dataset), str(hdf5), tmp_path / "bc", steps=5, batch_size=8)
    policy = RobomimicPolicy(ckpt)
    assert policy.task == "lift" and policy.observation_keys == ("obs",)
    ds = TrajectoryDataset.open(lift_dataset)
    with h5py.File(hdf5) as f:  # the adapter's split of our flat obs is the export's obs dict
        exported = {k: f[f"data/demo_0/obs/{k}"][3].astype(np.float32) for k in f["data/demo_0/obs"]}
    np.testing.assert_allclose(policy.act({"obs": ds.get("obs")[3]}), policy.policy(exported), rtol=1e-6)
    info = evaluate(EvalConfig(policy=str(ckpt), episodes=2, workers=1, max_steps=10, videos=0,
                               out=str(tmp_path / "eval")))
    assert info["episodes"] == 2 and [r["seed"] for r in info["per_episode"]] == [1000, 1001]
    assert all(r["steps"] == 10 or r["success"] for r in info["per_episode"])
