"""The zarr trajectory store: round trip, crash-safe append, bad input, random access, sampler."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from robot_pref.data import DatasetError, Episode, TrajectoryDataset, frame_key
from robot_pref.data.dataset import FRAME_SHARD
from robot_pref.data.shards import ShardReader

OBS, ACT, STATE, H = 6, 3, 9, 8
CAM = frame_key("agentview", H)


def make_episode(i: int, frames: bool = True) -> Episode:
    """Deterministic episode ``i`` (lengths vary so episodes straddle frame shards)."""
    rng = np.random.default_rng(i)
    T = 90 + 17 * (i % 4)
    return Episode(
        obs=rng.normal(size=(T, OBS)).astype(np.float32),
        action=rng.uniform(-1, 1, size=(T, ACT)).astype(np.float32),
        state=rng.normal(size=(T, STATE)),
        timestamp=np.arange(T) / 20.0 + i,
        frames={CAM: rng.integers(0, 256, size=(T, H, H, 3), dtype=np.uint8)} if frames else {},
        true_reward=rng.normal(size=T).astype(np.float32),
        true_success=rng.random(T) > 0.5,
        task="lift", goal="to lift the red cube", tier=("expert", "random")[i % 2], source="test",
        seed=100 + i, success=bool(i % 2 == 0), terminated=bool(i % 3 == 0),
    )


def create(path, **kw) -> TrajectoryDataset:
    return TrajectoryDataset.create(path, obs_dim=OBS, action_dim=ACT, state_dim=STATE, fps=20,
                                    env={"name": "Lift", "kwargs": {"horizon": 150}}, **kw)


def build(path, n: int = 5) -> TrajectoryDataset:
    ds = create(path)
    for i in range(n):
        ds.append_episode(make_episode(i))
    return ds


def assert_episode(ds: TrajectoryDataset, e: int, ep: Episode) -> None:
    sl = ds.episode_slice(e)
    assert sl.stop - sl.start == len(ep)
    np.testing.assert_array_equal(ds.get("obs", sl), ep.obs)
    np.testing.assert_array_equal(ds.get("action", sl), ep.action)
    np.testing.assert_array_equal(ds.get("state", sl), ep.state)
    np.testing.assert_array_equal(ds.get("timestamp", sl), ep.timestamp)
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", sl), ep.frames[CAM])
    np.testing.assert_array_equal(ds.ground_truth("reward")[sl], ep.true_reward)
    np.testing.assert_array_equal(ds.ground_truth("success")[sl], ep.true_success)


@pytest.fixture
def five(tmp_path):
    build(tmp_path / "d.zarr")
    return tmp_path / "d.zarr"


# ---------------------------------------------------------------------------------------- round trip
def test_round_trip_every_field(five):
    ds = TrajectoryDataset.open(five)
    eps = [make_episode(i) for i in range(5)]
    assert ds.n_episodes == 5 and ds.n_frames == sum(map(len, eps))
    for e, ep in enumerate(eps):
        assert_episode(ds, e, ep)
    table = ds.episode_table()
    assert table["length"].tolist() == [len(ep) for ep in eps]
    assert table["seed"].tolist() == [100, 101, 102, 103, 104]
    assert table["success"].tolist() == [1, 0, 1, 0, 1]
    assert table["terminated"].tolist() == [True, False, False, True, False]
    assert table["tier"].tolist() == ["expert", "random"] * 2 + ["expert"]
    assert set(table["goal"].tolist()) == {"to lift the red cube"} and set(table["source"].tolist()) == {"test"}
    assert ds.env_meta == {"name": "Lift", "kwargs": {"horizon": 150}} and ds.fps == 20
    assert ds.rendered_episodes(CAM).all() and ds.frame_keys == [CAM]
    ends = np.cumsum([len(ep) for ep in eps])
    np.testing.assert_array_equal(ds.episode_ends, ends)
    # transitions never cross episodes; done marks the step into a true terminal's last row
    trans = ds.transition_indices()
    assert len(trans) == ds.n_frames - 5 and not np.isin(ends - 1, trans).any()
    done = ds.terminal_flags()
    assert np.flatnonzero(done).tolist() == [ends[0] - 2, ends[3] - 2]
    np.testing.assert_array_equal(ds.episode_of([0, ends[0] - 1, ends[0], ds.n_frames - 1]), [0, 0, 1, 4])
    s = ds.summary()
    assert s["tiers"]["expert"]["success_rate"] == 1.0 and s["tiers"]["random"]["success_rate"] == 0.0
    assert s["arrays"][f"frames/{CAM}"] == [ds.n_frames, H, H, 3]


def test_learned_reward_and_later_appends(five):
    ds = TrajectoryDataset.open(five, "a")
    n = ds.n_frames
    ds.write_reward("vlm", np.arange(10, dtype=np.float32), start=5, attrs={"model": "m.pt"})
    ds.append_episode(make_episode(7, frames=False))
    r = ds.get("rewards/vlm")
    assert len(r) == ds.n_frames and r[5:15].tolist() == list(range(10))
    assert np.isnan(r[:5]).all() and np.isnan(r[15:]).all()
    assert not ds.rendered_episodes(CAM)[5] and ds.rendered_episodes(CAM)[:5].all()
    with pytest.raises(DatasetError, match="not rendered yet"):
        ds.get(f"frames/{CAM}", [0, n + 3])
    with pytest.raises(DatasetError, match="exceed"):
        ds.write_reward("vlm", np.zeros(5), start=ds.n_frames - 2)


def test_ground_truth_only_explicitly(five):
    ds = TrajectoryDataset.open(five)
    for key in ("ground_truth/reward", "ground_truth/success"):
        with pytest.raises(DatasetError, match="ground truth"):
            ds.get(key)
    assert "ground_truth/reward" not in ds.available_keys()
    with pytest.raises(KeyError, match="no ground truth"):
        ds.ground_truth("dense")


def test_returned_low_dim_arrays_cannot_corrupt_the_cache(five):
    ds = TrajectoryDataset.open(five)
    obs = ds.get("obs")
    with pytest.raises(ValueError):
        obs -= 1.0
    np.testing.assert_array_equal(ds.get("obs", slice(0, 90)), make_episode(0).obs)


# ---------------------------------------------------------------------------------------- random access
def test_random_frames_unsorted_duplicates_across_shards(five):
    ds = TrajectoryDataset.open(five)
    allf = np.concatenate([make_episode(i).frames[CAM] for i in range(5)])
    assert ds.n_frames > 2 * FRAME_SHARD
    rng = np.random.default_rng(0)
    idx = np.concatenate([rng.integers(0, ds.n_frames, 100), [ds.n_frames - 1, 0, 0, 255, 256, 255]])
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", idx), allf[idx])
    np.testing.assert_array_equal(ds.get_batch(idx, ["obs", f"frames/{CAM}"])["obs"], ds.get("obs")[idx])
    assert ds.get(f"frames/{CAM}", np.zeros(0, np.int64)).shape == (0, H, H, 3)
    mask = np.zeros(ds.n_frames, bool)
    mask[[5, 300]] = True
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", mask), allf[[5, 300]])
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", [-1, -ds.n_frames]), allf[[-1, 0]])
    for bad in ([ds.n_frames], [0.5], mask[:-1], [[1, 2]]):
        with pytest.raises(IndexError):
            ds.get(f"frames/{CAM}", bad)
    # the fast reader is used and agrees with zarr's own decoding
    arr = ds.root[f"frames/{CAM}"]
    assert ShardReader.for_array(arr) is not None
    np.testing.assert_array_equal(ShardReader.for_array(arr).read(idx), np.stack([arr[int(i)] for i in idx]))


def test_zarr_fallback_for_other_layouts(tmp_path):
    """Frames written with another chunking still read right (through zarr instead of the shard reader)."""
    ds = build(tmp_path / "d.zarr", n=2)
    ds.delete(f"frames/{CAM}")
    frames = np.concatenate([make_episode(i).frames[CAM] for i in range(2)])
    ds.root["frames"].create_array(CAM, data=frames, chunks=(64, H, H, 3))
    ds.root["meta/rendered"].create_array(CAM, data=np.ones(2, bool))
    ds = TrajectoryDataset.open(tmp_path / "d.zarr")
    assert ShardReader.for_array(ds.root[f"frames/{CAM}"]) is None
    idx = np.array([150, 3, 3, 0, 100])
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", idx), frames[idx])


def test_iteration_by_episode(five):
    ds = TrajectoryDataset.open(five)
    got = list(ds.iter_episodes(keys=("obs", "action", f"frames/{CAM}")))
    assert len(got) == 5
    for i, ep in enumerate(got):
        ref = make_episode(i)
        np.testing.assert_array_equal(ep["obs"], ref.obs)
        np.testing.assert_array_equal(ep["action"], ref.action)
        np.testing.assert_array_equal(ep[f"frames/{CAM}"], ref.frames[CAM])


# ---------------------------------------------------------------------------------------- stats
def test_stats_match_numpy_and_follow_appends(five):
    ds = TrajectoryDataset.open(five, "a")
    obs = np.concatenate([make_episode(i).obs for i in range(5)]).astype(np.float64)
    st = ds.stats("obs")
    np.testing.assert_allclose(st["mean"], obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["std"], obs.std(0), rtol=1e-5)
    np.testing.assert_array_equal(st["min"], obs.min(0).astype(np.float32))
    np.testing.assert_array_equal(st["max"], obs.max(0).astype(np.float32))
    assert ds.attrs["stats"]["obs"]["n"] == ds.n_frames  # stored with the frames it covers
    ds.append_episode(make_episode(9))
    obs = np.concatenate([obs, make_episode(9).obs])
    np.testing.assert_allclose(TrajectoryDataset.open(five).stats("obs")["mean"], obs.mean(0), rtol=1e-5)
    with pytest.raises(DatasetError, match="low-dim"):
        ds.compute_stats([f"frames/{CAM}"])


# ---------------------------------------------------------------------------------------- sampler
def test_batch_sampler(five):
    ds = TrajectoryDataset.open(five)
    reward = np.arange(ds.n_frames, dtype=np.float32)
    kw = dict(next_keys=["obs", f"frames/{CAM}"], extra={"done": ds.terminal_flags()}, seed=3, num_batches=5)
    streamed = list(ds.batches(["obs", f"frames/{CAM}"], 32, workers=2, in_memory=False, **kw))
    in_ram = list(ds.batches(["obs", f"frames/{CAM}"], 32, workers=1, in_memory=True, **kw))
    assert len(streamed) == 5
    obs, frames, done = ds.get("obs"), ds.get(f"frames/{CAM}"), ds.terminal_flags()
    trans = set(ds.transition_indices().tolist())
    for a, b in zip(streamed, in_ram):
        idx = a["index"]
        np.testing.assert_array_equal(idx, b["index"])  # same seed, same batches, whatever the threads
        assert set(idx.tolist()) <= trans
        for batch in (a, b):
            np.testing.assert_array_equal(batch["obs"], obs[idx])
            np.testing.assert_array_equal(batch["next/obs"], obs[idx + 1])
            np.testing.assert_array_equal(batch[f"frames/{CAM}"], frames[idx])
            np.testing.assert_array_equal(batch[f"next/frames/{CAM}"], frames[idx + 1])
            np.testing.assert_array_equal(batch["done"], done[idx])
    assert len({tuple(b["index"][:5]) for b in streamed}) == 5
    with pytest.raises(DatasetError, match="successor"):
        ds.batches(["obs"], 4, next_keys=["obs"], indices=ds.episode_ends - 1)
    with pytest.raises(DatasetError, match="rows"):
        ds.batches(["obs"], 4, extra={"r": reward[:-1]})


# ---------------------------------------------------------------------------------------- crash safety
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import zarr.storage
    from test_dataset import make_episode, create
    from robot_pref.data import TrajectoryDataset

    path, start, stop, block_at = {path!r}, {start}, {stop}, {block_at}
    ds = create(path) if start == 0 else TrajectoryDataset.open(path, "a")
    writes, current = [0], [start]
    set_ = zarr.storage.LocalStore.set

    async def hooked(self, key, value):
        # block inside the append of episode `stop - 1` at its `block_at`-th file write
        if current[0] == stop - 1:
            writes[0] += 1
            if writes[0] == block_at or (block_at < 0 and key == "zarr.json"):
                print("BLOCKED", key, flush=True)
                time.sleep(600)
        await set_(self, key, value)

    zarr.storage.LocalStore.set = hooked
    for i in range(start, stop):
        current[0] = i
        ds.append_episode(make_episode(i))
    print("DONE", flush=True)
""")


