"""Row groups of a set of Parquet files: where they are, and reading a few of them.

:class:`RowGroupIndex` is built from the files' footers (read concurrently;
on object stores one ranged GET of each file's tail): for every row group its
file, rows, byte range and decoded size, as flat NumPy arrays, so a dataset
of millions of rows costs a few bytes per row group in every worker.

:class:`RowGroupReader` reads chosen row groups of one file. Tensor columns
in the layout the sink writes are decoded from their pages (:mod:`.pages`;
local files by ``os.pread`` of their column chunks), the other columns (and
any chunk the fast path refuses) by pyarrow: local files through its own
file reader. On object stores the byte ranges of the
wanted row groups (neighbours closer than ``HOLE_BYTES`` merged into one
range) and, when not cached, the footer are fetched in one ``cat_ranges``
call (concurrent requests on s3fs), then decoded from memory.
"""

from __future__ import annotations

import bisect
import io
import os
import struct
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import get_fs, is_local
from .clients import ProcessFilesystem
from .pages import NotDecodable, TensorLeaf, decode_chunk

# Footer bytes fetched in the first request (a footer is a few KiB per 100 row groups).
TAIL_BYTES = 256 * 1024
# On object stores, row groups closer than this are fetched as one range: a request costs
# more than reading this much more.
HOLE_BYTES = 1024 * 1024
# Parsed footers kept per process (the files of the windows being read).
FOOTER_CACHE = 64


@dataclass
class RowGroupIndex:
    """One entry per row group, in file order; ``first_row`` numbers rows across all files."""

    files: list[str]
    sizes: list[int]
    file: np.ndarray  # int32
    group: np.ndarray  # int32
    rows: np.ndarray  # int64
    first_row: np.ndarray  # int64
    start: np.ndarray  # int64: first byte of the row group's column chunks (0 for local files)
    stop: np.ndarray  # int64: end of its last column chunk (0 for local files)
    decoded_bytes: np.ndarray  # int64: uncompressed size
    schema: pa.Schema | None

    def file_groups(self, file: int) -> slice:
        """Positions of ``file``'s row groups in the arrays."""
        lo, hi = np.searchsorted(self.file, [file, file + 1])
        return slice(int(lo), int(hi))

    @property
    def num_rows(self) -> int:
        return int(self.rows.sum())

    def __len__(self) -> int:
        return len(self.rows)


def _footer_entries(md: pq.FileMetaData, ranges: bool = True) -> np.ndarray:
    """``[row groups, 4]``: rows, first byte, end byte and decoded size of each row group.

    Byte ranges only with ``ranges`` (object stores fetch them; local files are read by
    pyarrow, and the ranges cost a metadata call per column chunk: thousands per file).
    """
    entries = np.zeros((md.num_row_groups, 4), dtype=np.int64)
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        first = end = 0
        if ranges:
            spans = [chunk_range(rg.column(c)) for c in range(rg.num_columns)]
            first = min((begin for begin, _ in spans), default=0)
            end = max((begin + length for begin, length in spans), default=0)
        entries[g] = (rg.num_rows, first, end, rg.total_byte_size)
    return entries


def build_index(
    files: list[str], storage_options: dict[str, Any] | None = None, sizes: list[int] | None = None
) -> tuple[RowGroupIndex, list[pq.FileMetaData]]:
    """The index of ``files`` (and their footers, for a caller that wants more from them)."""
    sizes = file_sizes(files, storage_options) if sizes is None else [int(s) for s in sizes]
    footers = read_footers(files, storage_options, sizes)
    ranges = bool(files) and not is_local(get_fs(files[0], storage_options)[0])
    per_file = [_footer_entries(md, ranges) for md in footers]
    entries = np.concatenate(per_file) if per_file else np.zeros((0, 4), dtype=np.int64)
    counts = [len(e) for e in per_file]
    rows = entries[:, 0]
    index = RowGroupIndex(
        files=list(files),
        sizes=sizes,
        file=np.repeat(np.arange(len(files), dtype=np.int32), counts),
        group=np.concatenate([np.arange(n, dtype=np.int32) for n in counts]) if counts else np.zeros(0, np.int32),
        rows=rows,
        first_row=np.cumsum(rows) - rows,
        start=entries[:, 1],
        stop=entries[:, 2],
        decoded_bytes=entries[:, 3],
        schema=footers[0].schema.to_arrow_schema() if footers else None,
    )
    return index, footers


