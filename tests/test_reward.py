"""Reward room: Bradley-Terry training, ensembles, checkpoints, active selection and relabeling.

Synthetic frames make the true progress visible (a bright square slides right as the task
progresses, at a random height, over noise), so a correct model must reach high accuracy and
correlation, and a broken loss or a flipped label must show in the numbers.
"""

import json

import numpy as np
import pytest
import torch

from robot_pref.data import Episode, TrajectoryDataset
from robot_pref.reward.config import FitRewardConfig, RelabelConfig

SIZE, T = 48, 30
KEY = f"agentview_{SIZE}"
TIERS = {"expert": (0.0, 1.0), "medium": (0.0, 0.5), "random": (0.0, 0.2)}


def synthetic_frames(progress: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    frames = rng.integers(0, 90, (len(progress), SIZE, SIZE, 3), dtype=np.uint8)
    top = int(rng.integers(0, SIZE - 8))
    for t, p in enumerate(progress):
        left = int(round(p * (SIZE - 8)))
        frames[t, top : top + 8, left : left + 8] = (230, 60, 60)
    return frames


def build_dataset(path, episodes_per_tier=4, seed=0) -> TrajectoryDataset:
    rng = np.random.default_rng(seed)
    ds = TrajectoryDataset.create(path, obs_dim=2, action_dim=1, state_dim=1, fps=20)
    for tier, (lo, hi) in TIERS.items():
        for _ in range(episodes_per_tier):
            if tier == "random":
                progress = np.clip(np.cumsum(rng.normal(0, 0.04, T)), lo, hi)
            else:
                progress = np.clip(np.linspace(lo, hi, T) + rng.normal(0, 0.02, T), 0, 1)
            ds.append_episode(Episode(obs=rng.normal(size=(T, 2)), action=rng.normal(size=(T, 1)),
                                      state=rng.normal(size=(T, 1)), frames={KEY: synthetic_frames(progress, rng)},
                                      true_reward=progress.astype(np.float32), tier=tier, task="slide"))
    return ds


def oracle_pairs(ds, n, seed=0, flip=False):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, ds.n_frames, n), rng.integers(0, ds.n_frames, n)
    true = ds.ground_truth("reward")
    label = np.where(true[a] == true[b], -1, (true[b] > true[a]).astype(np.int8)).astype(np.int8)
    if flip:
        label = np.where(label == -1, -1, 1 - label).astype(np.int8)
    return a, b, label