def run_child(path, start, stop, block_at):
    code = CHILD.format(tests=str(Path(__file__).parent), path=str(path), start=start, stop=stop, block_at=block_at)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("block_at", [1, 9, -1], ids=["first-write", "mid-arrays", "before-commit"])
def test_killed_append_keeps_completed_episodes(tmp_path, block_at):
    """SIGKILL while episode 3 is half written: the store opens with episodes 0-2 intact, appends go on."""
    path = tmp_path / "d.zarr"
    child = run_child(path, 0, 4, block_at)
    line = child.stdout.readline()
    assert line.startswith("BLOCKED"), line
    child.send_signal(signal.SIGKILL)
    child.wait()
    ds = TrajectoryDataset.open(path, "a")
    assert ds.n_episodes == 3
    for e in range(3):
        assert_episode(ds, e, make_episode(e))
    ds.append_episode(make_episode(3))
    ds.append_episode(make_episode(4))
    ds = TrajectoryDataset.open(path)
    assert ds.n_episodes == 5 and ds.n_frames == sum(len(make_episode(i)) for i in range(5))
    for e in range(5):
        assert_episode(ds, e, make_episode(e))
    ds.verify()


def test_kill_at_random_moment_in_append_loop(tmp_path):
    """Kill an appending process after a random delay: whatever count was committed is intact."""
    path = tmp_path / "d.zarr"
    build(path, n=1)
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    child = run_child(path, 1, 40, block_at=0)
    try:
        child.wait(timeout=float(rng.uniform(1.5, 4.0)))
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ds = TrajectoryDataset.open(path, "a")
    n = ds.n_episodes
    assert 1 <= n <= 40
    for e in range(n):
        assert_episode(ds, e, make_episode(e))
    ds.append_episode(make_episode(n))
    assert_episode(TrajectoryDataset.open(path), n, make_episode(n))


