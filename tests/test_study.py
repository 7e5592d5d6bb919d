"""The study grid: expansion, aggregation on known inputs (Wilson, IQM, stratified bootstrap, paired ratio),
per-cell resume with an injected cell runner, and one tiny real pipeline cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robot_pref.pipeline.study import StudyConfig, cell_config, check_eval_seeds, data_config, expand, run_study
from robot_pref.pipeline.study_report import bootstrap, iqm, ratio, wilson

REPO = Path(__file__).resolve().parents[1]
LABELERS = {"oracle": {"labeler": "teacher", "teacher": {"kind": "oracle"}},
            "mistake": {"labeler": "teacher", "teacher": {"kind": "mistake", "eps": 0.2}}}


def _cfg(tmp_path: Path, **kw) -> StudyConfig:
    base = tmp_path / "base.yaml"  # a base whose teacher has settings the oracle must not inherit
    base.write_text("label:\n  labeler: teacher\n  teacher: {kind: mistake, eps: 0.1, equal: 0.1}\n")
    values = dict(name="t", base=str(base), tasks=("lift", "door"), seeds=(0, 1), labelers=LABELERS,
                  budgets=(250, 1000), policies=("iql-learned", "iql-true", "bc"), episodes=10,
                  out=str(tmp_path / "study"), parallel_cells=0, bootstrap_reps=500)
    return StudyConfig(**{**values, **kw})


def test_grid_has_every_cell_and_one_dataset_per_task_and_seed(tmp_path):
    cfg = _cfg(tmp_path)
    cells = expand(cfg)
    assert len(cells) == 2 * 2 * 2 * 2 and len({c.id for c in cells}) == 16
    assert "lift-mistake-1000-s1" in {c.id for c in cells}
    assert {data_config(cfg, c).run_dir for c in cells} == {str(Path(cfg.out) / "data" / f"{t}-s{s}")
                                                           for t in ("lift", "door") for s in (0, 1)}
    anchors = [c for c in cells if "bc" in c.policies]  # label-free policies once per (task, seed)
    assert sorted(c.id for c in anchors) == sorted(f"{t}-oracle-250-s{s}" for t in ("lift", "door") for s in (0, 1))
    assert all(c.policies == ("iql-learned",) for c in cells if c not in anchors)
    run = cell_config(cfg, next(c for c in cells if c.id == "door-mistake-1000-s1"))
    assert (run.collect.task, run.collect.seed, run.label.pairs, run.label.seed, run.label.teacher.seed,
            run.fit_reward.seed, run.train.seed) == ("door", 1, 1000, 1, 1, 1, 1)
    assert run.label.teacher.kind == "mistake" and run.label.teacher.eps == 0.2
    assert (run.eval.episodes, run.eval.seed) == (10, 200_000)
    oracle = cell_config(cfg, cells[0]).label.teacher
    assert oracle.kind == "oracle" and oracle.eps is None and oracle.equal is None
    assert run.run_dir == str(Path(cfg.out) / "cells" / "door-mistake-1000-s1")


def test_bad_grid_and_reported_seeds_overlapping_tuning_seeds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="overlaps robot-pref eval's default"):
        check_eval_seeds(_cfg(tmp_path, eval_seed=1000))
    with pytest.raises(ValueError, match="training-time evaluation seeds"):
        check_eval_seeds(_cfg(tmp_path, eval_seed=9995))
    with pytest.raises(ValueError, match="without '-'"):
        expand(_cfg(tmp_path, labelers={"vlm-like": {"labeler": "teacher"}}))
    typo = _cfg(tmp_path, labelers={"x": {"labeler": "teacher", "pears": 3}})
    with pytest.raises(ValueError, match="pears"):
        cell_config(typo, expand(typo)[0])


def test_wilson_interval_numbers():
    assert wilson(10, 20) == pytest.approx([0.2993, 0.7007], abs=1e-4)
    assert wilson(0, 20) == pytest.approx([0.0, 0.1611], abs=1e-4)
    assert wilson(20, 20) == pytest.approx([0.8389, 1.0], abs=1e-4)


def test_iqm_and_bootstrap_on_known_inputs():
    assert iqm(np.arange(10.0)) == pytest.approx(4.5)  # mean of 2..7
    assert iqm(np.array([0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 100.0])) == pytest.approx(0.5)  # outliers trimmed
    few = bootstrap(np.arange(10.0) / 10, reps=2000)
    assert few["iqm"] == pytest.approx(0.45) and few["mean"] == pytest.approx(0.45)
    assert few["iqm_ci"][0] < 0.45 < few["iqm_ci"][1] and few["mean_ci"][0] < 0.45 < few["mean_ci"][1]
    many = bootstrap(np.tile(np.arange(10.0) / 10, 8), reps=2000)  # the same spread, 8x the seeds
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(many["iqm_ci"]) < 0.6 * width(few["iqm_ci"])
    assert width(many["mean_ci"]) < 0.6 * width(few["mean_ci"])
    # stratified by task: seeds are resampled within each task, so a task always 0 and one always 1 average 0.5
    strat = bootstrap(np.array([[0.0, 1.0]] * 5), reps=500)
    assert strat["mean"] == 0.5 and strat["mean_ci"] == pytest.approx([0.5, 0.5])
    assert (strat["n_seeds"], strat["n_tasks"]) == (5, 2)


def test_ratio_resamples_seeds_of_both_policies_together():
    true = np.array([0.2, 0.9, 0.5, 0.7, 1.0])
    paired = ratio(true / 2, true, reps=1000)  # the same seed's learned run is half its oracle: always 0.5
    assert paired["ratio"] == pytest.approx(0.5) and paired["ci"] == pytest.approx([0.5, 0.5])
    noisy = ratio(np.array([0.1, 0.6, 0.2, 0.3, 0.8]), true, reps=1000)
    assert noisy["ratio"] == pytest.approx(2.0 / 3.3) and noisy["ci"][0] < noisy["ratio"] < noisy["ci"][1]
    assert ratio(np.array([0.5]), np.array([0.0]), reps=10)["ratio"] is None


SUCCESS = {"iql-learned": {"oracle": 8, "mistake": 6}, "iql-true": 9, "bc": 2}  # out of 10


class FakeRunner:
    """Stands in for run_pipeline: makes the data, then writes what a finished run leaves; can die once."""

    def __init__(self, die_in: str = ""):
        self.calls: list[str] = []
        self.die_in = die_in

    def __call__(self, run_cfg) -> dict:
        self.calls.append(run_cfg.name)
        run_dir = Path(run_cfg.run_dir)
        if run_cfg.stop_after == "render":
            (run_dir / "dataset.zarr").mkdir(parents=True, exist_ok=True)
            (run_dir / "dataset.zarr" / "made").write_text(run_cfg.name)
            return {}
        assert (Path(run_cfg.dataset) / "made").read_text() == f"{run_cfg.collect.task}-s{run_cfg.collect.seed}"
        if run_cfg.name == self.die_in:
            self.die_in = ""
            raise RuntimeError("killed mid-run")
        labeler = run_cfg.name.split("-")[1]
        for policy in run_cfg.policies:
            wins = SUCCESS[policy][labeler] if isinstance(SUCCESS[policy], dict) else SUCCESS[policy]
            wins = max(0, wins - run_cfg.collect.seed)  # seed 1 one success fewer
            (run_dir / "eval" / policy).mkdir(parents=True, exist_ok=True)
            (run_dir / "eval" / policy / "eval_info.json").write_text(
                json.dumps({"successes": wins, "episodes": 10, "success_rate": wins / 10}))
            (run_dir / "policies" / policy).mkdir(parents=True, exist_ok=True)
            (run_dir / "policies" / policy / "train_info.json").write_text(json.dumps(
                {"evals": [{"step": 50, "success_rate": 0.0}, {"step": 100, "success_rate": wins / 10}]}))
        return {}


def test_finished_cells_are_skipped_and_a_killed_cell_runs_again(tmp_path):
    cfg = _cfg(tmp_path, tasks=("lift",), budgets=(1000,))
    first = FakeRunner(die_in="lift-mistake-1000-s1")
    with pytest.raises(RuntimeError, match="1 cells failed.*lift-mistake-1000-s1"):
        run_study(cfg, runner=first)
    assert sorted(c for c in first.calls if c.endswith("1000-s1")) == ["lift-mistake-1000-s1", "lift-oracle-1000-s1"]
    partial = json.loads((Path(cfg.out) / "study.json").read_text())  # reported anyway, the failure listed
    assert {r["cell"]: r["status"] for r in partial["cells"]}["lift-mistake-1000-s1"] == "failed"

    second = FakeRunner()
    summary = run_study(cfg, runner=second)
    assert second.calls == ["lift-s1", "lift-mistake-1000-s1"]  # only the killed cell (its data run: skipped there)
    assert summary["cells_finished"] == 4
    for cell in expand(cfg):  # every cell trained on its own copy of its (task, seed) data
        assert (Path(cfg.out) / "cells" / cell.id / "data.zarr" / "made").read_text() == f"lift-s{cell.seed}"
    assert run_study(cfg, runner=(third := FakeRunner()))["cells_finished"] == 4 and third.calls == []
    more = FakeRunner()
    run_study(_cfg(tmp_path, tasks=("lift",), budgets=(1000,), episodes=20), runner=more)
    assert len([c for c in more.calls if "1000" in c]) == 4  # a changed setting reruns each cell (pipeline resumes)


def test_report_aggregates_the_cells(tmp_path):
    cfg = _cfg(tmp_path, tasks=("lift", "door"), budgets=(1000,))
    summary = run_study(cfg, runner=FakeRunner())
    out = Path(cfg.out)
    groups = {(g["task"], g["labeler"], g["policy"]): g for g in summary["aggregate"]["groups"]}
    learned = groups[("lift", "mistake", "iql-learned")]
    assert learned["scores"] == [0.6, 0.5] and learned["mean"] == pytest.approx(0.55)
    assert groups[("door", "mistake", "bc")]["scores"] == [0.2, 0.1]  # baselines beside every labeler
    ratios = {(r["task"], r["labeler"]): r for r in summary["aggregate"]["ratios"]}
    assert ratios[("lift", "oracle")]["ratio"] == pytest.approx((0.8 + 0.7) / (0.9 + 0.8))
    over = {(g["labeler"], g["policy"]): g for g in summary["aggregate"]["over_tasks"]}
    pooled = over[("mistake", "iql-learned")]
    assert pooled["n_tasks"] == 2 and pooled["mean"] == pytest.approx(0.55)
    cells = {r["cell"]: r for r in summary["cells"]}
    assert cells["door-oracle-1000-s1"]["policies"]["bc"]["ci"] == wilson(1, 10)
    curve = next(c for c in summary["curves"] if c["task"] == "lift" and c["policy"] == "iql-true")
    assert curve["steps"] == [50, 100] and curve["mean"] == pytest.approx([0.0, 0.85])
    md = (out / "study.md").read_text()
    assert "| lift | mistake | 1000 | iql-learned | 2 | 55 " in md
    assert "| door-oracle-1000-s1 | finished | bc | 1/10" in md
    assert (out / "success_vs_budget.png").stat().st_size > 10_000 and (out / "training_curves.png").exists()
    assert json.loads((out / "study.json").read_text())["cells_total"] == 8


TINY = {"collect": {"episodes": 3, "horizon": 30}, "render": {"size": 48, "actors": 1},
        "fit_reward": {"epochs": 2, "ensemble": 1, "label_noise": 0.0},
        "train": {"steps": 40, "log_every": 20, "save_every": 20, "eval_every": 20, "eval_episodes": 1},
        "eval": {"workers": 1, "max_steps": 20, "videos": 0}}


@pytest.mark.slow
def test_a_tiny_real_cell_runs_skips_and_resumes_through_the_pipeline(tmp_path, ray_session):
    cfg = _cfg(tmp_path, base=str(REPO / "configs/quickstart.yaml"), run=TINY, tasks=("lift",), seeds=(0,),
               labelers={"mistake": LABELERS["mistake"]}, budgets=(100,), policies=("iql-learned", "bc"),
               episodes=1, bootstrap_reps=100)
    summary = run_study(cfg)
    cell_dir = Path(cfg.out) / "cells" / "lift-mistake-100-s0"
    stages = sorted(p.stem for p in (cell_dir / "stages").glob("*.json"))
    assert "eval_iql-learned" in stages and "eval_bc" in stages and "collect" not in stages
    render = json.loads((cell_dir / "stages" / "render.json").read_text())["result"]
    assert (render["skipped"], render["episodes"]) == (3, 0)  # the data was rendered once, in the data run
    assert json.loads((cell_dir / "stages" / "label.json").read_text())["result"]["counts"]["answered"] == 100
    assert summary["cells"][0]["policies"]["bc"]["episodes"] == 1
    assert [p["step"] for p in summary["cells"][0]["policies"]["iql-learned"]["curve"]] == [20, 40]
    log = (cell_dir / "study_cell.log").read_text()
    run_study(cfg)  # finished: not run again
    assert (cell_dir / "study_cell.log").read_text() == log
    run_study(_cfg(tmp_path, **{**cfg.__dict__, "episodes": 2}))  # the pipeline resumes: only evaluations rerun
    rerun = (cell_dir / "study_cell.log").read_text()[len(log):]
    assert f"{'train_bc':<18} skipped" in rerun and f"{'eval_bc':<18} config changed" in rerun
    assert json.loads((cell_dir / "eval" / "bc" / "eval_info.json").read_text())["episodes"] == 2
