"""Random reads of frames inside zarr v3 shards, without zarr's per-chunk overhead.

The store keeps frames as zarr v3 shards of 256 frames made of small inner chunks (a few frames
each): few files, yet any single frame is one small byte range. zarr-python 3.1 reads the chunks of
a shard one awaited request after another, which makes a random batch of 256 frames tens of times
slower than reading those byte ranges directly (tools/bench_dataset.py). `ShardReader` does what
zarr's sharding codec does — read the shard index and check its crc32c, read each needed chunk's
byte range, check the chunk's crc32c, decompress — with plain `os.pread`, for the layouts the store
writes (row-major frames, inner codecs bytes + zstd or blosc + crc32c); `ShardReader.for_array`
returns None for anything else and the caller falls back to zarr.
"""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numcodecs.blosc
import numcodecs.zstd
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.storage import LocalStore

_EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written
_DECOMPRESS = {ZstdCodec: numcodecs.zstd.decompress, BloscCodec: numcodecs.blosc.decompress}


class ShardReader:
    """Reads rows of a (N, *row) uint8 array stored as shards of row-chunks in a local zarr store."""

    def __init__(self, array_dir: Path, row_shape: tuple[int, ...], shard_rows: int, chunk_rows: int,
                 fill_value, decompress, checksummed: bool):
        self.array_dir = array_dir
        self.row_shape = row_shape
        self.shard_rows = shard_rows
        self.chunk_rows = chunk_rows
        self.fill_value = fill_value
        self.decompress = decompress
        self.checksummed = checksummed
        self.chunk_bytes = chunk_rows * int(np.prod(row_shape))
        self.index_bytes = 16 * (shard_rows // chunk_rows) + 4
        self.chunk_tail = "/".join("0" * len(row_shape))

    @classmethod
    def for_array(cls, arr: zarr.Array) -> "ShardReader | None":
        """A reader when ``arr`` has a layout written by `TrajectoryDataset`, else None."""
        meta = arr.metadata
        if not isinstance(arr.store, LocalStore) or meta.zarr_format != 3 or len(meta.codecs) != 1:
            return None
        shard = meta.codecs[0]
        if not isinstance(shard, ShardingCodec):
            return None
        row_shape = tuple(arr.shape[1:])
        inner = [type(c) for c in shard.codecs]
        checksummed = inner[-1:] == [Crc32cCodec]
        compressors = inner[1:-1] if checksummed else inner[1:]
        shard_rows, chunk_rows = int(meta.chunk_grid.chunk_shape[0]), int(shard.chunk_shape[0])
        if (
            tuple(shard.chunk_shape[1:]) != row_shape
            or tuple(meta.chunk_grid.chunk_shape[1:]) != row_shape
            or shard_rows % chunk_rows
            or shard.index_location != ShardingCodecIndexLocation.end
            or [type(c) for c in shard.index_codecs] != [BytesCodec, Crc32cCodec]
            or inner[:1] != [BytesCodec]
            or len(compressors) > 1
            or any(c not in _DECOMPRESS for c in compressors)
            or getattr(meta.chunk_key_encoding, "separator", None) != "/"
            or meta.chunk_key_encoding.name != "default"
            or np.dtype(arr.dtype) != np.uint8  # one byte: no byte order, no transposes to undo
        ):
            return None
        return cls(Path(arr.store.root) / arr.path / "c", row_shape, shard_rows, chunk_rows, arr.fill_value,
                   _DECOMPRESS[compressors[0]] if compressors else None, checksummed)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed), fill value where nothing was written."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices),) + self.row_shape, dtype=np.uint8)
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
            chunks: dict[int, np.ndarray | None] = {}
            for row, j in zip(rows.tolist(), dest.tolist()):
                c = row // self.chunk_rows
                if c not in chunks:
                    chunks[c] = self._read_chunk(fd, path, c, index[c])
                out[j] = self.fill_value if chunks[c] is None else chunks[c][row % self.chunk_rows]
        finally:
            os.close(fd)

    def _read_chunk(self, fd: int, path: Path, c: int, entry: np.ndarray) -> np.ndarray | None:
        offset, nbytes = entry
        if offset == _EMPTY:
            return None
        data = os.pread(fd, int(nbytes), int(offset))
        if self.checksummed:
            if len(data) < 4 or google_crc32c.value(data[:-4]) != int.from_bytes(data[-4:], "little"):
                raise ValueError(f"{path}: chunk {c} fails its crc32c check (corrupt bytes)")
            data = data[:-4]
        if self.decompress is not None:
            data = self.decompress(data)
        if len(data) != self.chunk_bytes:
            raise ValueError(f"{path}: chunk {c} decodes to {len(data)} bytes, not {self.chunk_bytes}")
        return np.frombuffer(data, dtype=np.uint8).reshape((self.chunk_rows,) + self.row_shape)
