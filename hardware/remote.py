"""`remote:HOST:PORT`: the client side of `RobotServer`; the same `Robot` interface over the network.

Safety and the watchdog run on the robot side (in the server), so a client that crashes or loses the
network leaves a stopped arm behind, never a moving one.
"""

from __future__ import annotations

import time

import numpy as np
import zmq

from robot_pref.hardware.interface import Observation, Robot, RobotInfo, SafetyFault
from robot_pref.hardware.wire import PROTOCOL, pack, unpack

MOVE_TIMEOUT_S = 60.0  # reset/home move a real arm slowly to its home pose
ERRORS = {"unauthorized": PermissionError, "invalid": ValueError, "malformed": ValueError}


class RemoteRobot(Robot):
    def __init__(self, host: str = "127.0.0.1", port: int = 5555, token: str | None = None, timeout_s: float = 5.0):
        self.address = f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"
        self.token = token
        self.timeout_s = timeout_s
        self._sock = None
        self._id = 0
        self._fault: str | None = None

    def connect(self) -> "RemoteRobot":
        if self._sock is None:
            self._open()
            self.info = RobotInfo.from_dict(self._call("info"))
        return self

    def _open(self) -> None:
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.address.startswith("tcp://["):
            self._sock.setsockopt(zmq.IPV6, 1)
        self._sock.connect(self.address)

    def disconnect(self) -> None:
        if self._sock is None:
            return
        try:  # leave the arm at rest (the server's watchdog would stop it anyway)
            self._call("stop", timeout_s=min(self.timeout_s, 1.0))
        except (TimeoutError, SafetyFault, RuntimeError):
            pass
        finally:
            self._sock.close()
            self._sock = None

    def _call(self, op: str, timeout_s: float | None = None, **args):
        if self._sock is None:
            raise RuntimeError(f"not connected to {self.address}; use `with RemoteRobot(...) as robot:`")
        self._id += 1
        self._sock.send(pack({"v": PROTOCOL, "id": self._id, "token": self.token, "op": op, "args": args}))
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0 or not self._sock.poll(left_ms):
                self._sock.close()  # drop the pending request; a late reply must not answer the next one
                self._open()
                raise TimeoutError(f"robot server at {self.address} did not answer {op!r} within "
                                   f"{self.timeout_s if timeout_s is None else timeout_s:g} s; is "
                                   "`robot-pref serve` running there?")
            reply = unpack(self._sock.recv())
            if reply.get("id") in (self._id, -1):  # -1: the server could not read our request at all
                break
        self._fault = reply.get("fault")
        if reply.get("ok"):
            return reply.get("result")
        if reply.get("kind") == "fault":
            raise SafetyFault(f"{self.address}: {reply.get('error')}", str(reply.get("reason") or "fault"))
        raise ERRORS.get(reply.get("kind"), RuntimeError)(f"{self.address}: {reply.get('error')}")

    def observe(self, frames: bool = True) -> Observation:
        return Observation.from_dict(self._call("observe", frames=frames))

    def send(self, command: np.ndarray, mode: str = "ee_delta") -> np.ndarray:
        return np.asarray(self._call("send", command=np.asarray(command, np.float64), mode=mode))

    def reset(self, seed: int | None = None) -> Observation:
        return Observation.from_dict(self._call("reset", timeout_s=max(self.timeout_s, MOVE_TIMEOUT_S), seed=seed))

    def home(self) -> None:
        self._call("home", timeout_s=max(self.timeout_s, MOVE_TIMEOUT_S))

    def stop(self) -> None:
        self._call("stop")

    def recover(self) -> None:
        self._call("recover")

    def estop(self) -> None:
        self._call("estop")

    def ping(self) -> None:
        self._call("ping")

    @property
    def fault(self) -> str | None:
        """The server's latched fault as of the last reply."""
        return self._fault
