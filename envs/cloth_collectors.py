"""Scripted cloth folding: the expert's waypoints and the medium tier's early release.

The expert grasps the top-left corner, lifts it, carries it in an arc over the fold diagonal, lowers it
onto the bottom-right corner and lets go. ``medium`` is the usual expert with noise and pauses
(`collectors._policy`) and, in half the episodes, lets go of the corner early: after a random number of
steps holding it, the gripper stays open for the rest of the episode.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from robot_pref.envs.collectors import CLOSED, OPEN, Obs, Waypoint, up

ARC, LEAD = 0.10, 0.03  # carry height over the middle of the diagonal; how far `rush` aims past (m)
EARLY_RELEASE_PROB, EARLY_RELEASE_STEPS = 0.5, (2, 25)  # medium: chance per episode, steps held before


def corner(o: Obs, name: str) -> np.ndarray:
    i = ("top_left", "top_right", "bottom_left", "bottom_right").index(name)
    return o["cloth_corners"][3 * i:3 * i + 3]


def fold_plan(o0: Obs) -> list[Waypoint]:
    """Above the top-left corner, down to it, close (the picker attaches it), lift over the middle of the
    diagonal, over the bottom-right corner, down onto it, open, back up."""
    tl0, br0 = corner(o0, "top_left").copy(), corner(o0, "bottom_right").copy()
    arc = (tl0 + br0) / 2 + up(ARC)
    return [
        # tolerances are loose (the picker reaches PICK_RADIUS): a noisy hand still gets through in time
        rush(lambda o: corner(o, "top_left") + up(0.04), OPEN, tol=0.03),
        rush(lambda o: corner(o, "top_left") + up(0.008), OPEN, tol=0.012),
        Waypoint(lambda o: corner(o, "top_left") + up(0.008), CLOSED, steps=2),
        rush(lambda o: arc, CLOSED, tol=0.04),
        rush(lambda o: corner(o, "bottom_right") + up(0.03), CLOSED, tol=0.03),
        rush(lambda o: corner(o, "bottom_right") + up(0.012), CLOSED, tol=0.015),
        Waypoint(lambda o: o["robot0_eef_pos"], OPEN, steps=3),
        Waypoint(lambda o: br0 + up(0.12), OPEN),
    ]


def rush(goal: Callable[[Obs], np.ndarray], gripper: float, tol: float) -> Waypoint:
    """A waypoint aimed LEAD metres past ``goal`` and left once within ``tol`` of it: the proportional
    controller keeps its speed to the end instead of creeping in (the expert folds in ~45 steps, not ~70)."""
    def target(o: Obs) -> np.ndarray:
        error = goal(o) - o["robot0_eef_pos"]
        return goal(o) + LEAD * error / max(float(np.linalg.norm(error)), 1e-6)

    return Waypoint(target, gripper, until=lambda o: bool(np.abs(goal(o) - o["robot0_eef_pos"]).max() < tol))


def early_release(policy: Callable[[np.ndarray], np.ndarray], obs_dict: Callable[[np.ndarray], Obs],
                  rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap the medium policy: with EARLY_RELEASE_PROB, open the gripper for good after holding k steps."""
    hold = int(rng.integers(*EARLY_RELEASE_STEPS)) if rng.random() < EARLY_RELEASE_PROB else None
    held = 0

    def act(obs: np.ndarray) -> np.ndarray:
        nonlocal held
        action = policy(obs)
        if hold is not None:
            held += int(obs_dict(obs)["cloth_held"][0] > 0.5)
            if held >= hold:
                action[6] = OPEN
        return action

    return act
