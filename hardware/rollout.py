"""`robot-pref rollout`: run a trained policy on a simulated or real arm, safety on, optionally recording.

The recorded episodes go into a normal dataset (applied commands as actions, tier "rollout"), ready to
be labeled and trained on again. A safety fault ends its episode, not the run: the episode is kept
(source ``rollout:POLICY fault=REASON: message``) and counted as a failure; then ``--on-fault skip``
recovers and goes on with the next episode (the default on simulated arms), ``stop`` hands over to the
operator (the default on real ones): asked at a terminal whether to go on, else the run ends.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from robot_pref.hardware.config import RolloutConfig
from robot_pref.hardware.interface import Robot, SafetyFault
from robot_pref.hardware.record import EpisodeRecorder, Rate, open_dataset, open_robot

log = logging.getLogger(__name__)


def run_episode(robot: Robot, policy, seed: int | None, max_steps: int, stop_at_success: bool = True,
                frame_keys: tuple[str, ...] = (), rate_hz: float | None = None) -> EpisodeRecorder:
    """One episode: observe, act (normalised), send (SI), record what was applied; stop at rest.

    A `SafetyFault` (in reset, send or observe) ends the episode with the arm stopped and the fault
    latched; it is kept in ``rec.fault``, the rows before it in ``rec.rows``.
    """
    rec = EpisodeRecorder(robot.info, frame_keys)
    keys = tuple(getattr(policy, "observation_keys", ("obs",)))
    rate = Rate(rate_hz) if rate_hz else None
    try:
        obs = robot.reset(seed)
        rec.clear()
        for _ in range(max_steps):
            action = np.asarray(policy.act(obs.policy_input(keys))).reshape(-1)  # safety checks its dtype
            rec.add(obs, robot.send(robot.info.to_si(action)))
            if stop_at_success and obs.success:
                break
            if rate:
                rate.sleep()
            obs = robot.observe()
    except SafetyFault as err:
        rec.fault = err
    finally:
        robot.stop()
    return rec


def summarise(results: list[dict]) -> dict:
    """Successes, failures (a faulted episode is one), unknowns (no success check) and faults by reason;
    the success rate only when every episode's outcome is known."""
    outcomes = Counter(r["success"] for r in results)
    known = outcomes[True] + outcomes[False]
    return {"successes": outcomes[True], "failures": outcomes[False], "unknown": outcomes[None],
            "success_rate": outcomes[True] / known if known and not outcomes[None] else None,
            "faults": dict(Counter(r["fault_reason"] for r in results if r["fault"]))}


def _operator_goes_on(ask, episode: int, fault: SafetyFault) -> bool:
    try:
        answer = ask(f"\nepisode {episode} ended by a fault ({fault}); the arm is stopped. Check it, then type "
                     "'go' to recover and continue, anything else to end the run: ")
    except EOFError:
        return False
    return answer.strip().lower() == "go"


def rollout(cfg: RolloutConfig, policy=None, ask=None) -> dict:
    """Run ``cfg.episodes`` episodes; ``policy`` overrides loading ``cfg.policy`` (tests pass one).

    Returns the summary once the run completed. With ``on_fault=stop`` a fault asks the operator through
    ``ask(prompt) -> answer`` (the CLI passes `input` at a terminal); without one, or unless the answer is
    ``go``, it prints the summary so far and raises the `SafetyFault`, naming how to go on.
    """
    from tqdm import tqdm

    if policy is None:
        from robot_pref.rl import load_policy

        if not cfg.policy:
            raise ValueError("--policy CHECKPOINT is required (a checkpoint written by `robot-pref train`)")
        policy = load_policy(cfg.policy, device=cfg.device)
    keys = tuple(getattr(policy, "observation_keys", ("obs",)))
    frame_keys = tuple(k[len("frames/"):] for k in keys if k.startswith("frames/"))
    cameras = tuple(k.rsplit("_", 1)[0] for k in frame_keys)
    size = int(frame_keys[0].rsplit("_", 1)[1]) if frame_keys else 84
    render = {k[len("frames/"):]: v for k, v in getattr(policy, "frame_render", {}).items()}
    robot = open_robot(cfg.robot, cameras=cameras, size=size, safety=cfg.safety, token=cfg.token, render=render)
    results, stopped = [], None
    with robot:
        info = robot.info
        task = getattr(policy, "task", "")
        if info.simulated and task and info.task != task:
            raise ValueError(f"the policy was trained on task {task!r} but the robot runs {info.task!r}; "
                             f"use --robot sim:{task}")
        on_fault = cfg.on_fault or ("skip" if info.simulated else "stop")
        if cfg.recover and robot.fault:
            log.warning("clearing the fault latched before this run (--recover): %s", robot.fault)
            robot.recover()
        max_steps = cfg.max_steps or int(info.env.get("horizon", 0)) or 300
        pace = (not info.simulated) if cfg.realtime is None else cfg.realtime
        ds = open_dataset(cfg.record, info) if cfg.record else None
        source = f"rollout:{cfg.policy or type(policy).__name__}"
        for i in tqdm(range(cfg.episodes), desc=f"rollout on {info.name}", unit="ep"):
            rec = run_episode(robot, policy, cfg.seed + i, max_steps, cfg.stop_at_success, frame_keys,
                              info.control_freq if pace else None)
            fault = rec.fault
            results.append({"episode": i, "seed": cfg.seed + i, "steps": len(rec), "success": rec.success,
                            "return": float(sum(o.reward for o, _ in rec.rows))
                            if rec.rows and rec.rows[0][0].reward is not None else None,
                            "fault": str(fault) if fault else None, "fault_reason": fault.reason if fault else None})
            if ds is not None and len(rec):  # a fault before the first step leaves nothing to record
                ds.append_episode(rec.episode(seed=cfg.seed + i, tier="rollout", source=source + (
                    f" fault={fault.reason}: {fault}" if fault else "")))
            if fault is None:
                continue
            log.warning("episode %d ended by a safety fault: %s", i, fault)
            if on_fault == "stop" and not (ask and fault.reason != "estop" and _operator_goes_on(ask, i, fault)):
                stopped = fault
                break
            try:
                robot.recover()
            except SafetyFault as err:  # an emergency stop is never skipped
                stopped = err
                break
    summary = {"policy": cfg.policy, "robot": cfg.robot, "episodes": results, **summarise(results),
               "record": cfg.record or None, "on_fault": on_fault, "completed": stopped is None}
    rate = ("unknown (no success check on this robot)" if summary["success_rate"] is None
            else f"{100 * summary['success_rate']:.0f}%")
    faults = sum(summary["faults"].values())
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(summary["faults"].items()))
    print(f"{len(results)} episodes on {cfg.robot}: {summary['successes']} successes, {summary['failures']} failures"
          + (f", {summary['unknown']} unknown" if summary["unknown"] else "") + f" (success {rate}); {faults} faults"
          + (f" ({by_reason})" if faults else "") + (f"; recorded to {cfg.record}" if cfg.record else ""))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(summary, indent=2))
    if stopped is not None:
        done = len(results)
        clear = ("release the emergency stop on the robot side" if stopped.reason == "estop"
                 else "add --recover to clear the fault")
        raise SafetyFault(f"episode {done - 1} ended by a fault ({stopped}); the run stopped with the arm stopped and "
                          f"the fault latched (--on-fault {on_fault}). Check the arm, {clear}, and go on with --seed "
                          f"{cfg.seed + done} --episodes {cfg.episodes - done}"
                          + ("" if stopped.reason == "estop" else ", or pass --on-fault skip"), stopped.reason)
    return summary
