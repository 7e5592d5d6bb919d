"""VLM labeler against a real local HTTP server speaking the OpenAI chat-completions protocol."""

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from robot_pref.feedback import LabelConfig, Query, VLMConfig, load_labels
from robot_pref.feedback.labelers import Secret
from robot_pref.feedback.mock_server import GARBAGE, MockVLM
from robot_pref.feedback.run import label
from robot_pref.feedback.synthetic import GOAL, make_square_dataset
from robot_pref.feedback.vlm import VLMLabeler, encode_image, parse_label, retry_after_s

FRAMES = "frames/agentview_32"


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=6, length=20)


def query_hash(ds, a, b):
    """The mock server's id of the analysis request for pair (a, b)."""
    fa, fb = ds.get(FRAMES, np.array([a, b]))
    return hashlib.sha256((encode_image(fa, VLMConfig()) + encode_image(fb, VLMConfig())).encode()).hexdigest()


def truth(ds, labels):
    r = ds.ground_truth("reward")
    ra, rb = r[labels.index_a], r[labels.index_b]
    return np.where(ra == rb, -1, (rb > ra).astype(int))


def test_parse_label_and_retry_after():
    assert parse_label("1") == 1 and parse_label(" -1 \n") == -1 and parse_label("**0**") == 0
    assert parse_label("Image 2 is better.\nAnswer: 1") == 1
    assert parse_label("The answer is 1 because ...") is None
    assert parse_label("") is None and parse_label(None) is None and parse_label("10") is None
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 0 <= retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0
    assert retry_after_s({}) is None


def test_two_stage_labels_follow_the_images(ds, tmp_path, ray_session):
    with MockVLM(latency=0.02) as srv:
        vlm = VLMConfig(base_url=srv.url, model="mock-vlm", concurrency=4, price_input_per_mtok=2.0,
                        price_output_per_mtok=10.0)
        summary = label(LabelConfig(dataset=ds.path, camera="agentview", labeler="vlm", pairs=30, workers=2,
                                    out=str(tmp_path), progress=False, vlm=vlm))
        kinds = [r.kind for r in srv.requests]
    assert summary["counts"]["answered"] == 30 and summary["counts"]["failed"] == 0
    assert kinds.count("analysis") == 30 and kinds.count("label") == 30  # two calls per label
    labels = load_labels(tmp_path)
    np.testing.assert_array_equal(labels.label, truth(ds, labels))
    assert (labels.extra["prompt_tokens"] > 170).all() and (labels.extra["completion_tokens"] > 0).all()
    cost = (labels.extra["prompt_tokens"] * 2.0 + labels.extra["completion_tokens"] * 10.0) / 1e6
    np.testing.assert_allclose(labels.extra["cost_usd"], cost)
    assert (labels.extra["latency_s"] >= 0.04).all() and (labels.extra["attempts"] == 2).all()
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        raw = conn.execute("SELECT raw FROM answers LIMIT 1").fetchone()[0]
    assert "red square covering about" in raw and "[label]" in raw  # the analysis is kept with the answer


