"""The robot-side server: any backend, behind the safety layer and the watchdog, on a ZeroMQ socket.

One ROUTER socket, one thread answering requests in order (the arm never sees two commands at once).
It binds to loopback unless told otherwise; binding anywhere else requires a shared token that every
request must carry. The token keeps stray clients off the arm on a trusted network; it is sent in the
clear, so across untrusted networks tunnel the port (ssh -L) instead. An emergency stop is released only
here, on the robot side (`console`, or `SafeRobot.clear_estop`): no request can release it.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Iterable

import numpy as np
import zmq

from robot_pref.hardware.interface import Robot, SafetyFault
from robot_pref.hardware.safety import SafeRobot, SafetyConfig
from robot_pref.hardware.wire import PROTOCOL, WireError, pack, parse_request

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_REQUEST_BYTES = 1 << 20  # requests are small; zmq drops a peer that sends more


class RobotServer:
    """Serve ``robot`` at tcp://host:port (port 0 picks a free one; see ``.port``)."""

    def __init__(self, robot: Robot, host: str = "127.0.0.1", port: int = 5555, token: str | None = None,
                 safety: SafetyConfig | None = None):
        if host not in LOOPBACK and not token:
            raise ValueError(f"binding the robot server to {host!r} exposes the arm to the network; set a shared "
                             "token clients must send (export ROBOT_PREF_TOKEN=SECRET; --token also works but "
                             "shows in ps), or bind 127.0.0.1")
        self.robot = robot if isinstance(robot, SafeRobot) else SafeRobot(robot, safety, watchdog=True)
        self.token = token
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        addr = f"tcp://{'[' + host + ']' if ':' in host else host}"
        if ":" in host:
            self._sock.setsockopt(zmq.IPV6, 1)
        if port == 0:
            port = self._sock.bind_to_random_port(addr)
        else:
            self._sock.bind(f"{addr}:{port}")
        self.port = port
        self.host = host
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests = 0

    # ------------------------------------------------------------------ lifetime
    def __enter__(self) -> "RobotServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "RobotServer":
        """Connect the robot and answer requests on a background thread."""
        self.robot.connect()
        self._thread = threading.Thread(target=self._loop, name="robot-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Connect the robot and answer requests on this thread until `close` (or Ctrl-C)."""
        self.robot.connect()
        try:
            self._loop()
        finally:
            self._shutdown()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._shutdown()

    def _shutdown(self) -> None:
        self._sock.close()
        self.robot.disconnect()

    def _loop(self) -> None:
        log.info("robot server for %s on %s:%d", self.robot.info.name, self.host, self.port)
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            frames = self._sock.recv_multipart()
            reply = self.handle(frames[-1])
            try:
                data = pack(reply)
            except TypeError as err:  # a backend returned something the wire cannot carry
                data = pack(self._error(reply["id"], "error", f"reply cannot be sent: {err}"))
            self._sock.send_multipart(frames[:-1] + [data])  # identity (+ REQ delimiter) back

    # ------------------------------------------------------------------ requests
    def handle(self, payload: bytes) -> dict:
        """Answer one request; never raises (a bad request gets an error reply and the server goes on)."""
        self.requests += 1
        try:
            msg = parse_request(payload)
        except WireError as err:
            return self._error(-1, "malformed", str(err))
        rid = msg["id"]
        if self.token and not hmac.compare_digest(str(msg.get("token") or "").encode(), self.token.encode()):
            return self._error(rid, "unauthorized", "wrong or missing token; set ROBOT_PREF_TOKEN to the server's")
        try:
            result = self._dispatch(msg["op"], msg.get("args", {}))
        except SafetyFault as err:
            return {**self._error(rid, "fault", str(err)), "reason": err.reason}
        except (TypeError, ValueError, KeyError) as err:
            return self._error(rid, "invalid", f"{msg['op']}: {err}")
        except Exception as err:  # a backend failure must not take the server down
            log.exception("request %s failed", msg["op"])
            return self._error(rid, "error", f"{msg['op']}: {type(err).__name__}: {err}")
        return {"v": PROTOCOL, "id": rid, "ok": True, "result": result, "fault": self.robot.fault}

    def console(self, lines: Iterable[str], out=None) -> None:
        """The operator's console on the robot PC: ``release`` releases an emergency stop (and recovers)."""
        for line in lines:
            if line.strip() != "release":
                continue
            try:
                self.robot.clear_estop()
                print("emergency stop released; the arm accepts commands again", file=out, flush=True)
            except Exception as err:  # e.g. the backend's own stop is still engaged: say so, keep listening
                print(f"release failed: {err}", file=out, flush=True)

    def _error(self, rid: int, kind: str, error: str) -> dict:
        return {"v": PROTOCOL, "id": rid, "ok": False, "kind": kind, "error": error, "fault": self.robot.fault}

    def _dispatch(self, op: str, args: dict):
        robot = self.robot
        if op == "info":
            return robot.info.to_dict()
        if op == "observe":
            return robot.observe(frames=bool(args.get("frames", True))).to_dict()
        if op == "send":
            return np.asarray(robot.send(args["command"], args.get("mode", "ee_delta")), np.float64)
        if op == "reset":
            seed = args.get("seed")
            return robot.reset(None if seed is None else int(seed)).to_dict()
        if op == "ping":
            return None
        getattr(robot, op)()  # home, stop, recover, estop
        return None
