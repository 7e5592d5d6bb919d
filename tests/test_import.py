"""`robot-pref import-robomimic` on an hdf5 file written here in robomimic's layout."""

import json

import h5py
import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data import DatasetError, TrajectoryDataset
from robot_pref.data.commands import ImportRobomimicConfig
from robot_pref.data.imports import shift_next
from robot_pref.data.robomimic import import_robomimic

LOW_DIM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10, "robot0_joint_pos": 7}
DEMOS = {"demo_0": 23, "demo_2": 17, "demo_10": 30}  # numeric, not lexical, order: 0, 2, 10
IMG = (12, 16)


def demo_data(name: str, dense: bool = False) -> dict:
    rng = np.random.default_rng(int(name.split("_")[1]))
    T = DEMOS[name]
    rewards = np.zeros(T, np.float32)
    if name != "demo_2":  # demo_2 never succeeds
        rewards[-3:] = 1.0
    if dense:
        rewards = rng.uniform(0, 1, T).astype(np.float32)
    dones = np.zeros(T, np.int64)
    dones[-1] = name != "demo_2"
    return {
        "obs": {k: rng.normal(size=(T, d)) for k, d in LOW_DIM.items()}
        | {"agentview_image": rng.integers(0, 256, size=(T, *IMG, 3), dtype=np.uint8)},
        "actions": rng.uniform(-1, 1, size=(T, 7)),
        "rewards": rewards,
        "dones": dones,
        "states": rng.normal(size=(T, 32)),
    }


def write_robomimic(path, dense: bool = False) -> dict:
    demos = {name: demo_data(name, dense) for name in DEMOS}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1,
                                             "env_kwargs": {"control_freq": 20, "reward_shaping": dense}})
        data.attrs["total"] = sum(DEMOS.values())
        for name, d in demos.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = DEMOS[name]
            for key, value in d["obs"].items():
                g.create_dataset(f"obs/{key}", data=value)
                g.create_dataset(f"next_obs/{key}", data=value)
            for key in ("actions", "rewards", "dones", "states"):
                g.create_dataset(key, data=d[key])
        for key, names in {"train": ["demo_0", "demo_10"], "valid": ["demo_2"], "better": ["demo_0"],
                           "worse": ["demo_2", "demo_10"]}.items():
            f.create_dataset(f"mask/{key}", data=np.array(names, dtype="S"))
    return demos


@pytest.fixture
def hdf5(tmp_path):
    path = tmp_path / "low_dim.hdf5"
    return path, write_robomimic(path)


def test_import_round_trip(hdf5, tmp_path):
    path, demos = hdf5
    out = tmp_path / "lift.zarr"
    assert main(["import-robomimic", str(path), "--out", str(out)]) == 0
    ds = TrajectoryDataset.open(out)
    names = ["demo_0", "demo_2", "demo_10"]
    assert ds.n_episodes == 3 and ds.fps == 20
    assert ds.episode_table()["length"].tolist() == [DEMOS[n] for n in names]
    order = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]  # robomimic's default set
    assert ds.attrs["obs_keys"] == order and ds.shape("obs") == (ds.n_frames, 19)
    env = ds.env_meta
    assert env["source"] == "robomimic" and env["name"] == "Lift" and env["env_kwargs"]["control_freq"] == 20
    assert env["obs_dims"] == {k: LOW_DIM[k] for k in order} and env["cameras"] == ["agentview"]
    assert ds.frame_keys == ["agentview_12x16"] and ds.rendered_episodes("agentview_12x16").all()
    table = ds.episode_table()
    assert table["success"].tolist() == [1, 0, 1]
    # dones (success or end of demo) are no terminals: the horizon is a time-out, no step is cut short
    assert table["terminated"].tolist() == [False, False, False] and not ds.terminal_flags().any()
    assert table["tier"].tolist() == ["better", "worse", "worse"]
    assert set(table["task"].tolist()) == {"lift"} and set(table["source"].tolist()) == {"robomimic"}
    for e, name in enumerate(names):
        d, sl = demos[name], ds.episode_slice(e)
        obs = np.concatenate([d["obs"][k] for k in order], 1).astype(np.float32)
        np.testing.assert_array_equal(ds.get("obs", sl), obs)
        np.testing.assert_array_equal(ds.get("action", sl), d["actions"].astype(np.float32))
        np.testing.assert_array_equal(ds.get("state", sl), d["states"])
        np.testing.assert_array_equal(ds.get("frames/agentview_12x16", sl), d["obs"]["agentview_image"][:, ::-1])
        reward = ds.ground_truth("reward")[sl]
        # the store's reward[t] is r(s_t) = robomimic's rewards[t - 1]; r(s_0) repeats r(s_1)
        np.testing.assert_array_equal(reward[1:], d["rewards"][:-1])
        assert reward[0] == d["rewards"][0]
        np.testing.assert_array_equal(ds.ground_truth("success")[sl], reward == 1.0)
    assert ds.ground_truth("reward")[ds.episode_slice(0)][-2:].tolist() == [1.0, 1.0]


