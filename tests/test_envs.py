"""TaskEnv on real robosuite: observation layout, state round trip, determinism, rendering, metadata."""

import json

import numpy as np
import pytest

from robot_pref.envs import TASKS, RenderOptions, TaskEnv, get_task, make_env
from robot_pref.envs.collectors import collect_episode


@pytest.fixture(scope="module")
def lift():
    with make_env("lift") as env:
        yield env


def rollout(env, seed, n=15):
    """States, observations, rewards of n fixed pseudo-random actions from reset(seed)."""
    actions = np.random.default_rng(123).uniform(-1, 1, size=(n, env.action_dim))
    obs, states, rewards = [env.reset(seed=seed)], [env.get_state()], [env.reward()]
    for a in actions:
        o, r, _, _ = env.step(a)
        obs.append(o), states.append(env.get_state()), rewards.append(r)
    return np.array(obs), np.array(states), np.array(rewards)


def test_registry():
    assert set(TASKS) >= {"lift", "stack", "door"}
    spec = get_task("lift")
    assert (spec.env_name, spec.goal, spec.control_freq) == ("Lift", "to lift the red cube", 20)
    assert spec.cameras == ("agentview", "robot0_eye_in_hand")
    assert get_task("stack").goal == "to stack the red cube on top of the green cube"
    assert get_task("door").goal == "to open the door"
    with pytest.raises(ValueError, match="unknown task 'pick'"):
        get_task("pick")


def test_observation_layout(lift):
    obs = lift.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (lift.obs_dim,) == (19,)
    parts = lift.obs_dict(obs)
    assert list(parts) == ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "cube_pos", "cube_quat",
                           "gripper_to_cube_pos"]
    raw = lift.unwrapped._get_observations(force_update=True)
    for key, value in parts.items():
        np.testing.assert_allclose(value, raw[key], rtol=0, atol=1e-6)
    assert (lift.action_dim, lift.state_dim) == (7, 32)
    np.testing.assert_array_equal(lift.action_low, -1) and np.testing.assert_array_equal(lift.action_high, 1)


def test_step_clips_action_and_reports_reward_of_next_state(lift):
    lift.reset(seed=0)
    obs, reward, success, info = lift.step(np.array([5, -5, 0, 0, 0, 0, 2.0]))
    np.testing.assert_array_equal(info["action"], [1, -1, 0, 0, 0, 0, 1])
    assert reward == lift.reward() and success == lift.success() is False
    np.testing.assert_array_equal(obs, lift.observation())


def test_state_round_trip_reproduces_obs_reward_and_frame(lift):
    obs, states, rewards = rollout(lift, seed=4)
    lift.set_state(states[8])
    frame = lift.render("agentview", 48, 48)
    eye = lift.render("robot0_eye_in_hand", 48, 48)
    lift.reset(seed=99)  # somewhere else entirely
    np.testing.assert_array_equal(lift.set_state(states[8]), obs[8])
    assert lift.reward() == rewards[8]
    np.testing.assert_array_equal(lift.render("agentview", 48, 48), frame)
    np.testing.assert_array_equal(lift.render("robot0_eye_in_hand", 48, 48), eye)
    with pytest.raises(ValueError, match="state has 5 values, lift expects 32"):
        lift.set_state(np.zeros(5))


def test_seed_determinism_and_from_meta(lift):
    obs_a, states_a, _ = rollout(lift, seed=7)
    rollout(lift, seed=8)
    obs_b, states_b, _ = rollout(lift, seed=7)
    np.testing.assert_array_equal(states_a, states_b)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.allclose(rollout(lift, seed=8)[0][0], obs_a[0])  # another seed, another cube placement

    meta = lift.meta()
    assert json.loads(json.dumps(meta)) == meta  # storable in zarr attrs
    assert (meta["name"], meta["task"], meta["obs_dim"], meta["state_dim"]) == ("Lift", "lift", 19, 32)
    lift.set_state(states_a[9])
    frame = lift.render("agentview", 48, 48)
    with TaskEnv.from_meta(meta) as rebuilt:  # a fresh env (own model) replays and renders the same
        np.testing.assert_array_equal(rebuilt.set_state(states_a[9]), obs_a[9])
        np.testing.assert_array_equal(rebuilt.render("agentview", 48, 48), frame)
        _, states_c, _ = rollout(rebuilt, seed=7)
    np.testing.assert_array_equal(states_c, states_a)
    with pytest.raises(ValueError, match="needs 'task' and 'kwargs'"):
        TaskEnv.from_meta({"name": "Lift"})


def red_rows(frame):
    r, g, b = (frame[..., i].astype(int) for i in range(3))
    rows, _ = np.nonzero(r - np.maximum(g, b) > 60)
    return rows


