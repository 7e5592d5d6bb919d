"""What every importer and exporter of other tools' files shares: the reward shift, resumable output,
and the checks before an export writes anything.

An import writes one episode at a time through `TrajectoryDataset.append_episode` (episode-atomic),
and records what it reads in ``attrs["env"]["import"]``. Running the same import again on the same
``--out`` reopens it and continues after the last committed episode, so an import stopped by an error
or a kill resumes where it stopped; an ``--out`` holding anything else is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from robot_pref.data.dataset import DatasetError, TrajectoryDataset


def shift_next(values: np.ndarray) -> np.ndarray:
    """A value of the *next* state per row (robomimic ``rewards``, LeRobot ``next.reward``: r(s_{t+1}))
    -> the store's value of the row's own state r(s_t); the unrecorded r(s_0) repeats r(s_1)."""
    values = np.asarray(values).reshape(-1)
    return np.concatenate([values[:1], values[:-1]])


def open_import(out: str | Path, source: Mapping[str, Any], overwrite: bool, *, env: Mapping[str, Any],
                **create: Any) -> TrajectoryDataset:
    """A new store at ``out`` for the import described by ``source``, or the partial one left there.

    ``source`` names the input and every option that changes what is written; a store at ``out``
    made from another source (or with other options) is refused unless ``overwrite``.
    """
    source = dict(source)
    if Path(out).exists() and not overwrite:
        try:
            ds = TrajectoryDataset.open(out, "a")
        except DatasetError as err:
            raise DatasetError(f"{out} already exists and cannot be continued ({err}); choose another --out, "
                               "or pass --overwrite to replace it") from err
        have = ds.env_meta.get("import")
        if have != source:
            raise DatasetError(
                f"{out} already exists and holds {'an import of ' + str(have.get('path')) if have else 'other data'}"
                f"{' with other settings' if have and have.get('path') == source.get('path') else ''}; "
                "choose another --out, or pass --overwrite to replace it")
        return ds
    return TrajectoryDataset.create(out, overwrite=overwrite, env={**env, "import": source}, **create)


def check_resumed(ds: TrajectoryDataset, lengths: list[int], what: str) -> int:
    """How many source episodes ``ds`` already holds; their lengths must match the source's."""
    have = ds.episode_table()["length"].tolist()
    if have != list(lengths[: len(have)]):
        raise DatasetError(f"{ds.path} holds {len(have)} episodes whose lengths differ from {what}'s; "
                           "the source changed since the import began: import again with --overwrite")
    return len(have)


def open_export(dataset: str, out: str, overwrite: bool, example: str) -> tuple[TrajectoryDataset, Path]:
    """The store to export and the output path, after the checks that must pass before anything is written;
    ``example`` is the command line shown when an argument is missing."""
    if not dataset or not out:
        raise ValueError(f"give --dataset and --out, e.g. `{example}`")
    ds = TrajectoryDataset.open(dataset)
    if Path(out).exists() and not overwrite:
        raise DatasetError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    return ds, Path(out)


def export_reward(ds: TrajectoryDataset, key: str) -> np.ndarray | None:
    """The per-frame reward to export: ``rewards/<key>``, the ground truth for ``true``, None for no key."""
    if not key:
        return None
    if key == "true":
        return ds.ground_truth("reward")
    if key not in ds.reward_keys:
        raise DatasetError(f"{ds.path} has no reward {key!r} (it has {ds.reward_keys or 'none'}; 'true' is the "
                           f"ground truth); write one with `robot-pref relabel --key {key}`")
    reward = ds.get(f"rewards/{key}")
    if np.isnan(reward).any():
        raise DatasetError(f"rewards/{key} of {ds.path} has unwritten (NaN) rows; finish `robot-pref relabel` first")
    return reward
