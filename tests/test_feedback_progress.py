"""Progress (GVL-style) labeler: parsing, pair expansion, caching, budgets, unparsable replies."""

import json
import sqlite3

import numpy as np
import pytest

from robot_pref.feedback import LabelConfig, load_labels
from robot_pref.feedback.config import ProgressConfig
from robot_pref.feedback.mock_server import GARBAGE, MockVLM, TruthTable
from robot_pref.feedback.progress import expand_pairs, parse_progress, sample_groups
from robot_pref.feedback.run import label
from robot_pref.feedback.synthetic import make_square_dataset

K = 4


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=6, length=20, size=64)


def test_parse_progress_reads_the_strict_format_robustly():
    reply = ("Let me look at each frame.\nFrame 1: 10%\n**Frame 2:** 35 %\n- frame 3 = 50\n"
             "Image 4: 75.5% (the gripper is closed)\n")
    assert parse_progress(reply, 4) == ([10.0, 35.0, 50.0, 75.5], None)
    assert parse_progress("Frame 2: 20%\nFrame 1: 0%\nFrame 2: 20%", 2) == ([0.0, 20.0], None)  # order, repeats
    for bad, k, why in (("Frame 1: 10%\nFrame 2: 20%\nFrame 4: 5%", 4, "frame(s) [3]"),
                        ("Frame 1: 10%\nFrame 2: 120%", 2, "outside 0..100"),
                        ("Frame 1: 10%\nFrame 2: 20%\nFrame 9: 30%", 2, "frame 9 named"),
                        ("Frame 1: 10%\nFrame 1: 40%\nFrame 2: 5%", 2, "two values"),
                        ("Frame 1: ten percent\nFrame 2: 20%", 2, "frame(s) [1]"),
                        ("Frame 1: 10 - 20%\nFrame 2: 20%", 2, "frame(s) [1]"),
                        (GARBAGE, 2, "frame(s) [1, 2]"), ("", 2, "frame(s) [1, 2]"), (None, 2, "frame(s) [1, 2]")):
        values, reason = parse_progress(bad, k)
        assert values is None and why in reason, (bad, reason)


def test_expand_pairs_maps_the_shuffled_answer_back_to_time_order():
    frames = np.array([10, 20, 30])
    shown = np.array([2, 0, 1])  # sent: frame 30, then 10, then 20
    rows = expand_pairs(frames, shown, [90.0, 10.0, 50.0])
    assert rows == [(10, 20, 1, 0.1, 0.5), (10, 30, 1, 0.1, 0.9), (20, 30, 1, 0.5, 0.9)]
    rows = expand_pairs(frames, np.array([0, 1, 2]), [40.0, 40.0, 20.0])
    assert [r[2] for r in rows] == [-1, 0, 0]  # equal progress is a tie; a regression prefers the earlier frame
    assert len(expand_pairs(np.arange(8), np.arange(8)[::-1], list(range(8)))) == 28  # K(K-1)/2


def test_groups_cover_each_episode_and_are_shuffled(ds):
    frames, shown = sample_groups(ds, "agentview_64", 50, K, seed=3)
    ep = ds.episode_of(frames.reshape(-1)).reshape(frames.shape)
    assert (ep == ep[:, :1]).all() and (np.diff(frames, axis=1) > 0).all()  # one episode, distinct, in order
    assert (np.sort(shown, axis=1) == np.arange(K)).all() and (shown != np.arange(K)).any(axis=1).mean() > 0.8
    again, _ = sample_groups(ds, "agentview_64", 50, K, seed=3)
    np.testing.assert_array_equal(frames, again)
    with pytest.raises(ValueError, match="--gvl.frames"):
        sample_groups(ds, "agentview_64", 1, 100, seed=0)


def cfg_for(ds, out, srv, pairs=60, **kw):
    budget = kw.pop("budget", 0)
    return LabelConfig(dataset=ds.path, camera="agentview", labeler="progress", pairs=pairs, out=str(out),
                       progress=False, budget=budget, gvl=ProgressConfig(base_url=srv.url, model="mock", frames=K,
                                                                         concurrency=4, **kw))


