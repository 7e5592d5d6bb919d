"""Label store, samplers, replay, the label runner with in-process labelers, and the report."""

import json
import sqlite3

import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data.dataset import DatasetError
from robot_pref.feedback import LabelConfig, LabelSet, ReplayConfig, TeacherConfig, load_labels, make_sampler
from robot_pref.feedback.config import LabelReportConfig
from robot_pref.feedback.report import label_quality, label_report
from robot_pref.feedback.run import label
from robot_pref.feedback.samplers import SAMPLERS, register_sampler
from robot_pref.feedback.synthetic import make_square_dataset


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=8, length=24)


def cfg(ds, out, **kw):
    return LabelConfig(dataset=ds.path, camera="agentview", out=str(out), progress=False, **kw)


def test_label_set_roundtrip_and_validation(tmp_path):
    ls = LabelSet.from_arrays([1, 2, 3], [4, 5, 6], [0, 1, -1], latency_s=np.array([0.1, 0.2, 0.3]))
    ls.save(tmp_path)
    back = load_labels(tmp_path)
    assert back.index_a.dtype == np.int64 and back.label.dtype == np.int8
    np.testing.assert_array_equal(back.index_b, [4, 5, 6])
    np.testing.assert_array_equal(back.label, [0, 1, -1])
    np.testing.assert_allclose(back.extra["latency_s"], [0.1, 0.2, 0.3])
    assert (tmp_path / "labels.csv").read_text().splitlines()[0] == "index_a,index_b,label,latency_s"
    with pytest.raises(ValueError, match="labels must be 0"):
        LabelSet.from_arrays([1], [2], [2])
    with pytest.raises(ValueError, match="one row per pair"):
        LabelSet.from_arrays([1, 2], [2], [0])
    with pytest.raises(FileNotFoundError, match="robot-pref label"):
        load_labels(tmp_path / "missing")


def test_uniform_sampler_distinct_different_frames_deterministic(ds):
    frames = ds.get("frames/agentview_32")
    a, b = make_sampler("uniform", ds, "agentview_32", seed=3).sample(150)
    assert len(a) == 150
    assert not any(np.array_equal(frames[i], frames[j]) for i, j in zip(a, b))
    assert len({(min(i, j), max(i, j)) for i, j in zip(a, b)}) == 150
    a2, b2 = make_sampler("uniform", ds, "agentview_32", seed=3).sample(150)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    # the dataset does hold identical frames (the pauses at episode starts) that the sampler avoided
    starts = ds.episode_starts
    assert np.array_equal(frames[starts[0]], frames[starts[1]])
    # both sides cover many episodes (random episode per side)
    assert len(set(ds.episode_of(a).tolist())) == ds.n_episodes


def test_same_time_sampler(ds):
    a, b = make_sampler("same-time", ds, "agentview_32", seed=0).sample(60)
    ea, eb = ds.episode_of(a), ds.episode_of(b)
    assert (ea != eb).all()
    np.testing.assert_array_equal(a - ds.episode_starts[ea], b - ds.episode_starts[eb])


def test_sampler_registry_lazy_entries(ds):
    register_sampler("uniform-lazy", "robot_pref.feedback.samplers:UniformSampler")
    assert isinstance(SAMPLERS["uniform-lazy"], str)
    s = make_sampler("uniform-lazy", ds, "agentview_32", seed=0)
    assert type(s).__name__ == "UniformSampler" and not isinstance(SAMPLERS["uniform-lazy"], str)
    register_sampler("broken", "robot_pref.nowhere:Sampler")
    with pytest.raises(ValueError, match="robot_pref.nowhere:Sampler"):
        make_sampler("broken", ds, "agentview_32", seed=0)
    with pytest.raises(ValueError, match="choose one of"):
        make_sampler("nope", ds, "agentview_32", seed=0)
    assert SAMPLERS["disagreement"] == "robot_pref.reward.active:DisagreementSampler" or callable(
        SAMPLERS["disagreement"])
    with pytest.raises(DatasetError, match="robot-pref render"):
        make_sampler("uniform", ds, "agentview_84", seed=0)


