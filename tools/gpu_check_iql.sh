#!/usr/bin/env bash
# One-shot GPU check of the CUDA-graphed IQL/BC update (issue 5); run from the repo root on a CUDA machine:
#     bash tools/gpu_check_iql.sh
# (1) the graphed update gives the eager update's parameters, Adam state, lr and sampler state after N steps
#     with the same seed; resuming a graphed run from its train state gives the uninterrupted run; BC too;
#     `train()` on a small zarr dataset: graphed == eager, and interrupted + rerun (resume) == uninterrupted;
# (2) tools/bench_iql.py times eager / compiled / graphed / compiled+graph side by side.
# Prints one PASS/FAIL line per check and "ALL PASS" at the end; under 4 minutes (80 s + 150 s timeouts).
set -u -o pipefail
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1  # rows printed before a timeout still show
status=0

timeout 80 "$PY" - <<'EOF' || status=1
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.bc import BC
from robot_pref.rl.config import TrainConfig
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import CudaGraphUpdate, ObsModel
from robot_pref.rl.train import make_update

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
dev = torch.device("cuda")
print(f"torch {torch.__version__}  {torch.cuda.get_device_name(dev)}")
OBS, ACT, N_DATA, STEPS, TOTAL = 17, 6, 100_000, 200, 300  # TOTAL > STEPS: the cosine lr decays well inside the run
g = torch.Generator().manual_seed(0)
obs = torch.randn(N_DATA, OBS, generator=g)
act = torch.rand(N_DATA, ACT, generator=g) * 2 - 1
rew = torch.rand(N_DATA, generator=g).numpy()
done = (torch.rand(N_DATA, generator=g) < 0.01).float().numpy()
failed = []


def check(name, ok, detail):
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    if not ok:
        failed.append(name)


def build(algo="iql"):
    torch.manual_seed(1)  # identical initial parameters for every run
    model = ObsModel({"obs": (np.zeros(OBS, np.float32), np.ones(OBS, np.float32))}, {})
    cls = IQL if algo == "iql" else BC
    learner = cls(model, ACT, total_steps=TOTAL).to(dev)
    batches = TransitionBatches({"obs": obs}, act, rew, done, np.arange(N_DATA - 1), 256, dev, seed=0)
    return learner, batches


def run(learner, batches, steps, graph, start=0):
    if graph:  # capture directly: a silent eager fallback would make the comparisons below pass trivially
        graphed = learner.graphed_update(lambda: batches.sample(0), (batches.generator,))
        if graphed is None:
            raise RuntimeError("CUDA graph capture failed (see the warning above)")
        update = lambda step: graphed()
    else:  # what `robot-pref train --cuda-graph false` runs
        update = make_update(TrainConfig(cuda_graph=False), learner, batches, dev)
    logs = {}
    for step in range(start, start + steps):
        logs = update(step)
    torch.cuda.synchronize()
    return {k: float(v.mean()) for k, v in logs.items()}


def state(learner, batches):
    ts = learner.train_state()
    tensors = {f"model.{k}": v for k, v in ts["model"].items()}
    for i, s in ts["optimizer"]["state"].items():
        tensors.update({f"adam.{i}.{k}": v for k, v in s.items()})
    return tensors, [g["lr"] for g in ts["optimizer"]["param_groups"]], ts["scheduler"]["last_epoch"], \
        batches.state_dict()["generator"]


def compare(name, a, b, tol=1e-4):
    (ta, lra, ea, ga), (tb, lrb, eb, gb) = a, b
    diff = max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)
    bitwise = all(torch.equal(ta[k], tb[k]) for k in ta)
    lr_ok = all(abs(x - y) <= 1e-6 * max(abs(x), 1e-12) for x, y in zip(lra, lrb))
    check(name, diff <= tol and lr_ok and ea == eb and torch.equal(ga, gb),
          f"max |param/Adam diff| {diff:.2e} (tol {tol:g}, bitwise {bitwise}), lr {lra} vs {lrb}, "
          f"scheduler step {ea} vs {eb}, sampler generator state equal {torch.equal(ga, gb)}")


