"""The safety layer: clamps (property-based), faults that latch, emergency stop, watchdog."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robot_pref.hardware.config import SafetyConfig
from robot_pref.hardware.fake import HOME, FakeArm
from robot_pref.hardware.interface import SafetyFault
from robot_pref.hardware.safety import SafeRobot, SafetyFilter

CFG = SafetyConfig(max_ee_step=0.03, max_rot_step=0.2, max_joint_step=0.05)
INFO = FakeArm().info
LOW, HIGH = np.array(INFO.workspace_low), np.array(INFO.workspace_high)
finite = st.floats(-10, 10, allow_nan=False)


def obs_at(ee=None, q=HOME):
    arm = FakeArm()
    arm.q = np.array(q, float)
    obs = arm.observe()
    if ee is not None:
        obs.ee_pos = np.asarray(ee, float)
    return obs


@settings(max_examples=300, deadline=None)
@given(cmd=st.lists(finite, min_size=7, max_size=7),
       ee=st.tuples(*(st.floats(lo, hi) for lo, hi in zip(LOW, HIGH))))
def test_ee_delta_stays_in_box_and_under_caps(cmd, ee):
    out = SafetyFilter(CFG, INFO)(np.array(cmd), "ee_delta", obs_at(ee), now=0.0)
    target = np.asarray(ee) + out[:3]
    assert np.all(target >= LOW - 1e-9) and np.all(target <= HIGH + 1e-9)
    assert np.linalg.norm(out[:3]) <= CFG.max_ee_step + 1e-9
    assert np.linalg.norm(out[3:6]) <= CFG.max_rot_step + 1e-9
    assert -1 <= out[6] <= 1
    # a clamp only shrinks: the step never points away from what was asked in any axis
    assert np.all(out[:3] * np.asarray(cmd[:3]) >= -1e-12)


@settings(max_examples=200, deadline=None)
@given(cmd=st.lists(st.floats(-0.017, 0.017), min_size=6, max_size=6), grip=st.floats(-1, 1))
def test_small_commands_inside_the_box_pass_unchanged(cmd, grip):
    c = np.array(cmd + [grip])
    c[3:6] *= 5  # |step| <= 0.0295 m < 0.03, |rotation| <= 0.15 rad < 0.2
    out = SafetyFilter(CFG, INFO)(c, "ee_delta", obs_at((0.5, 0.0, 0.3)), now=0.0)
    np.testing.assert_allclose(out, c, atol=1e-12)


@settings(max_examples=300, deadline=None)
@given(target=st.lists(st.floats(-4, 4), min_size=7, max_size=7))
def test_joint_targets_respect_limits_margin_and_step(target):
    flt = SafetyFilter(CFG, INFO)
    obs = obs_at()
    try:
        out = flt(np.array(target + [0.0]), "joint_pos", obs, now=0.0, fk=FakeArm().forward_kinematics)
    except SafetyFault as err:  # only allowed reason: the (clamped) target's hand leaves the box
        assert "workspace" in str(err)
        return
    q = out[:7]
    assert np.all(q >= np.array(INFO.joint_low) + CFG.joint_margin - 1e-9)
    assert np.all(q <= np.array(INFO.joint_high) - CFG.joint_margin + 1e-9)
    assert np.all(np.abs(q - obs.joint_pos) <= CFG.max_joint_step + 1e-9)


def test_invalid_commands_are_faults():
    flt = SafetyFilter(CFG, INFO)
    for cmd, mode, what in [(np.full(7, np.nan), "ee_delta", "non-finite"), (np.zeros(6), "ee_delta", "shape"),
                            (np.zeros(7), "torque", "not supported"), (["a"] * 7, "ee_delta", "not numeric"),
                            (np.r_[np.zeros(6), np.inf], "ee_delta", "non-finite")]:
        with pytest.raises(SafetyFault, match=what):
            flt(cmd, mode, obs_at(), now=0.0)


def test_ee_delta_near_a_joint_limit_faults():
    q = np.array(HOME)
    q[3] = INFO.joint_high[3] - 0.01  # joint 4 within the 0.05 rad margin
    with pytest.raises(SafetyFault, match="joint 4"):
        SafetyFilter(CFG, INFO)(np.zeros(7), "ee_delta", obs_at(q=q), now=0.0)


def test_rate_limit_bounds_speed_when_commands_flood():
    """100 full-step commands in one control period move no further than one full step."""
    flt = SafetyFilter(CFG, INFO)
    obs = obs_at((0.5, 0.0, 0.3))
    period = 1 / INFO.control_freq
    cmd = np.array([1.0, 0, 0, 0, 0, 0, 0])
    moved = sum(flt(cmd, "ee_delta", obs, now=k * period / 100)[0] for k in range(101))
    assert moved == pytest.approx(CFG.max_ee_step * 2, rel=1e-3)  # the first full step + one period's worth
    half = flt(cmd, "ee_delta", obs, now=100 * period / 100 + period / 2)[0]
    assert half == pytest.approx(CFG.max_ee_step / 2, rel=1e-3)
    flt.reset()  # after stop/home the next step is a full one again
    assert flt(cmd, "ee_delta", obs, now=0.0)[0] == pytest.approx(CFG.max_ee_step)


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=40))
def test_rate_limit_bounds_motion_for_any_command_timing(gaps):
    """Whatever the timing, motion over a span of t seconds is at most cap * (t / period + 1)."""
    flt = SafetyFilter(CFG, INFO)
    obs = obs_at((0.5, 0.0, 0.3))
    period = 1 / INFO.control_freq
    times = np.cumsum([0.0] + gaps)
    steps = np.array([flt(np.r_[1.0, 0, 0, 0, 0, 0, 0], "ee_delta", obs, now=t)[0] for t in times])
    for i in range(len(times)):
        for j in range(i, len(times)):
            assert steps[i:j + 1].sum() <= CFG.max_ee_step * ((times[j] - times[i]) / period + 1) + 1e-6


def test_faults_latch_until_recover_and_stop_the_arm():
    arm = FakeArm()
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        robot.send(np.r_[0.01, 0, 0, 0, 0, 0, 1.0])
        with pytest.raises(SafetyFault, match="non-finite"):
            robot.send(np.r_[np.nan, np.zeros(6)])
        assert arm.stops == 1 and len(arm.applied) == 1
        with pytest.raises(SafetyFault, match="latched"):
            robot.send(np.zeros(7))
        with pytest.raises(SafetyFault, match="latched"):
            robot.home()
        assert len(arm.applied) == 1 and "non-finite" in robot.fault
        robot.recover()
        assert robot.fault is None
        robot.send(np.zeros(7))
        assert len(arm.applied) == 2
        robot.estop()
        assert robot.fault == "emergency stop" and arm.stops >= 2
        with pytest.raises(SafetyFault):
            robot.send(np.zeros(7))


def test_clamped_command_is_what_reaches_the_arm_and_is_returned():
    arm = FakeArm()
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        for _ in range(40):  # push down through the floor of the box
            applied = robot.send(np.r_[0, 0, -1.0, 0, 0, 0, 0])
            np.testing.assert_array_equal(applied, arm.applied[-1][1])
            time.sleep(0)  # rate limit uses the wall clock on this backend
        assert robot.observe().ee_pos[2] >= LOW[2] - 1e-9


def test_watchdog_stops_a_silent_arm_within_three_periods():
    arm = FakeArm()
    stopped_at = []
    arm.stop = lambda: stopped_at.append(time.monotonic())
    with SafeRobot(arm, SafetyConfig(rate_limit=False)) as robot:
        period = 1 / robot.info.control_freq
        for _ in range(10):  # commands at the control rate: no trip
            robot.send(np.zeros(7))
            time.sleep(period)
        assert robot.fault is None and not stopped_at
        last = time.monotonic()
        robot.send(np.zeros(7))
        deadline = time.monotonic() + 2.0
        while not stopped_at and time.monotonic() < deadline:
            time.sleep(0.005)
        assert stopped_at, "watchdog never stopped the arm"
        assert stopped_at[0] - last >= 2.7 * period  # not before 3 periods less two 7.5 ms checks
        assert stopped_at[0] - last < 3 * period + 0.5  # by 3 periods; generous slack for a loaded CI machine
        assert "watchdog" in robot.fault
        with pytest.raises(SafetyFault, match="watchdog"):
            robot.send(np.zeros(7))
        robot.recover()
        robot.stop()  # a stopped arm is disarmed: silence after stop() is not a fault
        time.sleep(5 * period)
        assert robot.fault is None
