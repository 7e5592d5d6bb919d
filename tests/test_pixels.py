"""Pixel policies: the observation spec keeps object state out, features are cached and resumable, and one
checkpoint encodes the arm's camera frames as it encoded the training frames (eval, rollout on ``sim:``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.envs.collect import collect
from robot_pref.envs.commands import CollectConfig
from robot_pref.rl import TrainConfig, load_policy
from robot_pref.rl.config import EncodeConfig
from robot_pref.rl.features import FrozenEncoder, encode_features, feature_key, load_encoder
from robot_pref.rl.obs_spec import SIM_PROPRIO, ObsSpec, ObsSpecError, obs_columns
from robot_pref.rl.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 48
CAMERAS = ("agentview", "robot0_eye_in_hand")
KEYS = tuple(f"{c}_{SIZE}" for c in CAMERAS)


@pytest.fixture(scope="module")
def lift(tmp_path_factory) -> Path:
    """Three short Lift episodes with both cameras rendered at 48 px (real MuJoCo), never written to."""
    path = tmp_path_factory.mktemp("pixels") / "lift.zarr"
    collect(CollectConfig(task="lift", tier="mixed", episodes=3, horizon=6, workers=1, cameras=CAMERAS, size=SIZE,
                          out=str(path), seed=1))
    return path


def copy_of(lift: Path, tmp_path: Path) -> str:
    shutil.copytree(lift, tmp_path / "ds.zarr")
    return str(tmp_path / "ds.zarr")


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory) -> str:
    """A (randomly initialised, seeded) CNN reward model at 48 px (its smallest): what ``encoder: reward`` loads."""
    from robot_pref.reward.models import ModelSpec, RewardModel, save_reward_model

    torch.manual_seed(0)
    model = RewardModel(ModelSpec(type="cnn", ensemble=2, head="linear", height=SIZE, width=SIZE))
    return str(save_reward_model(model, tmp_path_factory.mktemp("reward")))


@pytest.fixture(scope="module")
def pixel_policy(lift, reward_dir, tmp_path_factory) -> tuple[str, str]:
    """(checkpoint, dataset) of a BC pixel policy: proprioception + both cameras through the reward encoder."""
    folder = tmp_path_factory.mktemp("policy")
    dataset = copy_of(lift, folder)
    encoder = f"reward:{reward_dir}"
    encode_features(EncodeConfig(dataset=dataset, cameras=KEYS, encoder=encoder, threads=1))
    out = folder / "bc"
    train(TrainConfig(dataset=dataset, out=str(out), algo="bc", steps=10, batch_size=16, device="cpu", threads=1,
                      log_every=5, save_every=10,
                      obs={"preset": "pixels", "size": SIZE, "encoder": encoder, "features": 4}))
    return str(out / "last.pt"), dataset


def policy_obs(ds: TrajectoryDataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What the simulator and the arms hand a policy: the flat obs and the raw camera frames."""
    return {"obs": ds.get("obs")[rows], **{f"frames/{k}": ds.get(f"frames/{k}")[rows] for k in KEYS}}


# ----------------------------------------------------------------------------- the observation spec
def test_pixel_policy_reads_proprio_columns_and_camera_features_never_object_state(pixel_policy):
    path, dataset = pixel_policy
    ds = TrajectoryDataset.open(dataset)
    policy = load_policy(path, device="cpu")
    named = obs_columns(ds.env_meta, ds.shape("obs")[1])
    proprio = np.concatenate([named[k] for k in SIM_PROPRIO])
    privileged = np.setdiff1d(np.arange(ds.shape("obs")[1]), proprio)
    assert {"cube_pos", "gripper_to_cube_pos"} <= set(named) and len(privileged) >= 6  # Lift's object state
    encoder = load_encoder(policy.spec["encoder_ref"])
    features = {f"features/{feature_key(k, encoder)}" for k in KEYS}
    assert set(policy.inputs) == {"proprio", *features}
    assert policy.inputs["proprio"]["columns"] == proprio.tolist()
    assert {policy.inputs[f]["source"] for f in features} == {f"frames/{k}" for k in KEYS}
    assert policy.obs_model.dim == len(proprio) + 2 * 4  # 9 proprio columns + 4 components per camera

    rows = np.arange(ds.n_frames)
    obs = policy_obs(ds, rows)
    base = policy.act(obs)
    # object state replaced by noise: not one action moves
    noisy = dict(obs, obs=obs["obs"].copy())
    noisy["obs"][:, privileged] += np.random.default_rng(0).normal(0, 1, (len(rows), len(privileged)))
    np.testing.assert_array_equal(policy.act(noisy), base)
    # what it does see moves the actions: the hand's position, and each camera's frames
    moved = dict(obs, obs=obs["obs"].copy())
    moved["obs"][:, named["robot0_eef_pos"]] += 0.05
    assert np.abs(policy.act(moved) - base).max() > 1e-4
    for key in KEYS:
        shuffled = dict(obs, **{f"frames/{key}": obs[f"frames/{key}"][::-1]})
        assert np.abs(policy.act(shuffled) - base).max() > 1e-4, key