def test_faults_are_retried_and_garbage_is_a_failure_asked_again(ds, tmp_path, ray_session):
    plan: dict[str, str | None] = {}
    cycle = ["429", "500", "drop", "slow", "garbage", "always-500", None]

    def faults(req):
        if req.kind != "analysis":
            return None
        fault = plan.setdefault(req.query, cycle[len(plan) % len(cycle)])
        if fault == "always-500":
            return "500"
        return fault if req.attempt == 0 else None

    n = 21
    vlm = VLMConfig(model="mock", concurrency=8, timeout_s=1.0, backoff_s=0.05, max_retries=2)
    with MockVLM(faults=faults, retry_after="1", slow_s=3.0) as srv:
        vlm.base_url = srv.url
        cfg = LabelConfig(dataset=ds.path, camera="agentview", labeler="vlm", pairs=n, out=str(tmp_path),
                          progress=False, vlm=vlm)
        summary = label(cfg)
        first = list(srv.requests)
        by_fault = {f: [q for q, g in plan.items() if g == f] for f in cycle}
        assert all(len(v) == 3 for v in by_fault.values())
        analysis = {}
        for r in first:
            if r.kind == "analysis":
                analysis.setdefault(r.query, []).append(r.t)
        for f in ("429", "500", "drop", "slow"):
            assert all(len(analysis[q]) == 2 for q in by_fault[f]), f
        assert all(len(analysis[q]) == 3 for q in by_fault["always-500"])  # 1 + max_retries, then given up
        assert all(analysis[q][1] - analysis[q][0] >= 0.95 for q in by_fault["429"])  # Retry-After: 1 honoured
        assert all(analysis[q][1] - analysis[q][0] >= 0.95 for q in by_fault["slow"])  # the 1 s timeout fired
        counts = summary["counts"]
        assert counts["failed"] == 3 and counts["answered"] == n - 6 and counts["unparsable"] == 3
        labels = load_labels(tmp_path)
        assert len(labels) == n - 6 and set(labels.extra["status"]) <= {"labeled", "abstained"}
        hashes = {query_hash(ds, a, b) for a, b in zip(labels.index_a, labels.index_b)}
        assert hashes.isdisjoint(by_fault["garbage"])  # an unparsable reply is no tie
        np.testing.assert_array_equal(labels.label, truth(ds, labels))
        with sqlite3.connect(tmp_path / "store.sqlite") as conn:
            raws = [r[0] for r in conn.execute("SELECT raw FROM answers WHERE status = 'unparsable'")]
        assert len(raws) == 3 and all(GARBAGE in r for r in raws)  # the raw text is kept
        # failed queries were not stored and unparsable ones are tried again: a rerun asks exactly those
        plan.update({q: None for q in by_fault["always-500"]})
        again = label(cfg)
        asked = {r.query for r in srv.requests[len(first):] if r.kind == "analysis"}
    assert asked == set(by_fault["always-500"]) | set(by_fault["garbage"])
    assert again["counts"]["cached"] == n - 6 and again["counts"]["answered"] == 6
    labels = load_labels(tmp_path)
    assert len(labels) == n
    np.testing.assert_array_equal(labels.label, truth(ds, labels))
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        metas = [json.loads(m) for (m,) in conn.execute("SELECT meta FROM answers") if "earlier_raw" in m]
    assert len(metas) == 3 and all(m["tries"] == 2 and GARBAGE in m["earlier_raw"][0] for m in metas)


def frame_queries(ds, n):
    rng = np.random.default_rng(0)
    a, b = rng.choice(ds.n_frames, n, replace=False), rng.choice(ds.n_frames, n, replace=False)
    fa, fb = ds.get(FRAMES, a), ds.get(FRAMES, b)
    return [Query(uuid.uuid4().hex, int(x), int(y), fa[i], fb[i]) for i, (x, y) in enumerate(zip(a, b))]


def test_requests_per_minute_spacing(ds):
    with MockVLM() as srv:
        cfg = VLMConfig(base_url=srv.url, model="m", prompt="single-stage", concurrency=8, requests_per_minute=600)
        answers = asyncio.run(VLMLabeler(cfg, GOAL, api_key=Secret("x")).label(frame_queries(ds, 12)))
        times = np.sort([r.t for r in srv.requests])
    assert all(a.status in ("labeled", "abstained") for a in answers)
    assert {r.kind for r in srv.requests} == {"single"} and len(times) == 12
    # 600/min = one request per 0.1 s at send time (arrival adds connection-setup jitter, < 0.15 s)
    assert times[-1] - times[0] >= 1.1 - 0.15 and (times[4:] - times[:-4]).min() >= 0.4 - 0.15


