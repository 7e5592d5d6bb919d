"""`robot-pref study CONFIG.yaml`: a grid of pipeline runs (tasks x labelers x query budgets x seeds).

Every cell is a normal pipeline run directory, ``<out>/cells/<task>-<labeler>-<budget>-s<seed>/``, run by
``robot_pref.pipeline.run.run_pipeline``; the study knows the stages only through that function and the
directories it leaves. Seed ``s`` is the dataset seed (collect) and the seed of labels, reward fit and
training alike, so seeds vary everything that is random.

The data of one (task, seed) is made once: ``<out>/data/<task>-s<seed>/`` is a pipeline run stopped after
render, and each cell of that (task, seed) starts from a copy of its dataset. A copy, not the shared path,
because relabel writes the cell's learned reward into the dataset (``rewards/learned``): cells sharing one
store would overwrite each other's rewards. Policies that read no labels (``shared_policies``: oracle,
trivial rewards, BC) are trained once per (task, seed), in the cell of the first labeler and budget.

Resumable per cell: a cell whose ``study_cell.json`` matches its config is skipped; any other cell is run
through the pipeline again, which skips its finished stages and resumes an interrupted one. Cells run as
Ray tasks (``parallel_cells`` at once) against the same cluster as ``robot-pref run`` (RAY_ADDRESS
honoured; for several nodes ``out`` must be on a shared filesystem).

Evaluation seeds: the reported episodes start at ``eval_seed`` (``reset(eval_seed + i)``) and must not
overlap the tuning seeds: ``robot-pref eval``'s default range 1000-1999 (where earlier defaults were chosen)
and the training-time evaluations (10000 + training seed, ``rl.train``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

TUNING_EVAL_SEEDS = range(1000, 2000)  # robot-pref eval's default seed 1000: what earlier tuning looked at
TRAIN_EVAL_SEED = 10_000  # rl.train's training-time evaluations start at 10000 + training seed
CELL_MARKER = "study_cell.json"
CELL_DATASET = "data.zarr"  # a cell's copy; not the run's default dataset.zarr, whose collect stage would
# count as rerun and make render start afresh


@dataclass
class StudyConfig:
    name: str = "study"
    base: str = field(default="configs/quickstart.yaml", metadata={
        "help": "run config YAML every cell starts from ('' = RunConfig defaults)"})
    run: dict = field(default_factory=dict, metadata={
        "help": "run config values merged over base for every cell (nested sections, as in a run YAML)"})
    task_run: dict = field(default_factory=dict, metadata={
        "help": "per-task run values merged over run, e.g. {door: {collect: {horizon: 150}}}"})
    tasks: tuple[str, ...] = ("lift",)
    seeds: tuple[int, ...] = (0,)
    labelers: dict = field(default_factory=lambda: {"oracle": {"labeler": "teacher", "teacher": {"kind": "oracle"}}},
                           metadata={"help": "name -> label section (labeler, teacher/vlm/... fields)"})
    budgets: tuple[int, ...] = field(default=(1000,), metadata={"help": "query budgets (label.pairs)"})
    policies: tuple[str, ...] = ("iql-learned", "iql-true", "bc")
    shared_policies: tuple[str, ...] = field(default=("iql-true", "iql-zero", "iql-constant", "bc"), metadata={
        "help": "policies that read no labels: trained once per (task, seed), in the first labeler/budget cell"})
    episodes: int = field(default=50, metadata={"help": "evaluation episodes per policy and cell"})
    eval_seed: int = field(default=200_000, metadata={
        "help": "first reported evaluation seed (never used for any choice; disjoint from the tuning seeds)"})
    out: str = field(default="", metadata={"help": "study directory (default: runs/<name>)"})
    address: str | None = field(default=None, metadata={"help": "Ray address (default: RAY_ADDRESS or local)"})
    parallel_cells: int = field(default=2, metadata={
        "help": "cells run at once as Ray tasks (0 = one after another in this process)"})
    cell_cpus: float = field(default=0.0, metadata={
        "help": "CPUs each cell's Ray task holds (its stages ask for their own; 0 = none held while waiting)"})
    bootstrap_reps: int = field(default=2000, metadata={"help": "stratified bootstrap resamples for the CIs"})

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}")


@dataclass(frozen=True)
class Cell:
    task: str
    labeler: str
    budget: int
    seed: int
    policies: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.task}-{self.labeler}-{self.budget}-s{self.seed}"

    @property
    def data_id(self) -> str:
        return f"{self.task}-s{self.seed}"


def expand(cfg: StudyConfig) -> list[Cell]:
    """Every cell of the grid; label-free policies only in the first labeler/budget cell of each (task, seed)."""
    if not (cfg.tasks and cfg.seeds and cfg.labelers and cfg.budgets and cfg.policies):
        raise ValueError("a study needs at least one task, seed, labeler, budget and policy")
    bad = [n for n in cfg.labelers if not isinstance(cfg.labelers[n], dict) or "-" in n or "/" in n]
    if bad:
        raise ValueError(f"labelers {bad}: each needs a label section (a mapping) and a name without '-' or '/'")
    first = (next(iter(cfg.labelers)), cfg.budgets[0])
    labelled = tuple(p for p in cfg.policies if p not in cfg.shared_policies)
    return [Cell(task, labeler, budget, seed, cfg.policies if (labeler, budget) == first else labelled)
            for task in cfg.tasks for seed in cfg.seeds for labeler in cfg.labelers for budget in cfg.budgets]


def check_eval_seeds(cfg: StudyConfig) -> None:
    """The reported episodes are never ones any setting was chosen on (a clear error otherwise)."""
    reported = range(cfg.eval_seed, cfg.eval_seed + cfg.episodes)
    train_evals = range(TRAIN_EVAL_SEED + min(cfg.seeds), TRAIN_EVAL_SEED + max(cfg.seeds) + 1000)
    for name, tuning in (("robot-pref eval's default (tuning) seeds", TUNING_EVAL_SEEDS),
                         ("the training-time evaluation seeds", train_evals)):
        if reported.start < tuning.stop and tuning.start < reported.stop:
            raise ValueError(f"eval_seed={cfg.eval_seed} with {cfg.episodes} episodes overlaps {name} "
                             f"({tuning.start}-{tuning.stop - 1}); pick eval_seed >= 100000")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _base_values(cfg: StudyConfig, task: str) -> dict:
    from robot_pref.config import load_yaml

    values = load_yaml(cfg.base) if cfg.base else {}
    return _merge(_merge(values, cfg.run), cfg.task_run.get(task, {}))


def cell_config(cfg: StudyConfig, cell: Cell):
    """The cell's RunConfig: base + run + task_run, then the grid's own fields (which always win)."""
    from robot_pref.config import from_dict
    from robot_pref.pipeline.run import RunConfig

    grid = {
        "name": cell.id, "run_dir": str(cfg.out_dir / "cells" / cell.id), "stop_after": "",
        "dataset": str(cfg.out_dir / "cells" / cell.id / CELL_DATASET),
        "address": cfg.address, "policies": list(cell.policies),
        "collect": {"task": cell.task, "seed": cell.seed},
        "fit_reward": {"seed": cell.seed}, "train": {"seed": cell.seed},
        "eval": {"episodes": cfg.episodes, "seed": cfg.eval_seed},
    }
    values = _merge(_base_values(cfg, cell.task), grid)
    # a labeler's sections replace the base's (an oracle never inherits the base teacher's eps)
    values["label"] = {**values.get("label", {}), **cfg.labelers[cell.labeler], "pairs": cell.budget, "seed": cell.seed}
    if values["label"].get("labeler", "teacher") == "teacher":  # the teacher's own coin flips vary with the seed
        values["label"] = _merge(values["label"], {"teacher": {"seed": cell.seed}})
    return from_dict(RunConfig, values)


def data_config(cfg: StudyConfig, cell: Cell):
    """The (task, seed) data run: the cell's collect and render, stopped after render."""
    return dataclasses.replace(cell_config(cfg, cell), name=cell.data_id, policies=(), stop_after="render",
                               dataset="", run_dir=str(cfg.out_dir / "data" / cell.data_id))


