"""LeRobot import on a dataset written by LeRobot's own code (tests/fixtures/lerobot_v30, made once by
tools/make_lerobot_fixture.py with lerobot 0.4.4), and export read back by LeRobot's reader."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data import DatasetError, TrajectoryDataset
from robot_pref.data.commands import ImportLerobotConfig
from robot_pref.data.lerobot import import_lerobot

FIXTURE = Path(__file__).parent / "fixtures/lerobot_v30"
LENGTHS = [12, 7, 15]
GOALS = ["pick up the red cube", "pick up the red cube", "push the block to the left"]


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURE.parent / "lerobot_v30_expected.npz"))


@pytest.fixture
def copy(tmp_path):
    """A writable copy of the fixture, to break."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "lerobot_v30"))


def run(source, out, **kw):
    return import_lerobot(ImportLerobotConfig(source=str(source), out=str(out), **kw))


def test_import_matches_what_lerobot_wrote_and_decodes(tmp_path, expected):
    out = tmp_path / "real.zarr"
    assert main(["import-lerobot", str(FIXTURE), "--out", str(out)]) == 0
    ds = TrajectoryDataset.open(out)
    table = ds.episode_table()
    assert ds.n_episodes == 3 and table["length"].tolist() == LENGTHS and ds.fps == 10
    assert table["goal"].tolist() == GOALS and set(table["source"].tolist()) == {"lerobot"}
    assert table["success"].tolist() == [1, 0, 1] and not table["terminated"].any()
    env = ds.env_meta
    assert env["robot_type"] == "so100_follower" and env["codebase_version"] == "v3.0" and not env["renderable"]
    assert env["cameras"] == {"front": "observation.images.front", "wrist": "observation.images.wrist"}
    assert ds.frame_keys == ["front_24x32", "wrist_16"] and ds.attrs["obs_keys"] == ["observation.state"]
    assert all(ds.rendered_episodes(k).all() for k in ds.frame_keys)
    for e in range(3):
        sl = ds.episode_slice(e)
        np.testing.assert_array_equal(ds.get("action", sl), expected[f"action/{e}"])
        np.testing.assert_array_equal(ds.get("obs", sl), expected[f"observation.state/{e}"])
        np.testing.assert_allclose(ds.get("timestamp", sl), np.arange(LENGTHS[e]) / 10, atol=1e-6)
        # PNG images are lossless; video frames are the ones LeRobot's own reader decodes, bit for bit
        np.testing.assert_array_equal(ds.get("frames/wrist_16", sl), expected[f"observation.images.wrist/{e}"])
        front = ds.get("frames/front_24x32", sl)
        np.testing.assert_array_equal(front, expected[f"lerobot_decoded.front/{e}"])
        assert np.abs(front.astype(int) - expected[f"observation.images.front/{e}"]).mean() < 6  # AV1 is lossy
        # next.reward[t] is r(s_{t+1}): the store's r(s_t) is next.reward[t - 1]
        reward, success = ds.ground_truth("reward")[sl], ds.ground_truth("success")[sl]
        np.testing.assert_array_equal(reward[1:], expected[f"next.reward/{e}"][:-1, 0])
        np.testing.assert_array_equal(success[1:], expected[f"next.success/{e}"][:-1, 0])
    assert ds.ground_truth("success").sum() == 2 + 0 + 2  # the last 3 frames succeed; one falls past the end
    with pytest.raises(DatasetError, match="ground truth is kept apart"):
        ds.get("ground_truth/reward")


def test_terminals_opt_in(tmp_path):
    ds = TrajectoryDataset.open(run(FIXTURE, tmp_path / "t.zarr", terminals=True)["path"])
    assert ds.episode_table()["terminated"].tolist() == [True, True, True]
    np.testing.assert_array_equal(np.flatnonzero(ds.terminal_flags()), np.cumsum(LENGTHS) - 2)


