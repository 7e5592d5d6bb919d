"""The peer baseline: robomimic's own BC and IQL on our data, evaluated by our evaluation.

    python tools/robomimic_peer.py --dataset runs/quickstart/dataset.zarr --reward-key learned \
        --algos bc iql --steps 10000 --episodes 50 --out runs/quickstart/robomimic

Per algo: the dataset is exported once with `robot-pref export-robomimic` (same learned reward as our IQL),
robomimic's train script (`robomimic.scripts.train.train`, its default config for the algo: its networks,
optimiser and hyper-parameters, not ours) trains on it with rollouts and validation off (no choice is made on
any episode), and the last checkpoint is rolled out by `robot-pref eval` through
`robot_pref.eval.robomimic_policy` on the same seeds as our policies. Writes ``<out>/<algo>/eval/eval_info.json``
and ``<out>/robomimic_peer.json`` (success with Wilson CIs, wall times).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def robomimic_config(algo: str, hdf5: str, out: str, obs_keys: list[str], steps: int, batch_size: int, seed: int,
                     steps_per_epoch: int = 500):
    """robomimic's default config of ``algo`` on a low-dim export, trained ``steps`` gradient steps."""
    from robomimic.config import config_factory

    config = config_factory(algo)
    epochs = max(1, -(-steps // steps_per_epoch))
    with config.values_unlocked():
        config.train.data = hdf5
        config.train.output_dir = out
        config.train.seed = seed
        config.train.batch_size = batch_size
        config.train.num_epochs = epochs
        config.train.hdf5_cache_mode = "all"
        config.train.hdf5_normalize_obs = False
        config.experiment.name = algo
        config.experiment.epoch_every_n_steps = min(steps, steps_per_epoch)
        config.experiment.validate = False
        config.experiment.rollout.enabled = False
        config.experiment.render_video = False
        config.experiment.logging.terminal_output_to_txt = False
        config.experiment.logging.log_tb = False
        config.experiment.save.enabled = True
        config.experiment.save.every_n_epochs = epochs
        config.observation.modalities.obs.low_dim = list(obs_keys)
        config.observation.modalities.obs.rgb = []
    return config


def train_peer(algo: str, dataset: str, hdf5: str, out: Path, steps: int, batch_size: int = 100,
               seed: int = 0) -> Path:
    """Train robomimic's ``algo``; returns its last checkpoint (with our sidecar beside it)."""
    import torch
    from robomimic.scripts.train import train

    from robot_pref.data import TrajectoryDataset
    from robot_pref.data.robomimic import _obs_parts
    from robot_pref.eval.robomimic_policy import write_sidecar

    ds = TrajectoryDataset.open(dataset)
    parts = _obs_parts(ds)
    config = robomimic_config(algo, hdf5, str(out), list(parts), steps, batch_size, seed)
    train(config, device=torch.device("cpu"))
    checkpoints = sorted(out.glob(f"{algo}/*/models/model_epoch_*.pth"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise RuntimeError(f"robomimic wrote no checkpoint under {out / algo}")
    write_sidecar(checkpoints[-1], ds.env_meta.get("task", ""), ds.env_meta, parts)
    return checkpoints[-1]


def main(argv: list[str] | None = None) -> dict:
    from robot_pref.data.commands import ExportRobomimicConfig
    from robot_pref.data.robomimic import export_robomimic
    from robot_pref.eval.rollout import EvalConfig, evaluate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--reward-key", default="learned", help="reward exported for robomimic (IQL reads it)")
    p.add_argument("--algos", nargs="+", default=["bc", "iql"])
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--eval-seed", type=int, default=1000, help="as the pipeline's eval.seed")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hdf5 = out / f"export_{args.reward_key}.hdf5"
    if not hdf5.exists():
        export_robomimic(ExportRobomimicConfig(dataset=args.dataset, out=str(hdf5), reward_key=args.reward_key))
    results = {}
    for algo in args.algos:
        t0 = time.perf_counter()
        ckpt = train_peer(algo, args.dataset, str(hdf5), out / algo, args.steps, args.batch_size, args.seed)
        train_s = time.perf_counter() - t0
        info = evaluate(EvalConfig(policy=str(ckpt), episodes=args.episodes, seed=args.eval_seed, workers=args.workers,
                                   max_steps=args.max_steps, videos=0, out=str(out / algo / "eval")))
        results[f"robomimic-{algo}"] = {"checkpoint": str(ckpt), "train_s": round(train_s, 1), "steps": args.steps,
                                        "success_rate": info["success_rate"], "ci": info["ci"],
                                        "episodes": info["episodes"], "reward_key": args.reward_key}
        print(f"robomimic {algo}: success {100 * info['success_rate']:.0f}% (95% CI {100 * info['ci'][0]:.0f}-"
              f"{100 * info['ci'][1]:.0f}%) over {info['episodes']} episodes")
    (out / "robomimic_peer.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
