"""`robot-pref run CONFIG.yaml`: raw trajectories to an evaluated policy.

Each stage is the same function its own CLI verb calls, reading its inputs from and writing its
outputs to the run directory. A finished stage leaves ``stages/<name>.json`` (its result, timing
and a fingerprint of its config); rerunning the same command skips finished stages and resumes an
interrupted one through that stage's own resume logic (collect appends the missing episodes,
render and relabel continue per episode/chunk, label never asks a cached question twice, train
resumes from its last checkpoint). Changing a stage's config reruns it from scratch (its
``overwrite`` set), and with it every stage that needs its outputs — not the unrelated ones.

Stages that do not need each other run at the same time (``parallel``, the default): the trainings
and the reward fit run as Ray tasks holding the CPUs (and GPUs) they ask for, the other stages in this
process, one at a time, with their own Ray actors. A stage starts when its inputs are done and its
CPUs fit in the cluster's; a stage listed earlier (the learned-reward chain comes first) is never
overtaken by a later one that is ready too, so the longest chain keeps its cores.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from robot_pref.data.dataset import frame_key as make_frame_key
from robot_pref.envs.commands import CollectConfig
from robot_pref.eval.rollout import EvalConfig, episodes_done
from robot_pref.feedback.config import LabelConfig
from robot_pref.render.render import RenderConfig
from robot_pref.reward.config import FitRewardConfig, RelabelConfig
from robot_pref.resources import resolve_workers
from robot_pref.rl.config import TrainConfig
from robot_pref.tracking import LogKind

LEARNED_REWARD_KEY = "learned"
# CPUs (= torch threads) of the reward fit. Everything on the learned reward waits for it: on 1 core beside a
# label-free training it took ~1.7x as long as alone on 2, and the learned-reward training after it then ran
# alone on 1 core beside an idle one; on 2 the label-free trainings run after it, beside that training.
FIT_REWARD_CPUS = 2.0


@dataclass
class RunConfig:
    """A whole run. Paths inside the stage sections are filled in from ``run_dir`` / ``dataset``."""

    name: str = "run"
    run_dir: str = field(default="", metadata={"help": "where every output goes (default: runs/<name>)"})
    dataset: str = field(default="", metadata={
        "help": "use this existing dataset instead of collecting one (it is written to: frames, rewards)"})
    address: str | None = field(default=None, metadata={"help": "Ray address (default: RAY_ADDRESS or local)"})
    policies: tuple[str, ...] = field(default=("iql-learned", "iql-true", "bc"), metadata={
        "help": "policies to train and evaluate: iql-learned, iql-true (oracle), iql-zero and iql-constant (trivial "
                "rewards: 0, the learned reward's mean), bc, rwbc (reward-weighted BC on the learned reward)"})
    policy_train: dict[str, dict] = field(default_factory=dict, metadata={
        "help": "train fields for one policy on top of train, e.g. {bc: {steps: 20000, actor: deterministic}} "
                "or --set policy_train.bc.steps=20000 (so that no baseline is handicapped by another's settings)"})
    gpus: float = field(default=0.0, metadata={
        "help": "GPUs Ray reserves for each fit_reward / train stage, run as a Ray task on a GPU node (0 = in this "
                "process, on its CUDA device if it has one)"})
    stop_after: str = field(default="", metadata={
        "help": "stop after this stage (e.g. label, fit_reward); the report covers what has run"})
    parallel: bool = field(default=True, metadata={
        "help": "run independent stages at once within the cluster's CPUs (trainings as Ray tasks); "
                "false = one stage after another in this process"})
    checkpoint: Literal["last", "best"] = field(default="last", metadata={
        "help": "policy checkpoint to evaluate: last, or best by the training-time evaluations (needs train.eval_every; "
                "oracle model selection by simulator success, flagged in the report)"})
    log: LogKind = field(default="none", metadata={
        "help": "training logs of fit_reward and every train stage (tensorboard or wandb, in each stage's folder); "
                "none keeps the sections' own fit_reward.log / train.log"})
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
            fit_reward=r(self.fit_reward, dataset=dataset, labels=labels, camera=frame_key, out=reward_dir,
                         log=self.fit_reward.log if self.log == "none" else self.log),
            relabel=r(self.relabel, dataset=dataset, reward_model=reward_dir, key=LEARNED_REWARD_KEY,
                      camera=frame_key, address=self.address or ""),
            train=r(self.train, dataset=dataset, log=self.train.log if self.log == "none" else self.log),
            eval=r(self.eval, task=self.collect.task, address=self.address),
        )


    def train_for(self, policy: str) -> TrainConfig:
        """``train`` with ``policy_train[policy]`` on top, coerced field by field (errors name the dotted field)."""
        from robot_pref.config import from_dict

        overrides: dict[str, Any] = {}
        for key, value in sorted(self.policy_train.items(), key=lambda kv: "." in kv[0]):  # dotted keys last
            name, _, rest = key.partition(".")
            if name not in POLICIES:
                raise ValueError(f"policy_train.{key}: no policy {name!r}; choose from {sorted(POLICIES)}")
            if name != policy:
                continue
            if rest:
                overrides[rest] = value
            elif isinstance(value, dict):
                overrides.update(value)
            else:
                raise ValueError(f"policy_train.{name}: expected a mapping of train fields (e.g. {{steps: 20000}}), "
                                 f"got {value!r}")
        fixed = sorted(set(overrides) & PIPELINE_TRAIN_FIELDS)
        if fixed:
            raise ValueError(f"policy_train.{policy}.{fixed[0]}: set by the pipeline for each policy "
                             f"({', '.join(sorted(PIPELINE_TRAIN_FIELDS))}); remove it")
        return from_dict(TrainConfig, {**dataclasses.asdict(self.train), **overrides},
                         prefix=f"policy_train.{policy}.")


POLICIES = {  # name -> (algo, reward key); rewards as robot_pref.rl.batches.transition_rewards reads them
    "iql-learned": ("iql", LEARNED_REWARD_KEY),
    "iql-true": ("iql", "true"),
    "iql-zero": ("iql", "zero"),  # trivial baselines: no ground truth read (the Offline RL-VLM-F paper's)
    "iql-constant": ("iql", f"constant:{LEARNED_REWARD_KEY}"),
    "bc": ("bc", ""),
    "rwbc": ("rwbc", LEARNED_REWARD_KEY),
}
PIPELINE_TRAIN_FIELDS = {"dataset", "out", "algo", "reward_key"}  # what policy_train may not set


@dataclass
class Stage:
    name: str
    config: Any  # what the fingerprint covers; passed to ``fn`` (with overwrite=True when rerun afresh)
    fn: Callable[[Any], dict]
    needs: tuple[str, ...] = ()  # stages whose outputs this one reads
    cpus: float = 1.0  # cores it keeps busy (its own threads or its Ray actors): what the scheduler budgets
    remote: bool = False  # a Ray task of its own (trainings), so that several run at once
    progress: Callable[[], str] | None = None  # a short "how far" for the periodic status line
    state: Callable[[], str] | None = None  # outside inputs the fingerprint covers too (people's answers)
    # the config run on fewer cores (an evaluation with fewer workers: same episodes, same results), so the
    # stage starts on the cores left beside a training instead of waiting for all it asks for
    shrink: Callable[[Any, int], Any] | None = None
    # given one CPU, run as a Ray task of its own rather than in this process (an evaluation on one worker):
    # several then run side by side, where in-process stages go one at a time and a core would sit idle
    task_on_one_cpu: bool = False
    task_gpus: float | None = None  # GPUs of its Ray task; None = the run's `gpus` (trainings)

    def runs_remote(self, cpus: float) -> bool:
        return self.remote or (self.task_on_one_cpu and cpus == 1)

    def config_for(self, fresh: bool, cpus: float | None = None) -> Any:
        config = self.config
        if fresh and dataclasses.is_dataclass(config) and hasattr(config, "overwrite"):
            config = dataclasses.replace(config, overwrite=True)
        if cpus is not None and cpus < self.cpus and self.shrink is not None:
            config = self.shrink(config, int(cpus))
        return config


def _fingerprint(config: Any) -> str:
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "log"}  # where training logs go changes no result
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
    from robot_pref.rl.features import encode_features, encode_inputs
    from robot_pref.rl.train import train

    stages: list[Stage] = []
    source: tuple[str, ...] = ()
    if cfg.dataset == str(Path(cfg.run_dir) / "dataset.zarr"):  # no dataset given: collect one
        stages.append(Stage("collect", cfg.collect, lambda c: _collect_remaining(c, collect),
                            cpus=resolve_workers(cfg.collect.workers)))
        source = ("collect",)
    stages.append(Stage("render", cfg.render, render_dataset, source, cpus=resolve_workers(cfg.render.actors)))
    label_cpus = cfg.label.workers if cfg.label.workers > 1 else 0.0  # in-process labelers wait on answers
    people = None  # hybrid labels with a human queue: a rerun merges what people answered through label-ui
    if cfg.label.labeler == "hybrid" and cfg.label.hybrid.human == "queue":
        from robot_pref.feedback.human_queue import answers_state

        people = functools.partial(answers_state, cfg.label.out)
    stages.append(Stage("label", cfg.label, label, ("render",), cpus=label_cpus, state=people))
    report_cfg = LabelReportConfig(dataset=cfg.dataset, labels=cfg.label.out)
    stages.append(Stage("label_report", report_cfg, lambda c: _if_ground_truth(cfg, lambda: label_report(c)),
                        ("label",), cpus=0.0))
    remote = cfg.parallel or cfg.gpus > 0
    from robot_pref.eval.offline import OfflineEvalConfig, evaluate_offline, has_simulator

    simulated = has_simulator(cfg.dataset)  # an imported real-robot dataset is evaluated offline
    stages.append(Stage("fit_reward", cfg.fit_reward, fit_reward, ("label",), cpus=FIT_REWARD_CPUS, remote=remote))
    stages.append(Stage("relabel", cfg.relabel, relabel, ("fit_reward",)))
    encoded: dict[str, str] = {}  # encode config -> the stage that writes those features
    # evaluations after every training: in-process stages go one at a time and none is overtaken, so a
    # training listed after an evaluation would wait for it (BC sat behind two evaluations, a core idle)
    evaluations: list[Stage] = []
    for policy in cfg.policies:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
        algo, reward_key = POLICIES[policy]
        train_cfg = dataclasses.replace(cfg.train_for(policy), algo=algo, reward_key=reward_key,
                                        out=str(Path(cfg.run_dir) / "policies" / policy))
        eval_cfg = dataclasses.replace(cfg.eval, policy=str(Path(train_cfg.out) / f"{cfg.checkpoint}.pt"),
                                       out=str(Path(cfg.run_dir) / "eval" / policy))
        if simulated:
            _check_seeds_apart(train_cfg, eval_cfg, policy)
        reads = ("relabel",) if reward_key.rpartition(":")[2] == LEARNED_REWARD_KEY else source
        train_cfg, encode_cfg = encode_inputs(train_cfg, cfg.relabel.reward_model, cfg.dataset)  # pixel policies
        if encode_cfg is not None:  # frozen-encoder features cached before training (robot_pref.rl.features)
            # one stage per distinct encoding: a second one would overwrite (fresh) the features a policy
            # training beside it (parallel) is reading
            same = repr(dataclasses.replace(encode_cfg, threads=0))
            if same not in encoded:
                encoded[same] = f"encode_{policy}"
                stages.append(Stage(encoded[same], encode_cfg, encode_features, ("relabel", *source)))
            reads += (encoded[same],)
        stages.append(Stage(f"train_{policy}", train_cfg, train, reads, cpus=max(train_cfg.threads, 1),
                            remote=remote, progress=lambda c=train_cfg: _train_progress(c)))
        if simulated:
            evaluations.append(Stage(f"eval_{policy}", eval_cfg, evaluate, (f"train_{policy}",),
                                     cpus=resolve_workers(cfg.eval.workers), shrink=_fewer_workers,
                                     task_on_one_cpu=remote, task_gpus=float(cfg.eval.device.startswith("cuda")),
                                     progress=lambda c=eval_cfg: f"{episodes_done(c.out)}/{c.episodes} episodes"))
        else:
            evaluations.append(Stage(f"eval_{policy}", OfflineEvalConfig(policy=eval_cfg.policy,
                                                                         dataset=cfg.dataset, out=eval_cfg.out),
                                     evaluate_offline, (f"train_{policy}",), cpus=1.0))
    return stages + evaluations


def _fewer_workers(cfg: EvalConfig, cpus: int) -> EvalConfig:
    return dataclasses.replace(cfg, workers=max(1, cpus))


def _check_seeds_apart(train_cfg: TrainConfig, eval_cfg: EvalConfig, policy: str) -> None:
    """The training-time evaluations (learning curves, checkpoint: best) must not see a reported episode."""
    from robot_pref.rl.train import training_eval_seeds

    if train_cfg.eval_every <= 0:
        return
    during = training_eval_seeds(train_cfg)
    final = range(eval_cfg.seed, eval_cfg.seed + eval_cfg.episodes)
    if during.start < final.stop and final.start < during.stop:
        raise ValueError(f"{policy}: training-time evaluation seeds {during.start}-{during.stop - 1} overlap the "
                         f"final evaluation's {final.start}-{final.stop - 1}; choices would be made on reported "
                         "episodes: move eval.seed (or lower eval.episodes / train.eval_episodes)")


def _train_progress(cfg: TrainConfig) -> str:
    log = Path(cfg.out) / "log.csv"
    lines = log.read_text().splitlines() if log.exists() else []
    step = lines[-1].split(",", 1)[0] if len(lines) > 1 else "0"
    return f"{step}/{cfg.steps} steps"


def _run_stage(stage: Stage, fresh: bool, gpus: float, cpus: float | None, remote: bool) -> tuple[dict, float]:
    """(result, CPU seconds of the process that ran it) — a Ray task holding ``cpus`` CPUs (the cores the
    scheduler gave it; without a budget ``stage.cpus``, at most the cluster's), as many torch threads, and
    ``gpus`` GPUs (or the stage's `task_gpus`) for a remote stage (Ray hides GPUs from tasks that ask for
    none) when the scheduler placed it ``remote``, else this process."""
    config = stage.config_for(fresh, cpus)
    if not remote:
        return _timed_call(stage.fn, config, 0)
    import ray

    # never more than the cluster has (a task asking for more would wait forever); threads = CPUs held
    given = min(stage.cpus, _cpu_budget()) if cpus is None else cpus
    num_gpus = gpus if stage.task_gpus is None else stage.task_gpus
    task = ray.remote(num_cpus=given, num_gpus=num_gpus, max_retries=0)(_timed_call)
    ref = task.remote(stage.fn, config, given)
    _IN_FLIGHT[stage.name] = ref
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the stage's own error (ValueError, DatasetError, ...)
        raise err.cause from err
    finally:
        _IN_FLIGHT.pop(stage.name, None)


def _timed_call(fn: Callable[[Any], dict], config: Any, threads: float) -> tuple[dict, float]:
    if threads:  # inside a Ray task: torch uses the cores reserved for it, no more
        import torch

        torch.set_num_threads(max(1, int(threads)))
    cpu = time.process_time()
    result = fn(config)
    return result, time.process_time() - cpu


_IN_FLIGHT: dict[str, Any] = {}  # stage name -> Ray object ref of a remote stage, to cancel on failure


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
    stages = build_stages(cfg)
    names = [s.name for s in stages]
    if cfg.stop_after:
        if cfg.stop_after not in names:
            raise ValueError(f"stop_after={cfg.stop_after!r} is not a stage of this run; stages: {names}")
        stages = stages[: names.index(cfg.stop_after) + 1]
    print(f"run {cfg.name}: {len(stages)} stages -> {run_dir}")
    import psutil

    run_start, cpu_start = time.perf_counter(), psutil.cpu_times()
    plan = _plan(stages, run_dir)
    if not plan:  # everything is up to date: no Ray to start (~7 s), and run.json keeps the last real run
        report = write_report(cfg, run_dir, [s.name for s in stages])
        print(f"run {cfg.name}: nothing to rerun; report: {run_dir / 'report.md'}")
        return report
    _init_ray(cfg.address)
    budget = _cpu_budget() if cfg.parallel else 0.0
    _execute(plan, budget, [s.name for s in stages], cfg.gpus, run_dir)
    wall, busy = time.perf_counter() - run_start, _busy_fraction(cpu_start, psutil.cpu_times())
    _write_json(run_dir / "run.json", {"wall_s": round(wall, 1), "machine_cpu_utilization": round(busy, 3),
                                       "cpus": psutil.cpu_count(), "parallel": cfg.parallel,
                                       "stages_run": [s.name for s, _, _ in plan]})
    report = write_report(cfg, run_dir, [s.name for s in stages])
    print(f"run {cfg.name}: finished in {wall:.0f}s at {100 * busy:.0f}% CPU ({psutil.cpu_count()} cores, "
          f"whole machine); report: {run_dir / 'report.md'}")
    return report


def _busy_fraction(before, after) -> float:
    """Share of the machine's CPU time spent busy between two ``psutil.cpu_times()`` readings."""
    total = sum(after) - sum(before)
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    return max(0.0, 1.0 - idle / total) if total > 0 else 0.0


def _plan(stages: list[Stage], run_dir: Path) -> list[tuple[Stage, bool, str]]:
    """(stage, fresh, fingerprint) of each stage to run; finished ones whose inputs stay are skipped here.

    A stage reruns when its config changed or any stage it needs reruns, and then from scratch (``fresh``)
    when it has outputs (finished, or partial from an interrupted run) made from other settings or inputs.
    """
    plan, rerun = [], set()
    for i, stage in enumerate(stages, 1):
        marker = run_dir / "stages" / f"{stage.name}.json"
        fingerprint = _fingerprint(stage.config)
        if stage.state is not None and (state := stage.state()):
            fingerprint = _fingerprint({"config": fingerprint, "state": state})
        head = f"[{i}/{len(stages)}] {stage.name:<18}"
        done = json.loads(marker.read_text()) if marker.exists() else None
        upstream = sorted(rerun.intersection(stage.needs))
        if done and done.get("fingerprint") == fingerprint and not upstream:
            print(f"{head} skipped (done in {done['seconds']:.1f}s earlier)", flush=True)
            continue
        if done is not None:
            why = f"{', '.join(upstream)} reran" if upstream else "config changed"
            print(f"{head} {why}: rerunning from scratch", flush=True)
            marker.unlink()
        rerun.add(stage.name)
        plan.append((stage, done is not None or bool(upstream), fingerprint))
    return plan


def _cpu_budget() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def _execute(plan: list[tuple[Stage, bool, str]], budget: float, all_names: list[str], gpus: float,
             run_dir: Path, status_every: float = 30.0) -> None:
    """Run the planned stages: with ``budget`` CPUs at once in list order without overtaking, or (budget 0)
    one after another. Stages run in daemon threads (a remote one waits there on its Ray task), so Ctrl-C
    and a failure end the run at once; remote stages in flight are cancelled then.

    Two rules keep the cores busy on what the run waits for. A stage other stages need (fit_reward, on the
    way to the learned-reward training) keeps its CPUs reserved once all it waits on is running, so later
    stages that are ready earlier (the label-free trainings) do not take its cores a moment before it can
    start, nor (one in this process, relabel) the process: an evaluation of a label-free policy started
    then would hold up relabel, and the learned-reward training behind it, until it ends. A stage with
    `Stage.shrink` (evaluations) starts on the cores that are free when fewer than it asks for are."""
    head = {name: f"[{i}/{len(all_names)}] {name:<18}" for i, name in enumerate(all_names, 1)}
    planned = {stage.name for stage, _, _ in plan}
    needed = {n for stage, _, _ in plan for n in stage.needs}
    waiting, finished = list(plan), set()
    running: dict[str, tuple[Stage, float, float, bool]] = {}  # name -> (stage, start, CPUs given, remote)
    events: queue.Queue = queue.Queue()
    used, last_status = 0.0, time.perf_counter()

    def work(stage: Stage, fresh: bool, cpus: float | None, remote: bool) -> None:
        try:
            events.put((stage.name, _run_stage(stage, fresh, gpus, cpus, remote), None))
        except BaseException as err:  # noqa: BLE001  (re-raised in the main thread)
            events.put((stage.name, None, err))

    try:
        while waiting or running:
            reserved = 0.0  # CPUs of earlier stages that start as soon as what is running now ends
            local_reserved = False  # such a stage runs in this process: later in-process ones wait for it
            for item in list(waiting):
                stage, fresh, _ = item
                pending = [n for n in stage.needs if n in planned and n not in finished]
                if pending:
                    if stage.name in needed and all(n in running for n in pending):
                        # the cores its inputs hold come back when they end: reserve only the rest (relabel
                        # keeps no second core idle beside the fit it waits on)
                        reserved += max(0.0, min(stage.cpus, budget) - sum(running[n][2] for n in pending))
                        local_reserved |= not stage.remote
                    continue
                cost, free = min(stage.cpus, budget), budget - used - reserved
                if stage.shrink is not None and 1 <= free < cost:
                    cost = float(int(free))
                remote = stage.runs_remote(cost) if budget else stage.remote
                local_busy = any(not r for _, _, _, r in running.values())
                if running and (not budget or cost > free or (not remote and (local_busy or local_reserved))):
                    break  # no overtaking: later stages wait for this one
                waiting.remove(item)
                running[stage.name] = (stage, time.perf_counter(), cost, remote)
                used += cost
                given = f" on {cost:.0f} of {stage.cpus:.0f} CPUs" if budget and cost < min(stage.cpus, budget) else ""
                print(f"{head[stage.name]} running{given} ...", flush=True)
                threading.Thread(target=work, args=(stage, fresh, cost if budget else None, remote), daemon=True,
                                 name=stage.name).start()
            try:
                name, outcome, err = events.get(timeout=5.0)
            except queue.Empty:
                if time.perf_counter() - last_status >= status_every:
                    last_status = time.perf_counter()
                    print("    running: " + ", ".join(
                        f"{n} {time.perf_counter() - t:.0f}s" + (f" ({s.progress()})" if s.progress else "")
                        for n, (s, t, _, _) in running.items()), flush=True)
                continue
            stage, start, cost, remote = running.pop(name)
            used -= cost
            if err is not None:
                raise err
            result, cpu_s = outcome
            seconds = time.perf_counter() - start
            fingerprint = next(f for s, _, f in plan if s.name == name)
            _write_json(run_dir / "stages" / f"{name}.json", {
                "stage": name, "fingerprint": fingerprint, "seconds": seconds, "cpu_s": round(cpu_s, 2),
                "remote": remote, "started_unix": time.time() - seconds,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "result": result})
            finished.add(name)
            print(f"{head[name]} done in {seconds:.1f}s", flush=True)
    finally:
        if _IN_FLIGHT:
            import ray

            for ref in list(_IN_FLIGHT.values()):
                ray.cancel(ref, force=True)


def _init_ray(address: str | None) -> None:
    from robot_pref.console import init_ray

    init_ray(address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
