"""CLIP labeler with a tiny open_clip model built from a JSON config (random weights, no download)."""

import asyncio
import json
import sqlite3

import numpy as np
import pytest
import torch

from robot_pref.feedback import ClipConfig, LabelConfig, Query, load_labels
from robot_pref.feedback.clip import ClipLabeler, ClipScorer, clip_actor_options, pick_device
from robot_pref.feedback.run import label
from robot_pref.feedback.synthetic import GOAL, make_square_dataset

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "robot-pref-tiny-clip.json"
    path.write_text(json.dumps(TINY))
    return ClipConfig(model="robot-pref-tiny-clip", pretrained="", model_config=str(path), batch_size=8)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=4, length=16)


def test_batched_scores_equal_one_at_a_time(ds, tiny):
    scorer = ClipScorer(tiny, GOAL)
    frames = ds.get("frames/agentview_32", np.arange(37))  # not a multiple of the batch size
    batched = scorer.score(frames)
    single = np.concatenate([scorer.score(frames[i : i + 1]) for i in range(len(frames))])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    assert batched.shape == (37,) and np.ptp(batched) > 1e-4  # frames do score differently
    # scores are cosines of unit embeddings
    assert (np.abs(batched) <= 1 + 1e-6).all()


def test_vlm_rm_projection(ds, tiny):
    frames = ds.get("frames/agentview_32", np.arange(20))
    cosine = ClipScorer(tiny, GOAL).score(frames)
    same = ClipScorer(ClipConfig(**{**tiny.__dict__, "baseline": "a dark scene", "alpha": 0.0}), GOAL)
    np.testing.assert_allclose(same.score(frames), cosine, atol=1e-5)  # alpha 0: P = I gives back the cosine
    full = ClipScorer(ClipConfig(**{**tiny.__dict__, "baseline": "a dark scene", "alpha": 1.0}), GOAL)
    # alpha 1: only the component along the baseline->goal direction counts
    e = full.model.encode_image(full.preprocess(frames)).float()
    e = (e / e.norm(dim=-1, keepdim=True)).detach()
    d = full.goal - ClipScorer(ClipConfig(**{**tiny.__dict__}), "a dark scene").goal
    d = d / d.norm()
    expect = 1 - 0.5 * (((e - full.goal) @ d) ** 2).numpy()
    np.testing.assert_allclose(full.score(frames), expect, atol=1e-5)
    assert np.abs(full.score(frames) - cosine).max() > 1e-3


def test_placement_uses_a_gpu_share_only_when_the_cluster_has_gpus(tiny):
    assert clip_actor_options(tiny, cluster_gpus=0) == {"num_cpus": 1}
    assert clip_actor_options(ClipConfig(gpu_fraction=0.5), cluster_gpus=2) == {"num_cpus": 1, "num_gpus": 0.5}
    assert clip_actor_options(ClipConfig(device="cpu"), cluster_gpus=2) == {"num_cpus": 1}
    with pytest.raises(ValueError, match="no GPUs"):
        clip_actor_options(ClipConfig(device="cuda"), cluster_gpus=0)
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            pick_device("cuda")


def test_clip_labels_through_ray_actors(ds, tiny, tmp_path, ray_session):
    cfg = LabelConfig(dataset=ds.path, camera="agentview_32", labeler="clip", pairs=40, workers=1, out=str(tmp_path),
                      progress=False, clip=tiny)
    summary = label(cfg)
    assert summary["counts"]["answered"] == 40
    labels = load_labels(tmp_path)
    scorer = ClipScorer(tiny, GOAL)  # same seed: the actors built the same random weights
    sa = scorer.score(ds.get("frames/agentview_32", labels.index_a))
    sb = scorer.score(ds.get("frames/agentview_32", labels.index_b))
    clear = np.abs(sb - sa) > 1e-4  # the actors may run on a GPU: leave float-noise near-ties out
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(labels.label[clear], (sb > sa)[clear].astype(int))
    with sqlite3.connect(tmp_path / "store.sqlite") as conn:
        metas = [json.loads(m) for (m,) in conn.execute("SELECT meta FROM answers")]
    assert {m["device"] for m in metas} == {"cuda" if torch.cuda.is_available() else "cpu"}


def test_margin_turns_close_calls_into_ties(ds, tiny):
    rng = np.random.default_rng(1)
    a, b = rng.choice(ds.n_frames, 30, replace=False), rng.choice(ds.n_frames, 30, replace=False)
    fa, fb = ds.get("frames/agentview_32", a), ds.get("frames/agentview_32", b)
    plain = ClipLabeler(tiny, GOAL)
    qs = [Query(str(i), int(x), int(y), fa[i], fb[i]) for i, (x, y) in enumerate(zip(a, b))]
    gaps = np.array([x.meta["score_b"] - x.meta["score_a"] for x in asyncio.run(plain.label(qs))])
    margin = float(np.median(np.abs(gaps)))
    wide = ClipLabeler(ClipConfig(**{**tiny.__dict__, "margin": margin}), GOAL)
    labels = np.array([x.label for x in asyncio.run(wide.label(qs))])
    np.testing.assert_array_equal(labels == -1, np.abs(gaps) <= margin)
    np.testing.assert_array_equal(labels[labels != -1], (gaps > 0)[labels != -1])
    # the margin is part of the query: its answers never come from the other setting's cache
    assert plain.query_keys(a, b, fa, fb)[0] != wide.query_keys(a, b, fa, fb)[0]