# exact-equality tests run on CPU (fp32); the CLI test below uses the default device (GPU + bf16 if present)
FAST = dict(camera=KEY, lr=1e-3, batch_size=32, epochs=40, patience=10, eval_frames=10_000, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_dataset(tmp_path_factory.mktemp("reward") / "slide.zarr")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A CNN ensemble fitted on 300 oracle labels, and its saved run directory."""
    from robot_pref.reward.models import save_reward_model
    from robot_pref.reward.train import fit

    a, b, label = oracle_pairs(dataset, 300)
    model, report = fit(dataset, a, b, label, FitRewardConfig(**FAST), progress=False)
    run = save_reward_model(model, tmp_path_factory.mktemp("run") / "cnn")
    return model, report, run


# ------------------------------------------------------------------------------------ loss and labels
def test_bradley_terry_loss_matches_its_equations():
    from robot_pref.reward.train import preference_loss

    r_a, r_b = torch.tensor([0.0, 1.0, -2.0, 0.3]), torch.tensor([0.0, -1.0, 2.0, 0.3])
    y = torch.tensor([1.0, 1.0, 1.0, 0.5])
    d = r_b - r_a
    plain = torch.nn.functional.binary_cross_entropy_with_logits(d, y, reduction="none")
    torch.testing.assert_close(torch.stack([preference_loss(r_a[i], r_b[i], y[i]) for i in range(4)]), plain)
    # the label says b is better: the loss must fall as r_b rises (a sign error or label flip fails here)
    assert preference_loss(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(1.0)) < \
        preference_loss(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1.0))
    # noise-aware: P = (1 - eps) sigma(d) + eps (1 - sigma(d)); a confidently "wrong" label costs <= -log eps
    eps, d_big = 0.1, torch.tensor(-20.0)
    p = (1 - eps) * torch.sigmoid(d_big) + eps * (1 - torch.sigmoid(d_big))
    robust = preference_loss(torch.tensor(0.0), d_big, torch.tensor(1.0), label_noise=eps)
    torch.testing.assert_close(robust, -torch.log(p))
    assert robust < -np.log(eps) + 1e-6 < preference_loss(torch.tensor(0.0), d_big, torch.tensor(1.0))


def test_ties_are_dropped_or_soft():
    from robot_pref.reward.train import make_pairs, preference_loss

    a, b, label = np.array([0, 1, 2, 3]), np.array([5, 6, 7, 3]), np.array([0, 1, -1, -1], np.int8)
    dropped = make_pairs(a, b, label, "drop")
    assert dropped.a.tolist() == [0, 1] and dropped.y.tolist() == [0.0, 1.0]
    soft = make_pairs(a, b, label, "soft")
    assert soft.y.tolist() == [0.0, 1.0, 0.5, 0.5] and len(soft.decided) == 2
    # a soft tie pulls the two rewards together: zero gradient at equality, restoring force otherwise
    r_a, r_b = torch.tensor(0.2, requires_grad=True), torch.tensor(0.2)
    preference_loss(r_a, r_b, torch.tensor(0.5)).backward()
    assert abs(r_a.grad.item()) < 1e-7
    r_a = torch.tensor(0.8, requires_grad=True)
    preference_loss(r_a, r_b, torch.tensor(0.5)).backward()
    assert r_a.grad.item() > 0.05  # descent lowers r_a towards r_b
    with pytest.raises(ValueError, match="labels must be"):
        make_pairs(a, b, np.array([0, 1, 2, 0]))


# ------------------------------------------------------------------------------------ training quality
def test_oracle_labels_give_an_accurate_reward(trained):
    _, report, _ = trained
    counts = report["counts"]
    assert counts["train_pairs"] + counts["val_pairs"] == counts["labels"] - counts["ties"]  # ties dropped
    assert report["val_accuracy"] >= 0.85
    assert report["val_true_order_accuracy"] >= 0.85
    assert report["label_agreement_with_truth"] == 1.0
    assert report["spearman"] >= 0.85 and report["pearson"] >= 0.7  # a flipped label or sign gives < 0
    assert report["spearman_within_episode"] >= 0.5
    assert report["eval_frames"] == 12 * T


def test_ensemble_members_differ_but_agree_on_the_trend(trained, dataset):
    model, _, _ = trained
    frames = dataset.get(f"frames/{KEY}")
    members = model.predict_members(frames)
    assert members.shape == (3, dataset.n_frames)
    np.testing.assert_allclose(model.predict(frames), members.mean(0), rtol=1e-6, atol=1e-6)
    true = dataset.ground_truth("reward")
    for i in range(3):
        assert np.corrcoef(members[i], true)[0, 1] > 0.6
        for j in range(i):
            assert np.abs(members[i] - members[j]).mean() > 0.01  # different init + different batches


def test_linear_head_keeps_learning_where_tanh_saturates(dataset):
    """Two frame sets both scored near the top (e.g. "gripper at the cube" vs "cube lifted"): under tanh
    their rewards are equal to 1e-3 and the BT gradient that would order them is ~tanh'(4) ~ 1e-3 of the
    linear head's, so it drowns among the other pairs' gradients (docs/REWARD.md)."""
    from robot_pref.reward.models import ModelSpec, RewardModel
    from robot_pref.reward.train import preference_loss

    true = dataset.ground_truth("reward")
    hover, lift = np.flatnonzero(np.abs(true - 0.5) < 0.05)[:8], np.flatnonzero(true > 0.95)[:8]
    x_hover = torch.from_numpy(dataset.get(f"frames/{KEY}", hover)).permute(0, 3, 1, 2)
    x_lift = torch.from_numpy(dataset.get(f"frames/{KEY}", lift)).permute(0, 3, 1, 2)
    gaps, grads = {}, {}
    for head in ("tanh", "linear"):
        model = RewardModel(ModelSpec(height=SIZE, width=SIZE, ensemble=1, augment="none", head=head), seed=0)
        with torch.no_grad():
            model.ensemble.params["9-weight"].mul_(100.0)  # the output Linear: frames' scores spread apart ...
            model.ensemble.params["9-bias"].fill_(4.0)  # ... around a saturated pre-activation of 4
        r_hover, r_lift = model(x_hover), model(x_lift)
        preference_loss(r_hover, r_lift, torch.ones_like(r_lift)).sum().backward()  # label: lift is better
        gaps[head] = (r_lift - r_hover).abs().mean().item()
        grads[head] = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    assert gaps["linear"] > 0.1 > 100 * gaps["tanh"]
    assert grads["linear"] > 100 * grads["tanh"]


def test_linear_head_with_output_penalty_fits_noisy_labels(dataset, tmp_path):
    """The linear head trains through `fit`, is unbounded (not tanh in disguise), stays centred by the
    r^2 penalty, and round-trips through its checkpoint."""
    from robot_pref.reward.models import load_reward_model, save_reward_model
    from robot_pref.reward.train import fit

    a, b, label = oracle_pairs(dataset, 300)
    flip = np.random.default_rng(1).random(len(label)) < 0.1  # a B-Pref mistake teacher's 10%
    label = np.where(flip & (label != -1), 1 - label, label).astype(np.int8)
    model, report = fit(dataset, a, b, label, FitRewardConfig(**FAST, head="linear", output_l2=0.01), progress=False)
    assert report["val_true_order_accuracy"] >= 0.85 and report["spearman"] >= 0.85
    r = model.predict(dataset.get(f"frames/{KEY}"))
    assert np.abs(r).max() > 1.5 and abs(r.mean()) < r.std()
    loaded = load_reward_model(save_reward_model(model, tmp_path / "linear"), device="cpu")
    assert loaded.spec.head == "linear"
    np.testing.assert_allclose(loaded.predict(dataset.get(f"frames/{KEY}")), r, atol=1e-5)
    with pytest.raises(ValueError, match="reward head"):
        fit(dataset, a, b, label, FitRewardConfig(**FAST, head="sigmoid"), progress=False)

def test_vmapped_and_looped_ensembles_agree():
    """The GPU path (one vmapped call) and the CPU path (a loop over weight views) compute the same thing."""
    import copy

    from robot_pref.reward.models import ModelSpec, RewardModel

    one = RewardModel(ModelSpec(type="resnet18", height=SIZE, width=SIZE, ensemble=2), seed=0).train()
    two = copy.deepcopy(one)
    x = torch.randint(0, 256, (2, 6, 3, SIZE, SIZE), dtype=torch.uint8)
    r1, r2 = one(x, per_member=True, vectorize=True), two(x, per_member=True, vectorize=False)
    torch.testing.assert_close(r1, r2, atol=1e-5, rtol=1e-4)
    r1.sum().backward()
    r2.sum().backward()
    for p1, p2 in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, atol=1e-4, rtol=1e-3)
    for (name, b1), b2 in zip(one.state_dict().items(), two.state_dict().values()):  # BatchNorm running stats
        torch.testing.assert_close(b1, b2, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_cnn(trained, dataset):
    from robot_pref.reward.models import load_reward_model

    model, _, run = trained
    assert sorted(p.name for p in run.iterdir()) == ["model.json", "model.safetensors"]
    loaded = load_reward_model(run, device="cpu")
    frames = dataset.get(f"frames/{KEY}", np.arange(0, dataset.n_frames, 7))
    np.testing.assert_allclose(loaded.predict_members(frames), model.predict_members(frames), atol=1e-6)
    assert loaded.spec.extra["camera"] == KEY and loaded.spec.extra["counts"]["labels"] == 300
    with pytest.raises(FileNotFoundError, match="fit-reward"):
        load_reward_model(run.parent / "nothing")


TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8,
                                             "head_width": 32},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.mark.parametrize("kind", ["resnet18", "clip-head"])
def test_checkpoint_round_trip_other_models(kind, dataset, tmp_path):
    from robot_pref.reward.models import load_reward_model, save_reward_model
    from robot_pref.reward.train import build_model

    config = tmp_path / "tiny-reward-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    cfg = FitRewardConfig(camera=KEY, model=kind, ensemble=2, clip_model="tiny-reward-clip", clip_pretrained="none",
                          clip_config=str(config), device="cpu")
    model = build_model(cfg, dataset)
    frames = dataset.get(f"frames/{KEY}", np.arange(0, 60, 5))
    model.train()(model.inputs(frames))  # a train-mode pass moves BatchNorm statistics off their init
    before = model.predict_members(frames)
    assert before.shape == (2, len(frames)) and np.abs(before[0] - before[1]).max() > 1e-4
    loaded = load_reward_model(save_reward_model(model, tmp_path / kind), device="cpu")
    np.testing.assert_allclose(loaded.predict_members(frames), before, atol=1e-5)
    if kind == "clip-head":  # frozen features are what the head trains on: computed once, no grad
        feats = model.inputs(frames)
        assert feats.shape == (len(frames), 32) and not feats.requires_grad
        assert not any(p.requires_grad for p in model.encoder.parameters())


def test_clip_head_trains_on_features_computed_once(dataset, tmp_path, monkeypatch):
    """The frozen encoder sees each labeled frame once (features cached), the head learns the trend."""
    import robot_pref.reward.train as train_module
    from robot_pref.reward.models import RewardModel

    config = tmp_path / "tiny-reward-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    encoded = []
    real_inputs = RewardModel.inputs

    def counting_inputs(self, frames, batch_size=256):
        encoded.append(len(frames))
        return real_inputs(self, frames, batch_size)

    monkeypatch.setattr(RewardModel, "inputs", counting_inputs)
    monkeypatch.setattr("robot_pref.reward.evaluation.evaluate", lambda *args, **kw: {})  # it encodes frames too
    a, b, label = oracle_pairs(dataset, 300)
    cfg = FitRewardConfig(**{**FAST, "model": "clip-head", "clip_model": "tiny-reward-clip", "clip_pretrained": "none",
                             "clip_config": str(config), "epochs": 60})
    model, report = train_module.fit(dataset, a, b, label, cfg, progress=False)
    used = label != -1  # ties are dropped: their frames are never encoded
    assert sum(encoded) == len(np.unique(np.concatenate([a[used], b[used]])))  # once per frame, over all epochs
    assert model.spec.type == "clip-head" and max(h["val_accuracy"] for h in report["history"]) >= 0.7


# ------------------------------------------------------------------------------------ CLI end to end
def test_fit_reward_cli_with_soft_ties(dataset, tmp_path):
    from robot_pref.cli import main
    from robot_pref.feedback import LabelSet
    from robot_pref.reward.models import load_reward_model

    a, b, label = oracle_pairs(dataset, 240, seed=3)
    true = dataset.ground_truth("reward")
    label[np.abs(true[a] - true[b]) < 0.05] = -1  # near-equal frames become ties (B-Pref "equal" teacher)
    assert (label == -1).sum() > 20
    LabelSet.from_arrays(a, b, label).save(tmp_path / "labels")
    out = tmp_path / "run"
    args = ["fit-reward", "--dataset", str(dataset.path), "--labels", str(tmp_path / "labels"), "--camera", KEY,
            "--out", str(out), "--ties", "soft", "--lr", "1e-3", "--batch-size", "32", "--epochs", "30",
            "--patience", "8", "--augment", "none"]
    assert main(args) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["counts"]["train_pairs"] + report["counts"]["val_pairs"] == 240  # ties kept as 0.5 targets
    assert report["val_accuracy"] >= 0.8 and report["spearman"] >= 0.8
    assert (out / "eval.png").stat().st_size > 10_000
    assert load_reward_model(out).spec.extra["config"]["ties"] == "soft"
    assert main(args) == 1  # refuses to overwrite a finished run without --overwrite
    assert main(["fit-reward", "--dataset", str(dataset.path), "--labels", str(tmp_path / "labels"),
                 "--camera", "wrist_48", "--out", str(tmp_path / "x")]) == 1


# ------------------------------------------------------------------------------------ active selection
def test_disagreement_sampler_picks_contested_pairs(trained, dataset):
    from robot_pref.feedback import make_sampler

    _, _, run = trained
    sampler = make_sampler("disagreement", dataset, KEY, 0, reward_model=str(run), pool_size=300)
    a, b = sampler.sample(30)
    assert len(a) == len(b) == 30 and (a != b).all() and a.max() < dataset.n_frames
    chosen = sampler.disagreement(a, b)
    ua, ub = make_sampler("uniform", dataset, KEY, 1).sample(300)
    pool = sampler.disagreement(ua, ub)
    assert chosen.min() >= np.percentile(pool, 70)  # the top 10% of a pool beat most uniform pairs
    again = make_sampler("disagreement", dataset, KEY, 0, reward_model=str(run), pool_size=300).sample(30)
    assert (again[0] == a).all() and (again[1] == b).all()
    with pytest.raises(ValueError, match="reward-model"):
        make_sampler("disagreement", dataset, KEY, 0)


def test_active_learning_loop_adds_labels_each_round(dataset):
    from robot_pref.reward.active import active_learning_curve

    true = dataset.ground_truth("reward")
    asked = []

    def oracle(a, b):
        asked.append(len(a))
        return (true[b] > true[a]).astype(np.int8)

    cfg = FitRewardConfig(**{**FAST, "epochs": 6, "ensemble": 2})
    rows = active_learning_curve(dataset, oracle, [40, 80], cfg, sampler="disagreement", test_pairs=200)
    assert asked == [40, 40] and [r["labels"] for r in rows] == [40, 80]
    assert all(0.0 <= r["test_true_order_accuracy"] <= 1.0 for r in rows)


# ------------------------------------------------------------------------------------ relabel
def test_relabel_writes_one_value_per_frame_and_resumes(trained, dataset, monkeypatch):
    from robot_pref.reward.relabel import ChunkScorer, relabel

    model, _, run = trained
    ds = TrajectoryDataset.open(dataset.path, "a")
    cfg = RelabelConfig(dataset=str(dataset.path), reward_model=str(run), key="learned", chunk_size=100, workers=0,
                        device="cpu")
    scored, real = [], ChunkScorer.score

    def crash_after_two(self, start, stop):
        if len(scored) == 2:
            raise KeyboardInterrupt
        scored.append((start, stop))
        return real(self, start, stop)

    monkeypatch.setattr(ChunkScorer, "score", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        relabel(cfg)
    partial = TrajectoryDataset.open(dataset.path).get("rewards/learned")
    assert np.isfinite(partial[:200]).all() and np.isnan(partial[200:]).all()

    scored.clear()
    monkeypatch.setattr(ChunkScorer, "score", lambda self, s, e: scored.append((s, e)) or real(self, s, e))
    final = relabel(cfg)
    assert scored == [(200, 300), (300, 360)]  # only the unfinished chunks
    values = TrajectoryDataset.open(dataset.path).get("rewards/learned")
    assert values.shape == (ds.n_frames,) and np.isfinite(values).all()
    np.testing.assert_allclose(values, model.predict(ds.get(f"frames/{KEY}")), atol=1e-5)
    assert final["complete"] and abs(final["stats"]["mean"] - values.mean()) < 1e-5
    assert final["stats"]["tier_mean"]["expert"] > final["stats"]["tier_mean"]["random"]

    scored.clear()
    relabel(cfg)
    assert scored == []  # complete: a rerun does nothing


def test_relabel_refuses_another_models_array(trained, dataset, tmp_path):
    from robot_pref.data import DatasetError
    from robot_pref.reward.models import ModelSpec, RewardModel, save_reward_model
    from robot_pref.reward.relabel import relabel

    ds = TrajectoryDataset.open(dataset.path, "a")
    ds.write_reward("other", np.zeros(ds.n_frames), 0)
    other = save_reward_model(RewardModel(ModelSpec(height=SIZE, width=SIZE, extra={"camera": KEY})), tmp_path / "m")
    with pytest.raises(DatasetError, match="--overwrite"):
        relabel(RelabelConfig(dataset=str(dataset.path), reward_model=str(other), key="other", workers=0, device="cpu"))
    relabel(RelabelConfig(dataset=str(dataset.path), reward_model=str(other), key="other", workers=0, device="cpu",
                          overwrite=True))
    assert np.isfinite(TrajectoryDataset.open(dataset.path).get("rewards/other")).all()


def test_relabel_with_ray_actors_matches_in_process(trained, dataset, ray_session):
    from robot_pref.reward.relabel import relabel

    model, _, run = trained
    relabel(RelabelConfig(dataset=str(dataset.path), reward_model=str(run), key="ray", chunk_size=128, workers=2,
                          device="cpu"))
    ds = TrajectoryDataset.open(dataset.path)
    np.testing.assert_allclose(ds.get("rewards/ray"), model.predict(ds.get(f"frames/{KEY}")), atol=1e-5)


@pytest.mark.parametrize("augment", ["shift", "crop"])
def test_augmentation_is_replicate_pad_then_crop_by_its_definition(augment):
    """The index-clamp gather equals padding each image by replication and cropping it at the drawn offset."""
    import torch.nn.functional as F

    from robot_pref.reward.models import ModelSpec, RewardModel

    spec = ModelSpec(height=60, width=64, ensemble=1, augment=augment, pad=3, crop=52)
    model = RewardModel(spec, seed=0)
    x = torch.randint(0, 256, (50, 3, 60, 64), dtype=torch.uint8)
    pad = spec.pad if augment == "shift" else 0
    padded = F.pad(x.float(), (pad,) * 4, mode="replicate") if pad else x.float()
    h, w = spec.input_size
    torch.manual_seed(7)
    out = model._augment(x, train=True)
    torch.manual_seed(7)  # the same draws as the model's
    oy = torch.randint(0, padded.shape[-2] - h + 1, (50,))
    ox = torch.randint(0, padded.shape[-1] - w + 1, (50,))
    assert len(set(zip(oy.tolist(), ox.tolist()))) > 10  # the offsets really vary
    expected = torch.stack([padded[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w] for i in range(50)])
    assert out.dtype == torch.uint8 and torch.equal(out.float(), expected)
    test_time = model._augment(x, train=False)
    if augment == "shift":
        assert test_time is x
    else:
        cy, cx = (60 - h) // 2, (64 - w) // 2
        assert torch.equal(test_time, x[:, :, cy:cy + h, cx:cx + w])


def test_a_clip_scores_the_sum_of_its_frames(dataset):
    from robot_pref.reward.models import ModelSpec, RewardModel
    from robot_pref.reward.train import clip_rewards

    model = RewardModel(ModelSpec(height=SIZE, width=SIZE, ensemble=2, augment="none", head="linear"), seed=0).eval()
    frames = dataset.get(f"frames/{KEY}", np.arange(12))
    per_frame = torch.as_tensor(model.predict_members(frames))  # (K, 12)
    clips = model.inputs(frames).view(4, 3, 3, SIZE, SIZE)  # 4 clips of 3 frames
    with torch.no_grad():
        torch.testing.assert_close(clip_rewards(model, clips), per_frame.view(2, 4, 3).sum(-1), atol=1e-5, rtol=1e-5)
        member_clips = clips.expand(2, *clips.shape)  # (K, N, S, ...) per member
        torch.testing.assert_close(clip_rewards(model, member_clips, per_member=True),
                                   per_frame.view(2, 4, 3).sum(-1), atol=1e-5, rtol=1e-5)


def test_segment_labels_fit_a_reward_on_clip_sums(dataset, tmp_path):
    """A teacher labels 4-frame segments (B-Pref returns); fit-reward reads the segment from the label run and
    fits r so that clip sums order the held-out segments as their true returns do."""
    from robot_pref.feedback.config import LabelConfig, TeacherConfig
    from robot_pref.feedback.run import label
    from robot_pref.reward.train import fit_reward

    labels = tmp_path / "labels"
    label(LabelConfig(dataset=dataset.path, camera=KEY, labeler="teacher", pairs=300, out=str(labels),
                      goal="to slide", teacher=TeacherConfig(kind="oracle", segment=4), progress=False))
    report = fit_reward(FitRewardConfig(**FAST, dataset=dataset.path, labels=str(labels), out=str(tmp_path / "r")))
    assert report["counts"]["segment"] == 4
    assert report["val_true_order_accuracy"] >= 0.85 and report["spearman"] >= 0.8


# ------------------------------------------------------------------------------------ label noise, sources, progress
def test_flip_rate_estimate_recovers_a_known_rate():
    """`estimate_label_noise` on reward differences of a known model: labels flipped at 0.2 -> ~0.2, clean
    (oracle or Bradley-Terry sampled) -> ~0, whatever the reward scale."""
    from robot_pref.reward.train import estimate_label_noise

    rng = np.random.default_rng(0)
    d = rng.normal(0, 3, 2000)
    oracle = (d > 0).astype(np.float32)
    bt = (rng.random(2000) < 1 / (1 + np.exp(-d))).astype(np.float32)
    flipped = np.where(rng.random(2000) < 0.2, 1 - oracle, oracle)
    assert abs(estimate_label_noise(d, flipped) - 0.2) <= 0.03
    assert estimate_label_noise(100 * d, flipped) == estimate_label_noise(d, flipped)
    assert estimate_label_noise(d, oracle) <= 0.01 and estimate_label_noise(d, bt) <= 0.03
    assert estimate_label_noise(-d, oracle) >= 0.4  # a model that is always wrong is not "clean"


def test_label_noise_auto_is_estimated_from_the_labels_while_fitting(dataset):
    """`label_noise: auto` through `fit`: 20% flipped labels -> the estimate used lies within +-0.07 of
    0.2; clean labels -> ~0; nothing but the labels goes in."""
    from robot_pref.reward.train import fit

    a, b, label = oracle_pairs(dataset, 600, seed=3)
    flip = np.random.default_rng(4).random(len(label)) < 0.2
    noisy = np.where(flip & (label != -1), 1 - label, label).astype(np.int8)
    cfg = FitRewardConfig(**{**FAST, "epochs": 25}, head="linear", output_l2=0.01, label_noise="auto",
                          val_fraction=0.4)
    _, report = fit(dataset, a, b, noisy, cfg, progress=False)
    assert abs(report["label_noise"] - 0.2) <= 0.07, report["label_noise"]
    assert all("label_noise" in row for row in report["history"]) and report["history"][0]["label_noise"] == 0
    _, clean = fit(dataset, a, b, label, cfg, progress=False)
    assert clean["label_noise"] <= 0.05 and clean["val_true_order_accuracy"] >= 0.85
    with pytest.raises(ValueError, match="auto"):
        fit(dataset, a, b, label, FitRewardConfig(**FAST, label_noise="often"), progress=False)


def test_source_weights_scale_each_pairs_loss():
    """Weights come from the `source` column (unlisted and absent = 1, unknown names refused) and multiply
    each pair's loss."""
    from robot_pref.reward.train import preference_loss, source_weights

    source = np.array(["vlm", "human", "clip", "human"])
    assert source_weights(source, {"human": 3.0, "progress": 2.0}, 4).tolist() == [1, 3, 1, 3]
    assert source_weights(None, {"human": 3.0}, 2).tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"unknown sources \['people'\]"):
        source_weights(source, {"people": 2.0}, 4)
    r_a, r_b, y = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 0.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    per_pair = torch.stack([preference_loss(r_a[i], r_b[i], y[i]) for i in range(3)])
    w = torch.tensor([2.0, 0.0, 0.5])
    torch.testing.assert_close(preference_loss(r_a, r_b, y, weight=w), (w * per_pair).mean())