def file_sizes(files: list[str], storage_options: dict[str, Any] | None) -> list[int]:
    if not files:
        return []
    fs, _ = get_fs(files[0], storage_options)
    paths = [get_fs(url, storage_options)[1] for url in files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [int(size) for size in pool.map(fs.size, paths)]


def read_footers(
    files: list[str], storage_options: dict[str, Any] | None = None, sizes: list[int] | None = None
) -> list[pq.FileMetaData]:
    """Every file's parsed footer: local files by pyarrow, remote ones by ranged reads of their tails."""
    if not files:
        return []
    fs, _ = get_fs(files[0], storage_options)
    paths = [get_fs(url, storage_options)[1] for url in files]
    if is_local(fs):
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(pq.read_metadata, paths))
    sizes = list(sizes) if sizes is not None else file_sizes(files, storage_options)
    starts = [max(0, size - TAIL_BYTES) for size in sizes]
    tails = _cat_ranges(fs, paths, starts, sizes)
    footers = []
    for path, size, start, tail in zip(paths, sizes, starts, tails):
        length = struct.unpack("<i", tail[-8:-4])[0] + 8
        if tail[-4:] != b"PAR1":
            raise ValueError(f"{path} is not a Parquet file (no PAR1 magic at its end)")
        if length > len(tail):  # a footer larger than the first read: fetch the rest
            start = size - length
            tail = _cat_ranges(fs, [path], [start], [size - len(tail)])[0] + tail
        footers.append(pq.read_metadata(RangeFile(size, [(start, tail)])))
    return footers


def _cat_ranges(fs, paths: list[str], starts: list[int], stops: list[int]) -> list[bytes]:
    """Byte ranges of (possibly remote) files, fetched concurrently where the filesystem can."""
    if not paths:
        return []
    got = fs.cat_ranges(paths, starts, stops, on_error="return")
    for path, value in zip(paths, got):
        if isinstance(value, BaseException):
            raise OSError(f"reading {path}: {value}") from value
    return got


