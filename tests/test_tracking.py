"""`--log tensorboard|wandb` of `train` and `fit-reward`, read back with TensorBoard's event reader and from wandb's
offline run file (WANDB_MODE=offline: nothing leaves the machine)."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from robot_pref.rl import TrainConfig
from robot_pref.tracking import open_tracker
from test_reward import KEY, build_dataset, oracle_pairs
from test_rl import write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tensorboard_events(out: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def wandb_history(out: Path, timeout: float = 60.0) -> list[dict]:
    """History rows of the offline run in ``out``, once its exit record is written (wandb's service process writes
    the run file on its own time). The file is a 7-byte header, then LevelDB-log records (crc, length, type) in
    32 KiB blocks, each a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        data, pos, block, part, records = path.read_bytes(), 7, 32768, b"", []
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a record header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind in (1, 4):  # FULL or LAST piece of a record
                records.append(pb.Record())
                records[-1].ParseFromString(part)
                part = b""
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def _fake_evaluations(monkeypatch, tmp_path) -> list[float]:
    """Training-time evaluations without the simulator: success 0.25, 0.5, ... and a real mp4 when asked for."""
    import imageio.v2 as imageio

    from robot_pref.rl import train as train_module

    rates = []

    def evaluate(cfg, ckpt, step, videos=0):
        rates.append(0.25 * (len(rates) + 1))
        paths = []
        if videos:
            paths.append(str(tmp_path / f"rollout_{step}.mp4"))
            frames = np.zeros((12, 32, 40, 3), np.uint8)
            frames[:, :, :, 0] = np.linspace(0, 255, 12, dtype=np.uint8)[:, None, None]  # red fades in
            imageio.mimwrite(paths[-1], frames, fps=20, macro_block_size=1)
        episodes = cfg.eval_episodes
        return {"success_rate": rates[-1], "ci": [rates[-1] - 0.1, rates[-1] + 0.1], "mean_return": 10 * rates[-1],
                "successes": round(rates[-1] * episodes), "episodes": episodes, "videos": paths}

    monkeypatch.setattr(train_module, "_evaluate", evaluate)
    return rates


def _tiny_train_config(tmp_path, log: str) -> TrainConfig:
    rng = np.random.default_rng(0)
    episodes = [{"obs": rng.normal(size=(10, 3)).astype(np.float32), "action": rng.uniform(-1, 1, (10, 2)),
                 "reward": rng.uniform(size=10).astype(np.float32)} for _ in range(4)]
    write_dataset(tmp_path / "toy.zarr", episodes)
    return TrainConfig(dataset=str(tmp_path / "toy.zarr"), out=str(tmp_path / "iql"), reward_key="true", steps=40,
                       batch_size=16, hidden=(32, 32), log_every=10, save_every=40, eval_every=20, device="cpu",
                       log=log)


