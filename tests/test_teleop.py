"""Teleop: scripted sessions make valid datasets; keyboard and SpaceMouse decode their input."""

import os
import sys
import types

import numpy as np
import pytest

from robot_pref.data.dataset import DatasetError, TrajectoryDataset
from robot_pref.hardware.config import SafetyConfig, TeleopConfig
from robot_pref.hardware.devices import KeyboardDevice, ScriptedDevice, SpaceMouseDevice
from robot_pref.hardware.fake import FakeArm
from robot_pref.hardware.record import open_robot
from robot_pref.hardware.server import RobotServer
from robot_pref.hardware.teleop import teleop

DOWN = "0.2,0,-0.6,0,0,0,-1"
SCRIPT = (f"start; move {DOWN} x6; save;"  # episode 0: 6 rows, seed 0
          f" start; move {DOWN} x3; discard;"  # dropped (seed 1)
          f" start; move {DOWN} x2; rerecord; move {DOWN} x4; move 0,0,0,0,0,0,1 x1; save;"  # 5 rows, seed 2 again
          " wait 2; quit")


def test_scripted_session_writes_the_expected_episodes(tmp_path):
    out = tmp_path / "teleop.zarr"
    cfg = TeleopConfig(robot="sim:lift", device="scripted", script=SCRIPT, out=str(out), cameras=("agentview",),
                       size=32, rate_hz=500)
    counts = teleop(cfg)
    assert counts["saved"] == 2 and counts["discarded"] == 2 and counts["steps"] == 6 + 3 + 2 + 5
    ds = TrajectoryDataset.open(out)
    table = ds.episode_table()
    assert ds.n_episodes == 2 and table["length"].tolist() == [6, 5] and table["seed"].tolist() == [0, 2]
    assert set(table["tier"]) == {"teleop"} and set(table["task"]) == {"lift"}
    assert ds.env_meta["task"] == "lift" and ds.fps == 20
    act = ds.get("action")
    np.testing.assert_allclose(act[:4], np.tile([0.2, 0, -0.6, 0, 0, 0, -1], (4, 1)), atol=1e-6)  # unclamped
    assert act[-1, 6] == 1.0  # the closing step of episode 1
    assert ds.get("frames/agentview_32").shape == (11, 32, 32, 3) and ds.rendered_episodes("agentview_32").all()
    assert ds.ground_truth("reward").shape == (11,) and np.all(np.diff(ds.get("timestamp")[:6]) > 0)
    # the state rows re-render to the recorded frames (what `robot-pref render` relies on)
    with open_robot("sim:lift") as robot:
        env = robot.robot.env
        env.set_state(ds.get("state", [7])[0])
        np.testing.assert_array_equal(env.render("agentview", 32, 32), ds.get("frames/agentview_32", [7])[0])
        np.testing.assert_allclose(env.observation(), ds.get("obs", [7])[0], atol=1e-6)
    # a second session appends; a session of another task is refused
    teleop(TeleopConfig(robot="sim:lift", device="scripted", script=f"start; move {DOWN} x2; save", out=str(out),
                        cameras=("agentview",), size=32, rate_hz=500, seed=10))
    ds = TrajectoryDataset.open(out)
    assert ds.n_episodes == 3 and ds.episode_table()["seed"][-1] == 10
    with pytest.raises(DatasetError, match="another"):
        teleop(TeleopConfig(robot="sim:door", device="scripted", script="quit", out=str(out)))


def test_scripted_session_through_the_robot_server(tmp_path):
    backend = open_robot("sim:lift", watchdog=True, safety=SafetyConfig(watchdog_periods=40))
    with RobotServer(backend, port=0) as server:
        counts = teleop(TeleopConfig(robot=f"remote:127.0.0.1:{server.port}", device="scripted", rate_hz=500,
                                     script=f"start; move {DOWN} x5; save; start; move {DOWN} x3; save",
                                     out=str(tmp_path / "remote.zarr")))
    ds = TrajectoryDataset.open(tmp_path / "remote.zarr")
    assert counts["saved"] == 2 and ds.episode_table()["length"].tolist() == [5, 3]
    assert ds.env_meta["task"] == "lift" and ds.has_ground_truth("success")


def test_a_fault_pauses_recording_until_cleared(tmp_path):
    script = ("start; move 0.1,0,0,0,0,0,0 x2; move nan,0,0,0,0,0,0 x1; move 0.1,0,0,0,0,0,0 x3;"
              " recover; move 0.1,0,0,0,0,0,0 x2; save")
    counts = teleop(TeleopConfig(robot="fake", device="scripted", script=script, out=str(tmp_path / "f.zarr"),
                                 rate_hz=500))
    assert counts["saved"] == 1 and counts["steps"] == 4  # 2 before the fault, none while latched, 2 after
    assert TrajectoryDataset.open(tmp_path / "f.zarr").episode_table()["length"].tolist() == [4]