class RangeFile(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges are held in memory.

    pyarrow reads the footer and column chunks through it; a read outside the held
    ranges goes to ``fetch(start, stop)`` (or fails when there is none).
    """

    def __init__(self, size: int, pieces: list[tuple[int, bytes]], fetch=None):
        self._size = size
        self._pieces = sorted(pieces, key=lambda p: p[0])
        self._starts = [start for start, _ in self._pieces]
        self._fetch = fetch
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def size(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        stop = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        out = self._bytes(self._pos, stop)
        self._pos = stop
        return out

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def range(self, start: int, stop: int) -> memoryview:
        """Bytes ``start``..``stop`` without copying them when they were fetched."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0:
            piece_start, data = self._pieces[i]
            if stop <= piece_start + len(data):
                return memoryview(data)[start - piece_start : stop - piece_start]
        return memoryview(self._bytes(start, stop))

    def _bytes(self, start: int, stop: int) -> bytes:
        if start >= stop:
            return b""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0:
            piece_start, data = self._pieces[i]
            if stop <= piece_start + len(data):
                return data[start - piece_start : stop - piece_start]
        if self._fetch is None:
            raise OSError(f"bytes {start}-{stop} were not fetched")
        return self._fetch(start, stop)


def coalesce(starts: np.ndarray, stops: np.ndarray, hole: int) -> list[tuple[int, int]]:
    """Sorted byte ranges with gaps up to ``hole`` merged."""
    merged: list[list[int]] = []
    for start, stop in sorted(zip(starts.tolist(), stops.tolist())):
        if merged and start - merged[-1][1] <= hole:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return [(a, b) for a, b in merged]


class RowGroupReader:
    """Reads row groups of the index's files; one per process (it caches parsed footers)."""

    def __init__(self, index: RowGroupIndex, storage_options: dict[str, Any] | None = None):
        self.index = index
        self.storage_options = storage_options
        self._client = ProcessFilesystem(index.files[0] if index.files else "", storage_options)
        self._paths = [get_fs(url, storage_options)[1] for url in index.files]
        self._footers: OrderedDict[int, pq.FileMetaData] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None, "_footers": OrderedDict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def local(self) -> bool:
        return not self.index.files or is_local(self._client.get())

    def _footer(self, file: int) -> pq.FileMetaData | None:
        with self._lock:
            md = self._footers.get(file)
            if md is not None:
                self._footers.move_to_end(file)
            return md

    def _remember(self, file: int, md: pq.FileMetaData) -> None:
        with self._lock:
            self._footers[file] = md
            while len(self._footers) > FOOTER_CACHE:
                self._footers.popitem(last=False)

    def read(self, file: int, groups: list[int], columns: list[str] | None) -> pa.Table:
        """Row groups ``groups`` (numbers within ``file``) as one table, in that order."""
        return self.read_with_tensors(file, groups, columns, {})[0]

    def read_with_tensors(
        self, file: int, groups: list[int], columns: list[str] | None, tensors: dict[str, TensorLeaf]
    ) -> tuple[pa.Table, dict[str, list[np.ndarray]]]:
        """Row groups ``groups`` of ``file``: the tensor columns of ``tensors`` decoded from their pages
        (:mod:`.pages`; one ``[rows, *shape]`` array per row group, in ``groups`` order) and the other
        ``columns`` (None: all) as one table. A tensor column the fast path cannot read is in the table."""
        fs = self._client.get()
        path = self._paths[file]
        wanted = [name for name in tensors if columns is None or name in columns]
        if is_local(fs):
            md = self._footer(file)
            if md is None:
                md = pq.read_metadata(path)
                self._remember(file, md)
            decoded = {}
            if wanted:
                with open(path, "rb") as raw:
                    decoded = self._decode_tensors(md, groups, tensors, wanted, _pread(raw.fileno()))
            rest = _other_columns(md, columns, decoded)
            if rest == []:  # every wanted column decoded from its pages: pyarrow has nothing to read
                return pa.table({}), decoded
            with pq.ParquetFile(path, metadata=md) as pf:
                return pf.read_row_groups(groups, columns=rest, use_threads=False), decoded
        source, md = self._remote_source(fs, file, path, groups, columns)
        decoded = self._decode_tensors(md, groups, tensors, wanted, source.range)
        rest = _other_columns(md, columns, decoded)
        if rest == []:
            return pa.table({}), decoded
        return pq.ParquetFile(source, metadata=md).read_row_groups(groups, columns=rest, use_threads=False), decoded

    @staticmethod
    def _decode_tensors(
        md: pq.FileMetaData, groups: list[int], tensors: dict[str, TensorLeaf], wanted: list[str], read_range
    ) -> dict[str, list[np.ndarray]]:
        decoded = {}
        for name in wanted:
            leaf = tensors[name]
            if leaf.leaf >= md.num_columns or md.schema.column(leaf.leaf).path.split(".")[0] != name:
                continue  # this file's columns are not where the first file's were
            try:
                arrays = []
                for g in groups:
                    chunk = md.row_group(g).column(leaf.leaf)
                    start, length = chunk_range(chunk)
                    arrays.append(
                        decode_chunk(read_range(start, start + length), chunk, leaf, md.row_group(g).num_rows)
                    )
            except (NotDecodable, IndexError, ValueError):
                continue  # pyarrow decodes this column (and says what is wrong with a damaged file)
            decoded[name] = arrays
        return decoded

    def _remote_source(
        self, fs, file: int, path: str, groups: list[int], columns: list[str] | None
    ) -> tuple[RangeFile, pq.FileMetaData]:
        """The wanted row groups' bytes (and the footer, when not cached) fetched in one ``cat_ranges``."""
        md = self._footer(file)
        size = self.index.sizes[file]
        if md is not None:  # the footer is known: fetch just the wanted columns' chunks
            starts, stops = column_chunk_ranges(md, groups, columns)
        else:
            at = np.arange(len(self.index))[self.index.file_groups(file)][groups]
            starts, stops = self.index.start[at], self.index.stop[at]
        ranges = coalesce(starts, stops, HOLE_BYTES)
        if md is None:
            ranges.append((max(0, size - TAIL_BYTES), size))
        data = _cat_ranges(fs, [path] * len(ranges), [a for a, _ in ranges], [b for _, b in ranges])
        source = RangeFile(
            size, [(a, d) for (a, _), d in zip(ranges, data)], fetch=lambda a, b: fs.cat_file(path, start=a, end=b)
        )
        if md is None:
            md = pq.ParquetFile(source).metadata
        self._remember(file, md)
        return source, md

    def remember_footers(self, footers: list[pq.FileMetaData]) -> None:
        """Start the footer cache with (the last ``FOOTER_CACHE`` of) these."""
        for file, md in enumerate(footers[-FOOTER_CACHE:], start=max(0, len(footers) - FOOTER_CACHE)):
            self._remember(file, md)


def _pread(fd: int):
    """``read_range(start, stop)`` of an open local file."""
    return lambda start, stop: memoryview(os.pread(fd, stop - start, start))


def _other_columns(
    md: pq.FileMetaData, columns: list[str] | None, decoded: dict[str, list[np.ndarray]]
) -> list[str] | None:
    """``columns`` (None: all) less those already decoded."""
    if not decoded:
        return columns
    names = columns if columns is not None else md.schema.to_arrow_schema().names
    return [name for name in names if name not in decoded]


def column_chunk_ranges(
    md: pq.FileMetaData, groups: list[int], columns: list[str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Byte ranges of the column chunks of ``columns`` (top-level names; None: all) in row groups ``groups``."""
    leaves = [i for i in range(md.num_columns) if columns is None or md.schema.column(i).path.split(".")[0] in columns]
    starts, stops = [], []
    for g in groups:
        rg = md.row_group(g)
        for i in leaves:
            start, length = chunk_range(rg.column(i))
            starts.append(start)
            stops.append(start + length)
    return np.array(starts, dtype=np.int64), np.array(stops, dtype=np.int64)


def chunk_range(col: pq.ColumnChunkMetaData) -> tuple[int, int]:
    """``(first byte, length)`` of a column chunk: from its dictionary page when it has one."""
    begin = col.data_page_offset
    if col.has_dictionary_page and 0 < col.dictionary_page_offset < begin:
        begin = col.dictionary_page_offset
    return begin, col.total_compressed_size