def _csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_train_logs_losses_values_lrs_success_and_videos_to_tensorboard(tmp_path, monkeypatch):
    from robot_pref.rl.train import train

    rates = _fake_evaluations(monkeypatch, tmp_path)
    cfg = _tiny_train_config(tmp_path, "tensorboard")
    train(cfg)
    events = tensorboard_events(Path(cfg.out))
    tags = set(events.Tags()["scalars"])
    assert {"loss/v", "loss/q", "loss/actor", "value/v_mean", "value/v_std", "value/adv_max", "lr/actor",
            "lr/critic", "eval/success_rate", "perf/updates_per_s"} <= tags
    rows = _csv(Path(cfg.out) / "log.csv")
    for tag, column in (("loss/q", "q_loss"), ("value/v_mean", "v_mean"), ("lr/actor", "actor_lr")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [10, 20, 30, 40]
        np.testing.assert_allclose([e.value for e in logged], [float(r[column]) for r in rows], rtol=1e-5)
    actor_lr = [e.value for e in events.Scalars("lr/actor")]
    assert actor_lr[-1] < actor_lr[0]  # cosine schedule
    np.testing.assert_allclose([e.value for e in events.Scalars("lr/critic")], 3e-4, rtol=1e-6)  # constant
    v_min, v_max = events.Scalars("value/v_min")[0].value, events.Scalars("value/v_max")[0].value
    assert v_min <= events.Scalars("value/v_mean")[0].value <= v_max
    success = events.Scalars("eval/success_rate")
    assert [(e.step, e.value) for e in success] == [(20, 0.25), (40, 0.5)] and rates == [0.25, 0.5]

    from PIL import Image
    import io

    videos = events.Images("eval/rollout")
    assert [v.step for v in videos] == [20, 40]
    gif = Image.open(io.BytesIO(videos[0].encoded_image_string))
    assert gif.format == "GIF" and gif.size == (40, 32) and gif.n_frames == 12


def test_train_logs_to_wandb_offline(tmp_path, monkeypatch):
    from robot_pref.rl.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _fake_evaluations(monkeypatch, tmp_path)
    cfg = _tiny_train_config(tmp_path, "wandb")
    train(cfg)
    history = wandb_history(Path(cfg.out))
    rows = _csv(Path(cfg.out) / "log.csv")
    steps = {r["_step"]: r for r in history}
    assert sorted(steps) == [10, 20, 30, 40]
    np.testing.assert_allclose([steps[s]["loss/v"] for s in (10, 20, 30, 40)], [float(r["v_loss"]) for r in rows],
                               rtol=1e-5)
    assert steps[40]["eval/success_rate"] == 0.5 and steps[20]["eval/rollout/_type"] == "video-file"
    media = list((Path(cfg.out) / "wandb").glob("offline-run-*/files/" + steps[20]["eval/rollout/path"]))
    assert len(media) == 1 and media[0].stat().st_size == (tmp_path / "rollout_20.mp4").stat().st_size


def test_fit_reward_logs_epochs_and_warns_when_few_usable_pairs_remain(tmp_path, caplog):
    from robot_pref.feedback import LabelSet
    from robot_pref.reward import FitRewardConfig
    from robot_pref.reward.train import fit_reward

    ds = build_dataset(tmp_path / "ds.zarr", episodes_per_tier=2)
    a, b, label = oracle_pairs(ds, 60)
    label[:45] = -1  # 75% abstentions
    usable = int(((label != -1) & (a != b)).sum())
    assert 10 <= usable <= 15
    LabelSet(a, b, label).save(tmp_path / "labels")
    cfg = FitRewardConfig(dataset=str(tmp_path / "ds.zarr"), labels=str(tmp_path / "labels"), camera=KEY,
                          out=str(tmp_path / "reward"), ensemble=2, epochs=3, patience=10, min_pairs=40,
                          device="cpu", log="tensorboard")
    with caplog.at_level("WARNING", logger="robot_pref.reward.train"):
        report = fit_reward(cfg)
    (warning,) = report["warnings"]
    assert f"only {usable} usable labelled pairs" in warning and "min_pairs=40" in warning
    assert f"{60 - usable} of 60 labels" in warning
    assert warning in caplog.text
    assert json.loads((tmp_path / "reward" / "eval.json").read_text())["warnings"] == [warning]

    events = tensorboard_events(tmp_path / "reward")
    assert [e.step for e in events.Scalars("loss/train")] == [0, 1, 2]
    np.testing.assert_allclose([e.value for e in events.Scalars("val/accuracy")],
                               [h["val_accuracy"] for h in report["history"]], rtol=1e-6)
    assert events.Scalars("eval/spearman")[0].value == pytest.approx(report["spearman"], rel=1e-6)
    assert events.Images("eval/learned_vs_true_reward")[0].width > 100

    enough = fit_reward(FitRewardConfig(**{**cfg.__dict__, "min_pairs": usable, "overwrite": True, "log": "none"}))
    assert enough["warnings"] == []


def test_unknown_logger_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="none, tensorboard, wandb"):
        open_tracker("mlflow", tmp_path, "x", {})


def test_run_config_log_reaches_both_trainers_without_changing_their_fingerprints():
    from robot_pref.config import from_dict
    from robot_pref.pipeline.run import RunConfig, _fingerprint

    plain, logged = RunConfig().resolved(), from_dict(RunConfig, {"log": "wandb"}).resolved()
    assert (logged.train.log, logged.fit_reward.log, plain.train.log) == ("wandb", "wandb", "none")
    assert _fingerprint(logged.train) == _fingerprint(plain.train)  # switching logs on reruns nothing
    assert _fingerprint(logged.fit_reward) == _fingerprint(plain.fit_reward)
    sections = from_dict(RunConfig, {"train": {"log": "tensorboard"}}).resolved()
    assert (sections.train.log, sections.fit_reward.log) == ("tensorboard", "none")


def test_cli_train_log_tensorboard_and_fit_reward_log_wandb_offline(tmp_path, monkeypatch):
    from robot_pref.cli import main
    from robot_pref.feedback import LabelSet

    cfg = _tiny_train_config(tmp_path, "tensorboard")
    assert main(["train", "--dataset", cfg.dataset, "--out", str(tmp_path / "cli_iql"), "--steps", "20",
                 "--log-every", "10", "--batch-size", "16", "--hidden", "32,32", "--reward-key", "true",
                 "--device", "cpu", "--log", "tensorboard"]) == 0
    assert [e.step for e in tensorboard_events(tmp_path / "cli_iql").Scalars("loss/q")] == [10, 20]

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    ds = build_dataset(tmp_path / "ds.zarr", episodes_per_tier=2)
    LabelSet(*oracle_pairs(ds, 80)).save(tmp_path / "labels")
    out = tmp_path / "reward"
    assert main(["fit-reward", "--dataset", str(tmp_path / "ds.zarr"), "--labels", str(tmp_path / "labels"),
                 "--camera", KEY, "--out", str(out), "--ensemble", "1", "--epochs", "2", "--device", "cpu",
                 "--log", "wandb"]) == 0
    report = json.loads((out / "eval.json").read_text())
    history = wandb_history(out)
    assert [r["_step"] for r in history if "loss/train" in r] == [0, 1]
    assert [r["val/accuracy"] for r in history if "loss/train" in r] == [h["val_accuracy"] for h in report["history"]]
    assert history[-1]["eval/spearman"] == pytest.approx(report["spearman"])
    assert history[-1]["eval/learned_vs_true_reward/_type"] == "image-file"
    assert "min_pairs=200" in report["warnings"][0]  # 80 pairs < the default 200
