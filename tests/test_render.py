"""Rendering from saved states: equality with online frames, 1 vs 2 actors, resume, bad input."""

import shutil

import numpy as np
import pytest

from robot_pref.data.dataset import DatasetError, Episode, TrajectoryDataset
from robot_pref.render import RenderConfig, render_dataset

KEY = "agentview_48"
EPISODES, STEPS = 4, 10


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """A Lift dataset whose frames were rendered online while stepping (random actions, 4 x 10 steps)."""
    from robot_pref.envs import make_env

    path = tmp_path_factory.mktemp("render") / "lift.zarr"
    rng = np.random.default_rng(0)
    with make_env("lift", seed=0) as env:
        ds = TrajectoryDataset.create(path, obs_dim=env.obs_dim, action_dim=env.action_dim,
                                      state_dim=env.state_dim, fps=env.control_freq, env=env.meta())
        for e in range(EPISODES):
            obs, states, actions, frames = [env.reset(seed=e)], [], [], []
            for _ in range(STEPS):
                states.append(env.get_state())
                frames.append(env.render("agentview", 48, 48))
                actions.append(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
                obs.append(env.step(actions[-1])[0])
            ds.append_episode(Episode(obs=np.array(obs[:-1]), action=np.array(actions), state=np.array(states),
                                      frames={KEY: np.array(frames)}, task="lift", seed=e))
    return path, ds.get(f"frames/{KEY}")


def cfg(path, **kw):
    return RenderConfig(dataset=str(path), camera="agentview", size=48, **kw)


def frames(path, key=KEY):
    return TrajectoryDataset.open(path).get(f"frames/{key}")


def test_replay_equals_online_and_two_actors_equal_one(online, ray_session):
    path, online_frames = online
    assert online_frames.std() > 10  # a real image, not a blank buffer
    # online frames were written by the collector loop: nothing is left to render
    assert render_dataset(cfg(path))["episodes"] == 0

    one = render_dataset(cfg(path, overwrite=True, actors=1))
    assert one["episodes"] == EPISODES and one["frames"] == EPISODES * STEPS and one["actors"] == 1
    # software and GPU GL are deterministic for the same state, scene and options: demand exact equality
    np.testing.assert_array_equal(frames(path), online_frames)

    two = render_dataset(cfg(path, overwrite=True, actors=2))
    assert two["actors"] == 2 and min(two["frames_per_actor"]) > 0  # both actors really rendered
    np.testing.assert_array_equal(frames(path), online_frames)
    assert TrajectoryDataset.open(path).rendered_episodes(KEY).all()


def test_a_render_actor_renders_the_online_frames_without_loading_torch(online):
    """The actor's process never trains: the EGL/LLVM guard before its first frame loads triton's library
    only, not torch (seconds of every actor's start); the pixels are the online ones."""
    import json
    import subprocess
    import sys

    path, online_frames = online
    probe = (
        "import json, sys\n"
        "from robot_pref.data.dataset import TrajectoryDataset\n"
        "from robot_pref.render.actors import EpisodeRenderer\n"
        f"ds = TrajectoryDataset.open({str(path)!r})\n"
        "actor = EpisodeRenderer(ds.env_meta, 'agentview', 48, 48, {})\n"
        "actor.setup()\n"
        "frames = actor.render_episode(ds.get('state', ds.episode_slice(1)))\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'frames': frames.tolist()}))\n")
    out = json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["torch"] is False
    np.testing.assert_array_equal(np.array(out["frames"], np.uint8), online_frames[STEPS:2 * STEPS])


def test_resume_after_interruption(online, ray_session, monkeypatch):
    path, online_frames = online
    write = TrajectoryDataset.write_episode_frames
    written = []

    def stop_after_two(self, key, episode, frames):
        if len(written) == 2:
            raise KeyboardInterrupt  # the process is stopped between two episodes
        written.append(episode)
        write(self, key, episode, frames)

    monkeypatch.setattr(TrajectoryDataset, "write_episode_frames", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        render_dataset(cfg(path, overwrite=True, actors=2))
    monkeypatch.undo()
    ds = TrajectoryDataset.open(path)
    assert ds.rendered_episodes(KEY).tolist() == [e in written for e in range(EPISODES)]
    done = np.flatnonzero(np.repeat(ds.rendered_episodes(KEY), STEPS))
    np.testing.assert_array_equal(ds.get(f"frames/{KEY}", done), online_frames[done])

    rest = render_dataset(cfg(path))  # the same command again renders only what is missing
    assert rest["episodes"] == EPISODES - 2 and rest["skipped"] == 2
    np.testing.assert_array_equal(frames(path), online_frames)


def test_mesh_detail_is_recorded_and_frames_of_two_details_never_mix(online, tmp_path, ray_session):
    path, online_frames = online
    copy = tmp_path / "lod.zarr"
    shutil.copytree(path, copy)
    coarse = render_dataset(cfg(copy, overwrite=True, actors=1, mesh_detail=0.3))
    assert coarse["episodes"] == EPISODES and coarse["options"]["mesh_detail"] == 0.3
    ds = TrajectoryDataset.open(copy)
    assert ds.frame_render_options(KEY) == {"shadows": False, "reflections": False, "multisample": False,
                                            "mesh_detail": 0.3}
    drawn = frames(copy)
    diff = np.abs(drawn.astype(int) - online_frames)
    assert 0 < diff.mean() < 2.0 and (diff.max(-1) > 16).mean() < 0.03  # the same scenes, fewer triangles

    with pytest.raises(DatasetError, match=r"rendered with .*'mesh_detail': 0.3.*--overwrite"):
        render_dataset(cfg(copy, mesh_detail=1.0))
    np.testing.assert_array_equal(frames(copy), drawn)  # refused before anything was written
    assert render_dataset(cfg(copy, mesh_detail=0.3))["episodes"] == 0  # the same options: nothing left to do


def test_bad_camera_is_a_clear_error(online, ray_session):
    path, _ = online
    with pytest.raises(ValueError, match="no camera 'agentveiw'.*agentview"):
        render_dataset(RenderConfig(dataset=str(path), camera="agentveiw", size=48))
    ds = TrajectoryDataset.open(path)
    assert "agentveiw_48" not in ds.frame_keys and ds.rendered_episodes(KEY).all()  # nothing created or lost


def test_failed_overwrite_keeps_frames(online, tmp_path, ray_session):
    path, online_frames = online
    broken = tmp_path / "broken.zarr"
    shutil.copytree(path, broken)
    ds = TrajectoryDataset.open(broken, "a")
    ds.update_attrs(env=dict(ds.env_meta, task="nope"))
    with pytest.raises(DatasetError, match="cannot rebuild the scene .* unknown task 'nope'"):
        render_dataset(cfg(broken, overwrite=True))
    np.testing.assert_array_equal(frames(broken), online_frames)


def test_dataset_without_env_meta_or_states(online, tmp_path, ray_session):
    def dataset(name, env, state):
        ds = TrajectoryDataset.create(tmp_path / name, obs_dim=2, action_dim=1, state_dim=state.shape[1], fps=10,
                                      env=env)
        ds.append_episode(Episode(obs=np.zeros((2, 2)), action=np.zeros((2, 1)), state=state))
        return ds.path

    lift_meta = TrajectoryDataset.open(online[0]).env_meta
    with pytest.raises(DatasetError, match="no env metadata"):
        render_dataset(cfg(dataset("bare.zarr", {}, np.zeros((2, 3)))))
    with pytest.raises(DatasetError, match="lacks simulator states for 2 of 2 frames"):
        render_dataset(cfg(dataset("nan.zarr", lift_meta, np.full((2, 32), np.nan))))
    with pytest.raises(DatasetError, match="states of dim 3 but the env rebuilt .* has state dim 32"):
        render_dataset(cfg(dataset("other.zarr", lift_meta, np.zeros((2, 3)))))
    with pytest.raises(DatasetError, match="does not exist"):
        render_dataset(cfg(tmp_path / "missing.zarr"))


def test_cli_flags_reach_the_config(monkeypatch):
    import robot_pref.render.render as render_module
    from robot_pref.cli import build_parser

    seen = []
    monkeypatch.setattr(render_module, "render_dataset", seen.append)
    args = build_parser().parse_args(["render", "--dataset", "x.zarr", "--camera", "robot0_eye_in_hand",
                                      "--height", "96", "--width", "128", "--actors", "2", "--shadows"])
    args._run(args)
    assert seen == [RenderConfig(dataset="x.zarr", camera="robot0_eye_in_hand", height=96, width=128, actors=2,
                                 shadows=True)]
    assert seen[0].shape == (96, 128)