def test_import_options(hdf5, tmp_path):
    path, demos = hdf5
    summary = import_robomimic(ImportRobomimicConfig(
        file=str(path), out=str(tmp_path / "a.zarr"), obs_keys=("object", "robot0_joint_pos"),
        filter_key="train", images=False, flip_images=False, task="lift-mh", goal="to lift the red cube"))
    assert summary["episodes"] == 2
    ds = TrajectoryDataset.open(tmp_path / "a.zarr")
    assert ds.frame_keys == [] and ds.attrs["obs_keys"] == ["object", "robot0_joint_pos"]
    d = demos["demo_10"]
    obs = np.concatenate([d["obs"]["object"], d["obs"]["robot0_joint_pos"]], 1).astype(np.float32)
    np.testing.assert_array_equal(ds.get("obs", ds.episode_slice(1)), obs)
    assert ds.episode_table()["task"].tolist() == ["lift-mh"] * 2
    assert ds.episode_table()["goal"].tolist() == ["to lift the red cube"] * 2


def test_terminals_opt_in(hdf5, tmp_path):
    """--terminals takes dones[-1] as a true terminal: done is flagged on each such demo's second last step."""
    path, _ = hdf5
    out = tmp_path / "t.zarr"
    assert main(["import-robomimic", str(path), "--out", str(out), "--terminals"]) == 0
    ds = TrajectoryDataset.open(out)
    assert ds.episode_table()["terminated"].tolist() == [True, False, True]
    ends = np.cumsum([DEMOS[n] for n in ("demo_0", "demo_2", "demo_10")])
    np.testing.assert_array_equal(np.flatnonzero(ds.terminal_flags()), [ends[0] - 2, ends[2] - 2])


def test_dense_rewards_leave_success_unknown(tmp_path):
    path = tmp_path / "dense.hdf5"
    demos = write_robomimic(path, dense=True)
    import_robomimic(ImportRobomimicConfig(file=str(path), out=str(tmp_path / "d.zarr")))
    ds = TrajectoryDataset.open(tmp_path / "d.zarr")
    assert ds.episode_table()["success"].tolist() == [-1, -1, -1] and not ds.has_ground_truth("success")
    reward = ds.ground_truth("reward")[ds.episode_slice(2)]
    np.testing.assert_array_equal(reward, shift_next(demos["demo_10"]["rewards"]))


