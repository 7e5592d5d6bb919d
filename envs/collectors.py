"""Scripted collectors with D4RL-style quality tiers.

- ``expert``: a waypoint controller per task (move the hand to a sequence of targets read from the
  observation with a proportional gain, open/close the gripper between them).
- ``medium``: the expert with N(0, 0.3) action noise and random pauses (hesitation): partial success.
- ``random``: uniform actions in the action box.
- ``mixed``: one of the three per episode (the CLI cycles them so a mixed set holds a third of each).

An episode is fully determined by its seed and tier: the seed fixes the initial state (`TaskEnv.reset`)
and the collector's own noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from robot_pref.data.dataset import Episode, frame_key
from robot_pref.envs.tasks import RenderOptions, TaskEnv

TIERS = ("expert", "medium", "random")
GAIN = 10.0  # action per metre of position error; an action of 1 moves the hand ~5 cm per step
ROT_GAIN = 3.0  # action per radian of orientation error; an action of 1 turns the hand ~0.06 rad per step
OPEN, CLOSED = -1.0, 1.0
MEDIUM_NOISE = 0.3
PAUSE_PROB, PAUSE_STEPS = 0.05, (5, 15)  # chance per step to start a pause, its length range

Obs = dict[str, np.ndarray]


@dataclass
class Waypoint:
    """Drive the hand to ``target(obs)`` with the gripper at ``gripper``; move on once within ``tol``
    metres, after ``steps`` steps when ``steps`` is set, or once ``until(obs)`` when that is set.
    ``orient`` is the hand's target orientation (default: the orientation it started the episode in)."""

    target: Callable[[Obs], np.ndarray]
    gripper: float
    tol: float = 0.01
    steps: int = 0
    until: Callable[[Obs], bool] | None = None
    orient: Callable[[Obs], Rotation] | None = None

    def reached(self, obs: Obs, error: np.ndarray, held: int) -> bool:
        if self.until is not None:
            return bool(self.until(obs))
        if self.steps:
            return held >= self.steps
        return bool(np.abs(error).max() < self.tol)


class WaypointExpert:
    """Runs a task's waypoint list; the last waypoint is held until the episode ends."""

    def __init__(self, plan: Callable[[Obs], list[Waypoint]]):
        self.plan = plan
        self.waypoints: list[Waypoint] = []

    def reset(self, obs: Obs) -> None:
        self.waypoints = self.plan(obs)  # targets may close over the initial object poses
        self.index, self.held = 0, 0
        self.start_orient = hand(obs)

    def act(self, obs: Obs) -> np.ndarray:
        wp = self.waypoints[self.index]
        error = wp.target(obs) - obs["robot0_eef_pos"]
        self.held += 1
        last = self.index == len(self.waypoints) - 1
        if not last and wp.reached(obs, error, self.held):
            self.index, self.held = self.index + 1, 0
        action = np.zeros(7, np.float32)
        action[:3] = np.clip(GAIN * error, -1.0, 1.0)
        goal = wp.orient(obs) if wp.orient is not None else self.start_orient
        action[3:6] = np.clip(ROT_GAIN * (goal * hand(obs).inv()).as_rotvec(), -1.0, 1.0)  # world frame
        action[6] = wp.gripper
        return action


def hand(obs: Obs) -> Rotation:
    return Rotation.from_quat(obs["robot0_eef_quat"])  # robosuite quaternions are (x, y, z, w)


def aligned(obs: Obs, target: np.ndarray, orient: Rotation, tol: float = 0.01, angle: float = 0.05) -> bool:
    """Hand within ``tol`` metres of ``target`` and ``angle`` radians of ``orient``."""
    turn = (orient * hand(obs).inv()).magnitude()
    return bool(np.abs(target - obs["robot0_eef_pos"]).max() < tol and turn < angle)


def up(z: float) -> np.ndarray:
    return np.array([0.0, 0.0, z])


def lift_plan(o0: Obs) -> list[Waypoint]:
    """Top-down grasp: 8 cm above the cube, descend, close, lift 20 cm above where the cube started."""
    start = o0["cube_pos"].copy()
    return [
        Waypoint(lambda o: o["cube_pos"] + up(0.08), OPEN),
        Waypoint(lambda o: o["cube_pos"] + up(-0.005), OPEN, tol=0.006),
        Waypoint(lambda o: o["cube_pos"] + up(-0.005), CLOSED, steps=8),
        Waypoint(lambda o: start + up(0.20), CLOSED),
    ]


