"""The whole pipeline on a tiny Lift run: end to end, kill -9 and resume, and `ray job submit`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "collect.episodes=4", "collect.horizon=30", "render.size=48", "render.actors=1", "label.pairs=150",
    "fit_reward.epochs=3", "fit_reward.ensemble=2", "train.steps=60", "train.log_every=20",
    "train.save_every=20", "eval.episodes=1", "eval.workers=1", "eval.max_steps=30",
]


def _cmd(run_dir: Path, *extra: str) -> list[str]:
    sets = [f"--set={kv}" for kv in [f"run_dir={run_dir}", *TINY, *extra]]
    return [sys.executable, "-m", "robot_pref", "run", str(REPO / "configs/quickstart.yaml"), *sets]


def _env() -> dict:
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONUNBUFFERED="1", RAY_ADDRESS="")
    env.pop("RAY_ADDRESS")
    return env


@pytest.mark.slow
def test_quickstart_killed_mid_stage_resumes_and_reports(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(_cmd(run_dir), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:  # kill -9 as soon as the first training stage starts
            seen.append(line)
            if "train_" in line and "running" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log = "".join(seen)
    assert "train_" in log, log[-3000:]
    finished = sorted(p.stem for p in (run_dir / "stages").glob("*.json"))
    assert "collect" in finished and not [s for s in finished if s.startswith("train_")], finished

    out = subprocess.run(_cmd(run_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in finished:  # nothing finished is redone
        assert f"{stage:<18} skipped" in out.stdout, out.stdout
    assert "train_iql-learned  running" in out.stdout
    for name in ("iql-learned", "iql-true", "bc"):  # trainings ran as Ray tasks (the schedule: tests below)
        marker = json.loads((run_dir / "stages" / f"train_{name}.json").read_text())
        assert marker["remote"] and marker["cpu_s"] > 0
    assert "% CPU" in out.stdout and json.loads((run_dir / "run.json").read_text())["parallel"] is True

    report = json.loads((run_dir / "report.json").read_text())
    assert report["dataset"]["episodes"] == 4 and report["dataset"]["frames"] == 4 * 30
    assert set(report["policies"]) == {"iql-learned", "iql-true", "bc"}
    for info in report["policies"].values():
        assert info["episodes"] == 1 and 0.0 <= info["success_rate"] <= 1.0
        assert all((run_dir / os.path.relpath(v, run_dir)).exists() for v in info["videos"])
    assert report["labels"]["quality"]["pairs"] == 150
    assert report["labels"]["quality"]["accuracy"] > 0.75  # mistake teacher at eps 0.1
    assert report["reward"]["val_true_order_accuracy"] is not None
    md = (run_dir / "report.md").read_text()
    assert "| iql-learned |" in md and "| bc |" in md
    for target in ("labels/label_report.png", "reward/eval.png", "learning_curves.png"):
        assert (run_dir / target).exists() and f"({target})" in md
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["label"]["pairs"] == 150 and saved["dataset"] == str(run_dir / "dataset.zarr")

    last_run = (run_dir / "run.json").read_text()
    again = subprocess.run(_cmd(run_dir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("skipped") == 12, again.stdout
    assert "nothing to rerun" in again.stdout  # and the last real run's wall time and CPU stay in run.json
    assert (run_dir / "run.json").read_text() == last_run

    # a changed evaluation setting reruns only the evaluations, from scratch
    shorter = subprocess.run(_cmd(run_dir, "eval.max_steps=20"), cwd=REPO, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert shorter.returncode == 0, shorter.stdout[-3000:] + shorter.stderr[-3000:]
    for policy in ("iql-learned", "iql-true", "bc"):
        assert f"{'train_' + policy:<18} skipped" in shorter.stdout
        assert f"{'eval_' + policy:<18} config changed: rerunning from scratch" in shorter.stdout
    assert shorter.stdout.count("skipped") == 9


@pytest.mark.slow
def test_changed_collect_reruns_everything_after_it_and_labels_afresh(tmp_path):
    """A new dataset at the same path is never served the old dataset's labels (0 cache hits)."""
    run_dir = tmp_path / "run"
    first = subprocess.run(_cmd(run_dir, "stop_after=label"), cwd=REPO, env=_env(), capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    counts = json.loads((run_dir / "stages" / "label.json").read_text())["result"]["counts"]
    assert counts["answered"] == 150 and counts["cached"] == 0
    from robot_pref.data import TrajectoryDataset

    old_ids = set(TrajectoryDataset.open(run_dir / "dataset.zarr").episode_ids.tolist())
    changed = subprocess.run(_cmd(run_dir, "stop_after=label", "collect.seed=1"), cwd=REPO, env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert changed.returncode == 0, changed.stdout[-3000:] + changed.stderr[-3000:]
    out = changed.stdout
    assert f"{'collect':<18} config changed: rerunning from scratch" in out, out
    assert f"{'render':<18} collect reran: rerunning from scratch" in out, out
    assert f"{'label':<18} render reran: rerunning from scratch" in out, out
    assert "skipped" not in out
    counts = json.loads((run_dir / "stages" / "label.json").read_text())["result"]["counts"]
    assert counts["cached"] == 0 and counts["answered"] == 150  # asked afresh about the new episodes
    ds = TrajectoryDataset.open(run_dir / "dataset.zarr")
    assert ds.n_episodes == 4 and old_ids.isdisjoint(ds.episode_ids.tolist())  # collected anew, not appended


def test_changed_stage_config_reruns_it_and_later_stages(tmp_path):
    from robot_pref.pipeline.run import RunConfig, _fingerprint

    base = RunConfig(name="x").resolved()
    changed = RunConfig(name="x", label=RunConfig().label.__class__(pairs=7)).resolved()
    assert _fingerprint(base.collect) == _fingerprint(changed.collect)
    assert _fingerprint(base.label) != _fingerprint(changed.label)
    assert changed.fit_reward.labels == str(Path("runs/x/labels"))


def test_unknown_override_names_the_field(tmp_path):
    out = subprocess.run(_cmd(tmp_path / "r", "label.paris=3"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1
    assert "paris" in out.stderr and "pairs" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_job_submit_against_local_head(tmp_path):
    """`ray job submit` of a tiny run (stopping after label) to a head started on loopback."""
    bin_dir = Path(sys.executable).parent
    env = _env()
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["RAY_AUTH_MODE"] = "token"  # Ray >= 2.5x heads require a token; the CLI reads ~/.ray/auth_token
    # every port explicit: Ray's fixed defaults (agent 52365, client 10001) may be taken by other Rays
    ports = {flag: _free_port() for flag in ("port", "dashboard-port", "dashboard-agent-listen-port",
                                             "dashboard-agent-grpc-port", "runtime-env-agent-port",
                                             "metrics-export-port", "ray-client-server-port")}
    dash = ports["dashboard-port"]
    ray_tmp = tempfile.mkdtemp(prefix="rp-ray-", dir="/tmp")  # Ray's unix socket paths must stay < 108 bytes
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", *[f"--{k}={v}" for k, v in ports.items()],
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats",
         f"--temp-dir={ray_tmp}"],
        env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        run_dir = tmp_path / "job_run"
        job = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and head.poll() is None:  # the dashboard and its job agent take a while to come up
            job = subprocess.run(
                [str(bin_dir / "ray"), "job", "submit", f"--address={address}", "--working-dir", str(REPO),
                 "--runtime-env", str(REPO / "configs/ray_runtime_env.yaml"), "--",
                 "python", "-m", "robot_pref", "run", "configs/quickstart.yaml",
                 *[f"--set={kv}" for kv in [f"run_dir={run_dir}", *TINY, "stop_after=label"]]],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            not_ready = ("Failed to connect", "No available agent", "Connection refused", "Connection aborted")
            if job.returncode == 0 or not any(m in job.stdout + job.stderr for m in not_ready):
                break
            time.sleep(2)
        assert job.returncode == 0, (job.stdout[-3000:] + job.stderr[-3000:]
                                     + "\nhead:\n" + (tmp_path / "head.log").read_text()[-3000:])
        assert "succeeded" in job.stdout.lower()
        assert (run_dir / "stages" / "label.json").exists()
        assert not (run_dir / "stages" / "fit_reward.json").exists()
        assert json.loads((run_dir / "stages" / "collect.json").read_text())["result"]["episodes"] == 4
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _schedule(tmp_path, stages, budget):
    from robot_pref.pipeline.run import _execute, _plan

    (tmp_path / "stages").mkdir(parents=True, exist_ok=True)
    _execute(_plan(stages, tmp_path), budget, [s.name for s in stages], 0.0, tmp_path)
    return {s.name: json.loads((tmp_path / "stages" / f"{s.name}.json").read_text()) for s in stages}


@pytest.fixture
def rendezvous():
    def _rendezvous(flags: Path, me: str, other: str, wait: float) -> dict:  # nested: Ray ships it by value
        """Mark ``me`` started, then wait up to ``wait`` s for ``other``: met only if both ran at once."""
        import time

        (flags / me).touch()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if (flags / other).exists():
                return {"met": True}
            time.sleep(0.05)
        return {"met": False}
    return _rendezvous


@pytest.mark.parametrize("budget", [2.0, 0.0], ids=["parallel", "sequential"])
def test_independent_remote_stages_run_at_once_within_the_budget(tmp_path, ray_session, rendezvous, budget):
    from robot_pref.pipeline.run import Stage

    flags = tmp_path / "flags"
    flags.mkdir()
    wait = 60.0 if budget else 2.0
    stages = [Stage(name, {"name": name}, lambda c, me=name, other=other: rendezvous(flags, me, other, wait),
                    cpus=1.0, remote=True) for name, other in (("a", "b"), ("b", "a"))]
    done = _schedule(tmp_path, stages, budget)
    assert [done[n]["result"]["met"] for n in "ab"] == ([True, True] if budget else [False, True])


@pytest.mark.parametrize("on_ray", [True, False])
def test_evaluations_given_one_cpu_each_run_side_by_side_as_ray_tasks(tmp_path, ray_session, rendezvous, on_ray):
    """Two one-worker evaluations: in this process they go one at a time and a core idles (the quickstart's
    tail); as Ray tasks of their own they run at once. Given two CPUs, one still drives its actors from here."""
    from robot_pref.pipeline.run import Stage

    flags = tmp_path / "flags"
    flags.mkdir()
    wait = 60.0 if on_ray else 2.0
    stages = [Stage(name, {"name": name}, lambda c, me=name, other=other: rendezvous(flags, me, other, wait),
                    cpus=1.0, task_on_one_cpu=on_ray, task_gpus=0.0) for name, other in (("a", "b"), ("b", "a"))]
    done = _schedule(tmp_path, stages, 2.0)
    assert [done[n]["result"]["met"] for n in "ab"] == ([True, True] if on_ray else [False, True])
    assert [done[n]["remote"] for n in "ab"] == [on_ray, on_ray]
    wide = Stage("c", {}, lambda c: {}, cpus=2.0, task_on_one_cpu=on_ray)
    assert _schedule(tmp_path / "wide", [wide], 2.0)["c"]["remote"] is False


def test_a_later_ready_stage_never_overtakes_an_earlier_one(tmp_path, ray_session):
    """x (local, 1 CPU) runs; y (2 CPUs) must wait for it; z (1 CPU) would fit beside x but is listed after y."""
    from robot_pref.pipeline.run import Stage

    nap = lambda c: (time.sleep(c["s"]), {})[1]  # noqa: E731
    stages = [Stage("x", {"s": 1.5}, nap, cpus=1.0), Stage("y", {"s": 0.5}, nap, cpus=2.0, remote=True),
              Stage("z", {"s": 0.1}, nap, cpus=1.0, remote=True)]
    done = _schedule(tmp_path, stages, 2.0)
    x_end = done["x"]["started_unix"] + done["x"]["seconds"]
    y_end = done["y"]["started_unix"] + done["y"]["seconds"]
    assert done["y"]["started_unix"] >= x_end - 0.05  # 2 CPUs free only after x
    assert done["z"]["started_unix"] >= y_end - 0.05  # not beside x, ahead of y


def test_a_stage_others_need_keeps_its_cores_while_its_input_finishes(tmp_path, ray_session):
    """fit (needed by use) waits on a short local stage; the label-free trainings t1, t2 are ready at once.
    Without the reservation t1 and t2 take both CPUs a moment before fit can start, and fit waits for them."""
    from robot_pref.pipeline.run import Stage

    nap = lambda c: (time.sleep(c["s"]), {})[1]  # noqa: E731
    stages = [Stage("label", {"s": 0.5}, nap, cpus=0.0), Stage("fit", {"s": 0.2}, nap, ("label",), remote=True),
              Stage("use", {"s": 0.1}, nap, ("fit",), remote=True),
              Stage("t1", {"s": 3.0}, nap, remote=True), Stage("t2", {"s": 3.0}, nap, remote=True)]
    done = _schedule(tmp_path, stages, 2.0)
    t1_end = done["t1"]["started_unix"] + done["t1"]["seconds"]
    assert done["t1"]["started_unix"] < done["fit"]["started_unix"] < t1_end - 1.0  # beside t1, not after it
    assert done["t2"]["started_unix"] >= done["fit"]["started_unix"]  # t2 did not take fit's core


def test_a_stage_waiting_on_a_running_one_reserves_only_the_cores_that_one_does_not_free(tmp_path, ray_session):
    """relabel (1 CPU) waits on fit (1 CPU): fit's own core comes back when it ends, so t2, ready when t1 ends,
    takes the other core at once instead of leaving it idle until fit is done."""
    from robot_pref.pipeline.run import Stage

    nap = lambda c: (time.sleep(c["s"]), {})[1]  # noqa: E731
    stages = [Stage("fit", {"s": 3.0}, nap, remote=True), Stage("relabel", {"s": 0.1}, nap, ("fit",)),
              Stage("use", {"s": 0.1}, nap, ("relabel",), remote=True),
              Stage("t1", {"s": 0.5}, nap, remote=True), Stage("t2", {"s": 0.5}, nap, ("t1",), remote=True)]
    done = _schedule(tmp_path, stages, 2.0)
    fit_end = done["fit"]["started_unix"] + done["fit"]["seconds"]
    assert done["t2"]["started_unix"] + done["t2"]["seconds"] < fit_end - 1.0  # beside fit, not after it
    assert done["use"]["started_unix"] >= done["relabel"]["started_unix"] + done["relabel"]["seconds"] - 0.05


def test_an_in_process_stage_others_need_is_not_held_up_by_a_later_in_process_one(tmp_path, ray_session):
    """relabel runs in the driver, one such stage at a time: an evaluation of the label-free policy, ready while
    the fit still runs, waits for relabel instead of starting and keeping relabel (and what follows) waiting."""
    from robot_pref.pipeline.run import Stage

    nap = lambda c: (time.sleep(c["s"]), {})[1]  # noqa: E731
    stages = [Stage("fit", {"s": 2.5}, nap, remote=True), Stage("relabel", {"s": 0.1}, nap, ("fit",)),
              Stage("train_learned", {"s": 0.1}, nap, ("relabel",), remote=True),
              Stage("train_true", {"s": 0.3}, nap, remote=True),
              Stage("eval_true", {"s": 4.0}, nap, ("train_true",))]
    done = _schedule(tmp_path, stages, 2.0)
    fit_end = done["fit"]["started_unix"] + done["fit"]["seconds"]
    assert done["relabel"]["started_unix"] < fit_end + 1.0  # not after the 4 s evaluation
    assert done["eval_true"]["started_unix"] >= done["relabel"]["started_unix"] + done["relabel"]["seconds"] - 0.05


@pytest.mark.parametrize("budget, threads", [(2.0, 2), (1.0, 1)])
def test_a_remote_stage_gets_as_many_torch_threads_as_the_cpus_it_holds(tmp_path, ray_session, budget, threads):
    """A 2-CPU training on a 1-CPU budget runs on 1 CPU and 1 thread instead of waiting forever for 2."""
    from robot_pref.pipeline.run import Stage

    def threads_seen(_):
        import torch

        return {"threads": torch.get_num_threads()}

    done = _schedule(tmp_path, [Stage("train", {}, threads_seen, cpus=2.0, remote=True)], budget)
    assert done["train"]["result"] == {"threads": threads}


def test_the_fit_asks_for_two_cpus_and_evaluations_come_after_every_training(tmp_path):
    """The fit gets both cores of a small machine (everything on the learned reward waits for it), and no
    training is listed behind an evaluation, which would keep it waiting (in-process stages go one at a time)."""
    from robot_pref.pipeline.run import RunConfig, build_stages

    cfg = RunConfig(name="x", run_dir=str(tmp_path / "run"), policies=("iql-learned", "iql-true", "bc"))
    stages = build_stages(cfg.resolved())
    names = [s.name for s in stages]
    assert names[names.index("fit_reward"):] == ["fit_reward", "relabel", "train_iql-learned", "train_iql-true",
                                                 "train_bc", "eval_iql-learned", "eval_iql-true", "eval_bc"]
    cpus = {s.name: s.cpus for s in stages}
    assert cpus["fit_reward"] == 2.0 and {cpus[f"train_{p}"] for p in cfg.policies} == {1.0}
    evals = [s for s in stages if s.name.startswith("eval_")]  # on one core: Ray tasks, side by side; CPU only
    assert all(s.task_on_one_cpu and s.task_gpus == 0.0 and not s.remote for s in evals)
    # the status line counts each evaluation's finished episodes in its own episode log
    (tmp_path / "run" / "eval" / "iql-true").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "iql-true" / "episodes.jsonl").write_text('{"episode": 0}\n{"episode": 3}\n')
    n = cfg.eval.episodes
    assert [s.progress() for s in evals] == [f"0/{n} episodes", f"2/{n} episodes", f"0/{n} episodes"]


def test_an_evaluation_starts_on_the_cores_left_beside_a_training(tmp_path, ray_session):
    """eval asks for 2 workers while a 1-CPU training runs: it starts at once with 1 worker, same config else."""
    from robot_pref.pipeline.run import Stage

    nap = lambda c: (time.sleep(c["s"]), {})[1]  # noqa: E731
    stages = [Stage("train", {"s": 3.0}, nap, remote=True),
              Stage("eval", {"s": 0.2, "workers": 2}, lambda c: {"workers": c["workers"]}, cpus=2.0,
                    shrink=lambda c, cpus: {**c, "workers": cpus})]
    done = _schedule(tmp_path, stages, 2.0)
    assert done["eval"]["result"] == {"workers": 1}
    assert done["eval"]["started_unix"] < done["train"]["started_unix"] + 1.0
    alone = _schedule(tmp_path / "alone", stages[1:], 2.0)  # with the cores free it gets what it asks for
    assert alone["eval"]["result"] == {"workers": 2}