def test_repo_id_from_lerobot_home_and_hub_cache(tmp_path, monkeypatch, expected):
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "home"))
    shutil.copytree(FIXTURE, tmp_path / "home/someone/arm_data")
    ds = TrajectoryDataset.open(run("someone/arm_data", tmp_path / "a.zarr")["path"])
    assert ds.n_episodes == 3 and ds.env_meta["name"] == "someone/arm_data"
    assert ds.episode_table()["task"].tolist() == ["arm_data"] * 3
    # the Hugging Face hub cache layout: datasets--owner--name/{refs/main, snapshots/<commit>/...}
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "datasets--other--cached"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(FIXTURE, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    ds = TrajectoryDataset.open(run("other/cached", tmp_path / "b.zarr")["path"])
    np.testing.assert_array_equal(ds.get("action", ds.episode_slice(2)), expected["action/2"])
    with pytest.raises(DatasetError, match="never downloads"):
        run("nobody/nothing", tmp_path / "c.zarr")
    assert not (tmp_path / "c.zarr").exists()


def test_unknown_codebase_version(copy, tmp_path):
    info = json.loads((copy / "meta/info.json").read_text())
    info["codebase_version"] = "v1.6"
    (copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"info.json: codebase_version 'v1.6'.*convert it with LeRobot"):
        run(copy, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_missing_video_stops_before_the_episode_and_the_import_resumes(copy, tmp_path, capsys):
    video = copy / "videos/observation.images.front/chunk-000/file-001.mp4"  # episode 2's
    video.rename(video.with_suffix(".bak"))
    out = tmp_path / "o.zarr"
    assert main(["import-lerobot", str(copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "file-001.mp4 is missing (video observation.images.front of episode 2)" in err and "copy" in err
    ds = TrajectoryDataset.open(out)
    assert ds.n_episodes == 2  # episodes 0 and 1 went in whole
    before = ds.get("frames/front_24x32", ds.episode_slice(1))
    video.with_suffix(".bak").rename(video)
    assert main(["import-lerobot", str(copy), "--out", str(out)]) == 0  # the same command continues
    ds = TrajectoryDataset.open(out)
    assert ds.episode_table()["length"].tolist() == LENGTHS
    np.testing.assert_array_equal(ds.get("frames/front_24x32", ds.episode_slice(1)), before)
    assert main(["import-lerobot", str(copy), "--out", str(out)]) == 0  # finished: nothing more to do
    assert TrajectoryDataset.open(out).n_episodes == 3
    # another source, or other settings, never mix into it
    assert main(["import-lerobot", str(copy), "--out", str(out), "--terminals"]) == 1
    assert "already exists and holds an import of" in capsys.readouterr().err


def test_video_shorter_than_the_table(copy, tmp_path):
    files = copy / "videos/observation.images.front/chunk-000"
    shutil.copy(files / "file-001.mp4", files / "file-000.mp4")  # 15 frames; episodes 0+1 need 19
    with pytest.raises(DatasetError, match=r"file-000.mp4: frame count mismatch for episode 1: the table has 7 rows"):
        run(copy, tmp_path / "o.zarr")
    assert TrajectoryDataset.open(tmp_path / "o.zarr").n_episodes == 1


def test_unreadable_parquet(copy, tmp_path):
    data = copy / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"file-000.parquet cannot be read as parquet \(episode 0.*damaged"):
        run(copy, tmp_path / "o.zarr")
    assert TrajectoryDataset.open(tmp_path / "o.zarr").n_episodes == 0


LEROBOT_PYTHON = Path(__file__).parents[1] / ".venv-lerobot/bin/python"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The fixture imported, given a learned reward (r(s_t) = global row index / 100), exported again."""
    tmp = tmp_path_factory.mktemp("export")
    ds = TrajectoryDataset.open(run(FIXTURE, tmp / "real.zarr")["path"], "a")
    ds.write_reward("learned", np.arange(ds.n_frames) / 100.0)
    assert main(["export-lerobot", "--dataset", ds.path, "--out", str(tmp / "lerobot"), "--reward-key", "learned"]) == 0
    return TrajectoryDataset.open(ds.path), tmp / "lerobot"


def test_export_reimports_with_the_same_values(exported, tmp_path):
    ds, folder = exported
    info = json.loads((folder / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == 34 and info["robot_type"] == "so100_follower"
    assert not (folder.parent / "lerobot.partial").exists()
    back = TrajectoryDataset.open(run(folder, tmp_path / "back.zarr")["path"])
    np.testing.assert_array_equal(back.get("action"), ds.get("action"))
    np.testing.assert_array_equal(back.get("obs"), ds.get("obs"))
    assert back.episode_table()["goal"].tolist() == GOALS and back.frame_keys == ds.frame_keys
    # next.reward[t] = learned[t + 1] (the last frame repeats its own); imported back it is r(s_t) again
    learned = ds.get("rewards/learned")
    for e in range(3):
        sl = ds.episode_slice(e)
        np.testing.assert_allclose(back.ground_truth("reward")[sl][1:], learned[sl][1:], rtol=1e-6)
    for key in ds.frame_keys:  # one more (lossy) AV1 generation, every frame in its place
        assert_same_frames(back.get(f"frames/{key}"), ds.get(f"frames/{key}"))
    with pytest.raises(DatasetError, match="already exists"):
        main_export(ds.path, folder)


def assert_same_frames(got: np.ndarray, want: np.ndarray) -> None:
    """Each decoded frame is nearer its own original than any other frame (AV1 at LeRobot's CRF 30 is
    lossy: a few grey levels on average on these 16-32 pixel frames; frames differ by >= 13 levels)."""
    assert got.shape == want.shape
    d = np.abs(got.astype(np.float32)[:, None] - want.astype(np.float32)[None]).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(d.argmin(1), np.arange(len(want)))
    assert d.diagonal().mean() < 8, d.diagonal()


def main_export(dataset, out, *flags):
    from robot_pref.data.commands import ExportLerobotConfig
    from robot_pref.data.lerobot import export_lerobot

    return export_lerobot(ExportLerobotConfig(dataset=str(dataset), out=str(out), **dict(flags)))


def test_export_bad_reward_key(exported, tmp_path):
    ds, _ = exported
    with pytest.raises(DatasetError, match=r"has no reward 'nope'.*robot-pref relabel --key nope"):
        main_export(ds.path, tmp_path / "x", ("reward_key", "nope"))
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not LEROBOT_PYTHON.exists(), reason="LeRobot's own reader needs the LeRobot venv: run "
                    "tools/setup_lerobot.sh (CI does)")
def test_export_loads_in_lerobots_own_dataset_class(exported, tmp_path):
    import subprocess

    ds, folder = exported
    done = subprocess.run([str(LEROBOT_PYTHON), str(Path(__file__).parent / "lerobot_read.py"), str(folder),
                           str(tmp_path / "frames.npz")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["len"] == 34 and got["episodes"] == 3 and got["fps"] == 10 and got["robot_type"] == "so100_follower"
    assert got["cameras"] == ["observation.images.front", "observation.images.wrist"]
    assert {"action", "observation.state", "observation.images.front"} <= set(got["stats"])
    np.testing.assert_array_equal(np.float32(got["action"]), ds.get("action"))
    np.testing.assert_array_equal(np.float32(got["state"]), ds.get("obs"))
    assert got["task"] == [g for e, g in enumerate(GOALS) for _ in range(LENGTHS[e])]
    learned, ends = ds.get("rewards/learned"), np.cumsum(LENGTHS)
    expect = np.concatenate([np.append(learned[s + 1 : t], learned[t - 1]) for s, t in zip(ends - LENGTHS, ends)])
    np.testing.assert_allclose(got["reward"], expect, rtol=1e-6)
    assert np.flatnonzero(got["done"]).tolist() == (ends - 1).tolist()
    frames = np.load(tmp_path / "frames.npz")
    back = TrajectoryDataset.open(run(folder, tmp_path / "back.zarr")["path"])
    for lk, key in (("observation.images.front", "front_24x32"), ("observation.images.wrist", "wrist_16")):
        np.testing.assert_array_equal(frames[lk], back.get(f"frames/{key}"))  # LeRobot decodes what we decode
        assert_same_frames(frames[lk], ds.get(f"frames/{key}"))


def test_v21_layout(tmp_path, expected):
    """codebase v2.1 (one parquet file and one mp4 per episode, meta/*.jsonl): laid out here from the
    LeRobot-written v3.0 files of episodes 0 and 2 (LeRobot 0.4.4 writes v3.0 only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "v21"
    (root / "meta").mkdir(parents=True)
    info = json.loads((FIXTURE / "meta/info.json").read_text())
    info |= {"codebase_version": "v2.1", "total_episodes": 2,
             "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
             "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("\n".join(json.dumps({"task_index": i, "task": t}) for i, t in
                                                     enumerate(["pick up the red cube", "push the block to the left"])))
    (root / "meta/episodes.jsonl").write_text("\n".join(json.dumps({"episode_index": i, "tasks": [GOALS[e]],
                                                                    "length": LENGTHS[e]})
                                                        for i, e in enumerate((0, 2))))
    table = pq.read_table(FIXTURE / "data/chunk-000/file-000.parquet")
    videos = FIXTURE / "videos/observation.images.front/chunk-000"
    for i, (e, video) in enumerate(((0, "file-000.mp4"), (2, "file-001.mp4"))):  # both start at 0 s in their file
        rows = table.filter(pa.compute.equal(table["episode_index"], e))
        rows = rows.set_column(rows.schema.get_field_index("episode_index"), "episode_index",
                               pa.array(np.full(rows.num_rows, i)))
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(rows, root / f"data/chunk-000/episode_{i:06d}.parquet")
        target = root / f"videos/chunk-000/observation.images.front/episode_{i:06d}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(videos / video, target)
    ds = TrajectoryDataset.open(run(root, tmp_path / "v21.zarr")["path"])
    assert ds.env_meta["codebase_version"] == "v2.1" and ds.episode_table()["length"].tolist() == [12, 15]
    assert ds.episode_table()["goal"].tolist() == [GOALS[0], GOALS[2]]
    for i, e in enumerate((0, 2)):
        sl = ds.episode_slice(i)
        np.testing.assert_array_equal(ds.get("action", sl), expected[f"action/{e}"])
        np.testing.assert_array_equal(ds.get("frames/front_24x32", sl), expected[f"lerobot_decoded.front/{e}"])


@pytest.mark.slow
def test_lerobot_dataset_through_the_pipeline_and_back(tmp_path, one_torch_thread):
    """LeRobot's files -> import -> label (teacher on the annotated next.reward) -> reward -> IQL/BC ->
    offline evaluation in the report (no simulator) -> export with the learned reward -> import again."""
    data = tmp_path / "real.zarr"
    run(FIXTURE, data)
    config = Path(__file__).parents[1] / "configs/real_lerobot.yaml"
    assert main(["run", str(config), "--set", f"dataset={data}", "--set", f"run_dir={tmp_path / 'run'}",
                 "--set", "render.height=24", "--set", "render.width=32", "--set", "label.labeler=teacher",
                 "--set", "label.pairs=100", "--set", "fit_reward.model=resnet18", "--set", "fit_reward.epochs=1",
                 "--set", "fit_reward.ensemble=1", "--set", "train.steps=10", "--set", "train.batch_size=8",
                 "--set", "parallel=false"]) == 0
    report = json.loads((tmp_path / "run/report.json").read_text())
    for policy in ("iql-learned", "bc"):
        info = report["policies"][policy]
        assert info["offline"] and 0 < info["action_mse"] < 4  # actions lie in [-1, 1]
        assert info["episodes"] == 1 and info["held_out_episodes"] == [2]  # train.holdout 0.2 of 3 episodes
    assert report["labels"]["quality"]["pairs"] == 100  # the teacher answered from the annotated next.reward
    ds = TrajectoryDataset.open(data)
    assert main(["export-lerobot", "--dataset", str(data), "--out", str(tmp_path / "back"), "--reward-key",
                 "learned"]) == 0
    back = TrajectoryDataset.open(run(tmp_path / "back", tmp_path / "back.zarr")["path"])
    learned = ds.get("rewards/learned")
    for e in range(3):
        sl = ds.episode_slice(e)
        np.testing.assert_allclose(back.ground_truth("reward")[sl][1:], learned[sl][1:], rtol=1e-6)
