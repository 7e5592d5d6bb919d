"""A local OpenAI-compatible chat-completions server that judges frames by their red pixels.

For tests, benchmarks and dry runs of the VLM labeler without a model: it speaks the real
protocol over HTTP on 127.0.0.1, decodes the images it is sent, writes an RL-VLM-F style
analysis ("the red square covers about 12.3% of the view ...") and answers the labeling call
from that analysis, so two-stage queries really depend on the first stage.

With ``truth`` (image -> true progress in [0, 1], e.g. `TruthTable` of a simulated dataset,
hidden from the client) and ``errors`` (the vlm-like teacher's `VLMErrorModel`), it answers like
a realistic VLM of known accuracy: the `vlm` labeler's whole code path is then measured against
ground truth. Per-request draws come from the request's images, so a repeated question gets the
same answer (like temperature 0). Faults are injected
per request by a callable (429 with Retry-After, 500, slow answers, garbage text, empty replies,
replies cut off at max_tokens, dropped connections), and every request is recorded.

    with MockVLM(latency=0.3) as server:     # server.url -> http://127.0.0.1:PORT/v1
        ...
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np

from robot_pref.feedback.teacher import VLMErrorModel, key_uniforms

GARBAGE = "I am not able to compare these pictures, but here is a poem about robots instead."


def red_fraction(frame: np.ndarray) -> float:
    f = frame.astype(np.int16)
    return float(np.mean((f[..., 0] > 150) & (f[..., 1] < 100) & (f[..., 2] < 100)))


@dataclass
class Request:
    t: float  # arrival time (time.monotonic)
    kind: str  # "analysis" | "label" | "single" | "progress"
    query: str  # hash of what identifies the question (the images, or the pasted analysis)
    attempt: int  # how many times this exact request arrived before
    fault: str | None
    authorization: str


def frame_digest(frame: np.ndarray) -> str:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    return hashlib.sha256(repr(frame.shape).encode() + frame.tobytes()).hexdigest()


class TruthTable:
    """Hidden ground truth of a simulated dataset: a frame's pixels -> its true reward normalised to
    [0, 1] by the dataset's reward range (frames that look alike share their mean reward)."""

    def __init__(self, dataset, frame_key: str):
        if not dataset.has_ground_truth("reward"):
            raise ValueError(f"{dataset.path} has no ground-truth reward to answer from; use a simulated dataset")
        reward = dataset.ground_truth("reward").astype(np.float64)
        reward = (reward - reward.min()) / (np.ptp(reward) or 1.0)
        sums: dict[str, list[float]] = {}
        for s in range(0, dataset.n_frames, 1024):
            idx = np.arange(s, min(s + 1024, dataset.n_frames))
            for i, f in zip(idx, dataset.get(f"frames/{frame_key}", idx)):
                sums.setdefault(frame_digest(f), []).append(reward[i])
        self.progress = {k: float(np.mean(v)) for k, v in sums.items()}

    def __call__(self, frame: np.ndarray) -> float:
        try:
            return self.progress[frame_digest(frame)]
        except KeyError:
            raise KeyError("the mock VLM was sent a frame that is not in its dataset (resized or JPEG frames "
                           "change the pixels: use --vlm.image-format png and --vlm.image-size 0)") from None