class SensorDropsOut(FakeArm):
    """Its hand position reads NaN from the ``bad_from``-th reading on."""

    def __init__(self, bad_from: int):
        super().__init__()
        self.reads, self.bad_from = 0, bad_from

    def observe(self, frames=True):
        obs = super().observe(frames)
        self.reads += 1
        if self.reads >= self.bad_from:
            obs.ee_pos = np.full(3, np.nan)
        return obs


def test_a_broken_reading_mid_episode_is_a_fault_not_a_crash(tmp_path):
    arm = SensorDropsOut(bad_from=5)  # reads: reset 1, then safety's + teleop's per step: teleop's after step 2
    with RobotServer(arm, port=0) as server:
        counts = teleop(TeleopConfig(robot=f"remote:127.0.0.1:{server.port}", device="scripted", rate_hz=500,
                                     script="start; move 0.1,0,0,0,0,0,0 x5; save", out=str(tmp_path / "t.zarr")))
        assert "observed ee_pos" in server.robot.fault
    assert counts["saved"] == 1 and counts["steps"] == 2  # 2 steps, then the fault paused recording
    assert len(arm.applied) == 2 and all(np.all(np.isfinite(cmd)) for _, cmd in arm.applied)
    ds = TrajectoryDataset.open(tmp_path / "t.zarr")
    assert ds.episode_table()["length"].tolist() == [2] and np.all(np.isfinite(ds.get("obs")))


def test_keyboard_decodes_keys_from_a_pipe():
    r, w = os.pipe()
    kb = KeyboardDevice(fd=r, speed=0.5, hold_s=10.0)
    try:
        os.write(w, b"bw \r")
        inp = kb.poll()
        assert inp.events == ["start", "save"]
        np.testing.assert_allclose(inp.action, [0.5, 0, 0, 0, 0, 0, 1.0])  # w: +x; space: close
        os.write(w, b"fjxtcq")
        inp = kb.poll()
        assert inp.events == ["discard", "rerecord", "recover", "quit"]
        np.testing.assert_allclose(inp.action, [0.5, 0, -0.5, 0, 0, 0.5, 1.0])  # w still held, f: -z, j: +yaw
        assert kb.poll().events == []
    finally:
        kb.close()
        os.close(r)
        os.close(w)
    kb = KeyboardDevice(fd=os.open(os.devnull, os.O_RDONLY), hold_s=0.0)
    assert kb.poll().events == [] and kb.poll().action[6] == -1.0


def test_spacemouse_through_a_fake_hid(monkeypatch):
    reports = [[1] + list(np.array([100, -350, 0], "<i2").tobytes()) + list(np.array([0, 0, 175], "<i2").tobytes()),
               [3, 1], [3, 0], [3, 2]]
    dev = types.SimpleNamespace(open=lambda v, p: None, set_nonblocking=lambda n: None, close=lambda: None,
                                read=lambda n: reports.pop(0) if reports else [])
    fake = types.SimpleNamespace(enumerate=lambda: [{"vendor_id": 0x256F, "product_id": 0xC635}], device=lambda: dev)
    monkeypatch.setitem(sys.modules, "hid", fake)
    inp = SpaceMouseDevice().poll()
    np.testing.assert_allclose(inp.action, [1.0, -100 / 350, 0, 0, 0, -0.5, 1.0])  # left button closed it
    assert inp.events == ["start"]
    monkeypatch.setitem(sys.modules, "hid", types.SimpleNamespace(enumerate=lambda: []))
    with pytest.raises(OSError, match="SpaceMouse"):
        SpaceMouseDevice()


def test_script_errors_name_the_step():
    with pytest.raises(ValueError, match="move 1,2 x3"):
        ScriptedDevice("start; move 1,2 x3")
    with pytest.raises(ValueError, match="jump"):
        ScriptedDevice("jump")
    dev = ScriptedDevice("wait 2")
    assert [dev.poll().events for _ in range(3)] == [[], [], ["quit"]]


def test_keyboard_teleop_in_a_real_terminal(tmp_path):
    """The headless path: a pseudo-terminal (as over ssh), cbreak mode, keys typed one by one."""
    import pty
    import subprocess
    import time

    out = tmp_path / "kb.zarr"
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "robot_pref", "teleop", "--robot", "fake", "--device", "keyboard",
                             "--out", str(out)], stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    seen = b""

    def wait_for(text: bytes, timeout: float = 60.0):
        nonlocal seen
        end = time.monotonic() + timeout
        import select

        while text not in seen and time.monotonic() < end:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:  # the terminal closed: the process exited and all it wrote was read
                    break
            elif proc.poll() is not None:  # exited and nothing left to read
                break
        assert text in seen, seen.decode(errors="replace")[-500:]

    try:
        wait_for(b"keys:")  # the help line: the device is up and the terminal in cbreak mode
        for keys in (b"b", b"w", b"w", b"w", b"\r", b"q"):
            os.write(leader, keys)
            time.sleep(0.25)
        wait_for(b"saved 1 episodes")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(leader)
    ds = TrajectoryDataset.open(out)
    assert ds.n_episodes == 1 and ds.episode_table()["tier"][0] == "teleop"
    assert ds.get("action")[:, 0].max() == pytest.approx(0.5)  # 'w' drove +x at the keyboard speed