def test_progress_labels_match_the_truth_and_a_rerun_asks_nothing(ds, tmp_path):
    truth = TruthTable(ds, "agentview_64")
    with MockVLM(truth=truth) as srv:
        summary = label(cfg_for(ds, tmp_path, srv))
        first = list(srv.requests)
        again = label(cfg_for(ds, tmp_path, srv))
        assert len(srv.requests) == len(first)  # the rerun made 0 requests
    assert len(first) == 10 and {r.kind for r in first} == {"progress"}  # 60 pairs / 6 per request
    c = summary["counts"]
    assert c["requests_asked"] == 10 and c["images_sent"] == 40 and c["answered"] == 60 and c["labels"] == 60
    assert again["counts"]["cached"] == 60 and again["counts"]["requests_cached"] == 10
    assert again["counts"]["requests_asked"] == 0 and again["counts"]["images_sent"] == 0
    labels = load_labels(tmp_path)
    r = ds.ground_truth("reward").astype(np.float64)
    norm = (r - r.min()) / np.ptp(r)
    ra, rb = norm[labels.index_a], norm[labels.index_b]
    np.testing.assert_array_equal(labels.label, np.where(np.abs(rb - ra) < 1e-3, -1, (rb > ra).astype(int)))
    np.testing.assert_allclose(labels.extra["gap"], rb - ra, atol=1e-3)  # the predicted progress gap per pair
    np.testing.assert_allclose(labels.extra["progress_a"], ra, atol=1e-3)
    assert (ds.episode_of(labels.index_a) == ds.episode_of(labels.index_b)).all()
    assert (labels.index_a < labels.index_b).all()
    requests, per = np.unique(labels.extra["request"], return_counts=True)
    assert len(requests) == 10 and (per == 6).all()  # one row per pair, provenance = the request
    assert labels.extra["attempts"].sum() == 10  # usage counted once per request
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        meta = json.loads(conn.execute("SELECT meta FROM answers LIMIT 1").fetchone()[0])
    assert len(meta["frames"]) == K and labels.extra["images"].sum() == 10 * K


def test_request_and_image_budgets_stop_and_resume(ds, tmp_path):
    with MockVLM() as srv:
        runs = [label(cfg_for(ds, tmp_path, srv, budget=3))["counts"]]
        asked = [len(srv.requests)]
        runs.append(label(cfg_for(ds, tmp_path, srv, max_images=2 * K + 1))["counts"])  # 9 images: 2 requests
        asked.append(len(srv.requests))
        runs.append(label(cfg_for(ds, tmp_path, srv))["counts"])
        asked.append(len(srv.requests))
        distinct = {r.query for r in srv.requests}
    assert asked == [3, 5, 10] and len(distinct) == 10  # nothing asked twice
    assert runs[0]["not_asked"] == 60 - 18 and runs[0]["labels"] == 18 and runs[0]["images_sent"] == 3 * K
    assert runs[1]["cached"] == 18 and runs[1]["answered"] == 12 and runs[1]["not_asked"] == 30
    assert runs[2]["cached"] == 30 and runs[2]["answered"] == 30 and runs[2]["not_asked"] == 0
    assert len(load_labels(tmp_path)) == 60


def test_unparsable_replies_are_retried_three_times_and_never_exported(ds, tmp_path):
    plan: dict[str, str] = {}

    def faults(req):  # request 1: garbage once; request 2: always garbage; request 3: cut off once
        fault = plan.setdefault(req.query, ["garbage-once", "garbage", "truncated", None][min(len(plan), 3)])
        if fault == "garbage":
            return "garbage"
        return fault.replace("-once", "") if fault and req.attempt == 0 else None

    with MockVLM(faults=faults) as srv:
        runs = []
        for _ in range(4):
            start = len(srv.requests)
            runs.append((label(cfg_for(ds, tmp_path, srv, pairs=24))["counts"], len(srv.requests) - start))
            if len(runs) == 1:
                first = load_labels(tmp_path)
    (c1, n1), (c2, n2), (c3, n3), (c4, n4) = runs
    assert n1 == 4 and c1["unparsable"] == 18 and c1["answered"] == 6 and len(first) == 6
    assert set(first.extra["status"]) == {"labeled"}  # an unparsable reply is no tie
    assert n2 == 3 and c2["answered"] == 12 and c2["unparsable"] == 6  # the 3 failures asked again
    assert n3 == 1 and c3["given_up"] == 6 and n4 == 0 and c4["given_up"] == 6  # 3 tries, then given up
    assert len(load_labels(tmp_path)) == 18
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        rows = conn.execute("SELECT raw, meta FROM answers WHERE status = 'unparsable'").fetchall()
    assert len(rows) == 6 and all(GARBAGE in raw and json.loads(m)["tries"] == 3 for raw, m in rows)
    assert all(len(json.loads(m)["earlier_raw"]) == 2 for _, m in rows)