class MockVLM:
    """``faults(request) -> None | "429" | "500" | "slow" | "garbage" | "empty" | "truncated" | "drop"``
    picks a fault per request ("truncated": the first half of the reply, finish_reason "length").
    ``truth`` + ``errors``: answer from hidden true progress through the VLM error model."""

    def __init__(self, latency: float = 0.0, faults: Callable[[Request], str | None] | None = None,
                 retry_after: str = "1", slow_s: float = 5.0, api_key: str | None = None, tie_margin: float = 0.002,
                 truth: Callable[[np.ndarray], float] | None = None, errors: VLMErrorModel | None = None,
                 seed: int = 0, progress_noise: float = 0.0, port: int = 0):
        if errors is not None and truth is None:
            raise ValueError("an error model needs the true progress of each image: pass truth=TruthTable(ds, key)")
        self.latency, self.faults, self.retry_after, self.slow_s = latency, faults, retry_after, slow_s
        self.api_key, self.tie_margin = api_key, tie_margin
        self.truth, self.errors, self.seed, self.progress_noise = truth, errors, seed, progress_noise
        self.port = port  # 0: any free port
        self.requests: list[Request] = []  # authorised requests, in arrival order
        self.rejected = 0  # requests refused for a wrong API key
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> "MockVLM":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "MockVLM":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()  # headers and body go out in separate writes: without NODELAY, Nagle's
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # algorithm adds ~40 ms

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    # ------------------------------------------------------------------ the model
    def draws(self, frames: list[np.ndarray], n: int) -> tuple[float, ...]:
        """``n`` U[0, 1) numbers fixed by the seed and the images (the same question, the same answer)."""
        key = hashlib.sha256(f"{self.seed}:".encode() + "".join(frame_digest(f) for f in frames).encode()).hexdigest()
        return tuple(float(u[0]) for u in key_uniforms([key], n))

    def judge(self, frames: list[np.ndarray]) -> tuple[str, str]:
        """Analysis text and the single-line answer for two frames, or two equal-length clips (the first
        half of the images and the second; a clip's progress is its frames' mean, as a segment return)."""
        n = len(frames) // 2
        if self.truth is None:
            p1, p2 = (float(np.mean([red_fraction(f) for f in side])) for side in (frames[:n], frames[n:]))
            answer = "-1" if abs(p1 - p2) <= self.tie_margin else "1" if p2 > p1 else "0"
            shown = [f"a plain scene with a red square covering about {100 * p:.1f}% of the view" for p in (p1, p2)]
        else:
            p1, p2 = (float(np.mean([self.truth(f) for f in side])) for side in (frames[:n], frames[n:]))
            if self.errors is None:
                answer = "-1" if p1 == p2 else "1" if p2 > p1 else "0"
            else:
                answer = str(int(self.errors.answer([p1], [p2], *([u] for u in self.draws(frames, 3)))[0]))
            shown = [f"the task about {100 * p:.1f}% complete" for p in (p1, p2)]
        verdict = {"-1": "There is no visible difference between the two images in terms of the goal.",
                   "1": "Image 2 is closer to achieving the goal.", "0": "Image 1 is closer to achieving the goal."}
        analysis = f"1. Image 1 shows {shown[0]}.\n2. Image 2 shows {shown[1]}.\n3. {verdict[answer]}"
        return analysis, answer

    def progress(self, frames: list[np.ndarray]) -> str:
        """A progress (GVL) reply: 'Frame j: p%' per frame, true progress plus N(0, progress_noise) percent
        (without ``truth``: the red share of the view), clipped to 0..100."""
        p = np.asarray([self.truth(f) if self.truth is not None else red_fraction(f) for f in frames]) * 100.0
        if self.progress_noise:
            seed = int(hashlib.sha256(f"{self.seed}:".encode() + "".join(frame_digest(f) for f in frames).encode())
                       .hexdigest()[:16], 16)
            p = np.clip(p + np.random.default_rng(seed).normal(0.0, self.progress_noise, len(p)), 0.0, 100.0)
        return "\n".join(f"Frame {j + 1}: {v:.1f}%" for j, v in enumerate(p))

    @staticmethod
    def answer_from_analysis(text: str) -> str:
        if "Image 2 is closer" in text:
            return "1"
        if "Image 1 is closer" in text:
            return "0"
        return "-1" if "no visible difference" in text else "I cannot tell."

    # ------------------------------------------------------------------ HTTP
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        if not h.path.rstrip("/").endswith("/chat/completions"):
            return self._send(h, 404, {"error": {"message": f"no route {h.path}"}})
        if self.api_key is not None and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            with self._lock:
                self.rejected += 1
            return self._send(h, 401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
        req = json.loads(body)
        content = req["messages"][-1]["content"]
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        images = [p["image_url"]["url"] for p in parts if p.get("type") == "image_url"]
        text = "\n".join(p["text"] for p in parts if p.get("type") == "text")
        if images:
            kind = ("progress" if "task completion percentage" in text else
                    "single" if "Reply a single line" in text else "analysis")
            query = hashlib.sha256("".join(images).encode()).hexdigest()
        else:
            kind = "label"
            query = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            attempt = self._seen.get(kind + query, 0)
            self._seen[kind + query] = attempt + 1
            record = Request(time.monotonic(), kind, query, attempt, None, h.headers.get("Authorization", ""))
            record.fault = self.faults(record) if self.faults else None
            self.requests.append(record)
        fault = record.fault
        finish = "stop"
        if fault == "garbage":
            reply = GARBAGE
        elif fault == "empty":
            reply = ""
        elif kind == "label":
            reply = self.answer_from_analysis(text)
        else:
            try:
                if kind == "progress":
                    reply = self.progress([decode(u) for u in images])
                else:
                    analysis, answer = self.judge([decode(u) for u in images])
                    reply = answer if kind == "single" else analysis
            except KeyError as err:  # a frame the truth table lacks: say why (a 400 is not retried)
                return self._send(h, 400, {"error": {"message": err.args[0], "type": "invalid_request_error"}})
        if fault == "truncated":
            reply, finish = reply[: len(reply) // 2], "length"
        time.sleep(max(0.0, self.latency - (time.monotonic() - record.t)))  # latency = arrival to answer
        if fault == "429":
            return self._send(h, 429, {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                              {"Retry-After": self.retry_after})
        if fault == "500":
            return self._send(h, 500, {"error": {"message": "internal error", "type": "server_error"}})
        if fault == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "slow":
            time.sleep(self.slow_s)
        prompt_tokens = len(re.findall(r"\w+", text)) + 85 * len(images)
        completion_tokens = len(re.findall(r"\w+|-1", reply))
        self._send(h, 200, {
            "id": f"chatcmpl-{query[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": req.get("model", "mock"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout) first
            h.close_connection = True


def decode(data_url: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def main() -> None:
    """``python -m robot_pref.feedback.mock_server --latency 0.3 [--dataset X.zarr --camera agentview_64]``:
    serve until interrupted (prints the URL); with a simulated dataset, answer from its hidden true
    progress through the default vlm-like error model (progress replies: ``--progress-noise`` percent),
    as `label-audit --mock` does, so `robot-pref label` can be tried against known truth by hand."""
    import argparse

    p = argparse.ArgumentParser(description="local OpenAI-compatible server judging frames by red pixels, or by "
                                            "a simulated dataset's hidden true progress")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free one); the vlm cache key "
                                                       "holds the URL, so a fixed port lets a rerun reuse its answers")
    p.add_argument("--dataset", default="", help="simulated dataset whose ground truth the answers come from")
    p.add_argument("--camera", default="", help="its frame key (with --dataset)")
    p.add_argument("--progress-noise", type=float, default=5.0, help="progress replies: N(0, this) percent noise")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-question error draws")
    args = p.parse_args()
    truth = errors = None
    if args.dataset:
        from robot_pref.data.dataset import TrajectoryDataset

        if not args.camera:
            p.error("--dataset needs --camera (a frame key of it, e.g. agentview_64)")
        truth, errors = TruthTable(TrajectoryDataset.open(args.dataset), args.camera), VLMErrorModel()
    with MockVLM(latency=args.latency, truth=truth, errors=errors,
                 progress_noise=args.progress_noise if truth is not None else 0.0, seed=args.seed,
                 port=args.port) as server:
        print(server.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
