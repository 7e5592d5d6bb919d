"""`train(cfg)`: offline IQL, BC or reward-weighted BC on a trajectory dataset, with exact checkpoint/resume.

Outputs in ``cfg.out``: ``log.csv`` (losses every ``log_every`` steps), ``last.pt`` (every
``save_every`` steps and at the end; a rerun of the same command resumes from it), ``best.pt``
(highest evaluation success when ``eval_every`` > 0), ``eval_curve.csv`` (success over training steps on
held-out seeds, see `TRAINING_EVAL_SEED`) and ``train_info.json``; with ``log`` the same
numbers (and a rollout video per evaluation) go to TensorBoard or wandb (`robot_pref.tracking`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.rl.batches import TransitionBatches, scale_rewards, transition_rewards
from robot_pref.rl.bc import BC
from robot_pref.rl.checkpoint import load_checkpoint, resolve_device, save_checkpoint
from robot_pref.rl.config import TrainConfig
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import Learner, ObsModel
from robot_pref.rl.rwbc import RWBC, standardized_returns
from robot_pref.tracking import open_tracker

log = logging.getLogger(__name__)


# fields that may change between a run and its resumption without changing the result (compile, cuda_graph and
# gradients: to float rounding; frames_on_device: the sampler state refuses a resume that moves the frames, as
# that changes the batches)
RESUMABLE_CHANGES = {"out", "log_every", "save_every", "eval_every", "eval_episodes", "eval_workers", "overwrite",
                     "threads", "compile", "cuda_graph", "gradients", "log", "frames_on_device"}


def _frame_size(ds: TrajectoryDataset, key: str) -> int:
    shape = ds.shape(key)
    if shape[1] != shape[2]:
        raise DatasetError(f"{key} frames are {shape[1]}x{shape[2]}; the image encoder needs square frames")
    done = ds.rendered_episodes(key.split("/", 1)[1])
    if not done.all():
        raise DatasetError(f"{key}: {int((~done).sum())} of {ds.n_episodes} episodes are not rendered; "
                           f"run `robot-pref render --dataset {ds.path}` first")
    return int(shape[1])


def _observation_arrays(cfg: TrainConfig, ds: TrajectoryDataset):
    """(low-dim arrays, frame keys, policy-spec entries) of the observation: ``cfg.obs`` (a spec,
    `robot_pref.rl.obs_spec`) or the plain ``cfg.obs_keys``."""
    if not cfg.obs:
        available = ds.available_keys()
        for k in cfg.obs_keys:
            if (k if "/" in k else f"data/{k}") not in available:
                raise KeyError(f"observation key {k!r} is not in {ds.path}; available: {available}")
        lowdim = {k: ds.get(k) for k in cfg.obs_keys if not k.startswith("frames/")}
        return lowdim, tuple(k for k in cfg.obs_keys if k.startswith("frames/")), {}, {}
    from robot_pref.rl.features import feature_key, load_encoder
    from robot_pref.rl.obs_spec import ObsSpec, camera_keys, proprio_columns

    obs = ObsSpec.parse(cfg.obs)
    if obs.privileged:  # the flat obs, object state included: oracle baselines only
        return {"obs": ds.get("obs")}, (), {"observation": dataclasses.asdict(obs),
                                            "inputs": {"obs": {"source": "obs"}}}, {}
    lowdim, inputs, extra, projected = {}, {}, {"observation": dataclasses.asdict(obs)}, {}
    if obs.proprio:
        columns = proprio_columns(obs, ds.env_meta, ds.shape("obs")[1])
        lowdim["proprio"] = ds.get("obs")[:, columns]
        inputs["proprio"] = {"source": "obs", "columns": columns}
        extra["proprio_columns"] = {"keys": list(obs.proprio), "columns": columns}
    cameras = camera_keys(obs, ds.frame_keys)
    frame_keys: tuple[str, ...] = ()
    if obs.end_to_end:
        frame_keys = tuple(f"frames/{c}" for c in cameras)
        inputs.update({k: {"source": k} for k in frame_keys})
    elif cameras:
        encoder = load_encoder(obs.encoder)
        extra["encoders"], extra["encoder_state"] = {}, {}
        for cam in cameras:
            key = f"features/{feature_key(cam, encoder)}"
            undone = int((~ds.encoded_episodes(key.split("/", 1)[1])).sum())
            if undone:
                raise DatasetError(f"{key}: {undone} of {ds.n_episodes} episodes are not encoded; run `robot-pref "
                                   f"encode --dataset {ds.path} --cameras {','.join(cameras)} --encoder {obs.encoder}`")
            lowdim[key] = ds.get(key)
            inputs[key] = {"source": f"frames/{cam}"}
            extra["encoders"][key] = encoder.desc
            extra["encoder_state"][key] = {k: v.clone() for k, v in encoder.state_dict().items()}
            projected[key] = obs.features
        extra["encoder_ref"] = obs.encoder
    extra["inputs"] = inputs
    return lowdim, frame_keys, extra, projected


def _principal_components(x: np.ndarray, k: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), components (D, k), std of each component (k,)) of feature rows ``rows`` (the training
    episodes'): k whitened directions keep the update at low-dim cost whatever the encoder's width."""
    sample = x[np.random.default_rng(0).choice(rows, min(len(rows), 20_000), replace=False)].astype(np.float64)
    mean = sample.mean(0)
    _, s, vt = np.linalg.svd(sample - mean, full_matrices=False)
    k = min(k, len(s))
    return mean.astype(np.float32), vt[:k].T.astype(np.float32), (s[:k] / np.sqrt(max(len(sample) - 1, 1))).astype(np.float32)