def test_validation_and_early_stopping_use_the_source_weights(trained, dataset):
    """Held-out pairs where the model agrees with every "human" label and contradicts every "vlm" label
    (half each): validation accuracy, loss, the auto flip rate and the report's val_accuracy must count
    each pair by its source weight, as the training loss does (unweighted, all of them read 0.5)."""
    from robot_pref.reward.evaluation import evaluate
    from robot_pref.reward.train import InputCache, Pairs, estimate_label_noise, pair_rewards, source_weights, validate

    model, _, _ = trained
    rng = np.random.default_rng(11)
    a, b = rng.integers(0, dataset.n_frames, 400), rng.integers(0, dataset.n_frames, 400)
    inputs = InputCache(model, dataset, KEY, np.concatenate([a, b]))
    a, b = a[:, None], b[:, None]  # clips of one frame, as `fit` passes them
    ra, rb = (r.mean(0).numpy() for r in pair_rewards(model, inputs, Pairs(a, b, np.zeros(400, np.float32))))
    keep = ra != rb
    a, b, model_says_b = a[keep], b[keep], (rb > ra)[keep].astype(np.float32)
    source = np.where(np.arange(len(a)) % 2 == 0, "human", "vlm")
    y = np.where(source == "human", model_says_b, 1 - model_says_b).astype(np.float32)

    def val(weights):
        return validate(model, inputs, Pairs(a, b, y, source_weights(source, weights, len(a))), label_noise=None)

    human_only, plain, human_3x = val({"vlm": 0.0}), val({}), val({"human": 3.0})
    assert human_only["accuracy"] == 1.0 and plain["accuracy"] == pytest.approx(0.5, abs=0.01)
    assert human_3x["accuracy"] == pytest.approx(3 * 0.5 / (3 * 0.5 + 0.5), abs=0.01)  # 0.75
    assert human_only["label_noise"] == 0.0 < plain["label_noise"]
    d = rb[keep] - ra[keep]
    assert estimate_label_noise(d, y, (source == "human").astype(float)) == estimate_label_noise(
        d[source == "human"], y[source == "human"])  # weight 0 = left out
    assert human_only["loss"] < 0.5 * plain["loss"]
    human = source == "human"
    only = validate(model, inputs, Pairs(a[human], b[human], y[human]), label_noise=0.0)
    weighted = validate(model, inputs, Pairs(a, b, y, source_weights(source, {"vlm": 0.0}, len(a))), label_noise=0.0)
    assert weighted["loss"] == pytest.approx(only["loss"], rel=1e-5)  # weighted mean, not diluted by the zeros
    report = evaluate(model, dataset, KEY, Pairs(a, b, y, source_weights(source, {"vlm": 0.0}, len(a))))
    assert report["val_accuracy"] == 1.0