def test_object_state_in_a_pixel_spec_is_a_clear_error(lift, tmp_path):
    dataset = copy_of(lift, tmp_path)
    out = tmp_path / "bc"
    cfg = TrainConfig(dataset=dataset, out=str(out), algo="bc", steps=2, device="cpu",
                      obs={"preset": "pixels", "size": SIZE, "proprio": ["robot0_eef_pos", "cube_pos"]})
    with pytest.raises(ObsSpecError, match=r"'cube_pos' is privileged object state.*preset: privileged"):
        train(cfg)
    assert not (out / "last.pt").exists()
    cfg.obs = {"preset": "pixels", "size": SIZE}  # features not cached yet: the error gives the command
    with pytest.raises(DatasetError, match=rf"3 of 3 episodes are not encoded.*robot-pref encode "
                                           rf"--dataset {dataset} --cameras {KEYS[0]},{KEYS[1]} --encoder resnet18"):
        train(cfg)
    with pytest.raises(ObsSpecError, match="no proprio or cameras"):
        ObsSpec.parse({"preset": "privileged", "cameras": ["agentview"]})
    with pytest.raises(ObsSpecError, match="unknown field.*'object'"):
        ObsSpec.parse({"preset": "pixels", "object": True})
    with pytest.raises(ObsSpecError, match="frame_stack=2"):
        ObsSpec.parse({"preset": "pixels", "frame_stack": 2})


