"""The robot server and client on loopback, with fault injection (fake arm: no MuJoCo needed)."""

import dataclasses
import subprocess
import sys
import textwrap
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.fake import FakeArm
from robot_pref.hardware.interface import SafetyFault
from robot_pref.hardware.remote import RemoteRobot
from robot_pref.hardware.server import RobotServer
from robot_pref.hardware.wire import WireError, pack, parse_request, unpack


@pytest.fixture
def served():
    arm = FakeArm()
    with RobotServer(arm, port=0, safety=SafetyConfig(watchdog_periods=3)) as server:
        yield arm, server


def raw_request(port: int, payload: bytes) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sock.send(payload)
    assert sock.poll(5000), "server did not answer"
    reply = unpack(sock.recv())
    sock.close()
    return reply


def test_wire_roundtrips_arrays_and_refuses_object_arrays():
    msg = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros((2, 2, 3), np.uint8), "c": np.float64(2.5)}
    out = unpack(pack(msg))
    np.testing.assert_array_equal(out["a"], msg["a"])
    assert out["a"].dtype == np.float32 and out["b"].shape == (2, 2, 3) and out["c"] == 2.5
    with pytest.raises(TypeError):
        pack({"x": np.array([object()], dtype=object)})
    evil = msgpack.ExtType(1, msgpack.packb(["|O", [1]]) + b"\0" * 8)
    with pytest.raises(WireError, match="bad ndarray header"):
        unpack(msgpack.packb({"x": evil}))
    with pytest.raises(WireError, match="unknown op"):
        parse_request(pack({"v": 1, "id": 1, "op": "exec", "args": {}}))


def test_remote_matches_in_process(served):
    arm, server = served
    with RemoteRobot(port=server.port) as robot:
        assert robot.info.name == "fake" and robot.info.modes == ("ee_delta", "joint_pos")
        obs = robot.observe()
        np.testing.assert_allclose(obs.ee_pos, (0.45, 0.0, 0.3))
        assert obs.low_dim.dtype == np.float32 and set(obs.stamps) == {"joints", "ee", "gripper"}
        applied = robot.send(np.r_[0.2, 0, 0, 0, 0, 0, 1.0])  # capped to 0.05 m
        np.testing.assert_allclose(applied, [0.05, 0, 0, 0, 0, 0, 1.0])
        np.testing.assert_allclose(arm.applied[-1][1], applied)
        robot.stop()


def test_out_of_workspace_target_is_clamped(served):
    arm, server = served
    with RemoteRobot(port=server.port) as robot:
        high = np.array(robot.info.workspace_high)
        for _ in range(20):
            robot.send(np.r_[0, 0, 1.0, 0, 0, 0, 0])
            time.sleep(1 / robot.info.control_freq)
        ee = robot.observe().ee_pos
        assert ee[2] == pytest.approx(high[2]) and np.all(ee <= high + 1e-9)
        robot.stop()


def test_nan_action_faults_and_latches_until_recover(served):
    arm, server = served
    with RemoteRobot(port=server.port) as robot:
        robot.send(np.zeros(7))
        with pytest.raises(SafetyFault, match="non-finite") as err:
            robot.send(np.r_[np.nan, np.zeros(6)])
        assert err.value.reason == "invalid_command"  # the short reason crosses the wire
        assert len(arm.applied) == 1 and arm.stops >= 1 and "non-finite" in robot.fault
        with pytest.raises(SafetyFault, match="latched"):
            robot.send(np.zeros(7))
        robot.recover()
        robot.send(np.zeros(7))
        assert len(arm.applied) == 2 and robot.fault is None
        robot.stop()


def test_malformed_messages_get_errors_and_the_server_goes_on(served):
    arm, server = served
    for payload in (b"\xc1garbage", pack([1, 2, 3]), pack({"v": 99, "id": 1, "op": "send"}),
                    pack({"v": 1, "id": 2, "op": "format_disk", "args": {}})):
        reply = raw_request(server.port, payload)
        assert reply["ok"] is False and reply["kind"] == "malformed"
    reply = raw_request(server.port, pack({"v": 1, "id": 3, "op": "send", "args": {"mode": "ee_delta"}}))
    assert reply["kind"] == "invalid" and "command" in reply["error"]
    assert not arm.applied and server.robot.fault is None
    with RemoteRobot(port=server.port) as robot:
        robot.send(np.zeros(7))
    assert len(arm.applied) == 1


def test_token_required_off_loopback_and_checked():
    with pytest.raises(ValueError, match="token"):
        RobotServer(FakeArm(), host="0.0.0.0", port=0)
    arm = FakeArm()
    with RobotServer(arm, port=0, token="s3cret") as server:
        for token in (None, "wrong"):
            with pytest.raises(PermissionError, match="token"):
                RemoteRobot(port=server.port, token=token).connect()
        reply = raw_request(server.port, pack({"v": 1, "id": 1, "token": "nope", "op": "send",
                                               "args": {"command": np.zeros(7)}}))
        assert reply["kind"] == "unauthorized" and not arm.applied
        with RemoteRobot(port=server.port, token="s3cret") as robot:
            robot.send(np.zeros(7))
        assert len(arm.applied) == 1