def test_progress_loss_is_free_in_offset_and_scale_and_masks_missing_progress():
    from robot_pref.reward.train import progress_loss

    p = torch.tensor([[0.1, 0.5, 0.9, float("nan"), 0.3]] * 3)
    r = torch.tensor([[1.0, 5.0, 9.0, -100.0, 3.0],  # affine in p (the NaN frame is ignored): 0
                      [-1.0, -5.0, -9.0, 0.0, -3.0],  # decreasing in p: the worst, 1
                      [0.0, 1.0, 0.0, 0.0, 0.0]])
    per_member = [progress_loss(r[i : i + 1], p[i : i + 1]).item() for i in range(3)]
    assert per_member[0] == pytest.approx(0.0, abs=1e-6) and per_member[1] == pytest.approx(1.0)
    corr = np.corrcoef([0.0, 1.0, 0.0, 0.0], [0.1, 0.5, 0.9, 0.3])[0, 1]
    assert per_member[2] == pytest.approx(1 - corr**2, abs=1e-5)
    assert progress_loss(r, p).item() == pytest.approx(sum(per_member), abs=1e-5)
    assert progress_loss(r, torch.full_like(p, float("nan"))).item() == 0.0


def test_progress_regression_fits_the_reported_progress(dataset):
    """Coin-flip pair labels carry no signal; the reported per-frame progress (here the true reward, as a
    perfect progress labeler would say) alone must give a reward ordered like the truth."""
    from robot_pref.reward.train import fit

    rng = np.random.default_rng(6)
    a, b, _ = oracle_pairs(dataset, 600, seed=6)
    coin = rng.integers(0, 2, len(a)).astype(np.int8)
    true = dataset.ground_truth("reward")
    extra = {"progress_a": true[a], "progress_b": true[b]}
    cfg = FitRewardConfig(**{**FAST, "epochs": 25}, head="linear", output_l2=0.01, progress_weight=5.0)
    _, report = fit(dataset, a, b, coin, cfg, progress=False, extra=extra)
    assert report["spearman"] >= 0.8 and report["val_true_order_accuracy"] >= 0.8
    with pytest.raises(ValueError, match="progress_a"):
        fit(dataset, a, b, coin, cfg, progress=False)
