"""UR and Franka adapters against fakes of their SDKs (ur-rtde, franky): the calls at the SDK boundary."""

import math
import sys
import types

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.franka import FrankaRobot
from robot_pref.hardware.interface import SafetyFault
from robot_pref.hardware.safety import SafeRobot
from robot_pref.hardware.ur import URRobot

CFG = SafetyConfig(rate_limit=False, watchdog_periods=0)
DOWN_ROT = Rotation.from_euler("x", math.pi)


class FakeRTDE:
    """One object playing RTDEReceiveInterface, RTDEControlInterface and DashboardClient."""

    def __init__(self):
        self.calls = []
        self.q = [0.0, -1.57, 1.57, -1.57, -1.57, 0.0]
        self.tcp = [0.4, 0.1, 0.3, *DOWN_ROT.as_rotvec()]
        self.protective = False

    def __getattr__(self, name):  # every control/dashboard call is recorded
        return lambda *args: self.calls.append((name, args))

    def getActualQ(self):
        return self.q

    def getActualQd(self):
        return [0.0] * 6

    def getActualTCPPose(self):
        return self.tcp

    def isProtectiveStopped(self):
        return self.protective

    def isEmergencyStopped(self):
        return False

    def getForwardKinematics(self, q):
        return [0.4 + 0.1 * q[0], 0.1, 0.3, 0, 0, 0]


@pytest.fixture
def rtde(monkeypatch):
    fake = FakeRTDE()
    monkeypatch.setitem(sys.modules, "rtde_control", types.SimpleNamespace(RTDEControlInterface=lambda ip: fake))
    monkeypatch.setitem(sys.modules, "rtde_receive", types.SimpleNamespace(RTDEReceiveInterface=lambda ip: fake))
    monkeypatch.setitem(sys.modules, "dashboard_client", types.SimpleNamespace(DashboardClient=lambda ip: fake))
    return fake


def test_ur_streams_capped_servo_targets_in_the_base_frame(rtde):
    with SafeRobot(URRobot("10.0.0.2"), CFG) as robot:
        obs = robot.observe()
        np.testing.assert_allclose(obs.ee_quat, DOWN_ROT.as_quat(), atol=1e-9)
        assert math.isnan(obs.gripper)
        robot.send(np.array([0.2, 0, 0, 0, 0, 0.1, 0.0]))  # 0.2 m asked, 0.05 m allowed; 0.1 rad yaw
        name, (pose, speed, acc, t, lookahead, gain) = rtde.calls[-1]
        assert name == "servoL" and t == pytest.approx(0.05)
        np.testing.assert_allclose(pose[:3], [0.45, 0.1, 0.3])
        want = (Rotation.from_rotvec([0, 0, 0.1]) * DOWN_ROT).as_rotvec()
        np.testing.assert_allclose(Rotation.from_rotvec(pose[3:]).as_quat(), Rotation.from_rotvec(want).as_quat(),
                                   atol=1e-9)
        robot.send(np.r_[0.5, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0], "joint_pos")
        name, (q, *_rest) = rtde.calls[-1]
        assert name == "servoJ" and q[0] == pytest.approx(0.05)  # per-step cap from 0.0
        robot.estop()
        assert ("triggerProtectiveStop", ()) in rtde.calls
        with pytest.raises(SafetyFault):
            robot.send(np.zeros(7))
        rtde.protective = True
        with pytest.raises(SafetyFault, match="robot side"):
            robot.recover()  # a recover() (e.g. from a remote client) never releases the e-stop...
        assert ("unlockProtectiveStop", ()) not in rtde.calls
        robot.clear_estop()  # ...the robot-side release does
        assert ("unlockProtectiveStop", ()) in rtde.calls
    assert rtde.calls[-1] == ("disconnect", ())


def test_ur_protective_stop_blocks_commands(rtde):
    with SafeRobot(URRobot("10.0.0.2"), CFG) as robot:
        rtde.protective = True
        n = len(rtde.calls)
        with pytest.raises(SafetyFault, match="protective stop"):
            robot.send(np.zeros(7))
        assert not any(c[0] == "servoL" for c in rtde.calls[n:])


