"""Gradient updates per second of robot_pref's IQL against a straightforward reference and the matmul ceiling.

    .venv/bin/python tools/bench_iql.py                      # CPU, 2 threads, obs 17/act 6 and obs 60/act 7
    .venv/bin/python tools/bench_iql.py --device cuda --compile   # on a GPU: eager, compiled, CUDA-graphed

All contenders sample batches of 256 from the same 1M synthetic transitions and run in alternating
rounds in one process (the machine is shared, so the load drifts; the median round is reported,
and robot_pref's share of the ceiling in each round, whose two runs saw about the same load).
- reference: IQL as usually written (CORL style): separate Q1/Q2/V/actor networks, three Adam
  optimizers and three backward passes per step, a per-parameter Python loop for the target update,
  a device-resident buffer indexed by indices drawn on the host.
- robot_pref: `robot_pref.rl.iql.IQL` fed by `robot_pref.rl.batches.TransitionBatches`, eager (Adam over one
  flat buffer per parameter group, `robot_pref.rl.flat_adam`; --per-parameter-adam adds the fused
  torch.optim.Adam over the separate parameters it replaced); on CPU its gradients come from the
  hand-written backward (`robot_pref.rl.hand_backward`, as `robot-pref train` runs there) and the row
  "autograd backward" times the same update through autograd;
  "compiled" with torch.compile'd losses (--compile), "graphed" with the whole update replayed as one
  CUDA graph (`Learner.graphed_update`, what `robot-pref train` runs on a GPU; --cuda-graph, on for CUDA),
  "compiled+graph" both (what `robot-pref train --compile` runs on a GPU).
- ceiling: only the matrix multiplies one IQL update has to do (forward and backward of every
  linear layer, same shapes), back to back: the speed with zero overhead. "hot cache" runs the same
  matmuls on one set of operands per shape (all in cache): a stricter bound, for reference.
Image observations (84x84 frames through the conv encoder, frames prefetched by the background
thread from host memory) are timed separately at the given --image-batch; on CUDA also with the frames
held on the GPU (what `robot-pref train` does when they fit: --frames-on-device): eager, eager + bf16
autocast, CUDA-graphed, graphed + bf16 (`--amp bf16`), ratios against eager from the same rounds.
Feature IQL (a pixel policy on CPU, `robot_pref.rl.features`): proprioception + two cameras' frozen-encoder
features projected to --components principal components each, the observation model `robot-pref train`
builds for ``obs: {preset: pixels}``, against low-dim IQL on the privileged Lift obs in the same
alternating rounds (target: >= 0.8x).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

from robot_pref.rl.batches import TransitionBatches
from robot_pref.rl.iql import IQL
from robot_pref.rl.learner import ObsModel


# ----------------------------------------------------------------------------- reference IQL (CORL style)
class RefGaussianPolicy(nn.Module):
    def __init__(self, obs_dim, act_dim, h=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, act_dim),
                                 nn.Tanh())
        self.log_std = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs):
        return torch.distributions.Normal(self.net(obs), torch.exp(self.log_std.clamp(-20.0, 2.0)))


def ref_mlp(i, o, h=256):
    return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class ReferenceIQL:
    def __init__(self, obs_dim, act_dim, data, device, steps=1_000_000):
        # the replay buffer lives on the device, indexed by host-drawn indices (as CORL's ReplayBuffer)
        self.obs, self.act, self.rew, self.done, self.next_obs = (x.to(device) for x in data)
        self.device = device
        self.q1, self.q2 = ref_mlp(obs_dim + act_dim, 1).to(device), ref_mlp(obs_dim + act_dim, 1).to(device)
        self.q1_t, self.q2_t = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = ref_mlp(obs_dim, 1).to(device)
        self.actor = RefGaussianPolicy(obs_dim, act_dim).to(device)
        self.q_opt = torch.optim.Adam(list(self.q1.parameters()) + list(self.q2.parameters()), lr=3e-4)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=3e-4)
        self.a_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.a_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.a_opt, steps)

    def update(self):
        idx = np.random.randint(0, len(self.obs), 256)
        s, a, r, d, s2 = (x[idx] for x in (self.obs, self.act, self.rew, self.done, self.next_obs))
        with torch.no_grad():
            target_q = torch.min(self.q1_t(torch.cat([s, a], 1)), self.q2_t(torch.cat([s, a], 1))).squeeze(-1)
            next_v = self.v(s2).squeeze(-1)
        v = self.v(s).squeeze(-1)
        adv = target_q - v
        v_loss = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()
        targets = r + 0.99 * (1.0 - d) * next_v
        q1, q2 = self.q1(torch.cat([s, a], 1)).squeeze(-1), self.q2(torch.cat([s, a], 1)).squeeze(-1)
        q_loss = (nn.functional.mse_loss(q1, targets) + nn.functional.mse_loss(q2, targets)) / 2
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        for net, tgt in ((self.q1, self.q1_t), (self.q2, self.q2_t)):
            for p, tp in zip(net.parameters(), tgt.parameters()):
                tp.data.copy_((1 - 0.005) * tp.data + 0.005 * p.data)
        weights = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        a_loss = (weights * -self.actor(s).log_prob(a).sum(-1)).mean()
        self.a_opt.zero_grad()
        a_loss.backward()
        self.a_opt.step()
        self.a_sched.step()


# ----------------------------------------------------------------------------- the matmul ceiling
def ceiling_gemms(obs_dim, act_dim, h=256, b=256):
    """(m, k, n) of every matmul in one IQL update: per linear layer the forward x@W, grad of W, and
    grad of the input except for the first layer (observations need no gradient)."""
    layers = []  # (in, out, copies, backward)
    layers += [(obs_dim, h, 1, True), (h, h, 1, True), (h, 1, 1, True)]  # V(s)
    layers += [(obs_dim, h, 1, False), (h, h, 1, False), (h, 1, 1, False)]  # V(s')
    layers += [(obs_dim + act_dim, h, 2, False), (h, h, 2, False), (h, 1, 2, False)]  # target Q1, Q2
    layers += [(obs_dim + act_dim, h, 2, True), (h, h, 2, True), (h, 1, 2, True)]  # Q1, Q2
    layers += [(obs_dim, h, 1, True), (h, h, 1, True), (h, act_dim, 1, True)]  # actor
    gemms = []
    for i, (fan_in, fan_out, copies, backward) in enumerate(layers):
        first = fan_in in (obs_dim, obs_dim + act_dim)
        for _ in range(copies):
            gemms.append((b, fan_in, fan_out))
            if backward:
                gemms.append((fan_in, b, fan_out))  # dW = x^T g
                if not first:
                    gemms.append((b, fan_out, fan_in))  # dx = g W^T
    return gemms


class Ceiling:
    """``hot``: one set of operands per distinct shape, so they stay in cache (~3 MB in all), where the
    default gives every matmul operands of its own (~19 MB), as the update's tensors are distinct."""

    def __init__(self, gemms, device, hot=False):
        def operands(m, k, n):
            return torch.randn(m, k, device=device), torch.randn(k, n, device=device), torch.empty(m, n, device=device)

        shared = {shape: operands(*shape) for shape in set(gemms)} if hot else {}
        self.ops = [shared.get(shape) or operands(*shape) for shape in gemms]
        self.flops = sum(2 * m * k * n for m, k, n in gemms)

    def update(self):
        for a, b, out in self.ops:
            torch.mm(a, b, out=out)