def test_client_errors_fail_fast_and_the_key_is_masked(ds):
    with MockVLM(api_key="right-key") as srv:
        lab = VLMLabeler(VLMConfig(base_url=srv.url, model="m", max_retries=5), GOAL, api_key=Secret("wrong-key"))
        (answer,) = asyncio.run(lab.label(frame_queries(ds, 1)))
        assert answer.status == "failed" and "HTTP 401" in answer.raw
        assert srv.rejected == 1 and not srv.requests  # a 4xx is not retried
    assert "wrong-key" not in repr(lab.api_key) + str(lab.api_key)


def test_killed_run_resumes_without_asking_twice_and_never_writes_the_key(ds, tmp_path, ray_session):
    key = f"sk-test-{uuid.uuid4().hex}"
    out = tmp_path / "labels"
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "ROBOT_PREF_TEST_VLM_KEY": key}
    with MockVLM(latency=0.15, api_key=key) as srv:
        cmd = [sys.executable, "-m", "robot_pref", "-v", "label", "--dataset", ds.path, "--camera", "agentview_32",
               "--labeler", "vlm", "--pairs", "40", "--out", str(out), "--address", address,
               "--vlm.base-url", srv.url, "--vlm.model", "mock", "--vlm.api-key-env", "ROBOT_PREF_TEST_VLM_KEY",
               "--vlm.concurrency", "2"]
        logs = [tmp_path / "run1.log", tmp_path / "run2.log"]
        with open(logs[0], "wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
            deadline = time.time() + 120
            stored = 0
            while stored < 8 and time.time() < deadline and proc.poll() is None:
                time.sleep(0.1)
                try:
                    with sqlite3.connect(f"file:{out / 'store.sqlite'}?mode=ro", uri=True, timeout=5) as conn:
                        stored = conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:  # the store is not created yet
                    pass
            assert proc.poll() is None, logs[0].read_text()[-3000:]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        with sqlite3.connect(out / "store.sqlite") as conn:
            done = conn.execute("SELECT index_a, index_b FROM answers").fetchall()
        assert 8 <= len(done) < 40 and not (out / "labels.npz").exists()
        time.sleep(1.0)  # the killed driver's actors are reaped by Ray
        boundary = len(srv.requests)
        with open(logs[1], "wb") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=True, timeout=300)
        asked_again = {r.query for r in srv.requests[boundary:] if r.kind == "analysis"}
        assert all(r.authorization == f"Bearer {key}" for r in srv.requests)  # the key was really used
    assert asked_again.isdisjoint({query_hash(ds, a, b) for a, b in done})  # nothing answered is asked twice
    assert len(asked_again) <= 40 - len(done)
    labels = load_labels(out)
    assert len(labels) == 40
    np.testing.assert_array_equal(labels.label, truth(ds, labels))
    # the key is in no log, no file beside or inside the dataset, and no Ray log
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    places = [logs[0], logs[1], *out.rglob("*"), *Path(ds.path).rglob("*"), *(session / "logs").rglob("*")]
    leaks = [p for p in places if p.is_file() and key.encode() in p.read_bytes()]
    assert not leaks
    assert b"label[vlm]" in logs[1].read_bytes()  # the progress bar ran


