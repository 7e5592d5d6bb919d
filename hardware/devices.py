"""Teleop devices: each `poll()` returns one control tick's normalised ee_delta action and any events.

Actions are the policy's units (7 values in [-1, 1]: dx dy dz drx dry drz gripper, -1 open); events are
``start save discard rerecord recover quit``.

- ``keyboard``: a terminal in cbreak mode (no echo, one key at a time, Ctrl-C still works) with no
  display, so it runs over ssh on a headless robot PC. A terminal repeats a held key (~30 Hz after a
  delay), so a motion key counts as held for ``hold_s`` after its last repeat.
- ``spacemouse``: a 3Dconnexion SpaceMouse read through hidapi (`pip install robot_pref[spacemouse]`);
  left button toggles the gripper, right button starts / saves; keyboard events work alongside.
- ``scripted``: plays a script such as ``"start; move 0,0,-0.5,0,0,0,-1 x10; save; quit"`` (``wait N``
  idles N ticks), which makes the whole teleop tool testable without a person.
"""

from __future__ import annotations

import os
import select
import sys
import time
from dataclasses import dataclass, field

import numpy as np

EVENTS = ("start", "save", "discard", "rerecord", "recover", "quit")
KEY_EVENTS = {"b": "start", "\r": "save", "\n": "save", "x": "discard", "t": "rerecord", "c": "recover",
              "q": "quit"}
KEY_MOTION = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
              "u": (3, 1), "o": (3, -1), "i": (4, 1), "k": (4, -1), "j": (5, 1), "l": (5, -1)}
KEYBOARD_HELP = ("keys: b start | Enter save | x discard | t re-record | c clear fault | q quit || "
                 "w/s x  a/d y  r/f z  u/o roll  i/k pitch  j/l yaw  space gripper")


@dataclass
class DeviceInput:
    action: np.ndarray  # (7,) normalised ee_delta + gripper
    events: list[str] = field(default_factory=list)


