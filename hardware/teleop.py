"""`robot-pref teleop`: drive an arm with a device at a fixed rate and record episodes into a dataset.

Each tick: poll the device; an event (start, save, discard, re-record, clear fault, quit) is handled
and no step is taken; otherwise, while recording, the action goes through the safety layer and the row
(observation, applied command, state, true reward/success where sim) is kept. Save appends the episode
atomically (`TrajectoryDataset.append_episode`), so quitting or crashing never loses saved episodes.
"""

from __future__ import annotations

import logging
import sys

from robot_pref.hardware.interface import SafetyFault
from robot_pref.hardware.config import TeleopConfig
from robot_pref.hardware.record import EpisodeRecorder, Rate, open_dataset, open_robot

log = logging.getLogger(__name__)
def teleop(cfg: TeleopConfig, device=None, status=sys.stderr) -> dict:
    """Run a session; ``device`` overrides ``cfg.device`` (tests pass one). Returns the session counts."""
    from robot_pref.hardware.devices import make_device

    if not cfg.out:
        raise ValueError("--out X.zarr is required: where the recorded episodes go")
    robot = open_robot(cfg.robot, cameras=cfg.cameras, size=cfg.size, safety=cfg.safety, token=cfg.token)
    counts = {"saved": 0, "discarded": 0, "steps": 0, "overruns": 0}
    with robot:
        info = robot.info
        ds = open_dataset(cfg.out, info, overwrite=cfg.overwrite)
        rec = EpisodeRecorder(info, info.cameras)
        max_steps = cfg.max_steps or int(info.env.get("horizon", 0)) or 600
        device = device or make_device(cfg.device, cfg.script, cfg.speed)
        rate = Rate(cfg.rate_hz or info.control_freq)
        print(getattr(device, "help", ""), file=status)
        started, recording, obs, fault = 0, False, None, None
        live = status.isatty()  # the live status line; logs and tests get the summary only

        def begin(seed: int):
            nonlocal obs, recording
            obs = robot.reset(seed)
            rec.clear()
            recording = True

        def end(keep: bool):
            nonlocal recording
            robot.stop()
            recording = False
            if keep and len(rec):
                ds.append_episode(rec.episode(seed=cfg.seed + started - 1, tier="teleop",
                                              source=f"teleop:{cfg.device}"))
                counts["saved"] += 1
            else:
                counts["discarded"] += 1

        try:
            while True:
                inp = device.poll()
                if "quit" in inp.events:
                    break
                try:
                    for ev in inp.events:
                        if ev == "recover":
                            robot.recover()
                            fault = None
                        elif ev == "start" and not recording:
                            started += 1
                            begin(cfg.seed + started - 1)
                        elif ev in ("save", "discard") and recording:
                            end(keep=ev == "save")
                        elif ev == "rerecord" and recording:
                            end(keep=False)
                            begin(cfg.seed + started - 1)
                except SafetyFault as err:  # e.g. start while a fault is latched: show it, wait for 'c'
                    fault = str(err)
                if recording and not inp.events and not fault:
                    try:
                        rec.add(obs, robot.send(info.to_si(inp.action)))
                        counts["steps"] += 1
                        obs = robot.observe()  # a broken reading is a fault too: shown, and recording pauses
                    except SafetyFault as err:
                        fault = str(err)
                    else:
                        if len(rec) >= max_steps:
                            end(keep=True)
                if live:
                    state = "REC " if recording else "idle"
                    success = "" if obs is None or obs.success is None else f" success {int(obs.success)}"
                    print(f"\r{state} saved {counts['saved']} discarded {counts['discarded']} step {len(rec):4d}"
                          f"{success} overruns {rate.overruns}" + (f" FAULT: {fault} (c clears)" if fault else "")
                          + "\x1b[K", end="", file=status, flush=True)
                rate.sleep()
        finally:
            if recording:
                robot.stop()
                log.info("quit while recording: the unsaved episode (%d steps) was dropped", len(rec))
            device.close()
            if live:
                print(file=status)
    counts["overruns"] = rate.overruns
    counts["episodes_in_dataset"] = ds.n_episodes
    print(f"teleop: saved {counts['saved']} episodes to {cfg.out} ({ds.n_episodes} in total)", file=status)
    return counts
