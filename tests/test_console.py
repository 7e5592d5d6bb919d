"""Quiet by default: a command prints robot_pref's own lines only; `-v` shows every library's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOISE = ("robosuite", "macro file", "OpenGL_accelerate", "mink", "Started a local Ray instance",
         "Token authentication")


def _collect(out: Path, *flags: str, workers: int = 1) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ROBOT_PREF_VERBOSE")}
    env["MUJOCO_GL"] = "egl"
    cmd = [sys.executable, "-m", "robot_pref", *flags, "collect", "--task", "lift", "--tier", "expert",
           "--episodes", str(workers), "--horizon", "5", "--workers", str(workers), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "ray-workers"])
def test_commands_print_only_their_own_lines(tmp_path, workers):
    text = _collect(tmp_path / "d.zarr", workers=workers)
    assert "expert" in text and "success" in text  # the command's own summary table
    assert not [word for word in NOISE if word in text], text


def test_verbose_shows_library_lines(tmp_path):
    text = _collect(tmp_path / "d.zarr", "-v")
    assert "No private macro file found" in text


def test_actors_that_fit_caps_at_what_the_cluster_can_place(ray_session, capsys):
    from robot_pref.console import actors_that_fit

    cpus = int(ray_session.cluster_resources()["CPU"])
    gpus = int(ray_session.cluster_resources().get("GPU", 0))
    assert actors_that_fit(cpus, "collect") == cpus and capsys.readouterr().out == ""
    assert actors_that_fit(cpus + 3, "collect") == cpus
    assert f"collect: {cpus + 3} workers asked for but the Ray cluster has room for {cpus}" in capsys.readouterr().out
    assert actors_that_fit(4 * cpus, "label", num_cpus=0.5) == 2 * cpus  # a VLM actor takes half a CPU
    if gpus:
        assert actors_that_fit(gpus + 1, "eval", num_gpus=1) == gpus


def test_local_ray_starts_without_its_dashboard_unless_verbose():
    """The dashboard costs every command ~3 s of start-up; with -v it is there (and its URL printed)."""
    script = """
import os, ray
from robot_pref.console import init_ray
for flag in ("", "1"):
    os.environ["ROBOT_PREF_VERBOSE"] = flag
    init_ray(num_cpus=1)
    print("dashboard", flag or "0", bool(ray._private.worker.global_worker.node.address_info.get("webui_url")))
    ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dashboard 0 False" in proc.stdout and "dashboard 1 True" in proc.stdout, proc.stdout
