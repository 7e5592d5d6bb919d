"""Random training batches read straight from the store, prefetched by background threads.

Low-dim arrays come from RAM (the dataset keeps them after the first read). Frames are read per
batch from their shards — unless they fit comfortably in RAM, then they are loaded once — so a
dataset larger than RAM trains at disk speed while the learner works on the previous batch.
The batch sequence depends only on the seed, not on the number of reader threads.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from robot_pref.data.dataset import TrajectoryDataset


def available_memory() -> int:
    """Bytes of RAM the OS could give us now (MemAvailable), for deciding whether frames fit."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class BatchSampler:
    """Iterate to get endless (or ``num_batches``) uniform random batches with replacement.

    Each batch is a dict: ``"index"`` (the frame rows t), every key of ``keys`` at rows t,
    ``"next/<key>"`` for every key of ``next_keys`` at rows t + 1, and every array of ``extra``
    at rows t. The reward of transition t -> t+1 is reward[t + 1], so pass reward keys in
    ``next_keys``; ``extra={"done": ds.terminal_flags()}`` adds IQL's done flags.

    indices: rows to draw from; default every frame, or `transition_indices()` (rows with a
        successor in their episode) when ``next_keys`` is given.
    in_memory: load frames into RAM first; None decides by size (under ``memory_fraction`` of the
        available RAM, and every episode rendered).
    prefetch / workers: batches read ahead / reader threads.
    """

    def __init__(
        self,
        dataset: "TrajectoryDataset",
        keys: Sequence[str],
        batch_size: int = 256,
        *,
        next_keys: Sequence[str] = (),
        indices: np.ndarray | None = None,
        extra: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        prefetch: int = 4,
        workers: int = 2,
        in_memory: bool | None = None,
        memory_fraction: float = 0.25,
        num_batches: int | None = None,
    ):
        from robot_pref.data.dataset import DatasetError

        self.dataset = dataset
        self.keys = tuple(keys)
        self.next_keys = tuple(next_keys)
        self.batch_size = int(batch_size)
        if indices is None:
            indices = dataset.transition_indices() if self.next_keys else np.arange(dataset.n_frames)
        self.indices = np.asarray(indices, dtype=np.int64)
        if not len(self.indices):
            raise DatasetError(f"{dataset.path}: no rows to sample batches from (empty dataset or indices)")
        if self.next_keys and np.isin(self.indices, dataset.episode_ends - 1).any():
            raise DatasetError("next_keys need rows with a successor in their episode; the indices hold the last "
                               "row of an episode. Draw from dataset.transition_indices()")
        self.extra = {k: np.asarray(v) for k, v in (extra or {}).items()}
        for name, values in self.extra.items():
            if len(values) != dataset.n_frames:
                raise DatasetError(f"extra[{name!r}] has {len(values)} rows, the dataset has {dataset.n_frames}")
        self.seed = seed
        self.prefetch = max(1, int(prefetch))
        self.workers = max(1, int(workers))
        self.num_batches = num_batches
        frame_keys = [k for k in dict.fromkeys(self.keys + self.next_keys) if k.startswith("frames/")]
        if in_memory is None:
            nbytes = sum(dataset.n_frames * int(np.prod(dataset.shape(k)[1:])) for k in frame_keys)
            rendered = all(dataset.rendered_episodes(k.split("/", 1)[1]).all() for k in frame_keys)
            in_memory = rendered and nbytes < memory_fraction * available_memory()
        self.in_memory = bool(in_memory)
        self._ram: dict[str, np.ndarray] = {}
        for key in dict.fromkeys(self.keys + self.next_keys):
            if not key.startswith("frames/"):
                dataset.get(key, self.indices[:1])  # loads the low-dim array once, before threads start
            elif self.in_memory:
                self._ram[key] = dataset.get(key)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an endless BatchSampler has no length; pass num_batches")
        return self.num_batches

    def _rows(self, key: str, rows: np.ndarray) -> np.ndarray:
        ram = self._ram.get(key)
        return ram[rows] if ram is not None else self.dataset.get(key, rows)

    def read(self, index: np.ndarray) -> dict[str, np.ndarray]:
        """The batch at frame rows ``index`` (what the threads run)."""
        batch = {"index": index}
        for key in dict.fromkeys(self.keys + self.next_keys):
            now, nxt = key in self.keys, key in self.next_keys
            rows = np.concatenate([index, index + 1]) if now and nxt else index + 1 if nxt else index
            values = self._rows(key, rows)  # one read when both t and t+1 are wanted
            if now:
                batch[key] = values[: len(index)]
            if nxt:
                batch[f"next/{key}"] = values[-len(index):]
        for name, values in self.extra.items():
            batch[name] = values[index]
        return batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="robot_pref-batches")
        pending: deque = deque()
        try:
            drawn = 0
            while self.num_batches is None or drawn < self.num_batches:
                index = self.indices[rng.integers(0, len(self.indices), self.batch_size)]
                pending.append(pool.submit(self.read, index))
                drawn += 1
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer stopped early (break, exception): drop the read-ahead
            pool.shutdown(wait=True, cancel_futures=True)
