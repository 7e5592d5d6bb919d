"""Scripted collectors (tier success rates, reproducibility) and `robot-pref collect` end to end."""

import json

import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data import TrajectoryDataset
from robot_pref.envs import TaskEnv, collect_episode, make_env


@pytest.fixture(scope="module")
def lift():
    with make_env("lift") as env:
        yield env


def run_tier(env, tier, n, horizon=None):
    return [collect_episode(env, tier, np.random.default_rng([1, i]), horizon=horizon) for i in range(n)]


def test_tiers_order_by_success_and_reward(lift):
    expert = run_tier(lift, "expert", 10, horizon=60)  # the expert lifts by step ~50
    assert sum(ep.success for ep in expert) >= 8
    medium = run_tier(lift, "medium", 6)
    random = run_tier(lift, "random", 3, horizon=100)
    assert sum(ep.success for ep in random) == 0
    rates = [np.mean([ep.success for ep in eps]) for eps in (expert, medium, random)]
    assert rates[0] > rates[1] > rates[2]  # medium: partial success
    mean_reward = [np.mean([ep.true_reward.mean() for ep in eps]) for eps in (expert[:4], medium, random)]
    assert mean_reward[0] > mean_reward[1] > mean_reward[2]
    assert mean_reward[2] < 0.1


def test_episode_layout_and_reproducibility(lift):
    a = collect_episode(lift, "medium", np.random.default_rng(5), horizon=40)
    b = collect_episode(lift, "medium", np.random.default_rng(5), horizon=40)
    c = collect_episode(lift, "medium", np.random.default_rng(6), horizon=40)
    for key in ("obs", "action", "state", "true_reward"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.seed == b.seed != c.seed and not np.array_equal(a.action, c.action)
    assert len(a) == 40 and a.obs.shape == (40, 19) and a.state.shape == (40, 32) and a.action.dtype == np.float32
    assert np.abs(a.action).max() <= 1.0  # medium noise is clipped before it is executed and stored
    assert (a.task, a.goal, a.tier, a.terminated) == ("lift", "to lift the red cube", "medium", False)
    # row t is s_t: its reward is r(s_t), and the stored state reproduces the stored observation
    lift.set_state(a.state[17])
    np.testing.assert_array_equal(lift.observation(), a.obs[17])
    assert lift.reward() == pytest.approx(a.true_reward[17], abs=1e-6)
    # the stored action really produced the next state: replaying from reset(seed) gives the same states
    lift.reset(seed=a.seed)
    for t in range(10):
        lift.step(a.action[t])
    np.testing.assert_array_equal(lift.get_state(), a.state[10])
    mixed = {collect_episode(lift, "mixed", np.random.default_rng(i), horizon=2).tier for i in range(12)}
    assert mixed == {"expert", "medium", "random"}
    with pytest.raises(ValueError, match="unknown tier 'great'"):
        collect_episode(lift, "great", np.random.default_rng(0))


def collect(out, *args, horizon=60):
    return main(["collect", "--task", "lift", "--out", str(out), "--horizon", str(horizon), "--workers", "1", *args])


def test_collect_cli_writes_tiers_frames_and_appends(tmp_path, capsys):
    out = tmp_path / "lift.zarr"
    assert collect(out, "--episodes", "3", "--cameras", "agentview", "--size", "32", "--seed", "3") == 0
    printed = capsys.readouterr().out
    assert "expert" in printed and "100%" in printed  # the per-tier table
    assert main(["info", "--dataset", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 3 and info["frames"] == 180
    assert info["tiers"]["expert"] == {"episodes": 1, "frames": 60, "success_rate": 1.0}
    assert info["tiers"]["random"]["success_rate"] == 0.0 and "medium" in info["tiers"]
    assert info["arrays"]["frames/agentview_32"] == [180, 32, 32, 3]
    assert set(info["ground_truth"]) == {"reward", "success"}

    ds = TrajectoryDataset.open(out)
    assert ds.env_meta["task"] == "lift" and ds.env_meta["kwargs"]["horizon"] == 60
    assert "obs" in ds.attrs["stats"] and ds.fps == 20
    table = ds.episode_table()
    assert list(table["tier"]) == ["expert", "medium", "random"] and set(table["goal"]) == {"to lift the red cube"}
    # frames rendered online equal frames rendered again from the saved states
    with TaskEnv.from_meta(ds.env_meta) as env:
        for t in (0, 59, 100):
            env.set_state(ds.get("state", [t])[0])
            np.testing.assert_array_equal(env.render("agentview", 32, 32), ds.get("frames/agentview_32", [t])[0])

    # appending continues the episode sequence (tiers keep cycling), without frames this time
    assert collect(out, "--episodes", "2", "--seed", "3") == 0
    ds = TrajectoryDataset.open(out)
    assert ds.n_episodes == 5 and list(ds.episode_table()["tier"][3:]) == ["expert", "medium"]
    assert list(ds.rendered_episodes("agentview_32")) == [True, True, True, False, False]
    assert ds.episode_table()["seed"][3] not in ds.episode_table()["seed"][:3]

    assert main(["collect", "--task", "stack", "--out", str(out), "--episodes", "1"]) == 1
    assert "holds episodes of task 'lift'" in capsys.readouterr().err
    assert TrajectoryDataset.open(out).n_episodes == 5  # nothing lost
    assert collect(tmp_path / "bad.zarr", "--episodes", "1", "--cameras", "nope") == 1
    assert "no camera 'nope'" in capsys.readouterr().err


def test_two_ray_workers_give_the_same_episodes(tmp_path, ray_session):
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    assert collect(one, "--episodes", "4", "--seed", "11", horizon=30) == 0
    assert collect(two, "--episodes", "4", "--seed", "11", "--workers", "2", horizon=30) == 0
    a, b = TrajectoryDataset.open(one), TrajectoryDataset.open(two)
    for key in ("obs", "action", "state"):
        np.testing.assert_array_equal(a.get(key), b.get(key))
    np.testing.assert_array_equal(a.ground_truth("reward"), b.ground_truth("reward"))
    for col in ("seed", "tier", "success", "length"):
        np.testing.assert_array_equal(a.episode_table()[col], b.episode_table()[col])


@pytest.mark.parametrize("task", ["stack", "door"])
def test_stack_and_door_experts_succeed(task):
    # measured 10/10 for both, succeeding by step ~115; random never succeeds
    with make_env(task) as env:
        expert = [collect_episode(env, "expert", np.random.default_rng([2, i]), horizon=135) for i in range(2)]
        assert all(ep.success for ep in expert)
        assert not collect_episode(env, "random", np.random.default_rng(0), horizon=135).success
