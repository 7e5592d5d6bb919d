"""`robot-pref teleop`, `robot-pref rollout` and `robot-pref serve` (light: heavy imports run in the commands)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from robot_pref.hardware.config import TOKEN_ENV, RolloutConfig, ServeConfig, TeleopConfig

log = logging.getLogger(__name__)


def token(given: str | None) -> str | None:
    """The server token: ``given`` (--token or a config file) warns, since other users can read it; else the env."""
    if given:
        log.warning("a token given as --token (or in a config file) is readable by other users (ps, shell history); "
                    "export %s=SECRET instead", TOKEN_ENV)
    return given or os.environ.get(TOKEN_ENV)


def _stdin_lines():
    """Lines typed at this terminal (os.read: a daemon thread blocked in sys.stdin would hang exit)."""
    buf = b""
    while chunk := os.read(0, 1024):
        *lines, buf = (buf + chunk).split(b"\n")
        yield from (line.decode(errors="replace") for line in lines)


def serve(cfg: ServeConfig) -> None:
    from robot_pref.hardware.record import open_robot
    from robot_pref.hardware.server import RobotServer

    if cfg.robot.startswith("remote:"):
        raise ValueError("serve wraps a local backend (sim:TASK, fake, ur:IP, franka:IP), not remote:")
    robot = open_robot(cfg.robot, cameras=cfg.cameras, size=cfg.size, safety=cfg.safety, seed=cfg.seed,
                       watchdog=True)
    server = RobotServer(robot, cfg.host, cfg.port, token=token(cfg.token))
    server.robot.connect()  # the slow part (building the sim, reaching the arm) before announcing the port
    print(f"serving {cfg.robot} on tcp://{cfg.host}:{server.port} (Ctrl-C stops; the arm is stopped on exit)",
          flush=True)
    if sys.stdin is not None and sys.stdin.isatty():  # the operator at the robot releases emergency stops
        print("type 'release' + Enter here to release an emergency stop", flush=True)
        threading.Thread(target=server.console, args=(_stdin_lines(),), name="robot-console", daemon=True).start()
    def interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # `kill` stops the arm and closes cleanly, as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def _robot_errors(command: str, func, cfg):
    """Robot-side failures end the command with their message (they name the fix), not a traceback."""
    from robot_pref.hardware.interface import SafetyFault

    try:
        return func(cfg)
    except (SafetyFault, TimeoutError, PermissionError, ImportError, OSError) as err:
        print(f"robot-pref {command}: stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from err


def teleop(cfg: TeleopConfig) -> dict:
    from robot_pref.hardware.teleop import teleop

    token(cfg.token)
    return _robot_errors("teleop", teleop, cfg)


def rollout(cfg: RolloutConfig) -> dict:
    from robot_pref.hardware.rollout import rollout

    token(cfg.token)
    ask = input if sys.stdin is not None and sys.stdin.isatty() else None  # --on-fault stop asks the operator
    return _robot_errors("rollout", lambda c: rollout(c, ask=ask), cfg)


def register(sub) -> None:
    from robot_pref.config import add_command

    add_command(sub, "teleop", TeleopConfig, teleop,
                help="Drive a sim or real arm with a keyboard/SpaceMouse and record episodes into a dataset")
    add_command(sub, "rollout", RolloutConfig, rollout,
                help="Run a trained policy on a sim or real arm (safety on), report success, optionally record")
    add_command(sub, "serve", ServeConfig, serve,
                help="Serve an arm (sim or real) over ZeroMQ with the safety layer and watchdog robot-side")