# ----------------------------------------------------------------------------- feature caching
def tree(path: str, under: str) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file under ``path/under``: what a rerun would touch."""
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in (Path(path) / under).rglob("*") if p.is_file()}


def test_cached_features_equal_direct_encoding_and_a_rerun_writes_nothing(lift, tmp_path):
    dataset = copy_of(lift, tmp_path)
    cfg = EncodeConfig(dataset=dataset, cameras=KEYS[:1], encoder="resnet18", threads=1, batch_size=4)
    first = encode_features(cfg)
    encoder = load_encoder("resnet18")
    key = feature_key(KEYS[0], encoder)
    assert first["features"][KEYS[0]] == {"key": f"features/{key}", "encoded_now": 3, "dim": 512}
    ds = TrajectoryDataset.open(dataset)
    cached = ds.get(f"features/{key}")
    direct = encoder.encode(ds.get(f"frames/{KEYS[0]}"))
    assert cached.shape == (ds.n_frames, 512) and np.isfinite(cached).all() and cached.std() > 0
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-5)
    before = {**tree(dataset, "features"), **tree(dataset, "meta/encoded")}
    again = encode_features(cfg)
    assert again["features"][KEYS[0]]["encoded_now"] == 0
    assert {**tree(dataset, "features"), **tree(dataset, "meta/encoded")} == before


def test_encode_killed_mid_run_resumes_and_gives_identical_features(lift, tmp_path, monkeypatch):
    dataset = copy_of(lift, tmp_path)
    cfg = EncodeConfig(dataset=dataset, cameras=KEYS[1:], encoder="resnet18", threads=1)
    real, calls = FrozenEncoder.encode, []

    def dies_on_second_episode(self, frames, batch_size=256):
        calls.append(len(frames))
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C or a kill between two episodes
        return real(self, frames, batch_size)

    monkeypatch.setattr(FrozenEncoder, "encode", dies_on_second_episode)
    with pytest.raises(KeyboardInterrupt):
        encode_features(cfg)
    monkeypatch.setattr(FrozenEncoder, "encode", real)
    key = feature_key(KEYS[1], load_encoder("resnet18"))
    ds = TrajectoryDataset.open(dataset)
    assert ds.encoded_episodes(key).tolist() == [True, False, False]
    kept = ds.get(f"features/{key}", ds.episode_slice(0)).copy()
    assert encode_features(cfg)["features"][KEYS[1]]["encoded_now"] == 2  # only the two it had not written
    resumed = TrajectoryDataset.open(dataset).get(f"features/{key}")
    np.testing.assert_array_equal(resumed[ds.episode_slice(0)], kept)
    fresh = copy_of(lift, tmp_path / "fresh")
    encode_features(dataclasses.replace(cfg, dataset=fresh))
    np.testing.assert_allclose(resumed, TrajectoryDataset.open(fresh).get(f"features/{key}"), rtol=1e-6, atol=1e-6)


def test_checkpoint_encodes_frames_as_the_cached_features(pixel_policy, reward_dir):
    path, dataset = pixel_policy
    ds = TrajectoryDataset.open(dataset)
    policy = load_policy(path, device="cpu")  # the encoders come from the checkpoint: no reward dir read
    rows = np.arange(ds.n_frames)
    inputs = policy.network_inputs(policy_obs(ds, rows))
    encoder = load_encoder(f"reward:{reward_dir}")
    for key in KEYS:
        fkey = f"features/{feature_key(key, encoder)}"
        assert inputs[fkey].shape == (len(rows), encoder.dim)
        np.testing.assert_allclose(inputs[fkey].numpy(), ds.get(fkey), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inputs["proprio"], torch.as_tensor(ds.get("obs")[:, policy.inputs["proprio"]["columns"]]))


# ----------------------------------------------------------------------------- rollout on sim:
class Recording:
    """The loaded policy, keeping what the rollout hands it."""

    def __init__(self, policy):
        self.policy, self.observation_keys, self.task, self.seen = policy, policy.observation_keys, policy.task, []
        self.frame_render = policy.frame_render

    def act(self, obs):
        action = self.policy.act(obs)
        self.seen.append(({k: np.array(v) for k, v in obs.items()}, np.array(action)))
        return action


def test_sim_rollout_feeds_the_arms_camera_frames_to_the_policy(pixel_policy, tmp_path):
    from robot_pref.hardware.config import RolloutConfig
    from robot_pref.hardware.rollout import rollout

    path, dataset = pixel_policy
    ds = TrajectoryDataset.open(dataset)
    policy = Recording(load_policy(path, device="cpu"))
    assert policy.observation_keys == ("obs", *(f"frames/{k}" for k in KEYS))
    seed = int(ds.episode_table()["seed"][0])
    summary = rollout(RolloutConfig(policy=path, robot="sim:lift", episodes=1, seed=seed, max_steps=3,
                                    stop_at_success=False), policy=policy)
    assert summary["completed"] and [e["steps"] for e in summary["episodes"]] == [3] and len(policy.seen) == 3
    first, _ = policy.seen[0]
    # reset with the episode's seed: the arm's cameras show what the policy was trained on
    for key in KEYS:
        assert first[f"frames/{key}"].shape == (1, SIZE, SIZE, 3) and first[f"frames/{key}"].dtype == np.uint8
        np.testing.assert_array_equal(first[f"frames/{key}"][0], ds.get(f"frames/{key}", slice(0, 1))[0])
    np.testing.assert_allclose(first["obs"][0], ds.get("obs", slice(0, 1))[0], atol=1e-5)
    # the camera views change as the arm moves, and the actions follow the frames the arm returned
    later, _ = policy.seen[-1]
    assert any(np.abs(later[f"frames/{k}"].astype(int) - first[f"frames/{k}"]).max() > 0 for k in KEYS)
    swapped = dict(first, **{f"frames/{k}": later[f"frames/{k}"] for k in KEYS})
    assert np.abs(policy.policy.act(swapped) - policy.seen[0][1]).max() > 1e-4
    # the arm hands over its whole low-dim obs; the object's part never reaches the networks
    named = obs_columns(ds.env_meta, ds.shape("obs")[1])
    hidden = dict(first, obs=first["obs"].copy())
    for key in ("cube_pos", "cube_quat", "gripper_to_cube_pos"):
        hidden["obs"][:, named[key]] = 0.0
    np.testing.assert_array_equal(policy.policy.act(hidden), policy.seen[0][1])


def test_a_policy_trained_on_decimated_frames_sees_them_in_eval_and_on_the_sim_arm(lift, reward_dir, tmp_path,
                                                                                   ray_session):
    from robot_pref.envs import TaskEnv
    from robot_pref.eval.rollout import observe
    from robot_pref.hardware.config import RolloutConfig
    from robot_pref.hardware.rollout import rollout
    from robot_pref.render import RenderConfig, render_dataset

    dataset = copy_of(lift, tmp_path)
    for camera in CAMERAS:
        render_dataset(RenderConfig(dataset=dataset, camera=camera, size=SIZE, actors=1, overwrite=True,
                                    mesh_detail=0.3))
    encoder = f"reward:{reward_dir}"
    encode_features(EncodeConfig(dataset=dataset, cameras=KEYS, encoder=encoder, threads=1))
    train(TrainConfig(dataset=dataset, out=str(tmp_path / "bc"), algo="bc", steps=2, batch_size=8, device="cpu",
                      threads=1, log_every=1, save_every=2,
                      obs={"preset": "pixels", "size": SIZE, "encoder": encoder, "features": 4}))
    policy = load_policy(str(tmp_path / "bc" / "last.pt"), device="cpu")
    assert {k: v["mesh_detail"] for k, v in policy.frame_render.items()} == {f"frames/{k}": 0.3 for k in KEYS}

    ds = TrajectoryDataset.open(dataset)
    seed = int(ds.episode_table()["seed"][0])
    first = {k: ds.get(f"frames/{k}", slice(0, 1))[0] for k in KEYS}  # state 0 of episode 0, drawn decimated
    assert any(np.abs(first[k].astype(int) - TrajectoryDataset.open(lift).get(f"frames/{k}", slice(0, 1))[0]).max()
               > 16 for k in KEYS)  # not the full-detail frames the data was collected with
    env = TaskEnv.from_meta(policy.env_meta)
    seen = observe(env, env.reset(seed=seed), policy.observation_keys, policy.frame_render)  # `robot-pref eval`
    for key in KEYS:
        np.testing.assert_array_equal(seen[f"frames/{key}"], first[key])
    env.close()
    recording = Recording(policy)
    rollout(RolloutConfig(policy="", robot="sim:lift", episodes=1, seed=seed, max_steps=1, stop_at_success=False),
            policy=recording)
    for key in KEYS:
        np.testing.assert_array_equal(recording.seen[0][0][f"frames/{key}"][0], first[key])


def test_pixel_policies_with_one_encoder_share_one_encode_stage(tmp_path):
    """Two trainings running at once (``parallel``) must never read features another stage is rewriting."""
    from robot_pref.pipeline.run import RunConfig, build_stages

    pixels = {"obs": {"preset": "pixels", "encoder": "reward"}}
    other = {"obs": {"preset": "pixels", "encoder": "resnet18"}}
    cfg = RunConfig(name="x", run_dir=str(tmp_path / "run"), parallel=True, policies=("iql-learned", "bc", "iql-true"),
                    policy_train={"iql-learned": pixels, "bc": pixels, "iql-true": other}).resolved()
    stages = {s.name: s for s in build_stages(cfg)}
    assert [n for n in stages if n.startswith("encode_")] == ["encode_iql-learned", "encode_iql-true"]
    assert "encode_iql-learned" in stages["train_bc"].needs
    assert "encode_iql-true" in stages["train_iql-true"].needs