def stack_plan(o0: Obs) -> list[Waypoint]:
    """Grasp the red cube (A), carry it above the green one (B), lower it until it rests on B, release."""
    a0, b0 = o0["cubeA_pos"].copy(), o0["cubeB_pos"].copy()
    on_b = up(0.025 + 0.02 + 0.003)  # B's half size + A's half size + clearance
    # turn the hand about z so the fingers (which close along the hand's y axis, world y at the start)
    # close across the line A-B: with the cubes close together, a finger would otherwise land on B
    d = (b0 - a0)[:2]
    yaw = np.arctan2(d[0], -d[1]) % np.pi - np.pi / 2  # the smaller of the two turns: fingers are symmetric
    turned = Rotation.from_euler("z", yaw) * hand(o0)

    def wp(target: Callable[[Obs], np.ndarray], gripper: float, **kw) -> Waypoint:
        return Waypoint(target, gripper, orient=lambda o: turned, **kw)

    def carry(offset: np.ndarray) -> Callable[[Obs], np.ndarray]:  # move the held cube, not the hand
        return lambda o: o["robot0_eef_pos"] + (o["cubeB_pos"] + offset - o["cubeA_pos"])

    return [
        wp(lambda o: o["cubeA_pos"] + up(0.08), OPEN, until=lambda o: aligned(o, o["cubeA_pos"] + up(0.08), turned)),
        wp(lambda o: o["cubeA_pos"] + up(-0.005), OPEN, tol=0.006),
        wp(lambda o: o["cubeA_pos"] + up(-0.005), CLOSED, steps=8),
        wp(lambda o: np.array([a0[0], a0[1], b0[2] + 0.12]), CLOSED, tol=0.02),
        wp(carry(up(0.08)), CLOSED, tol=0.008),
        wp(carry(on_b), CLOSED, tol=0.004),
        wp(lambda o: o["robot0_eef_pos"], OPEN, steps=10),
        wp(lambda o: b0 + up(0.15), OPEN),
    ]


def door_plan(o0: Obs) -> list[Waypoint]:
    """Point the hand at the door, grasp the handle bar from the front (fingers closing vertically),
    turn it down with the hand following the bar to free the latch, then pull the door open along its
    arc around the hinge."""
    # Door geometry is not observed; recover it from the door's pose. In the door body's frame
    # (robosuite's door_lock.xml, door at rest) the handle site is at (-0.05, -0.10, -0.025), the
    # handle turns about the latch axis through (-0.175, ., -0.025) along the frame's y, and the hinge
    # is at (0.255, 0); the frame's -y axis points out of the panel towards the robot.
    door = o0["door_pos"]
    v = (o0["handle_pos"] - door)[:2]
    yaw = np.arctan2(v[1], v[0]) - np.arctan2(-0.10, -0.05)
    rot = np.array([[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]])
    hinge = np.append(door[:2] + rot @ [0.255, 0.0], door[2])
    pivot = np.append(door[:2] + rot @ [-0.175, -0.10], door[2] - 0.025)  # on the latch axis, at the bar
    out = np.append(rot @ [0.0, -1.0], 0.0)  # the door's outward normal
    # turn about z until the fingers' axis (hand y, world y at the start) lies along the normal, then
    # pitch the hand from pointing down to pointing into the door: the fingers then close vertically
    along = np.arctan2(out[1], out[0]) % np.pi - np.pi / 2
    pitch = np.cross([0.0, 0.0, -1.0], -out)
    grasp = Rotation.from_rotvec(np.pi / 2 * pitch) * Rotation.from_euler("z", along) * hand(o0)
    bar0 = o0["handle_pos"] - pivot

    def frame(o: Obs) -> tuple[Rotation, np.ndarray, np.ndarray]:
        """The door's swing, the bar (pivot -> handle) and the normal as they are now."""
        swing = Rotation.from_euler("z", o["hinge_qpos"][0])
        normal = swing.apply(out)
        return swing, o["handle_pos"] - (hinge + swing.apply(pivot - hinge)), normal

    def follow(o: Obs) -> Rotation:  # the grasp orientation, turned with the bar and the door
        swing, bar, normal = frame(o)
        rest = swing.apply(bar0)
        turn = np.arctan2(normal @ np.cross(rest, bar), rest @ bar)
        return Rotation.from_rotvec(turn * normal) * swing * grasp

    def turn_down(o: Obs) -> np.ndarray:
        _, bar, normal = frame(o)
        tangent = np.cross(normal, bar)
        tangent *= -np.sign(tangent[2]) / np.linalg.norm(tangent)  # the way that lowers the bar's end
        return o["handle_pos"] + 0.05 * tangent

    def pull(o: Obs) -> np.ndarray:
        r = o["robot0_eef_pos"][:2] - hinge[:2]
        tangent = np.array([-r[1], r[0]]) / np.linalg.norm(r)  # direction of increasing hinge angle
        return o["robot0_eef_pos"] + 0.1 * np.append(tangent, 0.0)

    return [
        Waypoint(lambda o: o["handle_pos"] + 0.10 * out, OPEN, orient=follow,
                 until=lambda o: aligned(o, o["handle_pos"] + 0.10 * out, grasp)),
        Waypoint(lambda o: o["handle_pos"], OPEN, tol=0.008, orient=follow),
        Waypoint(lambda o: o["handle_pos"], CLOSED, steps=10, orient=follow),
        Waypoint(turn_down, CLOSED, orient=follow, until=lambda o: abs(o["handle_qpos"][0]) > TURN),
        Waypoint(pull, CLOSED, orient=follow),
    ]


