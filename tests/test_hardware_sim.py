"""The sim backend, in-process and through the robot server: same seed, same trajectory."""

import json

import numpy as np
import pytest

from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.hardware.config import RolloutConfig, SafetyConfig
from robot_pref.hardware.interface import SafetyFault
from robot_pref.hardware.record import open_robot
from robot_pref.hardware.rollout import rollout, run_episode
from robot_pref.hardware.server import RobotServer


class ReachPolicy:
    """A scripted policy with the `Policy.act` interface: move the open hand towards the cube."""

    observation_keys = ("obs", "frames/agentview_32")

    def act(self, obs):
        assert obs["frames/agentview_32"].shape == (1, 32, 32, 3)
        to_cube = obs["obs"][:, 16:19]  # lift: gripper_to_cube_pos = cube - eef
        return np.concatenate([np.clip(10 * to_cube, -1, 1), np.zeros((1, 3)), -np.ones((1, 1))], 1)


@pytest.fixture(scope="module")
def server():
    # a roomy watchdog: this test compares trajectories on a shared 2-core machine, not timing
    robot = open_robot("sim:lift", cameras=("agentview",), size=32, watchdog=True,
                       safety=SafetyConfig(watchdog_periods=40))
    with RobotServer(robot, port=0) as srv:
        yield srv


def test_sim_info_and_observation():
    with open_robot("sim:lift", cameras=("agentview",), size=32) as robot:
        info = robot.info
        assert info.simulated and info.task == "lift" and info.modes == ("ee_delta",)
        assert info.action_scale == (0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 1.0) and info.control_freq == 20
        obs = robot.reset(seed=3)
        assert obs.low_dim.shape == (info.obs_dim,) and obs.state.shape == (info.state_dim,)
        assert obs.frames["agentview_32"].shape == (32, 32, 3) and obs.success is False
        np.testing.assert_allclose(np.linalg.norm(obs.ee_quat), 1.0, atol=1e-6)
        # base frame: the hand starts ~0.45 m in front of the base, ~0.1 m above its origin
        assert 0.3 < obs.ee_pos[0] < 0.6 and abs(obs.ee_pos[1]) < 0.1
        assert obs.reward == pytest.approx(robot.robot.env.reward())


def test_sim_workspace_floor_holds():
    with open_robot("sim:lift") as robot:
        robot.reset(seed=0)
        floor = robot.info.workspace_low[2]
        for _ in range(40):
            applied = robot.send(robot.info.to_si(np.r_[0.3, 0, -1, 0, 0, 0, -1]))
        z = robot.observe().ee_pos[2]
        assert applied[2] > -0.01  # clamped from -0.05 to what is left to the floor
        assert floor - 0.01 < z < floor + 0.02  # OSC tracks the clamped target to within a cm


def test_rollout_through_remote_equals_in_process(server):
    policy = ReachPolicy()
    with open_robot("sim:lift", cameras=("agentview",), size=32) as local:
        a = run_episode(local, policy, seed=7, max_steps=25, stop_at_success=False, frame_keys=("agentview_32",))
    with open_robot(f"remote:127.0.0.1:{server.port}") as remote:
        b = run_episode(remote, policy, seed=7, max_steps=25, stop_at_success=False, frame_keys=("agentview_32",))
    ea, eb = a.episode(seed=7), b.episode(seed=7)
    assert len(ea) == len(eb) == 25
    for key in ("obs", "action", "state", "true_reward"):
        np.testing.assert_array_equal(getattr(ea, key), getattr(eb, key), err_msg=key)
    np.testing.assert_array_equal(ea.frames["agentview_32"], eb.frames["agentview_32"])
    assert np.abs(ea.action[:, :3]).max() > 0.5  # it really moved
    first_gap, last_gap = np.linalg.norm(ea.obs[0, 16:19]), np.linalg.norm(ea.obs[-1, 16:19])
    assert last_gap < 0.5 * first_gap  # ...towards the cube


class FullThrottle:
    """A barely trained policy: every action at +1, which drives a joint of the lift arm into its limit margin."""

    observation_keys = ("obs",)
    task = "lift"

    def act(self, obs):
        return np.ones((1, 7))