# ---------------------------------------------------------------------------------------- bad input
def snapshot(path) -> dict:
    ds = TrajectoryDataset.open(path)
    return {"n": ds.n_episodes, "obs": ds.get("obs").copy(), "frames": ds.get(f"frames/{CAM}").copy()}


def assert_unchanged(path, snap) -> None:
    now = snapshot(path)
    assert now["n"] == snap["n"]
    np.testing.assert_array_equal(now["obs"], snap["obs"])
    np.testing.assert_array_equal(now["frames"], snap["frames"])


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        TrajectoryDataset.open(tmp_path / "nope.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="not a robot_pref dataset"):
        TrajectoryDataset.open(tmp_path / "plain")
    (tmp_path / "file.zarr").write_text("hello")
    with pytest.raises(DatasetError, match="not a robot_pref dataset"):
        TrajectoryDataset.open(tmp_path / "file.zarr")
    zarr.open_group(tmp_path / "other.zarr", mode="w", zarr_format=3).attrs["x"] = 1
    with pytest.raises(DatasetError, match="not a robot_pref dataset"):
        TrajectoryDataset.open(tmp_path / "other.zarr")
    with pytest.raises(DatasetError, match="mode"):
        TrajectoryDataset.open(tmp_path / "other.zarr", "w")


def test_wrong_schema_version_and_existing_path(five):
    snap = snapshot(five)
    with pytest.raises(DatasetError, match="already exists"):
        create(five)
    assert_unchanged(five, snap)
    zarr.open_group(five, mode="r+").attrs["schema_version"] = 99
    with pytest.raises(DatasetError, match="schema version 99"):
        TrajectoryDataset.open(five)


@pytest.mark.parametrize("bad", ["obs_dim", "frame_size", "float_frames", "length", "nan", "no_state", "empty"])
def test_bad_episode_leaves_store_untouched(five, bad):
    snap = snapshot(five)
    ep = make_episode(5)
    T = len(ep)
    if bad == "obs_dim":
        ep.obs = np.zeros((T, OBS + 1), np.float32)
    elif bad == "frame_size":
        ep.frames = {CAM: np.zeros((T, H, H + 2, 3), np.uint8)}
    elif bad == "float_frames":
        ep.frames = {frame_key("wrist", H): np.random.rand(T, H, H, 3)}
    elif bad == "length":
        ep.true_reward = np.zeros(T - 1)
    elif bad == "nan":
        ep.action[3, 1] = np.nan
    elif bad == "no_state":
        ep.state = None
    else:
        ep = Episode(obs=np.zeros((0, OBS)), action=np.zeros((0, ACT)), state=np.zeros((0, STATE)))
    ds = TrajectoryDataset.open(five, "a")
    with pytest.raises(DatasetError, match={"obs_dim": "per-step shape", "frame_size": "per-step shape",
                                            "float_frames": "uint8", "length": "rows",
                                            "nan": "NaN", "no_state": "missing", "empty": "empty"}[bad]):
        ds.append_episode(ep)
    assert_unchanged(five, snap)
    assert ds.keys("frames") == [CAM]  # nothing half-created either
    ds.append_episode(make_episode(5))  # and the store still takes good episodes
    assert_episode(TrajectoryDataset.open(five), 5, make_episode(5))


def test_read_only_refuses_writes(five):
    ds = TrajectoryDataset.open(five)
    for write in (lambda: ds.append_episode(make_episode(5)), lambda: ds.write_reward("x", np.zeros(3)),
                  lambda: ds.delete(f"frames/{CAM}")):
        with pytest.raises(DatasetError, match="read-only"):
            write()


def test_missing_keys(five):
    shutil.rmtree(five / "data" / "action")
    with pytest.raises(DatasetError, match="missing data/action"):
        TrajectoryDataset.open(five)


@pytest.mark.parametrize("what", ["low-dim chunk", "frame shard", "meta chunk", "ground truth chunk"])
def test_deleted_chunk_file_is_a_truncated_store(five, what):
    rel = {"low-dim chunk": "data/obs/c/0/0", "frame shard": f"frames/{CAM}/c/1/0/0/0",
           "meta chunk": "meta/episode_ends/c/0", "ground truth chunk": "ground_truth/success/c/0"}[what]
    (five / rel).unlink()
    with pytest.raises(DatasetError, match="truncated.*" + rel.replace("/", ".")):
        TrajectoryDataset.open(five)


def test_all_fill_value_rows_still_have_chunk_files(tmp_path):
    """A chunk equal to the fill value (all-False success, black frames) is written, so deletion is noticed."""
    ds = create(tmp_path / "d.zarr")
    ep = make_episode(0)
    ep.true_success[:] = False
    ep.frames[CAM][:] = 0
    ds.append_episode(ep)
    (tmp_path / "d.zarr/ground_truth/success/c/0").unlink()
    with pytest.raises(DatasetError, match="truncated"):
        TrajectoryDataset.open(tmp_path / "d.zarr")


def test_n_episodes_beyond_rows_is_truncated(five):
    zarr.open_group(five, mode="r+").attrs["n_episodes"] = 9
    with pytest.raises(DatasetError, match="truncated"):
        TrajectoryDataset.open(five)


@pytest.mark.parametrize("which", ["zarr.json", "data/obs/zarr.json"])
def test_corrupt_metadata(five, which):
    (five / which).write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(DatasetError, match="corrupt"):
        TrajectoryDataset.open(five)


def test_corrupt_frame_bytes_named_on_read_and_by_verify(five):
    shard = five / f"frames/{CAM}/c/1/0/0/0"
    raw = bytearray(shard.read_bytes())
    raw[10:200] = bytes(190)  # damage the compressed frames at the start of the shard
    shard.write_bytes(bytes(raw))
    ds = TrajectoryDataset.open(five)  # files all present: opening is cheap and succeeds
    np.testing.assert_array_equal(ds.get(f"frames/{CAM}", [3]), make_episode(0).frames[CAM][[3]])
    with pytest.raises(DatasetError, match=f"frames/{CAM}.*damaged"):
        ds.get(f"frames/{CAM}", np.arange(FRAME_SHARD, FRAME_SHARD + 4))
    with pytest.raises(DatasetError, match="damaged"):
        ds.verify()


def test_info_cli(five, capsys):
    from robot_pref.cli import main

    assert main(["info", "--dataset", str(five), "--json", "--verify"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 5 and out["verified"][f"frames/{CAM}"] == out["frames"]
    (five / "data/obs/c/0/0").unlink()
    assert main(["info", "--dataset", str(five)]) == 1
    assert "truncated" in capsys.readouterr().err


def test_corrupt_low_dim_chunk_named_on_read(five):
    chunk = five / "data/action/c/0/0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    ds = TrajectoryDataset.open(five)
    with pytest.raises(DatasetError, match="data/action.*damaged"):
        ds.get("action", [0])
    np.testing.assert_array_equal(ds.get("obs", slice(0, 90)), make_episode(0).obs)


def test_stores_without_the_empty_chunk_flag_skip_the_file_check(five):
    """Stores written before every chunk was kept may lack all-fill chunks legitimately: they still open."""
    del zarr.open_group(five, mode="r+").attrs["empty_chunks_written"]
    (five / "meta/terminated/c/0").unlink()
    ds = TrajectoryDataset.open(five)
    assert ds.episode_table()["terminated"].tolist() == [False] * 5  # the fill value, as before


def test_overwrite_refuses_what_is_not_a_dataset(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a robot_pref dataset"):
        create(tmp_path / "precious", overwrite=True)
    assert (tmp_path / "precious" / "thesis.txt").read_text() == "keep me"
    build(tmp_path / "d.zarr", n=1)
    assert create(tmp_path / "d.zarr", overwrite=True).n_episodes == 0  # a dataset may be replaced


@pytest.mark.parametrize("chunk_rows,compressors", [
    (1, "zstd"), (8, "blosc"), (4, None)], ids=["1-frame-zstd", "8-frame-lz4hc-crc", "4-frame-raw"])
def test_shard_reader_matches_zarr(tmp_path, chunk_rows, compressors):
    """The direct reader decodes every layout it accepts exactly as zarr does, unwritten chunks included."""
    from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

    codecs = {"zstd": (ZstdCodec(),), "blosc": (BloscCodec(cname="lz4hc", clevel=5, shuffle="noshuffle", typesize=1),
                                                  Crc32cCodec()), None: None}[compressors]
    arr = zarr.create_array(tmp_path / "a.zarr", shape=(700, 6, 5, 3), chunks=(chunk_rows, 6, 5, 3),
                            shards=(64, 6, 5, 3), dtype="uint8", fill_value=7, compressors=codecs)
    data = np.random.default_rng(0).integers(0, 256, size=(700, 6, 5, 3), dtype=np.uint8)
    arr[:300] = data[:300]
    arr[450:461] = data[450:461]  # a partly written shard; rows 300-449 and 461+ were never written
    reader = ShardReader.for_array(zarr.open_array(tmp_path / "a.zarr"))
    assert reader is not None
    idx = np.random.default_rng(1).integers(0, 700, 400)
    np.testing.assert_array_equal(reader.read(idx), arr[:][idx])


def test_leftover_temp_files_of_a_killed_writer_are_removed(five):
    """A writer killed inside a file write leaves zarr's `*.partial` temp file; opening to append removes it."""
    old, fresh = five / "data/obs/c/0/0.1f2e.partial", five / "zarr.9a8b.partial"
    for leftover in (old, fresh):
        leftover.write_bytes(b'{"zarr_fo')
    os.utime(old, (0, 0))  # long ago
    TrajectoryDataset.open(five)
    assert old.exists()  # readers never delete
    ds = TrajectoryDataset.open(five, "a")
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a live writer
    ds.append_episode(make_episode(5))
    assert_episode(TrajectoryDataset.open(five), 5, make_episode(5))


# ---------------------------------------------------------------------------------------- identity
def test_identity_survives_appends_and_changes_with_a_new_store_at_the_path(tmp_path):
    ds = build(tmp_path / "d.zarr", n=2)
    ids, ident = ds.episode_ids.tolist(), ds.identity
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    frames = ds.frame_ids(np.array([0, 95, ds.n_frames - 1]))
    assert frames == [f"{ids[0]}:0", f"{ids[1]}:5", f"{ids[1]}:{107 - 1}"]
    ds = TrajectoryDataset.open(tmp_path / "d.zarr", "a")
    ds.append_episode(make_episode(2))
    assert ds.episode_ids.tolist()[:2] == ids and ds.episode_ids[2] not in ids  # appends keep earlier ids
    assert ds.frame_ids(np.array([0, 95])) == frames[:2] and ds.identity != ident
    # the same episodes collected again at the same path are another dataset
    again = create(tmp_path / "d.zarr", overwrite=True)
    for i in range(3):
        again.append_episode(make_episode(i))
    assert set(TrajectoryDataset.open(tmp_path / "d.zarr").episode_ids.tolist()).isdisjoint(ids + [ds.episode_ids[2]])


def test_a_killed_append_leftover_row_gets_a_new_identity(tmp_path):
    ds = build(tmp_path / "d.zarr", n=2)
    ds.append_episode(make_episode(2))
    lost = ds.episode_ids[2]
    ds.root.attrs["n_episodes"] = 2  # as if killed before the commit: row 2 is a leftover
    ds = TrajectoryDataset.open(tmp_path / "d.zarr", "a")
    ds.append_episode(make_episode(3))
    assert ds.episode_ids[2] != lost


def test_stores_without_episode_ids_derive_them_from_content_and_keep_them_on_append(tmp_path):
    old = build(tmp_path / "old.zarr", n=2)
    shutil.rmtree(tmp_path / "old.zarr" / "meta" / "episode_id")  # as written before the column existed
    twin = build(tmp_path / "twin.zarr", n=2)
    shutil.rmtree(tmp_path / "twin.zarr" / "meta" / "episode_id")
    del old, twin
    ds = TrajectoryDataset.open(tmp_path / "old.zarr", "a")
    derived = ds.episode_ids.tolist()
    assert all(i.startswith("derived-") for i in derived) and len(set(derived)) == 2
    assert TrajectoryDataset.open(tmp_path / "twin.zarr").episode_ids.tolist() == derived  # same content
    ds.append_episode(make_episode(7))
    back = TrajectoryDataset.open(tmp_path / "old.zarr")
    assert back.episode_ids.tolist()[:2] == derived and not back.episode_ids[2].startswith("derived-")
    other = TrajectoryDataset.open(tmp_path / "twin.zarr", "a")
    other.root["data/action"][0] = other.root["data/action"][0] + 1  # rewritten content: another id
    assert TrajectoryDataset.open(tmp_path / "twin.zarr").episode_ids[0] != derived[0]