def test_teacher_run_is_cached_and_resumable_by_budget(ds, tmp_path):
    out = tmp_path / "labels"
    first = label(cfg(ds, out, labeler="teacher", pairs=60, budget=25))
    assert first["counts"]["answered"] == 25 and first["counts"]["not_asked"] == 35
    assert len(load_labels(out)) == 25
    second = label(cfg(ds, out, labeler="teacher", pairs=60, budget=25))
    assert second["counts"]["cached"] == 25 and second["counts"]["answered"] == 25
    third = label(cfg(ds, out, labeler="teacher", pairs=60))
    assert third["counts"]["cached"] == 50 and third["counts"]["answered"] == 10
    labels = load_labels(out)
    r = ds.ground_truth("reward")
    np.testing.assert_array_equal(labels.label, (r[labels.index_a] < r[labels.index_b]).astype(np.int8))
    # other teacher settings are other questions: nothing is served from the cache
    other = label(cfg(ds, out, labeler="teacher", pairs=60, teacher=TeacherConfig(kind="mistake")))
    assert other["counts"]["cached"] == 0
    with sqlite3.connect(out / "store.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 120
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE finished IS NOT NULL").fetchone()[0] == 4
    before = (out / "labels.npz").read_bytes()
    with pytest.raises(ValueError, match="unknown sampler"):  # a run that fails to sample exports nothing
        label(cfg(ds, out, labeler="teacher", pairs=60, sampler="no-such"))
    assert (out / "labels.npz").read_bytes() == before


def test_load_labels_falls_back_to_store(ds, tmp_path):
    label(cfg(ds, tmp_path, labeler="teacher", pairs=20))
    (tmp_path / "labels.npz").unlink()
    assert len(load_labels(tmp_path)) == 20


def test_out_inside_dataset_and_bad_camera_are_refused(ds, tmp_path):
    with pytest.raises(ValueError, match="inside the dataset"):
        label(cfg(ds, f"{ds.path}/labels", labeler="teacher", pairs=5))
    with pytest.raises(DatasetError, match="--camera"):
        label(LabelConfig(dataset=ds.path, camera="wrist", out=str(tmp_path), progress=False))


@pytest.mark.parametrize("fmt", ["npz", "json", "csv"])
def test_replay_labeler(ds, tmp_path, fmt):
    i1, i2 = np.array([3, 10, 40, 7]), np.array([30, 11, 2, 90])
    raw = np.array([0, 1, 0.5, 1])
    path = tmp_path / f"human.{fmt}"
    if fmt == "npz":
        np.savez(path, indices_1=i1, indices_2=i2, labels=raw)
    elif fmt == "json":  # Uni-RLHF style one-hot / soft labels
        onehot = [[1, 0], [0, 1], [0.5, 0.5], [0, 1]]
        path.write_text(json.dumps({"indices_1": i1.tolist(), "indices_2": i2.tolist(), "labels": onehot}))
    else:
        path.write_text("indices_1,indices_2,human_label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in zip(i1, i2, raw)))
    out = label(cfg(ds, tmp_path / "out", labeler="replay", pairs=0, replay=ReplayConfig(path=str(path))))
    labels = load_labels(tmp_path / "out")
    np.testing.assert_array_equal(labels.index_a, i1)
    np.testing.assert_array_equal(labels.label, [0, 1, -1, 1])
    assert out["counts"]["abstained"] == 1
    np.savez(tmp_path / "bad.npz", indices_1=[1], indices_2=[10_000], labels=[0])
    with pytest.raises(ValueError, match="another dataset"):
        label(cfg(ds, tmp_path / "bad", labeler="replay", replay=ReplayConfig(path=str(tmp_path / "bad.npz"))))


def test_label_quality_numbers():
    reward = np.array([0.0, 1.0, 2.0, 3.0, 3.0])
    # pairs: truth b, b, a, b, tie, b ; labels: right, wrong, right, abstain, 1, right
    ls = LabelSet.from_arrays([0, 1, 3, 0, 3, 2], [1, 2, 0, 3, 4, 4], [1, 0, 0, -1, 1, 1])
    q = label_quality(ls, reward, bins=2)
    assert q["accuracy"] == pytest.approx(3 / 4) and q["accuracy_pairs"] == 4
    assert q["abstention_rate"] == pytest.approx(1 / 6)
    assert q["true_ties"] == 1
    assert q["confusion"]["truth_b_better"] == {"0": 1, "1": 2, "-1": 1}
    assert q["confusion"]["truth_a_better"] == {"0": 1, "1": 0, "-1": 0}
    assert q["confusion"]["truth_tie"] == {"0": 0, "1": 1, "-1": 0}
    assert sum(r["pairs"] for r in q["by_gap"]) == 5
    with pytest.raises(ValueError, match="another dataset"):
        label_quality(LabelSet.from_arrays([0], [9], [1]), reward)


def test_cli_label_and_report(ds, tmp_path):
    out = tmp_path / "teacher"
    assert main(["label", "--dataset", ds.path, "--camera", "agentview_32", "--labeler", "teacher", "--pairs", "200",
                 "--teacher.kind", "mistake", "--out", str(out), "--progress", "false"]) == 0
    assert main(["label-report", "--dataset", ds.path, "--labels", str(out)]) == 0
    report = json.loads((out / "label_report.json").read_text())
    assert (out / "label_report.png").stat().st_size > 10_000
    assert report["labeler"] == "teacher" and report["quality"]["pairs"] == 200
    assert 0.8 < report["quality"]["accuracy"] < 0.97  # eps = 0.1 mistakes
    assert report["quality"]["abstention_rate"] == 0
    assert main(["label", "--dataset", str(tmp_path / "nope.zarr"), "--out", str(out)]) == 1


@pytest.mark.parametrize("labeler", ["teacher", "replay"])
def test_a_new_dataset_at_the_same_path_is_asked_afresh(tmp_path, labeler):
    """Index-based answers are keyed on the frames' identity, not on row numbers."""
    path, out = tmp_path / "sq.zarr", tmp_path / "labels"
    old = make_square_dataset(path, episodes=8, length=24, seed=0)
    rng = np.random.default_rng(1)
    recorded = tmp_path / "human.npz"
    np.savez(recorded, indices_1=rng.integers(0, old.n_frames, 40), indices_2=rng.integers(0, old.n_frames, 40),
             labels=rng.integers(0, 2, 40))
    kw = dict(labeler=labeler, pairs=40 if labeler == "teacher" else 0, replay=ReplayConfig(path=str(recorded)))
    assert label(cfg(old, out, **kw))["counts"]["answered"] == 40
    assert label(cfg(old, out, **kw))["counts"]["cached"] == 40  # same dataset: nothing asked twice
    new = make_square_dataset(path, episodes=8, length=24, seed=5)  # collected again at the same path
    again = label(cfg(new, out, **kw))
    assert again["counts"]["cached"] == 0 and again["counts"]["answered"] == 40
    if labeler == "teacher":  # the answers follow the new dataset's ground truth
        labels, r = load_labels(out), new.ground_truth("reward")
        np.testing.assert_array_equal(labels.label, (r[labels.index_a] < r[labels.index_b]).astype(np.int8))


def test_appended_episodes_keep_earlier_answers(tmp_path):
    from robot_pref.data import Episode, TrajectoryDataset
    from robot_pref.feedback.labelers import labeler_class
    from robot_pref.feedback.store import LabelStore

    ds = make_square_dataset(tmp_path / "sq.zarr", episodes=6, length=20)
    out = tmp_path / "labels"
    goal = label(cfg(ds, out, labeler="teacher", pairs=30))["goal"]
    labels = load_labels(out)
    ds = TrajectoryDataset.open(ds.path, "a")
    ds.append_episode(Episode(obs=np.zeros((20, 2)), action=np.zeros((20, 1)), state=np.zeros((20, 1)),
                              frames={"agentview_32": ds.get("frames/agentview_32", ds.episode_slice(5))},
                              true_reward=np.zeros(20, np.float32), goal=goal))
    teacher = labeler_class("teacher")(TeacherConfig(), goal, dataset=TrajectoryDataset.open(ds.path))
    with LabelStore(out / "store.sqlite") as store:
        assert len(store.get(teacher.query_keys(labels.index_a, labels.index_b))) == 30


def test_tables_exported_with_unparsable_rows_load_without_them(tmp_path):
    """Tables from before unparsable replies were failures held them as -1 ties: they never reach training."""
    LabelSet.from_arrays([1, 2, 3], [4, 5, 6], [0, -1, -1],
                         status=np.array(["labeled", "unparsable", "abstained"])).save(tmp_path)
    back = load_labels(tmp_path)
    np.testing.assert_array_equal(back.index_a, [1, 3])
    np.testing.assert_array_equal(back.label, [0, -1])