# ----------------------------------------------------------------------------- robot_pref IQL
def ours(obs_dim, act_dim, data, device, frames=None, batch_size=256, compile=False, cuda_graph=False,
         per_parameter_adam=False, gradients="auto"):
    obs, act, rew, done, _ = data
    n = len(obs)
    keys = {"obs": (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))}
    frame_sizes = {"frames/cam_84": 84} if frames is not None else {}
    model = ObsModel(keys, frame_sizes).to(device)
    learner = IQL(model, act_dim, total_steps=1_000_000, compile=compile).to(device)
    learner.choose_gradients("autograd" if per_parameter_adam else gradients)  # what `robot-pref train` picks
    if per_parameter_adam:  # the optimizer before FlatAdam: fused torch.optim.Adam over the separate parameters
        flat = learner.optimizer
        learner.optimizer = torch.optim.Adam([{"params": fg.params, "lr": g["lr"]}
                                              for g, fg in zip(flat.param_groups, flat.flat_groups)], fused=True)
        learner.scheduler = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, learner.scheduler.lr_lambdas)
    valid = np.arange(n - 1)
    read = (lambda key, idx: frames[idx % len(frames)]) if frames is not None else None
    batches = TransitionBatches({"obs": obs}, act, rew.numpy(), done.numpy(), valid, batch_size, device, 0,
                                tuple(frame_sizes), read)
    gen = batches.generator if frames is not None else None
    if cuda_graph:
        return learner.graphed_update(lambda: batches.sample(0), (batches.generator,)), batches  # None: capture failed
    step = [0]

    def update():
        learner.update(batches.sample(step[0]), gen)
        step[0] += 1

    return update, batches