def test_unparsable_replies_are_retried_up_to_three_tries_and_never_exported(ds, tmp_path, ray_session):
    """Empty and truncated analyses fail without a labeling call; garbage is asked 3 times in all."""
    from robot_pref.reward.train import make_pairs

    groups = ["garbage", "empty", "truncated", None]
    plan: dict[str, str | None] = {}

    def faults(req):
        if req.kind != "analysis":
            return None
        fault = plan.setdefault(req.query, groups[len(plan) % len(groups)])
        return fault if fault == "garbage" or req.attempt == 0 else None

    n = 8
    with MockVLM(faults=faults) as srv:
        cfg = LabelConfig(dataset=ds.path, camera="agentview", labeler="vlm", pairs=n, out=str(tmp_path),
                          progress=False, vlm=VLMConfig(base_url=srv.url, model="mock", concurrency=4))
        runs, asked = [], []
        for _ in range(4):
            start = len(srv.requests)
            runs.append(label(cfg)["counts"])
            asked.append([r for r in srv.requests[start:]])
            if len(runs) == 1:
                first = load_labels(tmp_path)
    by = {g: {q for q, f in plan.items() if f == g} for g in groups}
    # run 1: 8 analyses; only the usable ones (4 good + 2 garbage) reach the labeling call
    assert sum(r.kind == "analysis" for r in asked[0]) == n and sum(r.kind == "label" for r in asked[0]) == 4
    assert runs[0]["unparsable"] == 6 and runs[0]["answered"] == 2 and runs[0]["given_up"] == 0
    assert len(first) == 2 and (first.label != -1).all()
    assert not (make_pairs(first.index_a, first.index_b, first.label, ties="soft").y == 0.5).any()
    # run 2 asks the 6 failures again (the empty/truncated ones now answer); runs 3 asks garbage a 3rd time
    assert {r.query for r in asked[1] if r.kind == "analysis"} == by["garbage"] | by["empty"] | by["truncated"]
    assert runs[1]["cached"] == 2 and runs[1]["answered"] == 4 and runs[1]["unparsable"] == 2
    assert {r.query for r in asked[2] if r.kind == "analysis"} == by["garbage"] and runs[2]["given_up"] == 2
    assert asked[3] == [] and runs[3]["given_up"] == 2 and runs[3]["cached"] == 6  # 3 tries: given up
    labels = load_labels(tmp_path)
    assert len(labels) == 6
    np.testing.assert_array_equal(labels.label, truth(ds, labels))
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        rows = conn.execute("SELECT label, raw, meta FROM answers WHERE status = 'unparsable'").fetchall()
    assert len(rows) == 2 and all(json.loads(m)["tries"] == 3 for _, _, m in rows)
    assert all(GARBAGE in raw and len(json.loads(m)["earlier_raw"]) == 2 for _, raw, m in rows)


def test_empty_or_cut_off_analysis_is_not_passed_to_the_label_call(ds):
    for fault, reason in (("empty", "analysis empty"), ("truncated", "analysis truncated")):
        with MockVLM(faults=lambda r, f=fault: f if r.kind == "analysis" else None) as srv:
            lab = VLMLabeler(VLMConfig(base_url=srv.url, model="m"), GOAL, api_key=Secret("x"))
            answers = asyncio.run(lab.label(frame_queries(ds, 2)))
            kinds = [r.kind for r in srv.requests]
        assert kinds == ["analysis", "analysis"]  # no labeling call was made
        assert all(a.status == "unparsable" and a.meta["reason"].startswith(reason) for a in answers)
        if fault == "truncated":
            assert all("red square covering" in a.raw for a in answers)  # the partial text is kept


def test_endpoint_is_part_of_the_cache_key(ds, tmp_path, ray_session):
    from robot_pref.feedback.vlm import endpoint_identity

    assert endpoint_identity("HTTP://LocalHost:80/v1/") == endpoint_identity("http://localhost/v1")
    assert endpoint_identity("https://u:sk-secret@api.x.com/v1?api-key=sk-secret&api-version=2") == (
        "https://api.x.com/v1?api-version=2")
    assert endpoint_identity("http://127.0.0.1:8000/v1") != endpoint_identity("http://127.0.0.1:8001/v1")
    counts = []
    with MockVLM() as one, MockVLM() as two:
        for srv in (one, two, one):
            counts.append(label(LabelConfig(dataset=ds.path, camera="agentview", labeler="vlm", pairs=6,
                                            out=str(tmp_path), progress=False,
                                            vlm=VLMConfig(base_url=srv.url + "/", model="same-name")))["counts"])
        assert len(one.requests) == len(two.requests) == 12  # the second server was asked everything
    assert [c["cached"] for c in counts] == [0, 0, 6]