def test_a_remote_recover_does_not_release_an_emergency_stop(served, capsys):
    arm, server = served
    with RemoteRobot(port=server.port) as robot:
        robot.send(np.zeros(7))
        robot.estop()
        assert robot.fault == "emergency stop" and arm.stops >= 1
        with pytest.raises(SafetyFault, match="robot side") as err:
            robot.recover()
        assert err.value.reason == "estop" and server.robot.fault == "emergency stop"
        with pytest.raises(SafetyFault, match="emergency stop"):
            robot.send(np.zeros(7))
        reply = raw_request(server.port, pack({"v": 1, "id": 1, "op": "clear_estop", "args": {}}))
        assert reply["kind"] == "malformed" and server.robot.fault == "emergency stop"  # no wire op releases it
        assert len(arm.applied) == 1
        server.console(["recover", "release"])  # the operator at the robot PC types 'release'
        assert "released" in capsys.readouterr().out and server.robot.fault is None
        robot.send(np.zeros(7))
        assert len(arm.applied) == 2


class Still:
    observation_keys = ("obs",)

    def act(self, obs):
        return np.zeros((1, 7))


def test_rollout_clears_a_fault_left_latched_only_when_told(served):
    from robot_pref.hardware.config import RolloutConfig
    from robot_pref.hardware.rollout import rollout

    arm, server = served
    with RemoteRobot(port=server.port) as robot:
        with pytest.raises(SafetyFault):
            robot.send(np.full(7, np.nan))
    cfg = RolloutConfig(robot=f"remote:127.0.0.1:{server.port}", episodes=2, max_steps=2)
    with pytest.raises(SafetyFault, match="--recover") as err:  # a real arm: the run stops for the operator
        rollout(cfg, policy=Still())
    assert err.value.reason == "invalid_command" and arm.applied == []  # the latched fault refused the reset
    summary = rollout(dataclasses.replace(cfg, recover=True), policy=Still())
    assert summary["completed"] and [e["steps"] for e in summary["episodes"]] == [2, 2] and len(arm.applied) == 4


def test_token_prefers_the_environment_and_warns_about_the_flag(monkeypatch, caplog):
    from robot_pref.hardware.commands import token

    monkeypatch.setenv("ROBOT_PREF_TOKEN", "from-env")
    with caplog.at_level("WARNING"):
        assert token(None) == "from-env"
        assert not caplog.records
        assert token("on-the-command-line") == "on-the-command-line"
    assert "ps" in caplog.text and "ROBOT_PREF_TOKEN" in caplog.text
    monkeypatch.delenv("ROBOT_PREF_TOKEN")
    assert token(None) is None


def test_client_timeout_names_the_problem():
    with pytest.raises(TimeoutError, match="robot-pref serve"):
        RemoteRobot(port=1, timeout_s=0.2).connect()


CLIENT = textwrap.dedent("""
    import sys, time, numpy as np
    from robot_pref.hardware.remote import RemoteRobot
    robot = RemoteRobot(port=int(sys.argv[1])).connect()
    robot.send(np.zeros(7))
    print("sending", flush=True)
    while True:
        robot.send(np.r_[0.01, 0, 0, 0, 0, 0, 0])
        time.sleep(0.05)
""")


def test_client_killed_mid_episode_leaves_a_stopped_arm(served):
    arm, server = served
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(server.port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "sending"
        time.sleep(0.3)
        assert server.robot.fault is None
        proc.kill()  # SIGKILL: no goodbye, no stop from the client
        proc.wait(timeout=10)
        killed = time.monotonic()
        while server.robot.fault is None and time.monotonic() - killed < 3:
            time.sleep(0.01)
        assert "watchdog" in (server.robot.fault or "")
        assert arm.stops >= 1
        n = len(arm.applied)
        with RemoteRobot(port=server.port) as robot:  # the next client sees the fault, recovers, goes on
            with pytest.raises(SafetyFault, match="watchdog"):
                robot.send(np.zeros(7))
            assert len(arm.applied) == n
            robot.recover()
            robot.send(np.zeros(7))
            assert len(arm.applied) == n + 1
    finally:
        proc.kill()
        proc.wait(timeout=10)


leaves = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=8)
          | st.binary(max_size=8))
messages = st.recursive(
    leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=12)
requests = st.fixed_dictionaries({
    "v": st.just(1), "id": st.integers(0, 9), "op": st.sampled_from(["send", "reset", "observe"]),
    "args": st.dictionaries(st.sampled_from(["command", "mode", "seed", "frames"]),
                            leaves | st.lists(leaves, max_size=8), max_size=3)})


@pytest.fixture(scope="module")
def idle_server():
    arm = FakeArm()
    server = RobotServer(arm, port=0)  # not started: handle() is called directly
    server.robot.connect()
    yield arm, server
    server.robot.disconnect()


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=64) | messages.map(pack) | requests.map(pack))
def test_fuzzed_requests_never_crash_the_server_or_move_the_arm_unsafely(idle_server, payload):
    arm, server = idle_server
    reply = server.handle(payload)
    pack(reply)  # the reply can always be sent
    assert set(reply) >= {"v", "id", "ok", "fault"}
    if arm.applied:  # whatever got through passed the safety filter
        mode, cmd = arm.applied[-1]
        assert mode in ("ee_delta", "joint_pos") and np.all(np.isfinite(cmd))
        if mode == "ee_delta":
            assert np.linalg.norm(cmd[:3]) <= 0.05 + 1e-9
    server.robot.recover()


def test_serve_command_refuses_an_open_bind_without_token(capsys, monkeypatch):
    from robot_pref.cli import main

    monkeypatch.delenv("ROBOT_PREF_TOKEN", raising=False)  # with one set, this would serve the fake arm

    assert main(["serve", "--robot", "fake", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "ROBOT_PREF_TOKEN" in capsys.readouterr().err
