"""Random reads of one-frame chunks inside zarr v3 shards, without zarr's per-chunk overhead.

The store keeps frames as zarr v3 shards of 256 frames with one-frame inner chunks: few files, yet
any single frame is one small byte range. zarr-python 3.1 reads the chunks of a shard one awaited
request after another, which makes a random batch of 256 frames ~25x slower than reading those byte
ranges directly (tools/bench_dataset.py). `ShardReader` does what zarr's sharding codec does — read
the shard index and check its crc32c, read each requested chunk's byte range, decode — with plain
`os.pread`, for the one layout the store writes; `ShardReader.for_array` returns None for anything
else and the caller falls back to zarr.
"""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

_EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written


class ShardReader:
    """Reads rows of a (N, *row) array stored as shards of one-row chunks in a local zarr store."""

    def __init__(self, array_dir: Path, row_shape: tuple[int, ...], shard_rows: int, dtype: np.dtype,
                 fill_value, compressed: bool, checksummed: bool):
        self.array_dir = array_dir
        self.row_shape = row_shape
        self.shard_rows = shard_rows
        self.dtype = dtype
        self.fill_value = fill_value
        self.codec = Zstd() if compressed else None
        self.checksummed = checksummed
        self.row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        self.index_bytes = 16 * shard_rows + 4
        self.chunk_tail = "/".join("0" * len(row_shape))

    @classmethod
    def for_array(cls, arr: zarr.Array) -> "ShardReader | None":
        """A reader when ``arr`` has exactly the layout written by `TrajectoryDataset`, else None."""
        meta = arr.metadata
        if not isinstance(arr.store, LocalStore) or meta.zarr_format != 3 or len(meta.codecs) != 1:
            return None
        shard = meta.codecs[0]
        row_shape = tuple(arr.shape[1:])
        inner = tuple(type(c) for c in shard.codecs) if isinstance(shard, ShardingCodec) else ()
        if (
            not isinstance(shard, ShardingCodec)
            or tuple(shard.chunk_shape) != (1,) + row_shape
            or tuple(meta.chunk_grid.chunk_shape[1:]) != row_shape
            or shard.index_location != ShardingCodecIndexLocation.end
            or tuple(type(c) for c in shard.index_codecs) != (BytesCodec, Crc32cCodec)
            or inner not in [(BytesCodec,) + z + c for z in ((), (ZstdCodec,)) for c in ((), (Crc32cCodec,))]
            or getattr(meta.chunk_key_encoding, "separator", None) != "/"
            or meta.chunk_key_encoding.name != "default"
            or np.dtype(arr.dtype).itemsize != 1  # byte order never matters for the uint8 frames
        ):
            return None
        return cls(Path(arr.store.root) / arr.path / "c", row_shape, int(meta.chunk_grid.chunk_shape[0]),
                   np.dtype(arr.dtype), arr.fill_value, compressed=ZstdCodec in inner,
                   checksummed=Crc32cCodec in inner)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed), fill value where nothing was written."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices),) + self.row_shape, dtype=self.dtype)
        shards = indices // self.shard_rows
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            self._read_shard(int(shards[group[0]]), indices[group] % self.shard_rows, out, group)
        return out

    def _read_shard(self, shard: int, rows: np.ndarray, out: np.ndarray, dest: np.ndarray) -> None:
        path = self.array_dir / str(shard) / self.chunk_tail
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            out[dest] = self.fill_value
            return
        try:
            size = os.fstat(fd).st_size
            raw = os.pread(fd, self.index_bytes, size - self.index_bytes) if size >= self.index_bytes else b""
            if len(raw) != self.index_bytes or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ValueError(f"{path}: the shard index is damaged (bad length or crc32c)")
            index = np.frombuffer(raw[:-4], dtype="<u8").reshape(-1, 2)
            for row, j in zip(rows, dest):
                offset, nbytes = index[row]
                if offset == _EMPTY:
                    out[j] = self.fill_value
                    continue
                data = os.pread(fd, int(nbytes), int(offset))
                if self.checksummed:
                    if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
                        raise ValueError(f"{path}: chunk {row} fails its crc32c check (corrupt bytes)")
                    data = data[:-4]
                if self.codec is not None:
                    data = self.codec.decode(data)
                if len(data) != self.row_bytes:
                    raise ValueError(f"{path}: chunk {row} decodes to {len(data)} bytes, not {self.row_bytes}")
                out[j] = np.frombuffer(data, dtype=self.dtype).reshape(self.row_shape)
        finally:
            os.close(fd)
