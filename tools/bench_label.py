"""Labeling throughput: VLM labels/s vs concurrency against a local server, CLIP frames/s batched vs single.

VLM: the local OpenAI-compatible mock server answers every request after an injected latency
(300 ms); single-stage prompts, so one request per label and the ideal rate is
concurrency / latency. Measured in-process (the async labeler alone) and through a Ray client
actor (the path `robot-pref label` takes). CLIP: the same frames scored in batches and one at a
time, by a tiny random-init model (``--clip-model ViT-B-32`` for the real architecture, still no
download).

    .venv/bin/python tools/bench_label.py [--latency 0.3] [--concurrency 1,8,32] [--clip-model tiny]

Query designs (``--designs``): pairwise (vlm, single-stage: one request per pair) vs progress
(K shuffled frames per request, K(K-1)/2 pairs per answer; ``Kp`` = the same labels fitted with the
reported per-frame progress as a regression target too, fit-reward's ``progress_weight``) vs segment
queries (``segN``: pairwise on clips of N frames, 2N images per request) through `robot-pref label`
against the mock answering from hidden truth (pairwise and segments: the vlm-like error model;
progress: 5% noise), with the injected latency: labels per request and per second at equal request
budgets; with ``--fit``, the reward quality after fitting on each (held-out true-order accuracy on
uniform random pairs, Spearman over all frames). Every fit gets about the same budget of gradient
steps (``--fit-steps``: epochs = steps / (training pairs // 64), at least one epoch, so a set of more
than 64 x steps pairs gets one full epoch), so a design with 100x the pairs is not also given 100x
the compute; early stopping (no better validation accuracy for a quarter of the epochs, at least 5)
can end a fit sooner, and the best epoch's weights are kept. The table reports the training pairs
(all usable labels but the 20% validation split: no pair is dropped) and the steps each fit took.

    .venv/bin/python tools/bench_label.py --designs pairwise,4,8,16,8p,seg4 --budgets 250,500,1000 --fit

Labelling and fitting can run on different machines: ``--keep WORK`` (label only, without ``--fit``)
keeps the labels and rows, ``--fit-from WORK [--fit-seeds 0,1,2]`` fits them elsewhere (a GPU).
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
from robot_pref.feedback.config import ClipConfig, LabelConfig, ProgressConfig, VLMConfig
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


def reward_quality(ds, frame_key: str, labels, held_out: tuple[np.ndarray, np.ndarray], seed: int, steps: int,
                   progress_weight: float = 0.0, segment: int = 1) -> dict:
    """Fit the reward room's default CNN on ``labels`` for about ``steps`` gradient steps; score it on
    held-out uniform pairs and all frames."""
    from scipy.stats import spearmanr

    from robot_pref.reward.config import FitRewardConfig
    from robot_pref.reward.evaluation import frame_rewards
    from robot_pref.reward.train import fit

    usable = int(((labels.label != -1) & (labels.index_a != labels.index_b)).sum() * 0.8)  # training pairs
    epochs = max(1, round(steps / max(usable // 64, 1)))  # one epoch = usable // 64 steps (at least one)
    patience = max(5, epochs // 4)  # in epochs: a quarter of the step budget, also for one-step epochs
    cfg = FitRewardConfig(dataset=ds.path, camera=frame_key, ensemble=1, epochs=epochs, patience=patience, seed=seed,
                          augment="none", min_pairs=0, device="auto", progress_weight=progress_weight)
    model, report = fit(ds, labels.index_a, labels.index_b, labels.label, cfg, progress=False, segment=segment,
                        extra=labels.extra)
    train_pairs = report["counts"]["train_pairs"]
    run = len(report["history"]) * max(train_pairs // 64, 1)  # steps actually taken (early stopping ends some)
    true = ds.ground_truth("reward")
    pred = frame_rewards(model, ds, frame_key, np.arange(ds.n_frames))
    a, b = held_out
    strict = true[a] != true[b]
    acc = float(np.mean((pred[b] > pred[a])[strict] == (true[b] > true[a])[strict]))
    return {"train_pairs": train_pairs, "fit_steps": run,
            "held_out_accuracy": round(acc, 3), "spearman": round(float(spearmanr(pred, true).statistic), 3)}


def start_ray(tries: int = 3) -> None:
    """Local Ray for the vlm labeler's actors, retried: under a load of 20+ its start-up (30 s limit) can fail."""
    import ray

    for attempt in range(tries):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            return
        except Exception:  # noqa: BLE001  (Ray raises a bare Exception on a start-up timeout)
            ray.shutdown()
            if attempt == tries - 1:
                raise