def ours_features(proprio_dim, cameras, components, encoder_dim, act_dim, n, device):
    """Feature IQL as `robot-pref train` builds it for a pixel spec: a "proprio" key plus one PCA-projected
    feature key per camera (the batches hold the projected, whitened features, as `rl.train.prepare` does)."""
    gen = torch.Generator().manual_seed(1)
    keys = {"proprio": (np.zeros(proprio_dim, np.float32), np.ones(proprio_dim, np.float32))}
    keys.update({f"features/cam{c}_84.reward": (np.zeros(encoder_dim, np.float32), np.ones(components, np.float32))
                 for c in range(cameras)})
    projections = {k: np.eye(encoder_dim, components, dtype=np.float32) for k in keys if k != "proprio"}
    model = ObsModel(keys, {}, projections=projections).to(device)
    learner = IQL(model, act_dim, total_steps=1_000_000).to(device)
    learner.choose_gradients("auto")
    lowdim = {k: torch.randn(n, len(std), generator=gen) for k, (_, std) in keys.items()}
    act = torch.rand(n, act_dim, generator=gen) * 2 - 1
    rew, done = torch.rand(n, generator=gen).numpy(), (torch.rand(n, generator=gen) < 0.001).float().numpy()
    batches = TransitionBatches(lowdim, act, rew, done, np.arange(n - 1), 256, device, 0)
    step = [0]

    def update():
        learner.update(batches.sample(step[0]))
        step[0] += 1

    return update, model.dim


