"""Labeling throughput: VLM labels/s vs concurrency against a local server, CLIP frames/s batched vs single.

VLM: the local OpenAI-compatible mock server answers every request after an injected latency
(300 ms); single-stage prompts, so one request per label and the ideal rate is
concurrency / latency. Measured in-process (the async labeler alone) and through a Ray client
actor (the path `robot-pref label` takes). CLIP: the same frames scored in batches and one at a
time, by a tiny random-init model (``--clip-model ViT-B-32`` for the real architecture, still no
download).

    .venv/bin/python tools/bench_label.py [--latency 0.3] [--concurrency 1,8,32] [--clip-model tiny]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from robot_pref.feedback.clip import ClipScorer, pick_device
from robot_pref.feedback.config import ClipConfig, VLMConfig
from robot_pref.feedback.labelers import Query, Secret
from robot_pref.feedback.synthetic import GOAL, make_square_dataset
from robot_pref.feedback.vlm import VLMLabeler

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def queries(frames: np.ndarray, n: int, rng) -> list[Query]:
    a, b = rng.integers(0, len(frames), n), rng.integers(0, len(frames), n)
    return [Query(uuid.uuid4().hex, int(x), int(y), frames[x], frames[y]) for x, y in zip(a, b)]


@contextlib.contextmanager
def server_process(latency: float):
    """The mock server in its own process, so its CPU time does not share the client's GIL."""
    proc = subprocess.Popen([sys.executable, "-m", "robot_pref.feedback.mock_server", "--latency", str(latency)],
                            stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait()


def bench_vlm(frames, url: str, latency: float, levels: list[int], mode: str, n_actors: int = 1) -> list[dict]:
    """``mode``: "in-process" (the async labeler alone) or "ray" (``n_actors`` client actors sharing the
    concurrency, one query per actor call: the path `robot-pref label` takes)."""
    import ray

    from robot_pref.feedback.run import LabelerActor, run_remote

    rows = []
    rng = np.random.default_rng(0)
    for c in levels:
        cfg = VLMConfig(base_url=url, model="mock", prompt="single-stage", concurrency=c // n_actors)
        qs, warm = queries(frames, max(8, 8 * c), rng), queries(frames, c, rng)
        cpu = None
        if mode == "ray":
            actors = [ray.remote(LabelerActor).options(**VLMLabeler.actor_options(cfg, n_actors, 0)).remote(
                "vlm", cfg, GOAL, {"api_key": Secret("bench"), "workers": n_actors}) for _ in range(n_actors)]
            ray.get([a.label.remote(warm[i::n_actors]) for i, a in enumerate(actors)])  # start-up not measured
            t = time.perf_counter()
            answers = [a for batch in run_remote(actors, iter([[q] for q in qs]), 2 * c) for a in batch]
            wall = time.perf_counter() - t
            for a in actors:
                ray.kill(a)
        else:
            lab = VLMLabeler(cfg, GOAL, api_key=Secret("bench"))

            async def go():
                await lab.label(warm)
                t, cpu = time.perf_counter(), time.process_time()
                out = await lab.label(qs)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                await lab.aclose()
                return out, wall, cpu

            answers, wall, cpu = asyncio.run(go())
        ok = sum(a.status != "failed" for a in answers)
        rate, ideal = ok / wall, c / latency
        rows.append({"path": mode if mode != "ray" else f"ray {n_actors} actor{'s' * (n_actors > 1)}",
                     "concurrency": c if n_actors == 1 else f"{n_actors}x{c // n_actors}", "labels": ok,
                     "wall_s": round(wall, 3), "labels_per_s": round(rate, 2), "ideal_per_s": round(ideal, 2),
                     "ratio": round(rate / ideal, 3),
                     "overhead_ms": round(1000 * (c * wall / ok - latency), 1),  # per request, beyond the latency
                     "client_cpu_ms": "-" if cpu is None else round(1000 * cpu / ok, 2)})
    return rows


def bench_clip(frames, model: str, n: int, batch: int) -> list[dict]:
    import torch

    torch.set_num_threads(1)  # as in a 1-CPU Ray actor (Ray sets OMP_NUM_THREADS=1 there)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ClipConfig(model=model, pretrained="", batch_size=batch)
        if model == "tiny":
            path = Path(tmp) / "robot-pref-tiny-clip.json"
            path.write_text(json.dumps(TINY))
            cfg = ClipConfig(model="robot-pref-tiny-clip", pretrained="", model_config=str(path), batch_size=batch)
        scorer = ClipScorer(cfg, GOAL, device=pick_device("auto"))
        x = frames[np.arange(n) % len(frames)]
        scorer.score(x[:batch])  # warm-up
        t = time.perf_counter()
        scorer.score(x)
        batched = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(n):
            scorer.score(x[i : i + 1])
        single = time.perf_counter() - t
    return [{"model": model, "mode": "one at a time", "frames": n, "frames_per_s": round(n / single, 1), "ratio": 1.0},
            {"model": model, "mode": f"batched ({batch})", "frames": n, "frames_per_s": round(n / batched, 1),
             "ratio": round(single / batched, 2)}]


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.rjust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).rjust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.3)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray actor rows")
    p.add_argument("--clip-model", default="tiny")
    p.add_argument("--clip-frames", type=int, default=256)
    p.add_argument("--clip-batch", type=int, default=64)
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        ds = make_square_dataset(Path(tmp) / "sq.zarr", episodes=8, length=32, size=84)
        frames = ds.get("frames/agentview_84")
    with server_process(args.latency) as url:
        vlm = bench_vlm(frames, url, args.latency, levels, "in-process")
        if not args.no_ray:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            vlm += bench_vlm(frames, url, args.latency, levels, "ray")
            # one Python client tops out near 100 requests/s: --workers splits the load over processes
            vlm += bench_vlm(frames, url, args.latency, [max(levels)], "ray", n_actors=2)
            ray.shutdown()
    print(f"VLM labels/s, single-stage, {args.latency * 1000:.0f} ms injected latency "
          f"(ratio = labels/s / (concurrency / latency), target >= 0.9; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs)")
    print(table(vlm))
    clip = bench_clip(frames, args.clip_model, args.clip_frames, args.clip_batch)
    print(f"\nCLIP frames/s on {'cuda' if pick_device('auto') == 'cuda' else 'cpu (1 thread)'} "
          f"(84x84 frames; ratio vs one at a time)")
    print(table(clip))
    if args.json:
        Path(args.json).write_text(json.dumps({"vlm": vlm, "clip": clip}, indent=2))


if __name__ == "__main__":
    main()