def open_design_dataset(tmp: Path, dataset: str, camera: str):
    from robot_pref.data.dataset import TrajectoryDataset

    if dataset:
        return TrajectoryDataset.open(dataset), camera
    return make_square_dataset(tmp / "designs.zarr", episodes=40, length=40, size=48, seed=1), "agentview_48"


def held_out_pairs(ds) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(123)
    return rng.integers(0, ds.n_frames, 4000), rng.integers(0, ds.n_frames, 4000)


def fit_row(row: dict, ds, key: str, labels, held_out, fit_steps: int, progress_weight: float, seed: int = 0) -> None:
    t = time.perf_counter()
    row.update(reward_quality(ds, key, labels, held_out, seed=seed, steps=fit_steps, segment=row["_segment"],
                              progress_weight=progress_weight if row["_regress"] else 0.0))
    row["fit_s"] = round(time.perf_counter() - t, 1)


def fit_designs(work: Path, dataset: str, camera: str, fit_steps: int, progress_weight: float,
                rows_file: str = "", seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """``--fit-from WORK``: fit and score the labels a ``--keep WORK`` run wrote (e.g. on a machine with a
    GPU, labelling where the mock's latency, not compute, sets the pace), once per fit seed (all designs
    at one seed, then the next)."""
    from robot_pref.feedback import load_labels

    labelled, rows = json.loads((work / "rows.json").read_text())["designs"], []
    with tempfile.TemporaryDirectory() as tmp:
        ds, key = open_design_dataset(Path(tmp), dataset, camera)
        held_out = held_out_pairs(ds)
        for seed in seeds:
            for row in labelled:
                row = {**row, "seed": seed}
                fit_row(row, ds, key, load_labels(work / "labels" / row["_id"]), held_out, fit_steps,
                        progress_weight, seed)
                rows.append(row)
                print(row, flush=True)
                if rows_file:
                    Path(rows_file).write_text(json.dumps({"designs": rows}, indent=2))
    return rows


def bench_designs(latency: float, designs: list[str], budgets: list[int], do_fit: bool, tmp: Path,
                  dataset: str = "", camera: str = "", fit_steps: int = 1500, progress_weight: float = 1.0,
                  rows_file: str = "") -> list[dict]:
    """Each design at each request budget through `label` against the mock (see the module docstring);
    on ``dataset`` (simulated, rendered ``camera`` frames) or else a synthetic square dataset. The labels
    stay in ``tmp``/labels/<design>_<budget> and the rows in ``tmp``/rows.json (`fit_designs` reads them)."""
    import logging

    from robot_pref.feedback import load_labels
    from robot_pref.feedback.mock_server import MockVLM, TruthTable
    from robot_pref.feedback.run import label
    from robot_pref.feedback.teacher import VLMErrorModel

    logging.getLogger("robot_pref").setLevel(logging.ERROR)
    ds, key = open_design_dataset(tmp, dataset, camera)
    held_out = held_out_pairs(ds)
    rows = []
    start_ray()
    with MockVLM(latency=latency, truth=TruthTable(ds, key), errors=VLMErrorModel(), progress_noise=5.0) as srv:
        for design in designs:
            for budget in budgets:
                regress = design.endswith("p")
                out = tmp / "labels" / f"{design}_{budget}"
                segment = int(design.removeprefix("seg")) if design.startswith("seg") else 1
                if design == "pairwise" or segment > 1:
                    cfg = LabelConfig(dataset=ds.path, camera=key, labeler="vlm", pairs=budget, out=str(out),
                                      progress=False, vlm=VLMConfig(base_url=srv.url, model="mock", segment=segment,
                                                                    prompt="single-stage", concurrency=32))
                else:
                    k = int(design.removesuffix("p"))
                    cfg = LabelConfig(dataset=ds.path, camera=key, labeler="progress", pairs=budget * k * (k - 1) // 2,
                                      out=str(out), progress=False,
                                      gvl=ProgressConfig(base_url=srv.url, model="mock", frames=k, concurrency=32))
                before = len(srv.requests)
                summary = label(cfg)
                requests = len(srv.requests) - before
                labels = load_labels(out)
                name = ("pairwise" if design == "pairwise" else f"segments N={segment}" if segment > 1
                        else f"progress K={k}" + (" + regression" if regress else ""))
                row = {"design": name, "budget": budget,
                       "requests": requests, "labels": len(labels),
                       "labels_per_request": round(len(labels) / max(requests, 1), 1),
                       "wall_s": summary["wall_s"], "labels_per_s": round(len(labels) / summary["wall_s"], 1),
                       "_id": f"{design}_{budget}", "_segment": segment, "_regress": regress}
                if do_fit:
                    fit_row(row, ds, key, labels, held_out, fit_steps, progress_weight)
                rows.append(row)
                print(row, flush=True)
                (tmp / "rows.json").write_text(json.dumps({"designs": rows}, indent=2))
                if rows_file:  # partial results survive an interrupted run
                    Path(rows_file).write_text(json.dumps({"designs": rows}, indent=2))
    import ray

    ray.shutdown()
    return rows


def table(rows: list[dict]) -> str:
    cols = [c for c in rows[0] if not c.startswith("_")]  # _id, _segment, _regress: for --fit-from
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
    p.add_argument("--designs", default="", help="query designs to compare: pairwise and/or progress K values "
                                                 "(e.g. pairwise,4,8,16); empty = skip")
    p.add_argument("--budgets", default="100,250,500,1000", help="request budgets of the query designs")
    p.add_argument("--fit", action="store_true", help="fit a reward on each design's labels and score it")
    p.add_argument("--fit-steps", type=int, default=1500,
                   help="gradient steps per fit (epochs = steps / (pairs // 64), >= 1)")
    p.add_argument("--progress-weight", type=float, default=1.0, help="fit-reward progress_weight of the Kp designs")
    p.add_argument("--dataset", default="", help="simulated dataset for the query designs (default: synthetic squares)")
    p.add_argument("--camera", default="agentview_84", help="its frame key")
    p.add_argument("--only-designs", action="store_true", help="skip the VLM concurrency and CLIP rows")
    p.add_argument("--keep", default="", help="keep the query designs' labels and rows in this directory "
                                              "(default: a temporary one)")
    p.add_argument("--fit-from", default="", help="no labelling: fit and score the labels a --keep run wrote here")
    p.add_argument("--fit-seeds", default="0", help="--fit-from: fit seeds (e.g. 0,1,2), each a row per design")
    args = p.parse_args()
    if args.fit_from:
        designs = fit_designs(Path(args.fit_from), args.dataset, args.camera, args.fit_steps, args.progress_weight,
                              args.json, tuple(int(s) for s in args.fit_seeds.split(",")))
        args.designs, args.only_designs = "fitted", True
    elif args.designs:
        with contextlib.ExitStack() as stack:
            work = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            work.mkdir(parents=True, exist_ok=True)
            designs = bench_designs(args.latency, args.designs.split(","), [int(b) for b in args.budgets.split(",")],
                                    args.fit, work, args.dataset, args.camera, args.fit_steps,
                                    args.progress_weight, args.json)
    if args.designs:
        import torch

        fitted = f"{args.fit_steps} fit steps on {'cuda' if torch.cuda.is_available() else 'cpu'}; " if (
            args.fit or args.fit_from) else ""
        print(f"\nQuery designs against the mock ({args.latency * 1000:.0f} ms latency; pairwise and segments: vlm-like "
              f"error model, progress: 5% noise; {fitted}load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs)")
        print(table(designs))
        if args.json:
            Path(args.json).write_text(json.dumps({"designs": designs}, indent=2))
        if args.only_designs:
            return
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