def test_vlm_accuracy_against_the_mock_error_model_matches_the_model(tmp_path, ray_session):
    """The whole vlm path (sampler, PNG encoding, HTTP, parsing, store, export) measured against
    hidden truth: accuracy and abstention by gap bin match the server's error model."""
    from robot_pref.feedback.mock_server import TruthTable
    from robot_pref.feedback.teacher import VLMErrorModel

    big = make_square_dataset(tmp_path / "big.zarr", episodes=16, length=40, size=96)  # 93 distinct squares
    model = VLMErrorModel(position_bias=0.7)
    n = 1200
    with MockVLM(truth=TruthTable(big, "agentview_96"), errors=model) as srv:
        summary = label(LabelConfig(dataset=big.path, camera="agentview", labeler="vlm", pairs=n,
                                    out=str(tmp_path / "labels"), progress=False,
                                    vlm=VLMConfig(base_url=srv.url, model="mock", concurrency=16, timeout_s=10,
                                                  max_retries=1)))
    c = summary["counts"]  # pairs of equal-looking frames met again in a later chunk are served from the store
    assert c["answered"] + c["cached"] == n and c["failed"] == c["unparsable"] == 0, c
    labels = load_labels(tmp_path / "labels")
    r = big.ground_truth("reward").astype(np.float64)
    gap = np.abs(r[labels.index_b] - r[labels.index_a]) / np.ptp(r)
    right = (r[labels.index_b] > r[labels.index_a]).astype(int)
    edges = np.quantile(gap, [0, 1 / 3, 2 / 3, 1])
    accs = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (gap >= lo) & (gap <= hi)
        abst = model.p_abstain(gap[sel]).mean()
        assert abs(np.mean(labels.label[sel] == -1) - abst) < 4 * np.sqrt(abst * (1 - abst) / sel.sum()) + 0.01
        ans = sel & (labels.label != -1)
        u = model.p_unsure(gap[ans])
        expect = ((1 - u) + u * np.where(right[ans] == 0, 0.7, 0.3)).mean()  # sure: right; unsure: "Image 1" w.p. 0.7
        accs.append(np.mean(labels.label[ans] == right[ans]))
        assert abs(accs[-1] - expect) < 4 * np.sqrt(expect * (1 - expect) / ans.sum()) + 0.01, (accs[-1], expect)
    assert accs[0] < accs[-1] - 0.2  # a realistic VLM: errors concentrate on near-ties


def test_segment_queries_send_clips_and_answer_by_clip_progress(ds, tmp_path, ray_session):
    from robot_pref.feedback.labelers import clip_indices
    from robot_pref.feedback.mock_server import TruthTable

    start = int(ds.episode_starts[1])
    np.testing.assert_array_equal(clip_indices(ds, np.array([start + 5, start + 1]), 3, 2),
                                  [[start + 1, start + 3, start + 5], [start, start, start + 1]])  # clipped at the start
    with MockVLM(truth=TruthTable(ds, "agentview_32")) as srv:
        vlm = VLMConfig(base_url=srv.url, model="mock", prompt="single-stage", segment=3, segment_stride=2)
        summary = label(LabelConfig(dataset=ds.path, camera="agentview", labeler="vlm", pairs=20, out=str(tmp_path),
                                    progress=False, vlm=vlm))
        n_requests = len(srv.requests)
    assert summary["counts"]["answered"] + summary["counts"]["cached"] == 20 and 0 < n_requests <= 20
    assert summary["settings"]["segment"] == 3
    labels = load_labels(tmp_path)
    assert (labels.extra["images"][labels.extra["attempts"] > 0] == 6).all()  # 3 frames per side
    r = ds.ground_truth("reward").astype(np.float64)
    ra = r[clip_indices(ds, labels.index_a, 3, 2)].mean(1)
    rb = r[clip_indices(ds, labels.index_b, 3, 2)].mean(1)
    np.testing.assert_array_equal(labels.label, np.where(np.isclose(ra, rb), -1, (rb > ra).astype(int)))