def with_threads(fn, threads):
    """``fn`` run with ``threads`` torch threads (the others' setting restored after each call)."""
    def run():
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            fn()
        finally:
            torch.set_num_threads(before)
    return run


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n, device):
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return n / (time.perf_counter() - t)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="updates per contender per round")
    parser.add_argument("--compile", action="store_true", help="also time robot_pref with torch.compile")
    parser.add_argument("--thread-ab", type=int, default=0, metavar="N",
                        help="also time robot_pref with N torch threads (e.g. 1 against the default 2)")
    parser.add_argument("--per-parameter-adam", action="store_true",
                        help="also time robot_pref with fused torch.optim.Adam over the separate parameters "
                             "(the optimizer before FlatAdam's one buffer per group)")
    parser.add_argument("--cuda-graph", default=None, action=argparse.BooleanOptionalAction,
                        help="also time robot_pref replayed as one CUDA graph (default: on for CUDA)")
    parser.add_argument("--feature-steps", type=int, default=100,
                        help="updates per round of feature IQL vs low-dim IQL (0 skips it)")
    parser.add_argument("--components", type=int, default=32, help="feature IQL: principal components per camera")
    parser.add_argument("--image-steps", type=int, default=10, help="0 skips the image benchmark")
    parser.add_argument("--image-batch", type=int, default=256)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda_graph = device.type == "cuda" if args.cuda_graph is None else args.cuda_graph
    if cuda_graph and device.type != "cuda":
        parser.error("--cuda-graph needs --device cuda")
    torch.manual_seed(0)
    np.random.seed(0)
    print(f"device {device}  threads {torch.get_num_threads()}  load average {load_average():.1f}  torch {torch.__version__}  "
          f"{args.transitions} transitions, batch 256, {args.rounds} rounds x {args.steps} updates\n")
    header = f"{'obs/act':<8}{'contender':<32}{'updates/s':>10}{'x reference':>13}{'% ceiling':>11}{'GFLOP/s':>9}"
    print(header)
    print("-" * len(header))
    for obs_dim, act_dim in ((17, 6), (60, 7)):
        n = args.transitions
        gen = torch.Generator().manual_seed(0)
        obs = torch.randn(n, obs_dim, generator=gen)
        act = torch.rand(n, act_dim, generator=gen) * 2 - 1
        rew, done = torch.rand(n, generator=gen), (torch.rand(n, generator=gen) < 0.001).float()
        data = (obs, act, rew, done, torch.roll(obs, -1, 0))
        ceiling = Ceiling(ceiling_gemms(obs_dim, act_dim), device)
        contenders = {"reference (CORL-style)": ReferenceIQL(obs_dim, act_dim, data, device).update,
                      "robot_pref": ours(obs_dim, act_dim, data, device)[0],
                      "matmul ceiling": ceiling.update,
                      "matmul ceiling, hot cache": Ceiling(ceiling_gemms(obs_dim, act_dim), device, hot=True).update}
        if device.type == "cpu":  # what the hand-written backward replaced, in the same rounds
            contenders["robot_pref, autograd backward"] = ours(obs_dim, act_dim, data, device, gradients="autograd")[0]
        if args.thread_ab:
            contenders[f"robot_pref, {args.thread_ab} thread(s)"] = with_threads(
                ours(obs_dim, act_dim, data, device)[0], args.thread_ab)
        if args.per_parameter_adam:
            contenders["robot_pref, per-parameter Adam"] = ours(obs_dim, act_dim, data, device,
                                                               per_parameter_adam=True)[0]
        if args.compile:
            t = time.perf_counter()
            compiled = ours(obs_dim, act_dim, data, device, compile=True)[0]
            rate(compiled, 3, device)  # the first calls compile (forward and backward)
            print(f"{obs_dim}/{act_dim}: torch.compile took {time.perf_counter() - t:.0f} s (load average "
                  f"{load_average():.1f})")
            contenders["robot_pref compiled"] = compiled
        batches_alive = {}
        graphed_variants = [("robot_pref graphed", False)] + [("robot_pref compiled+graph", True)] * args.compile
        for name, compile in graphed_variants if cuda_graph else []:
            # keep the TransitionBatches alive: the graph reads its device tensors by address
            graphed, batches_alive[name] = ours(obs_dim, act_dim, data, device, compile=compile, cuda_graph=True)
            if graphed is None:
                print(f"{name}: capture failed (see the warning above); not timed")
            else:
                contenders[name] = graphed
        for fn in contenders.values():  # warm-up (and compilation)
            rate(fn, 10, device)
        rates = {k: [] for k in contenders}
        for _ in range(args.rounds):
            for name, fn in contenders.items():
                rates[name].append(rate(fn, args.steps, device))
        med = {k: statistics.median(v) for k, v in rates.items()}
        print(f"{'':8}(load average {load_average():.1f})")
        for name, r in med.items():
            print(f"{obs_dim}/{act_dim:<5}{name:<32}{r:>10.1f}{r / med['reference (CORL-style)']:>12.2f}x"
                  f"{100 * r / med['matmul ceiling']:>10.0f}%{r * ceiling.flops / 1e9:>9.1f}")
        # the load drifts between rounds, and both runs of one round see about the same load
        paired = [100 * update_rate / roof
                  for update_rate, roof in zip(rates["robot_pref"], rates["matmul ceiling"])]
        print(f"{'':8}robot_pref / ceiling in each round: {' '.join(f'{x:.0f}%' for x in paired)} "
              f"(median {statistics.median(paired):.0f}%)")
    print(f"\nload average at the end {load_average():.1f} (a shared machine: compare ratios within one run)")
    if args.feature_steps:
        bench_features(args, device)
    if args.image_steps:
        frames = np.random.default_rng(0).integers(0, 256, (2048, 84, 84, 3), dtype=np.uint8)
        obs_dim, act_dim, n = 19, 7, 100_000
        data = (torch.randn(n, obs_dim), torch.rand(n, act_dim) * 2 - 1, torch.rand(n), torch.zeros(n), None)
        update, batches = ours(obs_dim, act_dim, data, device, frames=frames, batch_size=args.image_batch)
        rate(update, 2, device)
        r = rate(update, args.image_steps, device)
        batches.close()
        print(f"\nimages: obs {obs_dim} + one 84x84 camera (conv encoder, random shift, prefetched frames), "
              f"batch {args.image_batch}: {r:.2f} updates/s")
        bench_device_images(args, device)


