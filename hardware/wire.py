"""The wire format between `RemoteRobot` and `RobotServer`: msgpack over ZeroMQ, never pickle.

Request  ``{"v": 1, "id": int, "token": str | None, "op": str, "args": {...}}``
Reply    ``{"v": 1, "id": int, "ok": bool, "result": ..., "error": str, "kind": str, "fault": str | None}``
         (a ``"fault"`` error also carries the fault's short ``"reason"``)

numpy arrays travel as msgpack extension type 1: a msgpack header ``[dtype, shape]`` followed by the raw
bytes. Only plain numeric dtypes decode; anything else is a malformed message, so a peer can never make
the other side build arbitrary objects.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

PROTOCOL = 1
NDARRAY = 1
DTYPES = {"<f4", "<f8", "|u1", "|i1", "<i4", "<i8", "|b1"}
OPS = ("info", "observe", "send", "reset", "home", "stop", "recover", "estop", "ping")


class WireError(ValueError):
    """A message that does not follow the protocol."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.str not in DTYPES:
            raise TypeError(f"cannot send arrays of dtype {arr.dtype}; use one of {sorted(DTYPES)}")
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(NDARRAY, header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot send {type(obj).__name__} over the wire")


def _decode(code: int, data: bytes) -> np.ndarray:
    if code != NDARRAY:
        raise WireError(f"unknown msgpack extension type {code}")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(data))
    unpacker.feed(data)
    try:
        dtype, shape = next(unpacker)
    except (StopIteration, ValueError, TypeError) as err:
        raise WireError(f"bad ndarray header: {err}") from err
    if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise WireError(f"bad ndarray header dtype={dtype!r} shape={shape!r}")
    body = data[unpacker.tell():]
    need = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
    if len(body) != need:
        raise WireError(f"ndarray {dtype}{tuple(shape)} needs {need} bytes, got {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, ext_hook=_decode, raw=False, strict_map_key=True)
    except WireError:
        raise
    except Exception as err:  # msgpack raises many types on garbage
        raise WireError(f"not a msgpack message ({type(err).__name__}: {err})") from err


def parse_request(data: bytes) -> dict:
    """Decode and check a request's envelope; raises WireError naming what is wrong."""
    msg = unpack(data)
    if not isinstance(msg, dict):
        raise WireError(f"a request must be a map, got {type(msg).__name__}")
    if msg.get("v") != PROTOCOL:
        raise WireError(f"protocol version {msg.get('v')!r} is not {PROTOCOL}; update robot_pref on one side")
    if not isinstance(msg.get("id"), int):
        raise WireError("request has no integer 'id'")
    if msg.get("op") not in OPS:
        raise WireError(f"unknown op {msg.get('op')!r}; ops: {list(OPS)}")
    if not isinstance(msg.get("args", {}), dict):
        raise WireError("'args' must be a map")
    return msg