def prepare(cfg: TrainConfig, ds: TrajectoryDataset, device: torch.device, resumed: bool | None = None):
    """Observation model, batches and the policy spec of a dataset; ``resumed``: whether the run being resumed
    kept its frames on the GPU (`frames_on_device`)."""
    raw_lowdim, frame_keys, obs_entries, projected = _observation_arrays(cfg, ds)
    held_out = holdout_episodes(ds.n_episodes, cfg.holdout)
    train_rows = np.flatnonzero(~np.isin(ds.episode_of(np.arange(ds.n_frames)), held_out))
    stats, projections = {}, {}
    for k, x in raw_lowdim.items():
        if k in projected:
            mean, projections[k], std = _principal_components(x, projected[k], train_rows)
            stats[k] = {"mean": mean, "std": std}
        elif k == "proprio":  # columns of obs
            stats[k] = {"mean": x.mean(0), "std": x.std(0)}
        else:
            stats[k] = ds.stats(k)
    frame_sizes = {k: _frame_size(ds, k) for k in frame_keys}
    obs_model = ObsModel({k: (s["mean"], s["std"]) for k, s in stats.items()}, frame_sizes,
                         std_floor=cfg.obs_std_floor, clip=cfg.obs_clip, feature_dim=cfg.image_feature_dim,
                         shift=cfg.image_shift, projections=projections).to(device)
    with torch.no_grad():
        lowdim = {k: obs_model.normalize(k, torch.tensor(np.asarray(x), device=device).float())
                  for k, x in raw_lowdim.items()}
    a_stats = ds.stats("action")
    low, high = a_stats["min"].copy(), a_stats["max"].copy()
    flat = high - low < 1e-6
    low[flat], high[flat] = low[flat] - 1.0, high[flat] + 1.0
    action = torch.as_tensor(2.0 * (ds.get("action") - low) / (high - low) - 1.0).clamp(-1.0, 1.0)
    reward = training_rewards(cfg, ds)
    batches = TransitionBatches.from_dataset(ds, lowdim, action, reward, frame_keys, cfg.batch_size, device, cfg.seed,
                                             exclude_episodes=tuple(held_out),
                                             frames_on_device=frames_on_device(cfg, ds, frame_keys, device, resumed))
    tasks = sorted(set(ds.episode_table()["task"].tolist()) - {""})
    camera_sources = {i["source"] for i in obs_entries.get("inputs", {}).values()
                      if i["source"].startswith("frames/")} | set(frame_keys)  # raw frames and encoded cameras
    spec = {
        "algo": cfg.algo, "reward_key": cfg.reward_key, "dataset": ds.path,
        "lowdim": {k: int(v.shape[1]) for k, v in lowdim.items()}, "frames": frame_sizes,
        "hidden": list(cfg.hidden), "actor": cfg.actor, "obs_clip": cfg.obs_clip,
        "feature_dim": cfg.image_feature_dim, "image_shift": cfg.image_shift,
        "action_low": low.tolist(), "action_high": high.tolist(),
        "task": ds.env_meta.get("task") or (tasks[0] if tasks else ""), "env_meta": ds.env_meta,
        # how the training frames were drawn, so that evaluation renders its observations alike
        "frame_render": {k: r for k in sorted(camera_sources) if (r := ds.frame_render_options(k.split("/", 1)[1]))},
        "holdout_episodes": held_out,
        **({"projected": {k: int(raw_lowdim[k].shape[1]) for k in projections}} if projections else {}),
        **obs_entries,
    }
    return spec, obs_model, batches


