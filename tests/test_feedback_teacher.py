"""B-Pref teachers: each noise model's statistics match its definition over many pairs."""

import asyncio
import hashlib

import numpy as np
import pytest

from robot_pref.feedback import Query, TeacherConfig
from robot_pref.feedback.synthetic import make_square_dataset
from robot_pref.feedback.teacher import TeacherLabeler

N = 20_000


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_square_dataset(tmp_path_factory.mktemp("data") / "sq.zarr", episodes=20, length=50)


@pytest.fixture(scope="module")
def pairs(ds):
    rng = np.random.default_rng(0)
    a = rng.integers(0, ds.n_frames, N)
    b = rng.integers(0, ds.n_frames, N)
    return a, b, [hashlib.sha256(f"{i}".encode()).hexdigest() for i in range(N)]  # keys are sha256 digests


def decide(ds, pairs, **kw):
    t = TeacherLabeler(TeacherConfig(**kw), "goal", dataset=ds)
    label, skip, ra, rb = t.decide(*pairs)
    return t, label, skip, ra, rb


def test_oracle_is_rational(ds, pairs):
    _, label, skip, ra, rb = decide(ds, pairs, kind="oracle")
    np.testing.assert_array_equal(label, (ra < rb).astype(np.int8))
    assert not skip.any()


def test_mistake_flips_eps_of_labels(ds, pairs):
    _, oracle, *_ = decide(ds, pairs, kind="oracle")
    for eps in (0.1, 0.3):
        _, label, *_ = decide(ds, pairs, kind="mistake", eps=eps)
        rate = np.mean(label != oracle)
        assert abs(rate - eps) < 4 * np.sqrt(eps * (1 - eps) / N), rate


def test_stochastic_matches_bradley_terry(ds, pairs):
    beta = 8.0
    _, label, _, ra, rb = decide(ds, pairs, kind="stochastic", beta=beta)
    p = 1 / (1 + np.exp(-beta * (rb - ra)))
    bins = np.digitize(p, [0.2, 0.4, 0.6, 0.8])
    for k in range(5):
        sel = bins == k
        assert sel.sum() > 500
        assert abs(label[sel].mean() - p[sel].mean()) < 4 * np.sqrt(0.25 / sel.sum())
    _, default_beta, *_ = decide(ds, pairs, kind="stochastic")  # preset beta = 1: close to a coin flip
    assert 0.2 < np.mean(default_beta != (ra < rb)) < 0.5


def test_skip_and_equal_thresholds_are_relative_to_average_return(ds, pairs):
    t, label, skip, ra, rb = decide(ds, pairs, kind="skip", skip=0.4)
    avg = ds.ground_truth("reward").mean()
    np.testing.assert_array_equal(skip, np.maximum(ra, rb) < 0.4 * avg)
    assert 0 < skip.mean() < 0.5
    answers = asyncio.run(t.label([Query(k, int(a), int(b)) for a, b, k in zip(*pairs[:2], pairs[2][:200])]))
    assert {a.status for a, s in zip(answers, skip[:200]) if s} <= {"skipped"}
    _, label, skip, ra, rb = decide(ds, pairs, kind="equal", equal=0.2)
    tie = np.abs(ra - rb) < 0.2 * avg
    assert 0.02 < tie.mean() < 0.5
    np.testing.assert_array_equal(label == -1, tie)
    np.testing.assert_array_equal(label[~tie], (ra < rb)[~tie])
    assert not skip.any()


def test_myopic_discounts_earlier_steps(ds, pairs):
    _, label, _, ra, rb = decide(ds, pairs, kind="myopic", segment=6)
    r = ds.ground_truth("reward").astype(np.float64)
    starts = ds.episode_starts[ds.episode_of(np.arange(ds.n_frames))]

    def ret(t):
        return sum(0.9**k * r[t - k] for k in range(6) if t - k >= starts[t])

    a, b, _ = pairs
    expect = np.array([ret(x) < ret(y) for x, y in zip(a[:2000], b[:2000])], dtype=np.int8)
    np.testing.assert_array_equal(label[:2000], expect)
    undiscounted = (ra < rb).astype(np.int8)[:2000]
    assert (expect != undiscounted).sum() > 0  # the discount changes some answers


def test_answers_depend_on_the_query_not_the_batch(ds, pairs):
    t = TeacherLabeler(TeacherConfig(kind="stochastic"), "goal", dataset=ds)
    qs = [Query(k, int(a), int(b)) for a, b, k in zip(*pairs[:2], pairs[2][:300])]
    whole = [a.label for a in asyncio.run(t.label(qs))]
    split = [a.label for a in asyncio.run(t.label(qs[150:])) + asyncio.run(t.label(qs[:150]))]
    assert whole == split[150:] + split[:150]


