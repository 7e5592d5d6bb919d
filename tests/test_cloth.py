"""cloth_fold: layout, picker, state replay (online frames == frames re-rendered by Ray actors), tier
ordering, the reward's ordering on constructed cloth shapes, rollout through `sim:cloth_fold`."""

import subprocess
import sys

import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data.dataset import TrajectoryDataset
from robot_pref.envs import TaskEnv, collect_episode, get_task, make_env
from robot_pref.envs.cloth import GRID


@pytest.fixture(scope="module")
def cloth():
    with make_env("cloth_fold", seed=0) as env:
        yield env


@pytest.fixture(scope="module")
def episodes(cloth):
    """Two episodes per tier from fixed seeds (100 steps each)."""
    return {tier: [collect_episode(cloth, tier, np.random.default_rng([7, i])) for i in range(2)]
            for tier in ("expert", "medium", "random")}


def place(env, vertices):
    """Put the cloth's vertices at ``vertices`` (at rest, nothing held) and return the env's reward there."""
    rs = env.unwrapped
    state = env.get_state()
    qpos = state[1:1 + rs.sim.model.nq]
    for k, adr in enumerate(rs.vert_qpos):
        qpos[adr:adr + 3] = vertices[k] - rs.rest[k]
    state[1 + rs.sim.model.nq:-1] = 0.0  # at rest
    state[-1] = -1
    env.set_state(state)
    return env.reward()


def test_registry_layout_and_keypoints(cloth):
    spec = get_task("cloth_fold")
    assert spec.goal == "to fold the cloth diagonally from the top left corner to the bottom right corner"
    rs = cloth.unwrapped
    model = rs.sim.model._model
    assert model.nflex == 1 and model.nflexvert == GRID * GRID
    # state: time, qpos (arm, fingers, 3 slide joints per vertex), qvel, held vertex
    assert cloth.state_dim == 1 + model.nq + model.nv + 1 and model.nq >= 3 * GRID * GRID
    obs = cloth.obs_dict(cloth.reset(seed=3))
    assert cloth.obs_dim == 28
    v = rs.vertices()
    np.testing.assert_allclose(obs["cloth_corners"].reshape(4, 3), v[rs.corner_ids], atol=1e-6)
    np.testing.assert_allclose(obs["cloth_center"], v.mean(axis=0), atol=1e-6)
    # top left in the agentview image is the world's (-x, -y) corner: up in the image is -x, right is +y
    tl, tr, bl, br = obs["cloth_corners"].reshape(4, 3)
    assert tl[0] < bl[0] and tl[1] < tr[1] and br[0] > tr[0] and br[1] > bl[1]
    cam = rs.sim.data.cam_xmat[rs.sim.model.camera_name2id("agentview")].reshape(3, 3)
    assert cam[1, 0] > 0.99 and cam[0, 1] < -0.5  # camera right = +y, camera up leans to -x
    assert abs(rs.fold_error() - 1.0) < 1e-6 and not cloth.success()


def test_reward_orders_folded_above_half_folded_above_flat(cloth):
    rs = cloth.unwrapped
    cloth.reset(seed=0)
    flat = rs.rest.copy()
    centre = flat[:, :2].mean(axis=0)
    c = flat[:, :2] - centre
    top_half = c.sum(axis=1) < -1e-9

    def folded(angle):
        """The top-left half turned by ``angle`` about the fold diagonal (pi: laid onto the other half)."""
        v = flat.copy()
        axis = np.array([1.0, -1.0]) / np.sqrt(2)  # along the diagonal x + y = 0
        normal = np.array([-1.0, -1.0]) / np.sqrt(2)  # in the plane, towards the top-left corner
        d = c[top_half] @ normal
        along = c[top_half] @ axis
        v[top_half, :2] = centre + np.outer(along, axis) + np.outer(d * np.cos(angle), normal)
        v[top_half, 2] = flat[top_half, 2] + d * np.sin(angle) + (2 * 0.004 if angle == np.pi else 0.0)
        return v

    r_flat, r_half, r_fold = place(cloth, flat), place(cloth, folded(np.pi / 2)), None
    assert not cloth.success()
    r_fold = place(cloth, folded(np.pi))
    assert rs.fold_error() < 0.1 and cloth.success() and r_fold == 1.0  # 0.06: the two layers' thickness
    assert r_flat < 0.1 < r_half < 0.8 < r_fold
    # moving the whole flat cloth is no progress
    assert place(cloth, flat + [0.05, 0.03, 0.0]) < 0.1


