"""The sim backend, in-process and through the robot server: same seed, same trajectory."""

import numpy as np
import pytest

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.record import open_robot
from robot_pref.hardware.rollout import run_episode
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
