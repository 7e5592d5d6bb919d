"""The README path end to end: teleop -> train -> rollout, in-process sim and through `robot-pref serve`."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from robot_pref.cli import main
from robot_pref.data.dataset import TrajectoryDataset

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_teleop_train_rollout_sim_and_remote(tmp_path):
    tele, run = tmp_path / "tele.zarr", tmp_path / "run"
    assert main(["teleop", "--robot", "sim:lift", "--device", "scripted", "--out", str(tele), "--rate-hz", "500",
                 "--script", "start; move 0.2,0,-0.6,0,0,0,-1 x8; save; start; move 0,0.3,-0.2,0,0,0,1 x8; save"]) == 0
    assert TrajectoryDataset.open(tele).n_episodes == 2
    assert main(["train", "--dataset", str(tele), "--out", str(run), "--algo", "bc", "--steps", "20",
                 "--batch-size", "8", "--save-every", "20", "--device", "cpu"]) == 0

    roll = tmp_path / "roll.zarr"
    assert main(["rollout", "--policy", str(run / "last.pt"), "--robot", "sim:lift", "--episodes", "2",
                 "--max-steps", "6", "--record", str(roll), "--out", str(tmp_path / "sim.json")]) == 0
    summary = json.loads((tmp_path / "sim.json").read_text())
    assert summary["success_rate"] == 0.0 and [e["steps"] for e in summary["episodes"]] == [6, 6]

    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([sys.executable, "-m", "robot_pref", "serve", "--robot", "sim:lift", "--port", str(port),
                               "--safety.watchdog-periods", "40"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env=env)
    try:
        assert "serving sim:lift" in server.stdout.readline()
        assert main(["rollout", "--policy", str(run / "last.pt"), "--robot", f"remote:127.0.0.1:{port}",
                     "--episodes", "2", "--max-steps", "6", "--record", str(roll),
                     "--out", str(tmp_path / "remote.json")]) == 0
    finally:
        server.terminate()
        server.wait(timeout=30)
    remote = json.loads((tmp_path / "remote.json").read_text())
    assert [e["return"] for e in remote["episodes"]] == pytest.approx([e["return"] for e in summary["episodes"]])
    ds = TrajectoryDataset.open(roll)
    assert ds.n_episodes == 4 and set(ds.episode_table()["tier"]) == {"rollout"}
    np.testing.assert_array_equal(ds.get("obs")[:12], ds.get("obs")[12:])  # remote == in-process, seed by seed
    assert main(["rollout", "--policy", str(run / "last.pt"), "--robot", "sim:door", "--episodes", "1"]) == 1