def test_tiers_order_by_success_and_return(episodes):
    success = {t: np.mean([ep.success for ep in eps]) for t, eps in episodes.items()}
    ret = {t: np.mean([ep.true_reward.sum() for ep in eps]) for t, eps in episodes.items()}
    assert success["expert"] == 1.0 and success["random"] == 0.0
    assert ret["expert"] > ret["medium"] > ret["random"]
    expert = episodes["expert"][0]
    held = expert.obs[:, -1]
    # the picker: nothing held at the start, the corner held while carried, let go at the end
    assert held[0] == 0 and held.max() == 1 and held[-1] == 0 and 20 < held.sum() < 80
    assert expert.true_reward[0] < 0.1 and expert.true_reward[-1] == 1.0


def test_collect_cli_then_ray_render_equals_online_frames(tmp_path, capsys, ray_session):
    from robot_pref.render import RenderConfig, render_dataset

    out = tmp_path / "cloth.zarr"
    assert main(["collect", "--task", "cloth_fold", "--out", str(out), "--episodes", "3", "--horizon", "40",
                 "--cameras", "agentview", "--size", "32", "--workers", "1", "--seed", "1"]) == 0
    assert "expert" in capsys.readouterr().out
    ds = TrajectoryDataset.open(out)
    assert ds.env_meta["task"] == "cloth_fold" and ds.n_frames == 120
    online = ds.get("frames/agentview_32")
    assert online.std() > 10
    states = ds.get("state")
    assert (states[:, -1] >= 0).any()  # some saved states hold a vertex
    result = render_dataset(RenderConfig(dataset=str(out), camera="agentview", size=32, actors=1, overwrite=True))
    assert result["frames"] == 120
    np.testing.assert_array_equal(TrajectoryDataset.open(out).get("frames/agentview_32"), online)

    # a fresh env replays a held state exactly: observation, reward, held vertex
    t = int(np.flatnonzero(states[:, -1] >= 0)[0])
    with TaskEnv.from_meta(ds.env_meta) as env:
        np.testing.assert_array_equal(env.set_state(states[t]), ds.get("obs", [t])[0])
        assert env.unwrapped.held == int(states[t, -1])
        assert np.float32(env.reward()) == ds.ground_truth("reward")[t]
        with pytest.raises(ValueError, match="expects"):
            env.set_state(states[t, :-1])


def test_rollout_through_the_sim_backend_with_safety(cloth):
    """`sim:cloth_fold` behind the safety layer: the scripted expert, sent as SI commands, folds the cloth."""
    from robot_pref.envs.collectors import make_expert
    from robot_pref.hardware.record import open_robot
    from robot_pref.hardware.rollout import run_episode

    expert = make_expert("cloth_fold")

    class Expert:
        observation_keys = ("obs",)
        started = False

        def act(self, batch):
            obs = cloth.obs_dict(batch["obs"][0])
            if not self.started:
                expert.reset(obs)
                self.started = True
            return expert.act(obs)

    with open_robot("sim:cloth_fold", seed=0) as robot:
        assert robot.info.task == "cloth_fold" and robot.info.state_dim == cloth.state_dim
        rec = run_episode(robot, Expert(), seed=3, max_steps=120)
    assert rec.fault is None and rec.success and 30 < len(rec) < 100


def test_cloth_collectors_can_be_imported_first():
    """collectors.py registers the cloth plan from cloth_collectors, which builds on collectors: a cycle."""
    code = ("import numpy as np, robot_pref.envs.cloth_collectors; from robot_pref.envs.collectors import PLANS; "
            "assert len(PLANS['cloth_fold']({'cloth_corners': np.zeros(12)})) == 8")
    subprocess.run([sys.executable, "-c", code], check=True)