def test_import_bad_input(hdf5, tmp_path, capsys):
    path, _ = hdf5
    (tmp_path / "x.hdf5").write_text("not hdf5")
    with pytest.raises(DatasetError, match="not an HDF5 file"):
        import_robomimic(ImportRobomimicConfig(file=str(tmp_path / "x.hdf5"), out=str(tmp_path / "o.zarr")))
    with h5py.File(tmp_path / "empty.hdf5", "w") as f:
        f.create_group("stuff")
    with pytest.raises(DatasetError, match="not a robomimic dataset"):
        import_robomimic(ImportRobomimicConfig(file=str(tmp_path / "empty.hdf5"), out=str(tmp_path / "o.zarr")))
    with pytest.raises(DatasetError, match="not low-dim"):
        import_robomimic(ImportRobomimicConfig(file=str(path), out=str(tmp_path / "o.zarr"),
                                               obs_keys=("object", "agentview_image")))
    with pytest.raises(DatasetError, match="no filter key mask/nope"):
        import_robomimic(ImportRobomimicConfig(file=str(path), out=str(tmp_path / "o.zarr"), filter_key="nope"))
    assert main(["import-robomimic", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "o.zarr")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # an existing dataset is refused and left as it was; --overwrite replaces it
    out = tmp_path / "lift.zarr"
    import_robomimic(ImportRobomimicConfig(file=str(path), out=str(out), filter_key="valid"))
    assert main(["import-robomimic", str(path), "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert TrajectoryDataset.open(out).n_episodes == 1
    assert main(["import-robomimic", "--file", str(path), "--out", str(out), "--overwrite"]) == 0
    assert TrajectoryDataset.open(out).n_episodes == 3


def test_demo_missing_key_is_named(tmp_path):
    path = tmp_path / "broken.hdf5"
    write_robomimic(path)
    with h5py.File(path, "a") as f:
        del f["data/demo_2/states"]
    with pytest.raises(DatasetError, match="demo_2 has no 'states'"):
        import_robomimic(ImportRobomimicConfig(file=str(path), out=str(tmp_path / "o.zarr")))
    assert TrajectoryDataset.open(tmp_path / "o.zarr").n_episodes == 1  # demo_0 went in whole


# ---------------------------------------------------------------- states-only demos written by robosuite itself
def robosuite_demo_file(folder, demos: int = 2, steps: int = 70) -> tuple[str, list[dict]]:
    """Lift demos recorded by robosuite's DataCollectionWrapper, gathered by robosuite's own
    gather_demonstrations_as_hdf5 (collect_human_demonstrations.py) and converted by robomimic's
    convert_robosuite.py; our scripted expert only stands in for the human at the keyboard.
    Returns the file and, per episode in recording order, what the env reported online."""
    import subprocess
    import sys

    import robosuite as suite
    from robosuite.scripts.collect_human_demonstrations import gather_demonstrations_as_hdf5
    from robosuite.wrappers import DataCollectionWrapper
    from robot_pref.envs.collectors import make_expert
    from robot_pref.envs.tasks import controller_config, get_task

    config = {"env_name": "Lift", "robots": "Panda", "controller_configs": controller_config()}
    env = DataCollectionWrapper(suite.make(**config, has_renderer=False, has_offscreen_renderer=False,
                                           use_camera_obs=False, ignore_done=True, reward_shaping=True,
                                           control_freq=20, hard_reset=False), str(folder / "raw"))
    keys, online = get_task("lift").obs_keys, []
    for _ in range(demos):
        obs = env.reset()
        expert = make_expert("lift")
        expert.reset(obs)
        rows = {"obs": [], "success": []}
        for _ in range(steps):
            rows["obs"].append(np.concatenate([np.atleast_1d(obs[k]) for k in keys]))
            obs, _, _, _ = env.step(expert.act(obs))
            rows["success"].append(env._check_success())
        online.append({k: np.asarray(v) for k, v in rows.items()})
    env.close()
    gather_demonstrations_as_hdf5(str(folder / "raw"), str(folder), json.dumps(config))
    path = str(folder / "demo.hdf5")
    subprocess.run([sys.executable, "-m", "robomimic.scripts.conversion.convert_robosuite", "--dataset", path],
                   check=True, capture_output=True)
    return path, online


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    return robosuite_demo_file(tmp_path_factory.mktemp("robosuite"))


def test_states_only_demos_replay(demo_file, tmp_path):
    import robomimic.utils.file_utils as FileUtils

    path, online = demo_file
    with h5py.File(path, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        assert "obs" not in f[f"data/{names[0]}"] and "model_file" in f[f"data/{names[0]}"].attrs
        states = {n: f[f"data/{n}/states"][()] for n in names}
        actions = {n: f[f"data/{n}/actions"][()] for n in names}
    FileUtils.create_hdf5_filter_key(path, [names[0]], "better")  # robomimic's own mask writer
    FileUtils.create_hdf5_filter_key(path, names[1:], "worse")
    out = tmp_path / "demos.zarr"
    assert main(["import-robomimic", path, "--out", str(out)]) == 0
    ds = TrajectoryDataset.open(out)
    env = ds.env_meta
    assert env["source"] == "robosuite-demos" and env["renderable"] and env["task"] == "lift"
    assert env["recorded_env"]["name"] == "Lift" and ds.shape("obs")[1] == 19 and ds.fps == 20
    table = ds.episode_table()
    assert table["tier"].tolist() == ["better", "worse"] and table["success"].tolist() == [1, 1]
    assert table["goal"].tolist() == ["to lift the red cube"] * 2 and not table["terminated"].any()
    for e, n in enumerate(names):
        sl = ds.episode_slice(e)
        np.testing.assert_array_equal(ds.get("action", sl), actions[n].astype(np.float32))
        np.testing.assert_array_equal(ds.get("state", sl), states[n])
        # replayed observations are what the env showed online while the demo was recorded
        match = [o for o in online if len(o["obs"]) == len(states[n])
                 and np.abs(o["obs"][:1] - ds.get("obs", sl)[:1]).max() < 1e-6]
        assert len(match) == 1
        # (robosuite observes before the last physics substep's kinematics are recomputed: < 1 mm apart;
        # a step off would be centimetres)
        np.testing.assert_allclose(ds.get("obs", sl), match[0]["obs"], atol=1e-3)
        success = ds.ground_truth("success")[sl]
        np.testing.assert_array_equal(success[1:], match[0]["success"][:-1])  # success(s_{t+1}) after action t
        reward = ds.ground_truth("reward")[sl]
        assert reward[0] < 0.5 < reward[-1]  # shaped Lift reward: far from the cube, then lifted


def test_states_only_bad_inputs(demo_file, tmp_path):
    import shutil

    path, _ = demo_file
    broken = tmp_path / "broken.hdf5"
    shutil.copy(path, broken)
    with h5py.File(broken, "a") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[1]))
        del f[f"data/{names[1]}"].attrs["model_file"]
    out = tmp_path / "o.zarr"
    with pytest.raises(DatasetError, match=f"{names[1]} has no model_file attribute"):
        import_robomimic(ImportRobomimicConfig(file=str(broken), out=str(out)))
    assert TrajectoryDataset.open(out).n_episodes == 1  # the first demo went in whole
    with h5py.File(broken, "a") as f:
        f[f"data/{names[1]}"].attrs["model_file"] = f[f"data/{names[0]}"].attrs["model_file"]
        states = f[f"data/{names[1]}/states"][()]
        del f[f"data/{names[1]}/states"]
        f[f"data/{names[1]}/states"] = states[:, :-2]  # two numbers short of the rebuilt scene's state
    with pytest.raises(DatasetError, match=f"{names[1]}'s states .* do not fit the scene rebuilt from its model_file"):
        import_robomimic(ImportRobomimicConfig(file=str(broken), out=str(out)))
    with h5py.File(broken, "a") as f:
        del f[f"data/{names[1]}/states"]
        f[f"data/{names[1]}/states"] = states
    import_robomimic(ImportRobomimicConfig(file=str(broken), out=str(out)))  # the same command resumes
    assert TrajectoryDataset.open(out).n_episodes == 2


@pytest.mark.slow
def test_states_only_demos_render_and_train(demo_file, tmp_path, ray_session, one_torch_thread):
    """The replayed demos are renderable (the task's scene from attrs.env) and train a policy."""
    from robot_pref.envs import TaskEnv

    from robot_pref.render.render import RenderConfig, render_dataset

    path, _ = demo_file
    out = tmp_path / "demos.zarr"
    import_robomimic(ImportRobomimicConfig(file=path, out=str(out)))
    render_dataset(RenderConfig(dataset=str(out), camera="agentview", size=32, actors=1))
    ds = TrajectoryDataset.open(out)
    assert ds.rendered_episodes("agentview_32").all()
    frames = ds.get("frames/agentview_32")
    with TaskEnv.from_meta(ds.env_meta) as env:  # the frame of a state is that state, drawn again
        env.set_state(ds.get("state")[-1])
        np.testing.assert_array_equal(frames[-1], env.render("agentview", 32, 32))
    assert np.abs(frames[0].astype(int) - frames[ds.episode_slice(0).stop - 1]).mean() > 1  # the cube moved
    run = tmp_path / "bc"
    assert main(["train", "--dataset", str(out), "--out", str(run), "--algo", "bc", "--steps", "20",
                 "--batch-size", "32", "--device", "cpu"]) == 0
    assert (run / "last.pt").is_file()


def test_export_robomimic_loads_in_robomimics_sequence_dataset(hdf5, tmp_path):
    """export-robomimic's file read by robomimic's own SequenceDataset, and imported back unchanged."""
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    path, demos = hdf5
    out = tmp_path / "lift.zarr"
    import_robomimic(ImportRobomimicConfig(file=str(path), out=str(out)))
    ds = TrajectoryDataset.open(out, "a")
    ds.write_reward("learned", np.arange(ds.n_frames) / 10.0)
    rm = tmp_path / "export.hdf5"
    assert main(["export-robomimic", "--dataset", str(out), "--out", str(rm), "--reward-key", "learned"]) == 0
    order = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": order, "rgb": ["agentview_image"]}})
    seq = SequenceDataset(hdf5_path=str(rm), obs_keys=(*order, "agentview_image"),
                          dataset_keys=("actions", "rewards", "dones"), load_next_obs=True,
                          filter_by_attribute="worse")
    assert len(seq) == DEMOS["demo_2"] + DEMOS["demo_10"]  # the mask robomimic filters by: our tiers
    ds = TrajectoryDataset.open(out)
    learned = ds.get("rewards/learned")
    rows = np.concatenate([np.arange(ds.episode_slice(e).start, ds.episode_slice(e).stop) for e in (1, 2)])
    names = ["demo_0", "demo_2", "demo_10"]
    for i, row in enumerate(rows):
        item = seq[i]
        np.testing.assert_array_equal(item["actions"][0], ds.get("action")[row])
        np.testing.assert_allclose(np.concatenate([item["obs"][k][0] for k in order]), ds.get("obs")[row])
        last = row + 1 in ds.episode_ends
        assert item["rewards"][0] == pytest.approx(learned[row if last else row + 1])  # r(s_{t+1})
        assert item["dones"][0] == last
        # the stored frame upside down again, as robosuite records it (robomimic's own images are)
        image = ds.get("frames/agentview_12x16", np.array([row]))[0][::-1]
        np.testing.assert_array_equal(item["obs"]["agentview_image"][0], image)
        np.testing.assert_array_equal(item["obs"]["agentview_image"][0], demos[names[ds.episode_of([row])[0]]][
            "obs"]["agentview_image"][row - ds.episode_starts[ds.episode_of([row])[0]]])
    back = tmp_path / "back.zarr"
    import_robomimic(ImportRobomimicConfig(file=str(rm), out=str(back)))
    again = TrajectoryDataset.open(back)
    for key in ("obs", "action", "state", "frames/agentview_12x16"):
        np.testing.assert_array_equal(again.get(key), ds.get(key))
    assert again.episode_table()["tier"].tolist() == ["better", "worse", "worse"]
    from robot_pref.data.commands import ExportRobomimicConfig
    from robot_pref.data.robomimic import export_robomimic

    with pytest.raises(DatasetError, match="already exists"):
        export_robomimic(ExportRobomimicConfig(dataset=str(out), out=str(rm)))
    with pytest.raises(DatasetError, match="has no reward 'nope'"):
        export_robomimic(ExportRobomimicConfig(dataset=str(out), out=str(tmp_path / "x.hdf5"), reward_key="nope"))
    assert not (tmp_path / "x.hdf5").exists()
