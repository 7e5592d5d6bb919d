"""`robot-pref run CONFIG.yaml`: raw trajectories to an evaluated policy, one stage after another.

Each stage is the same function its own CLI verb calls, reading its inputs from and writing its
outputs to the run directory. A finished stage leaves ``stages/<name>.json`` (its result, timing
and a fingerprint of its config); rerunning the same command skips finished stages and resumes an
interrupted one through that stage's own resume logic (collect appends the missing episodes,
render and relabel continue per episode/chunk, label never asks a cached question twice, train
resumes from its last checkpoint). Changing a stage's config reruns it from scratch (its
``overwrite`` set), and with it every stage that needs its outputs — not the unrelated ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from robot_pref.data.dataset import frame_key as make_frame_key
from robot_pref.envs.commands import CollectConfig
from robot_pref.eval.rollout import EvalConfig
from robot_pref.feedback.config import LabelConfig
from robot_pref.render.render import RenderConfig
from robot_pref.reward.config import FitRewardConfig, RelabelConfig
from robot_pref.rl.config import TrainConfig

LEARNED_REWARD_KEY = "learned"


@dataclass
class RunConfig:
    """A whole run. Paths inside the stage sections are filled in from ``run_dir`` / ``dataset``."""

    name: str = "run"
    run_dir: str = field(default="", metadata={"help": "where every output goes (default: runs/<name>)"})
    dataset: str = field(default="", metadata={
        "help": "use this existing dataset instead of collecting one (it is written to: frames, rewards)"})
    address: str | None = field(default=None, metadata={"help": "Ray address (default: RAY_ADDRESS or local)"})
    policies: tuple[str, ...] = field(default=("iql-learned", "iql-true", "bc"), metadata={
        "help": "policies to train and evaluate: iql-learned, iql-true (oracle), bc"})
    gpus: float = field(default=0.0, metadata={
        "help": "GPUs Ray reserves for each fit_reward / train stage, run as a Ray task on a GPU node (0 = in this "
                "process, on its CUDA device if it has one)"})
    stop_after: str = field(default="", metadata={
        "help": "stop after this stage (e.g. label, fit_reward); the report covers what has run"})
    checkpoint: Literal["last", "best"] = field(default="last", metadata={
        "help": "policy checkpoint to evaluate: last, or best by the training-time evaluations (needs train.eval_every)"})
    collect: CollectConfig = field(default_factory=CollectConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    fit_reward: FitRewardConfig = field(default_factory=FitRewardConfig)
    relabel: RelabelConfig = field(default_factory=RelabelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolved(self) -> "RunConfig":
        """The config with every path and shared setting made explicit (this is what is saved)."""
        run_dir = self.run_dir or f"runs/{self.name}"
        dataset = self.dataset or str(Path(run_dir) / "dataset.zarr")
        frame_key = make_frame_key(self.render.camera, *self.render.shape)
        labels = str(Path(run_dir) / "labels")
        reward_dir = str(Path(run_dir) / "reward")
        r = dataclasses.replace
        return r(
            self,
            run_dir=run_dir,
            dataset=dataset,
            collect=r(self.collect, out=dataset, address=self.address),
            render=r(self.render, dataset=dataset, address=self.address),
            label=r(self.label, dataset=dataset, camera=frame_key, out=labels, address=self.address),
            fit_reward=r(self.fit_reward, dataset=dataset, labels=labels, camera=frame_key, out=reward_dir),
            relabel=r(self.relabel, dataset=dataset, reward_model=reward_dir, key=LEARNED_REWARD_KEY,
                      camera=frame_key, address=self.address or ""),
            train=r(self.train, dataset=dataset),
            eval=r(self.eval, task=self.collect.task, address=self.address),
        )


POLICIES = {  # name -> (algo, reward key)
    "iql-learned": ("iql", LEARNED_REWARD_KEY),
    "iql-true": ("iql", "true"),
    "bc": ("bc", ""),
}


@dataclass
class Stage:
    name: str
    config: Any  # what the fingerprint covers; passed to ``fn`` (with overwrite=True when rerun afresh)
    fn: Callable[[Any], dict]
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads

    def run(self, fresh: bool) -> dict:
        config = self.config
        if fresh and dataclasses.is_dataclass(config) and hasattr(config, "overwrite"):
            config = dataclasses.replace(config, overwrite=True)
        return self.fn(config)


def _fingerprint(config: Any) -> str:
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)  # a crash never leaves half a marker


def build_stages(cfg: RunConfig) -> list[Stage]:
    """The stage list of a resolved config, in order."""
    from robot_pref.envs.collect import collect
    from robot_pref.eval.commands import evaluate
    from robot_pref.feedback.report import label_report
    from robot_pref.feedback.run import label
    from robot_pref.feedback.config import LabelReportConfig
    from robot_pref.render.render import render_dataset
    from robot_pref.reward.relabel import relabel
    from robot_pref.reward.train import fit_reward
    from robot_pref.rl.train import train

    stages: list[Stage] = []
    source: tuple[str, ...] = ()
    if cfg.dataset == str(Path(cfg.run_dir) / "dataset.zarr"):  # no dataset given: collect one
        stages.append(Stage("collect", cfg.collect, lambda c: _collect_remaining(c, collect)))
        source = ("collect",)
    stages.append(Stage("render", cfg.render, render_dataset, source))
    stages.append(Stage("label", cfg.label, label, ("render",)))
    report_cfg = LabelReportConfig(dataset=cfg.dataset, labels=cfg.label.out)
    stages.append(Stage("label_report", report_cfg, lambda c: _if_ground_truth(cfg, lambda: label_report(c)), ("label",)))
    stages.append(Stage("fit_reward", cfg.fit_reward, lambda c: _on_gpu(cfg.gpus, fit_reward, c), ("label",)))
    stages.append(Stage("relabel", cfg.relabel, relabel, ("fit_reward",)))
    for policy in cfg.policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
        algo, reward_key = POLICIES[policy]
        train_cfg = dataclasses.replace(cfg.train, algo=algo, reward_key=reward_key,
                                        out=str(Path(cfg.run_dir) / "policies" / policy))
        eval_cfg = dataclasses.replace(cfg.eval, policy=str(Path(train_cfg.out) / f"{cfg.checkpoint}.pt"),
                                       out=str(Path(cfg.run_dir) / "eval" / policy))
        reads = ("relabel",) if reward_key == LEARNED_REWARD_KEY else source
        stages.append(Stage(f"train_{policy}", train_cfg, lambda c: _on_gpu(cfg.gpus, train, c), reads))
        stages.append(Stage(f"eval_{policy}", eval_cfg, evaluate, (f"train_{policy}",)))
    return stages


def _on_gpu(gpus: float, fn: Callable[[Any], dict], stage_cfg: Any) -> dict:
    """Run a training stage as a Ray task holding ``gpus`` GPUs (Ray hides GPUs from tasks that ask for none)."""
    if gpus <= 0:
        return fn(stage_cfg)
    import ray

    return ray.get(ray.remote(num_gpus=gpus, max_retries=0)(fn).remote(stage_cfg))


def _collect_remaining(cfg: CollectConfig, collect: Callable[[CollectConfig], dict]) -> dict:
    """Collect up to ``cfg.episodes`` in total, so an interrupted collect continues where it stopped."""
    from robot_pref.data import TrajectoryDataset

    have = TrajectoryDataset.open(cfg.out).n_episodes if Path(cfg.out).exists() and not cfg.overwrite else 0
    if have >= cfg.episodes:
        return {"dataset": cfg.out, "episodes": have, "note": "already collected"}
    return collect(dataclasses.replace(cfg, episodes=cfg.episodes - have))


def _if_ground_truth(cfg: RunConfig, fn: Callable[[], dict]) -> dict:
    from robot_pref.data import TrajectoryDataset

    if not TrajectoryDataset.open(cfg.dataset).has_ground_truth("reward"):
        return {"skipped": "the dataset has no ground-truth reward"}
    return fn()


def run_pipeline(cfg: RunConfig) -> dict:
    """Run (or resume) every stage of ``cfg``; returns the report's numbers."""
    from robot_pref.pipeline.report import write_report

    cfg = cfg.resolved()
    run_dir = Path(cfg.run_dir)
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", dataclasses.asdict(cfg))
    _init_ray(cfg.address)
    stages = build_stages(cfg)
    names = [s.name for s in stages]
    if cfg.stop_after:
        if cfg.stop_after not in names:
            raise ValueError(f"stop_after={cfg.stop_after!r} is not a stage of this run; stages: {names}")
        stages = stages[: names.index(cfg.stop_after) + 1]
    print(f"run {cfg.name}: {len(stages)} stages -> {run_dir}")
    run_start = time.perf_counter()
    ran: set[str] = set()  # stages run in this call: a finished stage that needs one is redone
    for i, stage in enumerate(stages, 1):
        marker = run_dir / "stages" / f"{stage.name}.json"
        fingerprint = _fingerprint(stage.config)
        head = f"[{i}/{len(stages)}] {stage.name:<18}"
        done = json.loads(marker.read_text()) if marker.exists() else None
        upstream = sorted(ran.intersection(stage.needs))
        if done and done.get("fingerprint") == fingerprint and not upstream:
            print(f"{head} skipped (done in {done['seconds']:.1f}s earlier)", flush=True)
            continue
        # outputs (finished, or partial from an interrupted run) made from other settings or inputs: redo
        fresh = done is not None or bool(upstream)
        if done is not None:
            why = f"{', '.join(upstream)} reran" if upstream else "config changed"
            print(f"{head} {why}: rerunning from scratch", flush=True)
            marker.unlink()
        ran.add(stage.name)
        print(f"{head} running ...", flush=True)
        start = time.perf_counter()
        result = stage.run(fresh)
        seconds = time.perf_counter() - start
        _write_json(marker, {"stage": stage.name, "fingerprint": fingerprint, "seconds": seconds,
                             "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result})
        print(f"{head} done in {seconds:.1f}s", flush=True)
    report = write_report(cfg, run_dir, [s.name for s in stages])
    print(f"run {cfg.name}: finished in {time.perf_counter() - run_start:.0f}s; report: {run_dir / 'report.md'}")
    return report


def _init_ray(address: str | None) -> None:
    from robot_pref.console import init_ray

    init_ray(address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