def frames_on_device(cfg: TrainConfig, ds: TrajectoryDataset, frame_keys: tuple[str, ...], device: torch.device,
                     resumed: bool | None = None) -> bool:
    """Whether the training frames are copied to the GPU (`TrainConfig.frames_on_device`): ``auto`` when they
    take at most half its free memory (the rest is the update's), else they stream from the dataset; a resumed
    run (``resumed``: where its frames were) keeps them where they were, as the two ways draw different batches."""
    if cfg.frames_on_device not in ("auto", "true", "false"):
        raise ValueError(f"--frames-on-device must be auto, true or false, got {cfg.frames_on_device!r}")
    if cfg.frames_on_device == "true" and device.type != "cuda":
        raise ValueError(f"--frames-on-device true keeps the frames in GPU memory, but the device is {device}; "
                         "use --frames-on-device auto (or false) on a CPU")
    if not frame_keys or cfg.frames_on_device == "false":
        return False
    if cfg.frames_on_device == "true":
        return True
    if device.type != "cuda":
        return False
    if resumed is not None:
        return resumed
    nbytes = sum(math.prod(ds.shape(k)) for k in frame_keys)
    free, _ = torch.cuda.mem_get_info(device)
    if nbytes <= free / 2:
        return True
    log.info("frames stream from the dataset, updates run eagerly: the frames take %.1f GiB, more than half the "
             "GPU's free %.1f GiB (--frames-on-device true copies them anyway)", nbytes / 2**30, free / 2**30)
    return False


def training_rewards(cfg: TrainConfig, ds: TrajectoryDataset) -> np.ndarray:
    """The per-frame reward array the batches carry: none for BC, the scaled reward for IQL, and for RWBC the
    z-scored return-to-go of the scaled reward (`robot_pref.rl.rwbc`)."""
    if cfg.algo == "bc":  # behaviour cloning never reads a reward
        return np.zeros(ds.n_frames, np.float32)
    reward = transition_rewards(ds, cfg.reward_key, lambda r: scale_rewards(r, cfg.reward_normalize, cfg.reward_scale,
                                                                            cfg.reward_bias))
    return standardized_returns(reward, ds.episode_ends, cfg.gamma) if cfg.algo == "rwbc" else reward


def holdout_episodes(n_episodes: int, fraction: float) -> list[int]:
    """Episodes left out of training: drawn with a fixed seed, so every policy and training seed of a dataset
    leaves out the same ones and their offline scores compare."""
    if fraction <= 0:
        return []
    k = max(1, round(fraction * n_episodes))
    if not 0 < fraction < 1 or k >= n_episodes:
        raise ValueError(f"--holdout {fraction} of {n_episodes} episodes leaves nothing to train on; use a "
                         "fraction in (0, 1) that keeps at least one episode")
    return sorted(int(e) for e in np.random.default_rng(0).choice(n_episodes, k, replace=False))


def make_learner(cfg: TrainConfig, obs_model: ObsModel, act_dim: int) -> Learner:
    common = dict(hidden=tuple(cfg.hidden), actor_lr=cfg.actor_lr, actor=cfg.actor, total_steps=cfg.steps,
                  compile=cfg.compile)
    if cfg.amp not in ("none", "bf16"):
        raise ValueError(f"--amp must be none or bf16, got {cfg.amp!r}")
    if cfg.algo == "iql":
        learner: Learner = IQL(obs_model, act_dim, lr=cfg.lr, gamma=cfg.gamma, expectile=cfg.expectile,
                               beta=cfg.beta, max_weight=cfg.max_weight, polyak=cfg.polyak, **common)
    elif cfg.algo == "bc":
        learner = BC(obs_model, act_dim, **common)
    elif cfg.algo == "rwbc":
        learner = RWBC(obs_model, act_dim, lr=cfg.lr, beta=cfg.rwbc_beta, max_weight=cfg.rwbc_max_weight, **common)
    else:
        raise ValueError(f"unknown algo {cfg.algo!r}; choose iql, bc or rwbc")
    learner.amp = cfg.amp == "bf16"
    return learner