def test_render_is_upright_and_options_apply(lift):
    # Lift the cube with the expert: in an upright image it moves towards row 0.
    ep = collect_episode(lift, "expert", np.random.default_rng(0), cameras=("agentview",), size=84, horizon=70)
    frames = ep.frames["agentview_84"]
    assert frames.dtype == np.uint8 and frames.shape == (70, 84, 84, 3)
    assert ep.true_success[-1]
    before, after = red_rows(frames[0]), red_rows(frames[-1])
    assert len(before) > 3 and len(after) > 3
    assert after.mean() < before.mean() - 5

    lift.set_state(ep.state[-1])
    fast = lift.render("agentview", 84, 84)
    np.testing.assert_array_equal(fast, frames[-1])
    fancy = lift.render("agentview", 84, 84, RenderOptions(shadows=True, reflections=True, multisample=True))
    assert fancy.shape == fast.shape and np.abs(fancy.astype(int) - fast).mean() > 0.5
    np.testing.assert_array_equal(lift.render("agentview", 84, 84), fast)  # options do not leak
    assert lift.render("agentview", 32, 64).shape == (32, 64, 3)
    with pytest.raises(ValueError, match="no camera 'nope'"):
        lift.render("nope", 84, 84)


def test_a_process_that_renders_first_can_then_load_triton_and_train_with_torch():
    """Mesa's EGL (llvmpipe) and triton each bring an LLVM: triton loaded after a renderer exists segfaults.
    `TaskEnv.render` loads triton's library first (without importing torch: render actors never do)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from robot_pref.envs import make_env\n"
        "frame = make_env('lift').render('agentview', 32, 32)\n"
        "assert 'torch' not in sys.modules\n"
        "import torch, torch._dynamo\n"
        "net = torch.nn.Linear(3, 1); opt = torch.optim.Adam(net.parameters())\n"
        "net(torch.ones(2, 3)).sum().backward(); opt.step()\n"
        "print(int(frame.mean()))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"rc {done.returncode}: {done.stderr[-2000:]}"
    assert int(done.stdout.split()[-1]) > 20  # a real frame, not a black one


def test_mesh_detail_draws_decimated_meshes_and_leaves_the_simulator_alone(lift):
    from robot_pref.envs.mesh_detail import decimatable_meshes, meshes_at_detail

    obs, states, _ = rollout(lift, seed=3, n=8)
    model = lift.sim.model._model
    meshes = decimatable_meshes(model)
    # the Panda's links, its gripper and the pedestal: visual meshes; collision meshes are never touched
    assert len(meshes) >= 9 and all(model.geom_contype[model.geom_dataid == m].max(initial=0) == 0 for m in meshes)
    full = int(model.mesh_facenum[meshes].sum())
    arrays = {k: getattr(model, k).copy() for k in ("mesh_vert", "mesh_face", "mesh_facenum", "mesh_normal")}
    with meshes_at_detail(model, 0.3) as kept:
        assert 0.25 * full < kept < 0.35 * full
        assert int(model.mesh_facenum[meshes].sum()) == kept
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(model, k), v)  # the model has its own meshes back

    # the expert's gripper at the cube: the arm fills the top of the frame
    at_cube = collect_episode(lift, "expert", np.random.default_rng(0), horizon=30).state[-1]
    frames = {}
    for detail in (1.0, 0.3, 0.05):
        lift.set_state(at_cube)
        frames[detail] = lift.render("agentview", 64, 64, RenderOptions(mesh_detail=detail)).astype(int)
    coarse, coarser = (np.abs(frames[d] - frames[1.0]) for d in (0.3, 0.05))
    # the same scene drawn with fewer triangles: close to the full frame (badly decimated links, e.g. from
    # unwelded corners, came out as speckle: mean 4.7-8.3), and further off with fewer
    assert 0 < coarse.mean() < 2.0 and (coarse.max(-1) > 16).mean() < 0.03 and coarser.mean() > coarse.mean()
    lift.set_state(at_cube)
    np.testing.assert_array_equal(lift.render("agentview", 64, 64), frames[1.0])  # each renderer keeps its meshes
    # physics after decimated renders: the same rollout as before them
    again, states_again, _ = rollout(lift, seed=3, n=8)
    np.testing.assert_array_equal(again, obs)
    np.testing.assert_array_equal(states_again, states)
    with pytest.raises(ValueError, match=r"mesh_detail .* in \(0, 1\]; got 0.0"):
        RenderOptions(mesh_detail=0)


@pytest.mark.parametrize("task, obs_dim", [("stack", 32), ("door", 23)])
def test_other_tasks_build_step_restore_render(task, obs_dim):
    with make_env(task, seed=1) as env:
        assert env.obs_dim == obs_dim and env.task.name == task
        obs, states, rewards = rollout(env, seed=1, n=10)
        frame = env.render("agentview", 32, 32)
        env.reset(seed=2)
        np.testing.assert_array_equal(env.set_state(states[-1]), obs[-1])
        assert env.reward() == rewards[-1]
        np.testing.assert_array_equal(env.render("agentview", 32, 32), frame)
        assert frame.std() > 5  # a scene, not a blank image
