"""Transition batches for offline RL, sampled on the training device.

Low-dim arrays (observations, actions, rewards, terminal flags) are small, so they are normalised
once and held on the device; a step's batch is a handful of index gathers with no host round trip.
Frames can exceed RAM, so by default they are read from the zarr store by a background thread a few
steps ahead. Indices of step s come from an RNG keyed by (seed, s) there, so prefetching never changes
which batch a step sees and a resumed run replays the same batches. Frames that fit in GPU memory can
be held there instead (``device_frames``, `frames_to_device`): the batch is then gathered on the device
like the low-dim one, from the device generator, and the whole update can run as a CUDA graph. The two
ways draw different batches, so a run resumes only the way it started (the sampler state records it).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

import numpy as np
import torch

from robot_pref.data.dataset import DatasetError, TrajectoryDataset


def transition_rewards(ds: TrajectoryDataset, reward_key: str,
                       transform: Callable[[np.ndarray], np.ndarray] = lambda r: r) -> np.ndarray:
    """Per-frame reward array r(s_t), after ``transform`` (the training's normalisation, `scale_rewards`).

    ``"true"``: the ground truth (the oracle). ``"<key>"``: the learned reward ``rewards/<key>``. The
    trivial-reward baselines read no ground truth: ``"zero"`` is 0 at every frame (untransformed: zero means
    zero), ``"constant:<key>"`` is the mean of the transformed ``rewards/<key>`` at every frame, i.e. the
    reward the learned-reward policy sees with all its information about which frame is better removed.
    """
    if not reward_key:
        raise ValueError("no reward key: pass --reward-key true (ground truth, the oracle baseline) or the "
                         f"name of a learned reward; {ds.path} holds rewards {ds.reward_keys or 'none'}")
    if reward_key == "zero":
        return np.zeros(ds.n_frames, np.float32)
    kind, _, source = reward_key.rpartition(":")
    if kind and kind != "constant":
        raise ValueError(f"unknown reward key {reward_key!r}: use true, zero, <learned key> or constant:<learned key>")
    if kind and source == "true":
        raise ValueError("constant:true would read the ground truth; the constant baseline averages a learned "
                         "reward: use constant:<learned key>")
    if source == "true":
        return transform(ds.ground_truth("reward").astype(np.float32))
    if source not in ds.reward_keys:
        raise KeyError(f"{ds.path} has no reward {source!r} (rewards/: {ds.reward_keys or 'none'}); "
                       "write it with `robot-pref relabel` or train on --reward-key true")
    reward = transform(ds.get(f"rewards/{source}").astype(np.float32))
    if kind:
        return np.full(ds.n_frames, float(reward.mean()), np.float32)
    return reward


def scale_rewards(r: np.ndarray, normalize: str, scale: float, bias: float) -> np.ndarray:
    """Optional normalisation (``minmax`` to [0, 1], ``standardize`` to mean 0 / std 1), then r * scale + bias."""
    if normalize == "minmax":
        lo, hi = float(r.min()), float(r.max())
        r = (r - lo) / max(hi - lo, 1e-8)
    elif normalize == "standardize":
        r = (r - r.mean()) / max(float(r.std()), 1e-8)
    elif normalize != "none":
        raise ValueError(f"reward normalisation must be none, minmax or standardize, got {normalize!r}")
    return (r * scale + bias).astype(np.float32)


def frames_to_device(ds: TrajectoryDataset, key: str, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """All (N, H, W, C) uint8 frames of ``key`` in one device tensor, read in chunks (no full host copy)."""
    out = torch.empty(ds.shape(key), dtype=torch.uint8, device=device)
    for start in range(0, ds.n_frames, chunk):
        stop = min(start + chunk, ds.n_frames)
        out[start:stop].copy_(torch.from_numpy(ds.get(key, slice(start, stop))))
    return out


class TransitionBatches:
    """(s, a, r, s', d) batches of ``batch_size`` on ``device``; `sample(step)` returns a dict of tensors.

    ``lowdim`` maps keys to normalised (N, d) per-frame arrays and ``action`` is normalised to
    [-1, 1]; ``reward[t]`` and ``done[t]`` belong to transition t -> t+1, ``valid`` lists the t that
    have a successor. Frames for ``frame_keys``: ``device_frames`` maps each key to its (N, H, W, C) uint8
    tensor on ``device``, or else ``read_frames(key, indices)`` returns them from the host.
    """

    def __init__(self, lowdim: dict[str, torch.Tensor], action: torch.Tensor, reward: np.ndarray,
                 done: np.ndarray, valid: np.ndarray, batch_size: int, device: torch.device, seed: int,
                 frame_keys: tuple[str, ...] = (), read_frames: Callable[[str, np.ndarray], np.ndarray] | None = None,
                 prefetch: int = 4, device_frames: dict[str, torch.Tensor] | None = None):
        self.device = device
        self.batch_size = batch_size
        self.seed = seed
        self.n_transitions = len(valid)
        self._idx = np.asarray(valid, np.int64)
        self.valid = torch.as_tensor(self._idx, device=device)
        # one row per frame t: [obs_t | obs_t+1 | a_t | r_t | d_t] for every low-dim key, so a batch is
        # one gather and the fields are column views (a dozen kernels fewer per step)
        lowdim = {k: v.to(device) for k, v in lowdim.items()}
        columns = list(lowdim.values()) + [torch.roll(v, -1, 0) for v in lowdim.values()] + [
            action.to(device), torch.as_tensor(reward, dtype=torch.float32, device=device)[:, None],
            torch.as_tensor(done, dtype=torch.float32, device=device)[:, None]]
        self.table = torch.cat(columns, 1)
        widths = [c.shape[1] for c in columns]
        bounds = np.cumsum([0] + widths)
        self._slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.lowdim_keys = tuple(lowdim)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.frame_keys = tuple(frame_keys)
        self.device_frames = device_frames or {}
        if self.device_frames and set(self.device_frames) != set(self.frame_keys):
            raise ValueError(f"device_frames holds {sorted(self.device_frames)}, the frame keys are {self.frame_keys}")
        self.frames_on_device = bool(self.device_frames)
        self._read_frames = read_frames
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._prefetch = prefetch

    @classmethod
    def from_dataset(cls, ds: TrajectoryDataset, lowdim: dict[str, torch.Tensor], action: torch.Tensor,
                     reward: np.ndarray, frame_keys: tuple[str, ...], batch_size: int, device: torch.device,
                     seed: int, exclude_episodes: tuple[int, ...] = (), frames_on_device: bool = False
                     ) -> "TransitionBatches":
        """Transitions of a dataset: t uses reward[t + 1] (reward arrays hold r(s_t)) and ds.terminal_flags();
        none from ``exclude_episodes`` (held out). ``frames_on_device``: copy the frames to ``device`` first."""
        idx = ds.transition_indices()
        if exclude_episodes:
            idx = idx[~np.isin(ds.episode_of(idx), exclude_episodes)]
        if len(idx) == 0:
            raise DatasetError(f"{ds.path} has no transitions (every episode has one step); collect longer episodes")
        r_next = np.zeros(ds.n_frames, np.float32)
        r_next[idx] = reward[idx + 1]
        if not np.isfinite(r_next).all():
            bad = int((~np.isfinite(r_next)).sum())
            raise DatasetError(f"{bad} transitions of {ds.path} have a NaN/inf reward (a relabel that did not finish?); "
                               "rerun `robot-pref relabel` to fill the reward array")
        device_frames = {k: frames_to_device(ds, k, device) for k in frame_keys} if frames_on_device else None
        return cls(lowdim, action, r_next, ds.terminal_flags(), idx, batch_size, device, seed, frame_keys, ds.get,
                   device_frames=device_frames)

    # --------------------------------------------------------------- sampling
    def sample(self, step: int) -> dict[str, Any]:
        if self.frame_keys and not self.frames_on_device:
            i, frames = self._next_frames(step)
        else:
            i = self.valid[torch.randint(self.n_transitions, (self.batch_size,), generator=self.generator,
                                         device=self.device)]
            frames = {k: (f[i], f[i + 1]) for k, f in self.device_frames.items()}
        rows = self.table[i]
        cols = [rows[:, sl] for sl in self._slices]
        n = len(self.lowdim_keys)
        obs, next_obs = dict(zip(self.lowdim_keys, cols[:n])), dict(zip(self.lowdim_keys, cols[n:2 * n]))
        for key in self.frame_keys:
            obs[key], next_obs[key] = frames[key][0], frames[key][1]
        return {"obs": obs, "next_obs": next_obs, "action": cols[-3], "reward": cols[-2][:, 0], "done": cols[-1][:, 0]}

    def _frame_indices(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return self._idx[rng.integers(0, self.n_transitions, self.batch_size)]

    def _produce(self, start: int) -> None:
        step = start
        while not self._stop.is_set():
            i = self._frame_indices(step)
            both = np.concatenate([i, i + 1])
            item = (step, i, {k: torch.from_numpy(self._read_frames(k, both)) for k in self.frame_keys})
            if self.device.type == "cuda":
                item[2].update({k: v.pin_memory() for k, v in item[2].items()})
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    def _next_frames(self, step: int) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        if self._thread is None:
            self._queue = queue.Queue(self._prefetch)
            self._thread = threading.Thread(target=self._produce, args=(step,), daemon=True)
            self._thread.start()
        got, i, frames = self._queue.get()
        if got != step:
            raise RuntimeError(f"batch for step {got} arrived at step {step}; sample() must be called once per step")
        b = len(i)
        out = {}
        for k, f in frames.items():
            f = f.to(self.device, non_blocking=True)
            out[k] = (f[:b], f[b:])
        return torch.as_tensor(i, device=self.device), out

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # --------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "frames_on_device": self.frames_on_device}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("frames_on_device", False)  # older checkpoints streamed them
        if self.frame_keys and saved != self.frames_on_device:
            where = {True: "kept on the GPU", False: "streamed from the host"}
            raise ValueError(f"this run's frames were {where[saved]}, now they are {where[self.frames_on_device]}: "
                             "the two draw different batches; resume with --frames-on-device "
                             f"{str(saved).lower()} (or start afresh with --overwrite)")
        self.generator.set_state(state["generator"].cpu())  # a checkpoint loaded onto CUDA moves it there