def make_update(cfg: TrainConfig, learner: Learner, batches: TransitionBatches, device: torch.device):
    """step -> logs of one update: a CUDA graph replay when ``cfg.cuda_graph`` holds on a GPU and the batch is
    gathered on the device (frames too), else the eager update. Call after loading the train state (a graph reads
    its tensors)."""
    generator = batches.generator if batches.frame_keys else None  # random-shift augmentation
    if cfg.cuda_graph and device.type == "cuda":
        if batches.frame_keys and not batches.frames_on_device:
            log.info("training eagerly: frames come from a host thread, which a CUDA graph cannot replay "
                     "(--frames-on-device true keeps them on the GPU)")
        else:
            graphed = learner.graphed_update(lambda: batches.sample(0), (batches.generator,), generator)
            if graphed is not None:
                return lambda step: graphed()
    return lambda step: learner.update(batches.sample(step), generator)


def _rng_state(device: torch.device) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                       "cached": float(cached)}}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class _CsvLog:
    """Append-only CSV of logged values; on resume rows past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path, self.fields = path, None
        rows = []
        if resume_step and path.exists():
            with open(path) as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        if rows:
            self.fields = list(rows[0])
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, self.fields)
                w.writeheader()
                w.writerows(rows)
        elif path.exists():
            path.unlink()

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        self.fields = self.fields or list(row)
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, self.fields)
            if new:
                w.writeheader()
            w.writerow(row)


# Training-time evaluations start episode i from reset(TRAINING_EVAL_SEED + training seed + i): a range of
# their own, apart from the final evaluation's (`robot-pref eval --seed`, 1000 + i by default; the pipeline
# refuses overlapping ranges), so the learning curves (and checkpoint: best) choose nothing on reported episodes.
TRAINING_EVAL_SEED = 10_000


def training_eval_seeds(cfg: TrainConfig) -> range:
    return range(TRAINING_EVAL_SEED + cfg.seed, TRAINING_EVAL_SEED + cfg.seed + cfg.eval_episodes)


def _evaluate(cfg: TrainConfig, ckpt: Path, step: int, videos: int = 0) -> dict[str, Any]:
    from robot_pref.eval.rollout import EvalConfig, evaluate  # eval sits above rl; only this optional hook uses it

    return evaluate(EvalConfig(policy=str(ckpt), episodes=cfg.eval_episodes, workers=cfg.eval_workers,
                               seed=training_eval_seeds(cfg).start, videos=videos,
                               out=str(Path(cfg.out) / "eval" / f"step_{step}"), device="cpu"))


EVAL_CURVE_FIELDS = ("step", "success_rate", "ci_low", "ci_high", "successes", "episodes", "first_seed", "last_seed",
                     "mean_return")


def _write_eval_curve(out: Path, evals: list[dict[str, Any]]) -> None:
    """``eval_curve.csv``: success over training steps (one row per training-time evaluation), rewritten whole
    after each one from the checkpoint's list, so a resumed run's file matches its checkpoint."""
    tmp = out / "eval_curve.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, EVAL_CURVE_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows({**e, "ci_low": e["ci"][0], "ci_high": e["ci"][1]} for e in evals)
    tmp.replace(out / "eval_curve.csv")


def _tracked(row: dict[str, Any], logs: dict[str, torch.Tensor], learner: Learner) -> dict[str, float]:
    """The logged step's tags for TensorBoard/wandb: losses, per-sample value statistics, learning rates."""
    values = {"perf/updates_per_s": row["updates_per_s"]}
    for key, v in logs.items():
        if v.numel() == 1:
            values[f"loss/{key.removesuffix('_loss')}"] = float(v)
        else:  # per-sample (V, advantages): one host sync for all four
            name = key.removesuffix("_mean")
            stats = torch.stack([v.mean(), v.std(), v.min(), v.max()]).tolist()
            values.update({f"value/{name}_{s}": x for s, x in zip(("mean", "std", "min", "max"), stats)})
    groups = learner.optimizer.param_groups  # the actor's group is the last (IQL: critics first)
    values["lr/actor"] = row["actor_lr"]
    if len(groups) > 1:
        values["lr/critic"] = float(groups[0]["lr"])
    return values


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train; returns the summary written to ``train_info.json``."""
    from tqdm.auto import tqdm

    if not cfg.dataset:
        raise ValueError("no dataset: pass --dataset PATH.zarr")
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise ValueError(f"--steps and --batch-size must be positive (got {cfg.steps}, {cfg.batch_size})")
    if min(cfg.log_every, cfg.save_every, cfg.eval_every) < 0:
        raise ValueError(f"--log-every, --save-every and --eval-every must be >= 0 (0 = at the end only; eval: off), "
                         f"got {cfg.log_every}, {cfg.save_every}, {cfg.eval_every}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    ds = TrajectoryDataset.open(cfg.dataset)
    last = out / "last.pt"
    ckpt = load_checkpoint(last, device) if last.exists() and not cfg.overwrite else None
    resumed = ckpt["sampler"].get("frames_on_device", False) if ckpt else None  # older checkpoints streamed them
    spec, obs_model, batches = prepare(cfg, ds, device, resumed)
    learner = make_learner(cfg, obs_model, len(spec["action_low"])).to(device)
    learner.choose_gradients(cfg.gradients)

    step, wall, best, evals = 0, 0.0, None, []
    if ckpt is not None:
        changed = {k: (v, getattr(cfg, k)) for k, v in ckpt["config"].items()
                   if k not in RESUMABLE_CHANGES and _norm(v) != _norm(getattr(cfg, k))}
        if changed:
            raise ValueError(f"{last} was trained with different settings {changed} (saved, now); rerun with the "
                             "saved settings to resume, choose another --out, or pass --overwrite to start afresh")
        learner.load_train_state(ckpt)
        batches.load_state_dict(ckpt["sampler"])
        _set_rng_state(ckpt["rng"], device)
        step, wall, best, evals = ckpt["step"], ckpt["wall_s"], ckpt["best"], ckpt["evals"]
        log.info("resuming %s from step %d", out, step)
    csv_log = _CsvLog(out / "log.csv", step)
    update = make_update(cfg, learner, batches, device)
    tracker = open_tracker(cfg.log, out, out.name, dataclasses.asdict(cfg), start_step=step)

    def save(path: Path) -> None:
        save_checkpoint(path, {"policy": spec, "config": dataclasses.asdict(cfg), "step": step,
                               "wall_s": wall + time.perf_counter() - t0, "best": best, "evals": evals,
                               "sampler": batches.state_dict(), "rng": _rng_state(device), **learner.train_state()})

    t0 = time.perf_counter()
    t_log, step_log, logs = t0, step, {}
    bar = tqdm(total=cfg.steps, initial=step, desc=f"{cfg.algo} {out.name}", unit="step", mininterval=1.0)
    try:
        while step < cfg.steps:
            logs = update(step)
            step += 1
            bar.update(1)
            if step == cfg.steps or (cfg.log_every and step % cfg.log_every == 0):
                now = time.perf_counter()
                row = {"step": step, "wall_s": round(wall + now - t0, 3),
                       "updates_per_s": round((step - step_log) / (now - t_log), 2),
                       **{k: float(v.mean()) for k, v in logs.items()},
                       "actor_lr": learner.lr()}
                t_log, step_log = now, step
                csv_log.write(row)
                tracker.scalars(_tracked(row, logs, learner), step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in row.items() if k.endswith("loss")})
            evaluate_now = cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.steps)
            if step == cfg.steps or evaluate_now or (cfg.save_every and step % cfg.save_every == 0):
                save(last)
            if evaluate_now:
                result = _evaluate(cfg, last, step, videos=int(tracker.records_videos))
                seeds = training_eval_seeds(cfg)
                evals.append({"step": step, "success_rate": result["success_rate"], "ci": result["ci"],
                              "successes": result["successes"], "episodes": result["episodes"],
                              "first_seed": seeds.start, "last_seed": seeds.stop - 1,
                              "mean_return": result["mean_return"]})
                _write_eval_curve(out, evals)
                tracker.scalars({"eval/success_rate": result["success_rate"], "eval/ci_low": result["ci"][0],
                                 "eval/ci_high": result["ci"][1], "eval/mean_return": result["mean_return"]}, step)
                for video in result.get("videos", [])[:1]:
                    tracker.video("eval/rollout", video, step)
                improved = best is None or result["success_rate"] > best["success_rate"]
                best = evals[-1] if improved else best
                save(last)  # with this evaluation recorded
                if improved:
                    shutil.copyfile(last, out / "best.pt")
                bar.write(f"step {step}: success {100 * result['success_rate']:.0f}% "
                          f"(95% CI {100 * result['ci'][0]:.0f}-{100 * result['ci'][1]:.0f})")
    except KeyboardInterrupt:
        save(last)
        raise
    finally:
        bar.close()
        batches.close()
        tracker.close()
    wall_s = wall + time.perf_counter() - t0
    info = {"algo": cfg.algo, "reward_key": cfg.reward_key, "dataset": cfg.dataset, "steps": step,
            "wall_s": round(wall_s, 2), "device": str(device), "transitions": batches.n_transitions,
            "frames_on_device": batches.frames_on_device, "gradients": "hand" if learner.hand_backward else "autograd",
            "last_losses": {k: float(v.mean()) for k, v in logs.items()},
            "evals": evals, "best": best, "checkpoint": str(last)}
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    return info


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v