def test_ur_joint_target_outside_the_box_is_refused(rtde):
    with SafeRobot(URRobot("10.0.0.2"), CFG) as robot:
        with pytest.raises(SafetyFault, match="workspace"):
            robot.send(np.r_[3.0, -1.57, 1.57, -1.57, -1.57, 0.0, 0.0], "joint_pos")  # fk x = 0.7 > 0.6


def test_ur_a_pose_read_again_as_nan_never_reaches_servo(rtde):
    """The adapter reads the pose again to build its absolute target: a last finite check guards the SDK call."""
    good, bad = list(rtde.tcp), [float("nan")] + list(rtde.tcp[1:])
    reads = iter([good, bad])
    rtde.getActualTCPPose = lambda: next(reads)  # the safety layer's reading is fine, the adapter's is NaN
    with SafeRobot(URRobot("10.0.0.2"), CFG) as robot:
        with pytest.raises(SafetyFault, match="servoL pose") as err:
            robot.send(np.array([0.01, 0, 0, 0, 0, 0, 0.0]))
        assert err.value.reason == "unsafe_output" and robot.fault
    assert not any(c[0] == "servoL" for c in rtde.calls) and ("servoStop", ()) in rtde.calls


def test_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rtde_control", None)
    with pytest.raises(ImportError, match=r"robot_pref\[ur\]"):
        URRobot("10.0.0.2").connect()
    monkeypatch.setitem(sys.modules, "franky", None)
    with pytest.raises(ImportError, match=r"robot_pref\[franka\]"):
        FrankaRobot("10.0.0.3").connect()


def fake_franky():
    moves, grips = [], []

    class Affine:
        def __init__(self, translation=(0, 0, 0), quaternion=(0, 0, 0, 1)):
            self.translation, self.quaternion = np.asarray(translation, float), np.asarray(quaternion, float)

    class Robot:
        def __init__(self, ip):
            self.state = types.SimpleNamespace(q=[0, -0.78, 0, -2.36, 0, 1.57, 0.78], dq=[0.0] * 7)
            self.current_pose = Affine([0.5, 0.0, 0.3], DOWN_ROT.as_quat())
            self.recovered = 0

        def recover_from_errors(self):
            self.recovered += 1

        def move(self, motion, asynchronous=False):
            moves.append((motion, asynchronous))

    class Gripper:
        width = 0.08

        def __init__(self, ip):
            pass

        def move_async(self, width, speed):
            grips.append(width)

    def motion(kind):
        return lambda *args: (kind, args)

    module = types.SimpleNamespace(
        Robot=Robot, Gripper=Gripper, Affine=Affine, ReferenceType=types.SimpleNamespace(Absolute="abs"),
        CartesianMotion=motion("cartesian"), JointWaypointMotion=motion("joint"), JointWaypoint=lambda q: q,
        CartesianPoseStopMotion=motion("stop"))
    return module, moves, grips


def test_franka_sends_absolute_base_frame_targets_and_gripper_widths(monkeypatch):
    module, moves, grips = fake_franky()
    monkeypatch.setitem(sys.modules, "franky", module)
    with SafeRobot(FrankaRobot("10.0.0.3"), CFG) as robot:
        assert robot.robot._robot.recovered == 1  # errors cleared on connect
        obs = robot.observe()
        assert obs.gripper == 0.08 and obs.low_dim.shape == (robot.info.obs_dim,)
        robot.send(np.array([0, 0, -0.01, 0, 0, 0, 1.0]))
        (kind, (affine, ref)), asynchronous = moves[-1]
        assert kind == "cartesian" and ref == "abs" and asynchronous
        np.testing.assert_allclose(affine.translation, [0.5, 0.0, 0.29])
        np.testing.assert_allclose(affine.quaternion, DOWN_ROT.as_quat(), atol=1e-9)
        assert grips == [0.0]  # +1 = closed
        robot.send(np.array([0, 0, -0.01, 0, 0, 0, 1.0]))
        assert grips == [0.0]  # unchanged width: no new gripper command
        robot.stop()
        assert moves[-1][0][0] == "stop"
        n = len(moves)
        with pytest.raises(SafetyFault, match="forward kinematics"):  # no FK here: the box cannot be checked
            robot.send(np.r_[robot.info.home_joints, -1.0], "joint_pos")
        assert len(moves) == n + 1 and moves[-1][0][0] == "stop"  # refused, and the fault stopped the arm