def test_the_same_data_written_again_gets_the_same_labels_under_other_store_keys(tmp_path):
    """Two writes of the same episodes (each gets new uuid4 episode ids, as two collects of one seed do):
    the teacher's mistakes follow what the frames show, so the labels agree; the store keys differ, so
    neither dataset is ever served the other's stored answers. Another teacher seed draws other mistakes."""
    one = make_square_dataset(tmp_path / "one.zarr", episodes=8, length=25)
    two = make_square_dataset(tmp_path / "two.zarr", episodes=8, length=25)
    assert one.identity != two.identity
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, one.n_frames, 2000), rng.integers(0, one.n_frames, 2000)

    def answers(ds, **kw):
        t = TeacherLabeler(TeacherConfig(**{"kind": "mistake", "eps": 0.3, **kw}), "goal", dataset=ds)
        keys = t.query_keys(a, b)
        return keys, np.array([x.label for x in asyncio.run(t.label([Query(k, int(i), int(j))
                                                                     for k, i, j in zip(keys, a, b)]))])

    keys_one, labels_one = answers(one)
    keys_two, labels_two = answers(two)
    assert not set(keys_one) & set(keys_two)
    np.testing.assert_array_equal(labels_one, labels_two)
    _, oracle = answers(one, eps=0.0)
    assert 0.25 < np.mean(labels_one != oracle) < 0.35  # still eps of the answers flipped
    _, reseeded = answers(one, seed=1)
    assert 0.3 < np.mean(reseeded != labels_one) < 0.6  # independent mistakes: 2 eps (1 - eps) = 0.42


def binned(gap, n_bins=5):
    """Bins of the normalised gap with enough pairs each (quantiles of the non-tied pairs)."""
    edges = np.quantile(gap[gap > 0], np.linspace(0, 1, n_bins + 1))
    return [(gap > lo) & (gap <= hi) for lo, hi in zip(edges[:-1], edges[1:])]


def test_vlm_like_accuracy_and_abstention_follow_the_gap(ds, pairs):
    from robot_pref.feedback.teacher import VLMErrorModel

    t, label, skip, ra, rb = decide(ds, pairs, kind="vlm-like")
    model = VLMErrorModel()
    gap = np.abs(rb - ra) / np.ptp(ds.ground_truth("reward"))
    truth = (rb > ra).astype(np.int8)
    accs = []
    for sel in binned(gap):
        answered = sel & (label != -1)
        abst = model.p_abstain(gap[sel]).mean()
        assert abs(np.mean(label[sel] == -1) - abst) < 4 * np.sqrt(abst * (1 - abst) / sel.sum()) + 1e-9
        acc = model.p_correct(gap[answered]).mean()
        accs.append(np.mean(label[answered] == truth[answered]))
        assert abs(accs[-1] - acc) < 4 * np.sqrt(acc * (1 - acc) / answered.sum()), (accs[-1], acc)
    assert accs[0] < 0.62 and accs[-1] > 0.9  # near chance on near-ties, right on obvious pairs
    tie = gap == 0
    assert abs(np.mean(label[tie] == -1) - model.abstain) < 0.05 and not skip.any()
    assert t.settings()["errors"] == model.settings()


def test_vlm_like_position_bias_prefers_image_1_when_unsure(ds, pairs):
    from robot_pref.feedback.teacher import VLMErrorModel

    model = VLMErrorModel(position_bias=0.8, abstain=0.0, floor=0.6, midpoint=0.3, width=0.1)
    _, label, _, ra, rb = decide(ds, pairs, kind="vlm-like", position_bias=0.8, abstain=0.0, floor=0.6,
                                 midpoint=0.3, width=0.1)
    gap = np.abs(rb - ra) / np.ptp(ds.ground_truth("reward"))
    truth = (rb > ra).astype(np.int8)
    assert not (label == -1).any()
    for sel in binned(gap, 4):
        u = model.p_unsure(gap[sel])
        expect_image1 = ((1 - u) * (truth[sel] == 0) + u * 0.8).mean()  # right when sure, else "Image 1" w.p. 0.8
        assert abs(np.mean(label[sel] == 0) - expect_image1) < 4 * np.sqrt(0.25 / sel.sum())
        when_b = sel & (truth == 1)  # the bias costs accuracy exactly where Image 2 is the right answer
        assert np.mean(label[when_b] == 1) < np.mean(label[sel & (truth == 0)] == 0)
    _, unbiased, *_ = decide(ds, pairs, kind="vlm-like", abstain=0.0, floor=0.6, midpoint=0.3, width=0.1)
    assert abs(np.mean(unbiased[gap > 0] == 0) - np.mean(truth[gap > 0] == 0)) < 0.02


def test_vlm_like_parameters_are_checked(ds):
    with pytest.raises(ValueError, match="floor <= ceiling"):
        TeacherLabeler(TeacherConfig(kind="vlm-like", floor=0.4), "goal", dataset=ds)
    with pytest.raises(ValueError, match="--teacher.kind vlm-like"):
        TeacherLabeler(TeacherConfig(kind="oracle", position_bias=0.7), "goal", dataset=ds)
    with pytest.raises(ValueError, match="do not apply"):
        TeacherLabeler(TeacherConfig(kind="vlm-like", eps=0.1), "goal", dataset=ds)