def test_a_fault_ends_the_episode_not_the_run(tmp_path, monkeypatch, capsys):
    import robot_pref.rl
    from robot_pref.cli import main

    monkeypatch.setattr(robot_pref.rl, "load_policy", lambda path, device=None: FullThrottle())
    out, rec = tmp_path / "rollout.json", tmp_path / "rollout.zarr"
    assert main(["rollout", "--policy", "barely.pt", "--robot", "sim:lift", "--episodes", "3", "--max-steps", "60",
                 "--record", str(rec), "--out", str(out)]) == 0  # the run completed: exit status 0
    summary = json.loads(out.read_text())
    episodes = summary["episodes"]
    assert [e["fault_reason"] for e in episodes] == ["joint_limit"] * 3 and summary["on_fault"] == "skip"
    assert all(10 < e["steps"] < 60 for e in episodes)  # each one ended by its fault, before --max-steps
    assert (summary["successes"], summary["failures"], summary["faults"]) == (0, 3, {"joint_limit": 3})
    assert summary["completed"] and summary["success_rate"] == 0.0
    assert "0 successes, 3 failures (success 0%); 3 faults (joint_limit 3)" in capsys.readouterr().out
    ds = TrajectoryDataset.open(rec)
    table = ds.episode_table()
    assert table["length"].tolist() == [e["steps"] for e in episodes] and table["success"].tolist() == [0, 0, 0]
    assert all(src.startswith("rollout:barely.pt fault=joint_limit: joint") for src in table["source"])
    hand = ds.get("obs")[:, :3]  # each episode after a fault starts from a reset scene, not where the last one ended
    starts, ends = table["start"], table["end"] - 1
    assert np.abs(hand[starts] - hand[starts[0]]).max() < 0.03 < np.linalg.norm(hand[ends[0]] - hand[starts[1]])


class NaNAt:
    """A policy whose ``step``-th action (counted over the whole run) is NaN."""

    observation_keys = ("obs",)

    def __init__(self, step: int):
        self.step, self.calls = step, 0

    def act(self, obs):
        self.calls += 1
        return np.full((1, 7), np.nan if self.calls == self.step else 0.0)


def test_on_a_real_arm_a_fault_stops_the_run_for_the_operator(tmp_path):
    out = tmp_path / "rollout.json"
    # fake: not simulated, like an arm; a watchdog of 40 periods, so a loaded machine's stall is not a second fault
    calm = SafetyConfig(watchdog_periods=40)
    cfg = RolloutConfig(robot="fake", episodes=3, max_steps=4, out=str(out), safety=calm)
    with pytest.raises(SafetyFault, match="--recover.*--seed 1 --episodes 2") as err:
        rollout(cfg, policy=NaNAt(3))
    assert err.value.reason == "invalid_command"
    summary = json.loads(out.read_text())
    assert summary["on_fault"] == "stop" and not summary["completed"]
    assert [e["steps"] for e in summary["episodes"]] == [2] and summary["faults"] == {"invalid_command": 1}
    prompts = []
    asked = rollout(cfg, policy=NaNAt(3), ask=lambda prompt: prompts.append(prompt) or " Go\n")  # at a terminal
    assert asked["completed"] and [e["steps"] for e in asked["episodes"]] == [2, 4, 4]
    assert len(prompts) == 1 and "episode 0 ended by a fault" in prompts[0] and "'go'" in prompts[0]
    with pytest.raises(SafetyFault, match="--seed 1"):
        rollout(cfg, policy=NaNAt(3), ask=lambda prompt: "")  # anything but 'go' ends the run
    skip = rollout(RolloutConfig(robot="fake", episodes=3, max_steps=4, on_fault="skip", safety=calm), policy=NaNAt(3))
    assert skip["completed"] and [e["steps"] for e in skip["episodes"]] == [2, 4, 4]
    assert (skip["successes"], skip["failures"], skip["unknown"], skip["success_rate"]) == (0, 1, 2, None)