def bench_device_images(args, device, n=20_000, obs_dim=19, act_dim=7):
    """Image IQL with ``n`` frames on the GPU (0.4 GB at 84 px): eager vs graphed vs bf16, alternating rounds."""
    title = f"\nimages on the GPU (obs {obs_dim} + one 84x84 camera, frames on the device, batch {args.image_batch})"
    if device.type != "cuda":
        print(f"{title}: no CUDA (eager / graphed / graphed + bf16 rows need --device cuda)")
        return
    gen = torch.Generator().manual_seed(0)
    obs, act = torch.randn(n, obs_dim, generator=gen), torch.rand(n, act_dim, generator=gen) * 2 - 1
    rew, done = torch.rand(n, generator=gen).numpy(), np.zeros(n, np.float32)
    key = "frames/cam_84"
    frames = torch.randint(0, 256, (n, 84, 84, 3), dtype=torch.uint8, device=device)
    contenders, alive = {}, []  # keep the batches alive: a graph reads their tensors by address
    for name, graph, amp in (("eager", False, False), ("eager + bf16", False, True), ("graphed", True, False),
                             ("graphed + bf16", True, True)):
        torch.manual_seed(0)
        model = ObsModel({"obs": (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))}, {key: 84})
        learner = IQL(model, act_dim, total_steps=1_000_000).to(device)
        learner.amp = amp
        batches = TransitionBatches({"obs": obs}, act, rew, done, np.arange(n - 1), args.image_batch, device, 0,
                                    (key,), device_frames={key: frames})
        alive.append(batches)
        if graph:
            fn = learner.graphed_update(lambda b=batches: b.sample(0), (batches.generator,), batches.generator)
            if fn is None:
                print(f"images {name}: capture failed (see the warning above); not timed")
                continue
        else:
            fn = lambda lr=learner, b=batches: lr.update(b.sample(0), b.generator)  # noqa: E731
        contenders[name] = fn
    for fn in contenders.values():  # warm-up (cuDNN picks its kernels)
        rate(fn, 10, device)
    rates = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            rates[name].append(rate(fn, args.image_steps, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    header = f"{'contender':<36}{'updates/s':>10}{'x eager':>11}"
    print(f"{title}, {args.rounds} rounds x {args.image_steps} updates\n{header}\n{'-' * len(header)}")
    for name, r in med.items():
        print(f"{'images ' + name:<36}{r:>10.1f}{r / med['eager']:>10.2f}x")


def bench_features(args, device):
    """Feature IQL (9 proprio dims + 2 cameras x components) vs low-dim IQL on Lift's privileged obs (19)."""
    n, act_dim = min(args.transitions, 100_000), 7
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(n, 19, generator=gen)
    data = (obs, torch.rand(n, act_dim, generator=gen) * 2 - 1, torch.rand(n, generator=gen),
            (torch.rand(n, generator=gen) < 0.001).float(), torch.roll(obs, -1, 0))
    features, feature_dim = ours_features(9, 2, args.components, 256, act_dim, n, device)
    contenders = {"low-dim IQL (privileged obs 19)": ours(19, act_dim, data, device)[0],
                  f"feature IQL (9 + 2x{args.components} = {feature_dim})": features}
    for fn in contenders.values():
        rate(fn, 10, device)
    rates = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            rates[name].append(rate(fn, args.feature_steps, device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["low-dim IQL (privileged obs 19)"]
    header = f"{'contender':<36}{'updates/s':>10}{'x low-dim':>11}"
    print(f"\nfeature IQL (pixel policy on cached frozen-encoder features), act {act_dim}, batch 256, "
          f"{args.rounds} rounds x {args.feature_steps} updates\n{header}\n{'-' * len(header)}")
    for name, r in med.items():
        print(f"{name:<36}{r:>10.1f}{r / base:>10.2f}x")
    print(f"load average {load_average():.1f} (target: feature IQL >= 0.8x low-dim)")


if __name__ == "__main__":
    main()