try:
    # the path `robot-pref train` takes on a GPU
    learner, batches = build()
    update = make_update(TrainConfig(), learner, batches, dev)
    captured = any(isinstance(c.cell_contents, CudaGraphUpdate) for c in update.__closure__ or ())
    check("train captures the update", captured, "make_update returned the graph replay" if captured
          else "make_update fell back to the eager update (see the warning above)")

    init_learner, init_batches = build()
    init = state(init_learner, init_batches)[0]
    eager_l, eager_b = build()
    eager_logs = run(eager_l, eager_b, STEPS, graph=False)
    eager = state(eager_l, eager_b)
    moved = max(float((eager[0][k] - init[k]).abs().max()) for k in init)
    check("training moves parameters", moved > 1e-2, f"max |change| after {STEPS} eager steps {moved:.3f}")

    graph_l, graph_b = build()
    graph_logs = run(graph_l, graph_b, STEPS, graph=True)
    compare(f"graphed == eager after {STEPS} IQL steps", eager, state(graph_l, graph_b))
    log_diff = max(abs(eager_logs[k] - graph_logs[k]) / max(abs(eager_logs[k]), 1e-6) for k in eager_logs)
    check("logged losses equal", log_diff < 1e-3, f"max relative diff {log_diff:.2e}: eager {eager_logs} graphed {graph_logs}")

    # exact resume: graphed half, train state -> fresh learner + sampler, graphed other half
    first_l, first_b = build()
    run(first_l, first_b, STEPS // 2, graph=True)
    saved_train, saved_sampler = first_l.train_state(), first_b.state_dict()
    resumed_l, resumed_b = build()
    resumed_l.load_train_state(saved_train)
    resumed_b.load_state_dict(saved_sampler)
    run(resumed_l, resumed_b, STEPS - STEPS // 2, graph=True, start=STEPS // 2)
    compare("graphed resume == uninterrupted graphed run", state(graph_l, graph_b), state(resumed_l, resumed_b), tol=1e-5)
    compare("graphed resume == eager run", eager, state(resumed_l, resumed_b))

    bc_eager_l, bc_eager_b = build("bc")
    run(bc_eager_l, bc_eager_b, STEPS, graph=False)
    bc_graph_l, bc_graph_b = build("bc")
    run(bc_graph_l, bc_graph_b, STEPS, graph=True)
    compare(f"BC graphed == eager after {STEPS} steps", state(bc_eager_l, bc_eager_b), state(bc_graph_l, bc_graph_b))
    # `robot-pref train` end to end on a small zarr dataset: graphed == eager, and a graphed run that crashes at
    # step 120 and is rerun (it resumes from last.pt of step 100) ends exactly where the uninterrupted one ends
    import tempfile

    from robot_pref.data import Episode, TrajectoryDataset
    from robot_pref.rl.checkpoint import load_checkpoint
    from robot_pref.rl.train import train

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    ds = TrajectoryDataset.create(tmp / "toy.zarr", obs_dim=OBS, action_dim=ACT, state_dim=2, fps=20, env={"task": "toy"})
    for i in range(30):
        ds.append_episode(Episode(obs=rng.normal(size=(20, OBS)).astype(np.float32),
                                  action=rng.uniform(-1, 1, (20, ACT)).astype(np.float32), state=np.zeros((20, 2)),
                                  true_reward=rng.normal(size=20).astype(np.float32), task="toy", seed=i))
    common = dict(dataset=str(tmp / "toy.zarr"), reward_key="true", steps=300, device="cuda", log_every=50,
                  save_every=100, batch_size=64)
    train(TrainConfig(out=str(tmp / "eager"), cuda_graph=False, **common))
    train(TrainConfig(out=str(tmp / "graph"), cuda_graph=True, **common))
    replay, calls = CudaGraphUpdate.__call__, [0]

    def crashing(self):
        calls[0] += 1
        if calls[0] > 120:
            raise RuntimeError("simulated crash")
        return replay(self)

    CudaGraphUpdate.__call__ = crashing
    try:
        train(TrainConfig(out=str(tmp / "resumed"), cuda_graph=True, **common))
    except RuntimeError as e:
        print(f"crashed as planned: {e}")
    CudaGraphUpdate.__call__ = replay
    saved = load_checkpoint(tmp / "resumed" / "last.pt")["step"]
    check("train crashed at step 120", calls[0] == 121 and saved == 100, f"last.pt holds step {saved} (want 100)")
    train(TrainConfig(out=str(tmp / "resumed"), cuda_graph=True, **common))

    def train_state(run):
        ckpt = load_checkpoint(tmp / run / "last.pt", dev)
        tensors = {f"model.{k}": v for k, v in ckpt["model"].items()}
        for i, s in ckpt["optimizer"]["state"].items():
            tensors.update({f"adam.{i}.{k}": v for k, v in s.items()})
        return (tensors, [g["lr"] for g in ckpt["optimizer"]["param_groups"]], ckpt["scheduler"]["last_epoch"],
                ckpt["sampler"]["generator"])

    compare("train(): graphed == eager (300 steps)", train_state("eager"), train_state("graph"))
    compare("train(): graphed, crashed at 120, resumed from 100 == uninterrupted", train_state("graph"),
            train_state("resumed"), tol=1e-5)
except Exception as e:  # a crash is a failure of the check, with its traceback
    import traceback

    traceback.print_exc()
    check("numerical check ran", False, f"{type(e).__name__}: {e}")
sys.exit(1 if failed else 0)
EOF
echo

if timeout 150 "$PY" tools/bench_iql.py --device cuda --compile --cuda-graph --rounds 3 --steps 200 --image-steps 0 \
        2>&1 | tee /tmp/bench_iql_gpu.txt; then
    if grep -Eq "robot_pref graphed +[0-9]" /tmp/bench_iql_gpu.txt; then
        echo "PASS  benchmark ran (table above)"
        "$PY" - <<'PARSE'
import re
rows = {}
for line in open("/tmp/bench_iql_gpu.txt"):
    m = re.match(r"(\d+/\d+)\s+(.+?)\s+([\d.]+)\s+[\d.]+x", line)
    if m:
        rows.setdefault(m[1], {})[m[2]] = float(m[3])
for shape, r in rows.items():
    ratios = ", ".join(f"{k} {v / r['robot_pref']:.2f}x" for k, v in r.items() if k.startswith("robot_pref "))
    print(f"INFO  {shape}: against eager robot_pref ({r['robot_pref']:.0f}/s): {ratios}")
PARSE
    else
        echo "FAIL  benchmark ran but timed no graphed contender (capture failed: see the warning above)"; status=1
    fi
else
    echo "FAIL  benchmark (crashed or ran past 150 s; rows printed above are valid)"; status=1
fi
echo
echo "total ${SECONDS}s"
if [ $status -eq 0 ]; then echo "ALL PASS"; else echo "SOME CHECKS FAILED"; fi
exit $status
