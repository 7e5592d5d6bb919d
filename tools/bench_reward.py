"""Reward-room benchmark: training and relabel throughput, and the label-efficiency curve.

    .venv/bin/python tools/bench_reward.py --dataset lift.zarr --camera agentview_84 --out runs/bench_reward

1. training pairs/s: minibatches of B pairs with the K members vmapped into one call (grouped
   convolutions) or looped, vs a naive loop over single pairs; the same work in each.
2. relabel frames/s: `relabel` (batched reads + batched forward, chunked writes) vs a naive per-frame
   loop (read one frame, score it), and Ray CPU actors vs in-process (why relabel stays in-process
   on CPU).
3. label efficiency: held-out accuracy against the true-reward order vs number of labels, uniform vs
   disagreement selection, labels from the B-Pref `mistake` teacher (eps 0.1). Needs ground truth.

Every ratio is against a baseline measured in the same run. Tables go to stdout, numbers to
<out>/bench_reward.json and the curve to <out>/label_efficiency.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch


def table(title: str, header: list[str], rows: list[list]) -> str:
    def cell(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = [f"\n### {title}", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- 1. training
def bench_training(spec_kwargs: dict, batch: int, seconds: float) -> tuple[str, dict]:
    from robot_pref.reward.models import ModelSpec, RewardModel, autocast, default_device
    from robot_pref.reward.train import preference_loss

    spec = ModelSpec(**spec_kwargs)
    k, (h, w), device = spec.ensemble, (spec.height, spec.width), default_device()
    model = RewardModel(spec, seed=0).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    frames = torch.randint(0, 256, (k, 2, batch, 3, h, w), dtype=torch.uint8, device=device)  # (K, a|b, B, ...)
    y = torch.randint(0, 2, (k, batch), device=device).float()

    def steps(pairs: int, vectorize: bool):
        """One pass over the B pairs, ``pairs`` at a time; every member trains on its own B pairs."""
        def run():
            for j in range(0, batch, pairs):
                x = frames[:, :, j : j + pairs].flatten(1, 2)  # (K, 2 * pairs, ...)
                with autocast(device):
                    r = model(x, per_member=True, vectorize=vectorize)
                loss = preference_loss(r[:, :pairs], r[:, pairs:], y[:, j : j + pairs]).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        return run

    def timed(run) -> float:
        run()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            run()
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - t0)  # pairs/s per member

    rates = {"naive: one pair per step, members looped": timed(steps(1, False)),
             f"batched {batch}, members looped": timed(steps(batch, False)),
             f"batched {batch}, members vmapped": timed(steps(batch, True))}
    base = rates["naive: one pair per step, members looped"]
    rows = [[name, rate, rate / base] for name, rate in rates.items()]
    default = "vmapped" if device.type == "cuda" else "looped"
    return table(f"training on {device.type}: CNN x{k}, {h}x{w}, no augmentation (fit uses members {default} here)",
                 ["method", "pairs/s per member", "vs naive"], rows), rates


# ---------------------------------------------------------------------------------------- 2. relabel
def bench_relabel(dataset: str, run: Path, work: Path, naive_frames: int, ray_workers: int) -> tuple[str, dict]:
    from robot_pref.data import TrajectoryDataset
    from robot_pref.reward.config import RelabelConfig
    from robot_pref.reward.models import load_reward_model
    from robot_pref.reward.relabel import relabel

    copy = work / "relabel_copy.zarr"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(dataset, copy)
    ds = TrajectoryDataset.open(copy)
    spec = json.loads((run / "model.json").read_text())
    key = f"frames/{spec['extra']['camera']}"
    model = load_reward_model(run)
    n = min(naive_frames, ds.n_frames)
    t0 = time.perf_counter()
    naive = np.asarray([model.predict(ds.get(key, slice(i, i + 1)))[0] for i in range(n)])
    rates = {"naive per-frame loop": n / (time.perf_counter() - t0)}
    timings = [("in-process, batched (ours)", 0)] + ([(f"Ray CPU actors x{ray_workers}", ray_workers)]
                                                    if ray_workers else [])
    for name, workers in timings:
        t0 = time.perf_counter()
        relabel(RelabelConfig(dataset=str(copy), reward_model=str(run), key=f"bench{workers}", workers=workers,
                              device="cpu" if workers else "auto"))
        rates[name] = ds.n_frames / (time.perf_counter() - t0)
    written = TrajectoryDataset.open(copy).get("rewards/bench0")
    assert np.allclose(written[:n], naive, atol=1e-5), "batched and per-frame rewards differ"
    shutil.rmtree(copy, ignore_errors=True)
    base = rates["naive per-frame loop"]
    rows = [[name, rate, rate / base] for name, rate in rates.items()]
    return table(f"relabel: {ds.n_frames} frames {key} (naive timed on the first {n}; Ray includes actor start-up)",
                 ["method", "frames/s", "vs naive"], rows), rates


# ---------------------------------------------------------------------------------------- 3. label efficiency
def bench_curve(args, work: Path) -> tuple[str, dict]:
    from robot_pref.data import TrajectoryDataset
    from robot_pref.feedback.config import TeacherConfig
    from robot_pref.feedback.teacher import TeacherLabeler
    from robot_pref.reward.active import active_learning_curve
    from robot_pref.reward.config import FitRewardConfig

    ds = TrajectoryDataset.open(args.dataset)
    teacher = TeacherLabeler(TeacherConfig(kind="mistake", eps=args.eps), goal="", dataset=ds)

    def label_fn(a, b):
        label, skip, _, _ = teacher.decide(a, b, teacher.noise_keys(a, b))
        return np.where(skip, -1, label)

    cfg = FitRewardConfig(dataset=args.dataset, camera=args.camera, ensemble=args.ensemble, epochs=args.epochs,
                          patience=args.patience, lr=args.lr, label_noise=args.label_noise,
                          eval_frames=args.eval_frames)
    rows, curves = [], {}
    for sampler in args.samplers:
        curves[sampler] = active_learning_curve(
            ds, label_fn, args.budgets, cfg, sampler=sampler, test_pairs=args.test_pairs, pool_size=args.pool_size,
            on_round=lambda r: print(f"  {r['sampler']:>12} {r['labels']:>5} labels: true-order acc "
                                     f"{r['test_true_order_accuracy']:.3f} spearman {r['spearman']:.3f}", flush=True))
    for i, budget in enumerate(args.budgets):
        row = [budget] + [curves[s][i]["test_true_order_accuracy"] for s in args.samplers]
        if len(args.samplers) == 2:
            row.append(row[2] - row[1])
        rows.append(row)
    header = ["labels"] + [f"{s} acc" for s in args.samplers] + (["delta"] if len(args.samplers) == 2 else [])
    plot_curve(curves, work / "label_efficiency.png", args)
    return table(f"label efficiency: held-out true-order accuracy on {args.test_pairs} uniform pairs, mistake "
                 f"teacher eps={args.eps}, CNN x{args.ensemble}", header, rows), curves


def plot_curve(curves: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for sampler, rows in curves.items():
        ax.plot([r["labels"] for r in rows], [r["test_true_order_accuracy"] for r in rows], "o-", label=sampler)
    ax.set_xscale("log")
    ax.set_xticks(args.budgets, [str(b) for b in args.budgets])
    ax.minorticks_off()
    ax.set_xlabel("labels")
    ax.set_ylabel("true-order accuracy (held out)")
    ax.set_title(f"{Path(args.dataset).name}: mistake teacher eps={args.eps}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="rendered dataset (ground truth needed for the curve)")
    p.add_argument("--camera", default="agentview_84", help="frame key")
    p.add_argument("--out", default="runs/bench_reward")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    p.add_argument("--parts", default="train,relabel,curve", help="comma list of train, relabel, curve")
    p.add_argument("--seconds", type=float, default=5.0, help="timing window per training variant")
    p.add_argument("--batch", type=int, default=64, help="pairs per member per step")
    p.add_argument("--naive-frames", type=int, default=300, help="frames the naive relabel loop scores")
    p.add_argument("--ray-workers", type=int, default=2, help="Ray CPU actors to compare (0 = skip)")
    p.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[250, 500, 1000, 2000])
    p.add_argument("--samplers", type=lambda s: s.split(","), default=["uniform", "disagreement"])
    p.add_argument("--eps", type=float, default=0.1, help="mistake teacher flip rate")
    p.add_argument("--label-noise", type=float, default=0.0, help="noise-aware BT eps used by the fits")
    p.add_argument("--ensemble", type=int, default=3)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--test-pairs", type=int, default=2000)
    p.add_argument("--pool-size", type=int, default=0, help="disagreement candidate pool (0 = 10 x batch)")
    p.add_argument("--eval-frames", type=int, default=5000)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from robot_pref.data import TrajectoryDataset

    ds = TrajectoryDataset.open(args.dataset)
    _, h, w, _ = ds.shape(f"frames/{args.camera}")
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    results = {"dataset": args.dataset, "frames": ds.n_frames, "threads": torch.get_num_threads(),
               "device": "cuda" if torch.cuda.is_available() else "cpu", "args": vars(args)}
    print(f"dataset {args.dataset}: {ds.n_frames} frames {args.camera} ({h}x{w}); device {results['device']}, "
          f"{results['threads']} torch threads")
    if "train" in parts:
        spec = dict(height=h, width=w, ensemble=args.ensemble, augment="none")
        text, results["train_pairs_per_s"] = bench_training(spec, args.batch, args.seconds)
        print(text, flush=True)
    if "relabel" in parts:
        from robot_pref.reward.models import ModelSpec, RewardModel, save_reward_model

        run = save_reward_model(RewardModel(ModelSpec(height=h, width=w, ensemble=args.ensemble,
                                                      extra={"camera": args.camera}), seed=0), work / "bench_model")
        text, results["relabel_frames_per_s"] = bench_relabel(args.dataset, run, work, args.naive_frames,
                                                              args.ray_workers)
        print(text, flush=True)
    if "curve" in parts:
        text, results["label_efficiency"] = bench_curve(args, work)
        print(text, flush=True)
    (work / "bench_reward.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {work / 'bench_reward.json'}" + (f", {work / 'label_efficiency.png'}" if "curve" in parts else ""))


if __name__ == "__main__":
    main()
