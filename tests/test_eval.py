"""Evaluation: Wilson interval, rollouts in the real Lift simulator (stop at success), Ray == in-process, outputs."""

from __future__ import annotations

import json

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from robot_pref.eval import EvalConfig, evaluate, run_episode, wilson_interval
from robot_pref.eval.rollout import episodes_done


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (37, 50), (1, 1)])
def test_wilson_interval_matches_scipy(k, n):
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    np.testing.assert_allclose(wilson_interval(k, n), (ref.low, ref.high), atol=2e-4)


class ExpertPolicy:
    """The scripted Lift expert behind the `Policy` interface (one episode)."""

    observation_keys = ("obs",)

    def __init__(self, env):
        from robot_pref.envs.collectors import make_expert

        self.env, self.expert, self.started = env, make_expert("lift"), False

    def act(self, obs):
        parts = self.env.obs_dict(obs["obs"])
        if not self.started:
            self.expert.reset(parts)
            self.started = True
        return self.expert.act(parts)


def test_episode_stops_at_success_and_records_video():
    from robot_pref.envs import make_env

    with make_env("lift") as env:
        row = run_episode(env, ExpertPolicy(env), seed=5, max_steps=150, video=("agentview", 48))
        assert row["success"] and env.success()
        assert row["steps"] < 100  # stopped at the first success, not at the horizon
        assert row["frames"].shape == (row["steps"] + 1, 48, 48, 3)
        assert row["return"] > 0


@pytest.fixture(scope="module")
def lift_policy(tmp_path_factory):
    """A BC checkpoint trained briefly on two short collected Lift episodes."""
    from robot_pref.envs.collect import collect
    from robot_pref.envs.commands import CollectConfig
    from robot_pref.rl.config import TrainConfig
    from robot_pref.rl.train import train

    root = tmp_path_factory.mktemp("lift")
    collect(CollectConfig(task="lift", tier="expert", episodes=2, horizon=15, out=str(root / "lift.zarr")))
    # evaluation rollouts during training (one episode at steps 10 and 20) keep the best checkpoint
    info = train(TrainConfig(dataset=str(root / "lift.zarr"), out=str(root / "bc"), algo="bc", steps=20,
                             hidden=(32, 32), log_every=10, device="cpu", eval_every=10, eval_episodes=1))
    assert [e["step"] for e in info["evals"]] == [10, 20] and (root / "bc" / "best.pt").exists()
    assert (root / "bc" / "eval" / "step_20" / "eval_info.json").exists()
    return info["checkpoint"]


def test_evaluate_on_ray_writes_eval_info_and_video_and_matches_in_process(lift_policy, tmp_path, ray_session):
    from robot_pref.rl import load_policy

    policy = load_policy(lift_policy, device="cpu")
    assert policy.task == "lift" and policy.env_meta["task"] == "lift" and policy.observation_keys == ("obs",)
    cfg = dict(policy=lift_policy, episodes=2, max_steps=8, videos=1, video_size=64, seed=7)
    info = evaluate(EvalConfig(workers=2, out=str(tmp_path / "ray"), **cfg))
    saved = json.loads((tmp_path / "ray" / "eval_info.json").read_text())
    assert saved["episodes"] == 2 and saved["task"] == "lift" and saved["ci_method"].startswith("wilson")
    rows = saved["per_episode"]
    assert [r["seed"] for r in rows] == [7, 8] and all(r["steps"] == 8 for r in rows)
    assert saved["success_rate"] == sum(r["success"] for r in rows) / 2
    assert saved["mean_return"] == pytest.approx(np.mean([r["return"] for r in rows]))
    video = tmp_path / "ray" / rows[0]["video"]
    frames = imageio.mimread(video)
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)
    assert "video" not in rows[1]
    local = evaluate(EvalConfig(workers=1, out=str(tmp_path / "local"), **cfg))
    assert [r["return"] for r in local["per_episode"]] == pytest.approx([r["return"] for r in info["per_episode"]])
    for run in ("ray", "local"):  # every episode's row was logged as it ended (in the order they ended)
        logged = [json.loads(line) for line in (tmp_path / run / "episodes.jsonl").read_text().splitlines()]
        saved = json.loads((tmp_path / run / "eval_info.json").read_text())["per_episode"]
        assert sorted(logged, key=lambda r: r["episode"]) == [{k: v for k, v in r.items() if k != "video"} for r in saved]
        assert episodes_done(tmp_path / run) == 2


def test_an_evaluation_that_fails_midway_keeps_the_episodes_it_finished(lift_policy, tmp_path, monkeypatch):
    from robot_pref.eval import rollout

    run, calls = rollout._Worker.run, []

    def fails_on_the_third(self, *args):
        calls.append(args)
        if len(calls) == 3:
            raise RuntimeError("simulator died")
        return run(self, *args)

    monkeypatch.setattr(rollout._Worker, "run", fails_on_the_third)
    with pytest.raises(RuntimeError, match="simulator died"):
        evaluate(EvalConfig(policy=lift_policy, workers=1, episodes=5, max_steps=4, videos=0, seed=3,
                            out=str(tmp_path / "eval")))
    logged = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert [(r["episode"], r["seed"], r["steps"]) for r in logged] == [(0, 3, 4), (1, 4, 4)]
    assert not (tmp_path / "eval" / "eval_info.json").exists()


def test_more_workers_than_the_cluster_has_cpus_run_on_the_cpus_it_has(lift_policy, tmp_path, ray_session, capsys):
    import ray

    cpus = int(ray.cluster_resources()["CPU"])  # an actor beyond these is never placed: its episodes never end
    info = evaluate(EvalConfig(policy=lift_policy, workers=cpus + 2, episodes=cpus + 2, max_steps=4, videos=0,
                               out=str(tmp_path / "eval")))
    assert info["workers"] == cpus and [r["seed"] for r in info["per_episode"]] == [1000 + i for i in range(cpus + 2)]
    assert f"{cpus + 2} workers asked for but the Ray cluster has room for {cpus}" in capsys.readouterr().out


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="robot-pref train"):
        evaluate(EvalConfig(policy=str(tmp_path / "missing.pt")))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a robot_pref policy"):
        evaluate(EvalConfig(policy=str(tmp_path / "other.pt")))
