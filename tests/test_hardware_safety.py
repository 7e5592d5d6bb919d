"""The safety layer: clamps (property-based), faults that latch, emergency stop, watchdog."""

import re
import threading
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
                            (np.zeros(7), "torque", "not supported"), (["a"] * 7, "ee_delta", "real numbers"),
                            (np.r_[np.zeros(6), np.inf], "ee_delta", "non-finite"),
                            (np.r_[np.zeros(6), -np.inf], "ee_delta", "non-finite"),
                            (np.zeros(7) + 0.01j, "ee_delta", "real numbers.*complex128"),  # would drop the 0.01j
                            (np.zeros(7, np.complex64), "ee_delta", "real numbers.*complex64"),
                            (["0.01"] * 7, "ee_delta", "real numbers"),  # strings would parse
                            ([0.0] * 6 + [None], "ee_delta", "real numbers.*object"),
                            ([True] * 7, "ee_delta", "real numbers.*bool"),
                            ([[0.0] * 7, [0.0]], "ee_delta", "7 real numbers"),  # ragged
                            (np.zeros((1, 7)), "ee_delta", r"shape \(7,\)"),
                            (np.zeros(9), "joint_pos", r"shape \(8,\)")]:
        with pytest.raises(SafetyFault, match=what) as err:
            flt(cmd, mode, obs_at(), now=0.0)
        assert err.value.reason == "invalid_command"
    np.testing.assert_array_equal(flt(np.zeros(7, np.int64), "ee_delta", obs_at(), now=0.0), np.zeros(7))


class BrokenSensorArm(FakeArm):
    """A fake arm whose next reading has ``field`` replaced by ``value`` (a NaN pose, a short vector...)."""

    def __init__(self, field, value):
        super().__init__()
        self.broken = (field, value)

    def observe(self, frames=True):
        obs = super().observe(frames)
        setattr(obs, *self.broken)
        return obs


@pytest.mark.parametrize("field,value", [
    ("joint_pos", np.r_[HOME[:3], np.nan, HOME[4:]]), ("ee_pos", np.array([0.45, np.inf, 0.3])),
    ("ee_quat", np.array([np.nan, 0, 0, 1.0])), ("joint_vel", np.zeros(6)), ("ee_pos", np.array([0.45, 0, 0.3j]))])
def test_a_non_finite_observation_latches_and_nothing_reaches_the_arm(field, value):
    """NaN passes `q < low`, the box clamp and the step cap and became a NaN command; now it is a fault."""
    arm = BrokenSensorArm(field, value)
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        for mode, cmd in (("ee_delta", np.r_[0.01, 0, 0, 0, 0, 0, 0]), ("joint_pos", np.r_[HOME, 0.0])):
            with pytest.raises(SafetyFault, match=f"observed {field}") as err:
                robot.send(cmd, mode)
            assert err.value.reason == "bad_observation"
        assert arm.applied == [] and arm.stops >= 1 and f"observed {field}" in robot.fault
        with pytest.raises(SafetyFault, match=f"observed {field}"):
            robot.observe()  # what a policy would read is refused too
        arm.broken = ("gripper", float("nan"))  # the sensor is back (a NaN gripper only means none)
        with pytest.raises(SafetyFault, match="latched"):
            robot.send(np.zeros(7))
        robot.recover()
        robot.send(np.zeros(7))
        assert len(arm.applied) == 1 and np.all(np.isfinite(arm.applied[0][1]))


def test_a_last_finite_check_stands_right_before_the_backend(monkeypatch):
    arm = FakeArm()
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        monkeypatch.setattr(SafetyFilter, "__call__", lambda self, *a, **k: np.r_[np.zeros(6), np.nan])  # a bug
        with pytest.raises(SafetyFault, match="not 7 finite values") as err:
            robot.send(np.zeros(7))
        assert err.value.reason == "unsafe_output" and arm.applied == [] and robot.fault


class NoKinematicsArm(FakeArm):
    def forward_kinematics(self, joints):
        return None


def test_joint_pos_without_forward_kinematics_is_refused():
    """Checking the box on the current hand position is one step late: refuse, naming the fix."""
    arm = NoKinematicsArm()
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        target = np.r_[np.array(HOME) + 0.01, 0.0]  # a small step, well inside the box
        with pytest.raises(SafetyFault, match="forward kinematics") as err:
            robot.send(target, "joint_pos")
        assert err.value.reason == "no_forward_kinematics" and "ee_delta" in str(err.value)
        assert arm.applied == []
        robot.recover()
        robot.send(np.r_[0.01, 0, 0, 0, 0, 0, 0])  # ee_delta needs no forward kinematics
        assert [m for m, _ in arm.applied] == ["ee_delta"]
    flt = SafetyFilter(CFG, INFO)  # the filter on its own: no fk is a refusal, not a check on the current pose
    with pytest.raises(SafetyFault, match="forward kinematics"):
        flt(target, "joint_pos", obs_at(), now=0.0)


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
        with pytest.raises(SafetyFault, match="robot side") as err:
            robot.recover()  # recover() never releases an emergency stop
        assert err.value.reason == "estop" and robot.fault == "emergency stop"
        with pytest.raises(SafetyFault):
            robot.send(np.zeros(7))
        assert len(arm.applied) == 2
        robot.clear_estop()  # the robot-side release
        assert robot.fault is None
        robot.send(np.zeros(7))
        assert len(arm.applied) == 3