class KeyboardDevice:
    """Keys from a terminal (or any readable file descriptor, e.g. a pipe in tests)."""

    help = KEYBOARD_HELP

    def __init__(self, fd: int | None = None, speed: float = 0.5, hold_s: float = 0.15):
        self.fd = sys.stdin.fileno() if fd is None else fd
        self.speed, self.hold_s = speed, hold_s
        self.gripper = -1.0
        self._held: dict[int, tuple[int, float]] = {}
        self._saved = None
        if os.isatty(self.fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)

    def _keys(self) -> str:
        chars = []
        while select.select([self.fd], [], [], 0)[0]:
            data = os.read(self.fd, 64)
            if not data:
                break
            chars.append(data.decode(errors="ignore"))
        return "".join(chars)

    def poll(self) -> DeviceInput:
        now = time.monotonic()
        events = []
        for ch in self._keys():
            if ch in KEY_EVENTS:
                events.append(KEY_EVENTS[ch])
            elif ch == " ":
                self.gripper = -self.gripper
            elif ch.lower() in KEY_MOTION:
                axis, sign = KEY_MOTION[ch.lower()]
                self._held[axis] = (sign, now)
        action = np.zeros(7)
        for axis, (sign, t) in list(self._held.items()):
            if now - t <= self.hold_s:
                action[axis] = sign * self.speed
            else:
                del self._held[axis]
        action[6] = self.gripper
        return DeviceInput(action, events)

    def close(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


class SpaceMouseDevice:
    """6-DoF input from a 3Dconnexion SpaceMouse over HID (hidapi); axis signs follow robosuite's mapping."""

    VENDOR = 0x256F  # 3Dconnexion
    help = "SpaceMouse: push/twist to move | left button gripper | right button start/save || " + KEYBOARD_HELP

    def __init__(self, scale: float = 350.0, keyboard: KeyboardDevice | None = None):
        try:
            import hid
        except ImportError as err:
            raise ImportError("the SpaceMouse needs hidapi: pip install 'robot_pref[spacemouse]' (or hidapi)") from err
        found = [d for d in hid.enumerate() if d["vendor_id"] == self.VENDOR]
        if not found:
            raise OSError("no 3Dconnexion SpaceMouse found over HID; plug it in and check /dev/hidraw* permissions "
                          "(udev rule: SUBSYSTEM==\"hidraw\", ATTRS{idVendor}==\"256f\", MODE=\"0666\")")
        self._dev = hid.device()
        self._dev.open(found[0]["vendor_id"], found[0]["product_id"])
        self._dev.set_nonblocking(1)
        self.scale = scale
        self.motion = np.zeros(6)
        self.gripper = -1.0
        self._buttons = 0
        self._recording = False
        self.keyboard = keyboard

    @staticmethod
    def _axes(data: list[int], start: int) -> np.ndarray:
        raw = bytes(data[start:start + 6])
        return np.frombuffer(raw, "<i2").astype(float) if len(raw) == 6 else np.zeros(3)

    def poll(self) -> DeviceInput:
        events = self.keyboard.poll().events if self.keyboard else []
        while True:
            data = self._dev.read(13)
            if not data:
                break
            if data[0] == 1:  # translation (and, on newer models, rotation in the same report)
                x, y, z = self._axes(data, 1) / self.scale
                self.motion[:3] = (-y, -x, -z)
                if len(data) >= 13:
                    rx, ry, rz = self._axes(data, 7) / self.scale
                    self.motion[3:] = (-ry, -rx, -rz)
            elif data[0] == 2:
                rx, ry, rz = self._axes(data, 1) / self.scale
                self.motion[3:] = (-ry, -rx, -rz)
            elif data[0] == 3:
                pressed = data[1] & ~self._buttons
                self._buttons = data[1]
                if pressed & 1:
                    self.gripper = -self.gripper
                if pressed & 2:
                    events.append("save" if self._recording else "start")
                    self._recording = not self._recording
        return DeviceInput(np.r_[np.clip(self.motion, -1, 1), self.gripper], events)

    def close(self) -> None:
        self._dev.close()
        if self.keyboard:
            self.keyboard.close()


class ScriptedDevice:
    """Plays a script of events and moves, one tick per poll; ends with ``quit``."""

    help = "scripted device"

    def __init__(self, script: str):
        self.ticks: list[DeviceInput] = []
        for cmd in filter(None, (c.strip() for c in script.split(";"))):
            word, _, rest = cmd.partition(" ")
            if word in EVENTS:
                self.ticks.append(DeviceInput(np.zeros(7), [word]))
            elif word in ("move", "wait"):
                action, _, times = rest.strip().rpartition(" x") if word == "move" else ("", "", rest)
                vec = np.zeros(7) if word == "wait" else np.array([float(v) for v in action.split(",")])
                if vec.shape != (7,) or not times.strip().isdigit():
                    raise ValueError(f"bad script step {cmd!r}: write 'move a1,...,a7 xN' or 'wait N'")
                self.ticks += [DeviceInput(vec.copy()) for _ in range(int(times))]
            else:
                raise ValueError(f"bad script step {cmd!r}: use {list(EVENTS)}, 'move a1,...,a7 xN' or 'wait N'")
        self.ticks.reverse()

    def poll(self) -> DeviceInput:
        return self.ticks.pop() if self.ticks else DeviceInput(np.zeros(7), ["quit"])

    def close(self) -> None:
        pass


def make_device(name: str, script: str = "", speed: float = 0.5):
    if name == "keyboard":
        return KeyboardDevice(speed=speed)
    if name == "spacemouse":
        return SpaceMouseDevice(keyboard=KeyboardDevice() if sys.stdin.isatty() else None)
    if name == "scripted":
        return ScriptedDevice(script)
    raise ValueError(f"unknown teleop device {name!r}; use keyboard, spacemouse or scripted")