TURN = 1.3  # handle angle (rad) past which the latch tip clears the frame post


PLANS: dict[str, Callable[[Obs], list[Waypoint]]] = {"lift": lift_plan, "stack": stack_plan, "door": door_plan}
# a task's own medium-tier behaviour on top of noise and pauses: wrapper(policy, obs_dict, rng) -> policy
MEDIUM_WRAPPERS: dict[str, Callable] = {}

from robot_pref.envs import cloth_collectors  # noqa: E402  (its plan builds on Waypoint above)

# looked up when called: when cloth_collectors is imported first, it is still half-built at this point
PLANS["cloth_fold"] = lambda o0: cloth_collectors.fold_plan(o0)
MEDIUM_WRAPPERS["cloth_fold"] = lambda *args: cloth_collectors.early_release(*args)


def make_expert(task: str) -> WaypointExpert:
    if task not in PLANS:
        raise ValueError(f"no scripted expert for task {task!r}; experts exist for {sorted(PLANS)}")
    return WaypointExpert(PLANS[task])


def _policy(env: TaskEnv, tier: str, rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A per-episode policy obs -> action for a tier, using ``rng`` for its noise."""
    if tier == "random":
        return lambda obs: rng.uniform(env.action_low, env.action_high).astype(np.float32)
    expert = make_expert(env.task.name)
    expert.reset(env.obs_dict())
    if tier == "expert":
        return lambda obs: expert.act(env.obs_dict(obs))
    pause = 0

    def medium(obs: np.ndarray) -> np.ndarray:
        nonlocal pause
        action = expert.act(env.obs_dict(obs))
        if pause == 0 and rng.random() < PAUSE_PROB:
            pause = int(rng.integers(*PAUSE_STEPS))
        if pause:  # hesitate: hold the hand still, keep the gripper as the expert wants it
            pause -= 1
            action[:6] = 0.0
        return action + rng.normal(0.0, MEDIUM_NOISE, size=action.shape).astype(np.float32)

    wrap = MEDIUM_WRAPPERS.get(env.task.name)
    return medium if wrap is None else wrap(medium, env.obs_dict, rng)


def collect_episode(
    env: TaskEnv,
    tier: str,
    rng: np.random.Generator | int,
    cameras: Sequence[str] = (),
    size: int = 84,
    horizon: int | None = None,
    render_options: RenderOptions | None = None,
) -> Episode:
    """Roll out one episode of ``tier`` for ``horizon`` steps (default: the env's) and record it.

    Row t holds s_t: observation, flattened state, r(s_t), success(s_t), the frames of s_t, and the
    clipped action executed in s_t. The episode counts as a success when any visited state succeeded
    (the final s_T included). ``tier='mixed'`` draws one of the tiers from ``rng``.
    """
    rng = np.random.default_rng(rng)
    if tier == "mixed":
        tier = TIERS[int(rng.integers(len(TIERS)))]
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {list(TIERS) + ['mixed']}")
    seed = int(rng.integers(2**31 - 1))
    horizon = env.horizon if horizon is None else int(horizon)
    obs = env.reset(seed=seed)
    policy = _policy(env, tier, np.random.default_rng(seed))
    keys = {cam: frame_key(cam, size) for cam in cameras}
    rows: dict[str, list] = {"obs": [], "action": [], "state": [], "reward": [], "success": []}
    frames: dict[str, list] = {key: [] for key in keys.values()}
    reward, success = env.reward(), env.success()
    for _ in range(horizon):
        for cam, key in keys.items():
            frames[key].append(env.render(cam, size, size, render_options))
        rows["obs"].append(obs)
        rows["state"].append(env.get_state())
        rows["reward"].append(reward)
        rows["success"].append(success)
        obs, reward, success, info = env.step(policy(obs))
        rows["action"].append(info["action"])
    return Episode(
        obs=np.stack(rows["obs"]).astype(np.float32),
        action=np.stack(rows["action"]).astype(np.float32),
        state=np.stack(rows["state"]),
        timestamp=np.arange(horizon, dtype=np.float64) / env.control_freq,
        frames={key: np.stack(f) for key, f in frames.items()},
        true_reward=np.asarray(rows["reward"], np.float32),
        true_success=np.asarray(rows["success"], bool),
        task=env.task.name,
        goal=env.task.goal,
        tier=tier,
        source="scripted",
        seed=seed,
        success=bool(np.any(rows["success"]) or success),
        terminated=False,
    )