def test_clamped_command_is_what_reaches_the_arm_and_is_returned():
    arm = FakeArm()
    with SafeRobot(arm, CFG, watchdog=False) as robot:
        for _ in range(40):  # push down through the floor of the box
            applied = robot.send(np.r_[0, 0, -1.0, 0, 0, 0, 0])
            np.testing.assert_array_equal(applied, arm.applied[-1][1])
            time.sleep(0)  # rate limit uses the wall clock on this backend
        assert robot.observe().ee_pos[2] >= LOW[2] - 1e-9


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_watchdog_stops_within_three_periods_on_a_fake_clock():
    """The decision, without scheduling noise: silent for 3 control periods at the most, never much less."""
    clock, arm = FakeClock(), FakeArm()
    with SafeRobot(arm, SafetyConfig(rate_limit=False), clock=clock) as robot:
        wd, period = robot._watchdog, 1 / robot.info.control_freq
        assert wd.fire_after + wd.interval <= 3 * period  # the thread's next check still lands in time
        robot.send(np.zeros(7))  # at t = 0
        while robot.fault is None and clock.t < 10 * period:
            clock.t += wd.interval / 4  # finer than the thread's checks; the test checks at each step itself
            wd.check()
        silent_ms = float(re.search(r"no command for (\d+) ms", robot.fault).group(1))
        assert 2.5 * period * 1e3 <= silent_ms <= 3 * period * 1e3
        assert clock.t <= 3 * period and arm.stops >= 1
        robot.recover()
        robot.send(np.zeros(7))
        clock.t += 2.5 * period
        wd.check()
        assert robot.fault is None  # 2.5 periods of silence is no fault
        robot.send(np.zeros(7))  # a command resets the count
        clock.t += 2.5 * period
        wd.check()
        assert robot.fault is None
        robot.stop()  # at rest: silence is no fault
        clock.t += 100 * period
        wd.check()
        assert robot.fault is None


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
            time.sleep(0.002)
        assert stopped_at, "watchdog never stopped the arm"
        assert stopped_at[0] - last >= 2.7 * period  # not before 3 periods less two 7.5 ms checks
        assert stopped_at[0] - last < 3 * period + 0.03  # 3 periods, plus 30 ms for scheduling on a loaded machine
        assert "watchdog" in robot.fault
        with pytest.raises(SafetyFault, match="watchdog"):
            robot.send(np.zeros(7))
        robot.recover()
        robot.stop()  # a stopped arm is disarmed: silence after stop() is not a fault
        time.sleep(5 * period)
        assert robot.fault is None


class HangingArm(FakeArm):
    """A backend whose send blocks (a dead network link, a wedged driver) once ``hang`` is set."""

    def __init__(self):
        super().__init__()
        self.hang, self.release, self.stopped_at = False, threading.Event(), []

    def send(self, command, mode="ee_delta"):
        if self.hang:
            self.release.wait(10)
        return super().send(command, mode)

    def stop(self):
        super().stop()
        self.stopped_at.append(time.monotonic())


def test_a_hung_backend_send_does_not_block_the_stop():
    arm = HangingArm()
    with SafeRobot(arm, SafetyConfig(rate_limit=False)) as robot:
        period = 1 / robot.info.control_freq
        robot.send(np.zeros(7))
        arm.hang = True
        outcome = []

        def hung():
            try:
                robot.send(np.r_[0.01, 0, 0, 0, 0, 0, 0])
            except SafetyFault as err:
                outcome.append(err)

        sent = time.monotonic()
        thread = threading.Thread(target=hung, daemon=True)
        thread.start()
        try:
            while not arm.stopped_at and time.monotonic() - sent < 2.0:
                time.sleep(0.002)
            assert arm.stopped_at, "the watchdog's stop waited for the hung send"
            assert arm.stopped_at[0] - sent < 3 * period + 0.03
            assert "watchdog" in robot.fault and thread.is_alive()  # stopped while the command is still in flight
            t0 = time.monotonic()
            robot.estop()  # the emergency stop does not wait for it either
            assert time.monotonic() - t0 < 0.5 and robot.fault == "emergency stop"
        finally:
            arm.release.set()
            thread.join(5)
        stops = len(arm.stopped_at)
        assert outcome and "in flight" in str(outcome[0])  # the late command reports the fault...
        assert stops >= 3 and arm.stopped_at[-1] >= arm.stopped_at[0]  # ...and the arm was stopped again after it