def _fingerprint(run_cfg) -> str:
    data = dataclasses.asdict(run_cfg)
    data.pop("address", None)  # where it ran changes no result
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _copy_dataset(source: Path, target: Path) -> None:
    """A private copy of the (task, seed) dataset for one cell (tmp + rename: never half a copy)."""
    if target.exists():
        return
    tmp = target.with_name(target.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, target)


Runner = Callable[[Any], dict]


def run_cell(cfg: StudyConfig, cell: Cell, runner: Runner | None = None) -> dict:
    """Run (or resume, or skip) one cell; returns its marker. Output of the pipeline goes to cell's log."""
    if runner is None:
        from robot_pref.pipeline.run import run_pipeline as runner
    run_cfg = cell_config(cfg, cell)
    run_dir = Path(run_cfg.run_dir)
    marker_path = run_dir / CELL_MARKER
    fingerprint = _fingerprint(run_cfg)
    if marker_path.exists():
        marker = json.loads(marker_path.read_text())
        if marker.get("fingerprint") == fingerprint:
            return {**marker, "skipped": True}
        marker_path.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir / "study_cell.log", "a") as log, contextlib.redirect_stdout(log):
        data_cfg = data_config(cfg, cell)
        runner(data_cfg)  # done once per (task, seed): later cells find its stages finished
        _copy_dataset(Path(data_cfg.run_dir) / "dataset.zarr", Path(run_cfg.dataset))
        runner(run_cfg)
    marker = {"cell": cell.id, "fingerprint": fingerprint, "task": cell.task, "labeler": cell.labeler,
              "budget": cell.budget, "seed": cell.seed, "policies": list(cell.policies),
              "wall_s": round(time.perf_counter() - start, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = marker_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, marker_path)
    return marker


def _data_first(cells: list[Cell]) -> list[Cell]:
    """One cell per (task, seed) first (each makes that data), so no two cells make the same data at once."""
    seen, first, rest = set(), [], []
    for cell in cells:
        (rest if cell.data_id in seen else first).append(cell)
        seen.add(cell.data_id)
    return first + rest


def run_study(cfg: StudyConfig, runner: Runner | None = None) -> dict:
    """Run every cell (finished ones skipped), then aggregate; returns the study's summary."""
    from tqdm.auto import tqdm

    check_eval_seeds(cfg)
    # absolute paths: cells may run in Ray workers whose working directory is not this one
    cfg = dataclasses.replace(cfg, base=str(Path(cfg.base).resolve()) if cfg.base else "",
                              out=str(cfg.out_dir.resolve()))
    cells = _data_first(expand(cfg))
    from robot_pref.pipeline.run import POLICIES

    unknown = [p for p in cfg.policies if p not in POLICIES]
    if unknown:
        raise ValueError(f"policies {unknown} are not pipeline policies; choose from {sorted(POLICIES)}")
    for cell in cells:  # bad labeler sections / unknown fields fail here, before anything runs
        cell_config(cfg, cell)
    out = cfg.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "study_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    start, failures = time.perf_counter(), {}
    bar = tqdm(total=len(cells), desc=f"study {cfg.name}", unit="cell")
    if cfg.parallel_cells <= 0:
        for cell in cells:
            try:
                run_cell(cfg, cell, runner)
            except Exception as err:  # noqa: BLE001  (recorded; the other cells still run)
                failures[cell.id] = f"{type(err).__name__}: {err}"
            bar.update()
    else:
        failures = _run_on_ray(cfg, cells, runner, bar)
    bar.close()
    wall = time.perf_counter() - start
    from robot_pref.pipeline.study_report import write_study_report

    summary = write_study_report(cfg, cells, failures, wall)
    print(f"study {cfg.name}: {len(cells) - len(failures)}/{len(cells)} cells in {wall:.0f}s; "
          f"report: {out / 'study.md'}")
    if failures:
        raise RuntimeError(f"{len(failures)} cells failed (rerun to retry them; see each cell's "
                           f"study_cell.log): {failures}")
    return summary


def _run_on_ray(cfg: StudyConfig, cells: list[Cell], runner: Runner | None, bar) -> dict[str, str]:
    """Cells as Ray tasks, ``parallel_cells`` at once; a (task, seed)'s data is made by its first cell alone."""
    import ray

    from robot_pref.console import init_ray

    init_ray(cfg.address or os.environ.get("RAY_ADDRESS"), log_to_driver=False)
    task = ray.remote(num_cpus=cfg.cell_cpus, max_retries=0)(run_cell)
    made, making = set(), {}  # data ids finished / data id -> ref of the cell making it
    pending, failures, in_flight = list(cells), {}, {}
    while pending or in_flight:
        for cell in list(pending):
            if len(in_flight) >= cfg.parallel_cells:
                break
            if cell.data_id not in made and cell.data_id in making:
                continue  # its data is being made by another cell
            pending.remove(cell)
            ref = task.remote(cfg, cell, runner)
            in_flight[ref] = cell
            making.setdefault(cell.data_id, ref)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        cell = in_flight.pop(done[0])
        try:
            ray.get(done[0])
            made.add(cell.data_id)
        except ray.exceptions.RayError as err:
            failures[cell.id] = str(getattr(err, "cause", None) or err).splitlines()[-1]
            if making.get(cell.data_id) is done[0]:
                making.pop(cell.data_id)  # another cell of this (task, seed) makes the data next
        bar.update()
    return failures
