"""Round-trip latency and sustained command rate through the robot server on loopback vs in-process.

    .venv/bin/python tools/bench_hardware.py [--steps 300] [--json bench_hardware.json]

Each backend (the kinematic `fake` arm: pure overhead; `sim:lift`: the real work) runs behind the same
safety layer, once in-process and once through `RobotServer` + `RemoteRobot` on 127.0.0.1. Per call we
time ping, observe (no cameras), observe with one 84x84 camera, and send (safety + one control step);
then a control step (observe + send) back to back for the sustained rate, and a loop paced at the
task's 20 Hz for its period jitter, through a server with the default safety (rate limit, 150 ms
watchdog): a watchdog fault there would mean the loop did not hold. Ratios are against in-process
measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from robot_pref.hardware.config import SafetyConfig  # noqa: E402
from robot_pref.hardware.record import Rate, open_robot  # noqa: E402
from robot_pref.hardware.server import RobotServer  # noqa: E402

CMD = np.array([0.002, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])


def interleaved(calls: dict[str, callable], n: int) -> dict[str, np.ndarray]:
    """Time each side's call alternately, so load from other processes hits both sides alike."""
    out = {k: np.empty(n) for k in calls}
    for i in range(n):
        for k, fn in calls.items():
            t = time.perf_counter()
            fn()
            out[k][i] = time.perf_counter() - t
    return out


def stats(ms: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(ms)), "p99": float(np.percentile(ms, 99))}


def paced_periods(robot, n: int) -> np.ndarray:
    robot.reset(0)
    rate, ticks = Rate(robot.info.control_freq), []
    for _ in range(n):
        robot.observe(frames=False)
        robot.send(CMD)
        rate.sleep()
        ticks.append(time.perf_counter())
    robot.stop()
    return np.diff(ticks)


def measure(local, remote, steps: int) -> dict[str, dict[str, np.ndarray]]:
    """{call: {"local": seconds, "remote": seconds}}"""
    res = {"ping": {"remote": interleaved({"remote": remote.ping}, steps)["remote"]}}
    both = (local, remote)
    for name, call in (("observe", lambda r: r.observe(frames=False)), ("observe+84px", lambda r: r.observe()),
                       ("send", lambda r: r.send(CMD)),
                       ("step (observe+send)", lambda r: (r.observe(frames=False), r.send(CMD)))):
        for r in both:
            r.reset(0)
        res[name] = interleaved({"local": lambda: call(local), "remote": lambda: call(remote)}, steps)
        for r in both:
            r.stop()  # at rest: the watchdog is disarmed while the next block sets up
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="calls per measurement")
    ap.add_argument("--json", default="", help="also write the numbers here")
    args = ap.parse_args()
    # back to back, the rate limit would only shrink the commands; interleaving puts the in-process call
    # between two remote ones, so the remote watchdog gets room here (the paced loop below runs the defaults)
    fast = SafetyConfig(rate_limit=False, watchdog_periods=20)
    rows, results = [], {}
    for backend in ("fake", "sim:lift"):
        local = open_robot(backend, cameras=("agentview",), size=84, safety=fast, watchdog=False)
        served = open_robot(backend, cameras=("agentview",), size=84, safety=fast, watchdog=True)
        with local, RobotServer(served, port=0) as server, open_robot(f"remote:127.0.0.1:{server.port}") as remote:
            res = measure(local, remote, args.steps)
            n = max(args.steps // 3, 20)
            res["20 Hz loop period"] = {"local": paced_periods(local, n)}
        served = open_robot(backend, cameras=("agentview",), size=84, watchdog=True)  # production safety
        with RobotServer(served, port=0) as server, open_robot(f"remote:127.0.0.1:{server.port}") as remote:
            res["20 Hz loop period"]["remote"] = paced_periods(remote, n)
            results[f"{backend}/watchdog_fault"] = server.robot.fault
        for name, sides in res.items():
            b = sides.get("local")
            b = None if b is None else b * 1e3
            r = sides["remote"] * 1e3
            rows.append((backend, name, b, r))
            results[f"{backend}/{name}"] = {"in_process_ms": None if b is None else stats(b), "remote_ms": stats(r)}
    print(f"{'backend':<9} {'call':<20} {'in-proc med':>11} {'p99':>7} {'remote med':>11} {'p99':>7} "
          f"{'ratio':>6} {'max rate':>9}")
    for backend, name, b, r in rows:
        bm = f"{np.median(b):11.3f} {np.percentile(b, 99):7.3f}" if b is not None else f"{'-':>11} {'-':>7}"
        ratio = f"{np.median(r) / np.median(b):6.2f}" if b is not None else f"{'-':>6}"
        hz = f"{1e3 / np.median(r):7.0f}Hz" if "loop" not in name else f"{'(paced)':>9}"
        print(f"{backend:<9} {name:<20} {bm} {np.median(r):11.3f} {np.percentile(r, 99):7.3f} {ratio} {hz}")
    for backend in ("fake", "sim:lift"):
        step = results[f"{backend}/step (observe+send)"]
        loop = results[f"{backend}/20 Hz loop period"]["remote_ms"]
        overhead = step["remote_ms"]["median"] - step["in_process_ms"]["median"]
        print(f"{backend}: remote control step median {step['remote_ms']['median']:.2f} ms (wire overhead "
              f"{overhead:+.2f} ms) = {50 / step['remote_ms']['median']:.0f}x margin on the 50 ms period, p99 "
              f"{step['remote_ms']['p99']:.2f} ms; paced remote loop period median {loop['median']:.2f} ms, "
              f"p99 {loop['p99']:.2f} ms; watchdog faults: {results[f'{backend}/watchdog_fault']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
