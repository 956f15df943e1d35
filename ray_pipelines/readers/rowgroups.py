"""Row groups of a set of Parquet files: where they are, and reading a few of them.

:class:`RowGroupIndex` is built from the files' footers (locally two ``pread``
calls a file; on object stores one ranged GET of each file's tail, concurrent),
from their tables (:mod:`.footers`) where the page decoder's kernels run, else
from pyarrow's parse: for every row group its file, rows, byte range and decoded
size, as flat NumPy arrays, so a dataset of millions of rows costs a few bytes
per row group in every worker.

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.arrow import open_parquet
from ..storage import get_fs, is_local
from .clients import ProcessFilesystem
from .errors import UnreadableFile, naming_the_file
from .footers import FooterTable, footer_table
from .pages import NotDecodable, TensorLeaf, decode_chunk

# Footer bytes fetched in the first request (a footer is a few KiB per 100 row groups).
TAIL_BYTES = 256 * 1024
# On object stores, row groups closer than this are fetched as one range: a request costs
# more than reading this much more.
HOLE_BYTES = 1024 * 1024
# Parsed footers kept per process (the files of the windows being read).
FOOTER_CACHE = 64
# Files whose footers (their bytes and tables, 1-2.5 KB a row group) are held at once while a reader is
# made: a batch's, not every file's (55 GB for 10 million clips in five augment versions).
FOOTER_BATCH = 64
# A local output's small columns (scalars, masks, strings: what the page decoder leaves to pyarrow) are
# kept per reader process, each file's read whole once, when all of them fit in this (see ShardRows).
SMALL_COLUMNS_BYTES = 128 * 1024 * 1024
# What pyarrow raises for a file it cannot read (re-raised naming the file: .errors).
PYARROW_ERRORS = (pa.ArrowException, OSError)


@dataclass
class RowGroupIndex:
    """One entry per row group, in file order; ``first_row`` numbers rows across all files."""

    files: list[str]
    sizes: list[int]
    file: np.ndarray  # int32
    group: np.ndarray  # int32
    rows: np.ndarray  # int64
    first_row: np.ndarray  # int64
    start: np.ndarray  # int64: first byte of the row group's column chunks (0 for local files: not read)
    stop: np.ndarray  # int64: end of its last column chunk (0 for local files)
    decoded_bytes: np.ndarray  # int64: uncompressed size
    schema: pa.Schema | None

    def __getstate__(self) -> dict[str, Any]:
        """As it is, but a local index's byte ranges (one zero, held once: :func:`build_index`) as their
        length: NumPy pickles such a view as a full array (a DataLoader worker started by spawn or
        forkserver would hold 16 bytes a row group of zeros)."""
        state = dict(self.__dict__)
        if not self.has_ranges:
            state["start"] = state["stop"] = len(self.start)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in ("start", "stop"):
            if isinstance(state[name], int):
                state[name] = no_ranges(state[name])
        self.__dict__.update(state)

    def file_groups(self, file: int) -> slice:
        """Positions of ``file``'s row groups in the arrays."""
        lo, hi = np.searchsorted(self.file, [file, file + 1])
        return slice(int(lo), int(hi))

    @property
    def num_rows(self) -> int:
        return int(self.rows.sum())

    @property
    def has_ranges(self) -> bool:
        """Whether the index holds its row groups' byte ranges (an object store's), not :func:`no_ranges`
        (an empty array's strides are zero too: an index of no row groups holds its no ranges)."""
        return len(self.start) == 0 or self.start.strides != (0,)

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


@dataclass
class Footers:
    """Some files' footers as their Thrift bytes (for :mod:`.footers`' tables), parsed by pyarrow when
    asked (:meth:`parsed`: a few ms a file, which a reader that has the tables may never need). Files are
    numbered among all the reader's files: ``first`` is the number of ``files[0]``.

    A parsed footer weighs far more than its bytes (1.4 MB of memory for a 128-row encode file's
    172 KB), so only the last ``FOOTER_CACHE`` parsed are kept, and file 0's (the schema's):
    walking every file's (:meth:`each_parsed`) holds a few at a time, where a list of them all held
    11 GB for an output of a million latents."""

    files: list[str]
    raw: list[bytes]
    sizes: list[int]
    remote: bool  # on an object store (row groups' byte ranges are wanted there)
    first: int = 0

    def __post_init__(self) -> None:
        self._parsed: OrderedDict[int, pq.FileMetaData] = OrderedDict()

    @property
    def numbers(self) -> range:
        """The files' numbers among all the reader's files."""
        return range(self.first, self.first + len(self.raw))

    def parse(self, file: int) -> pq.FileMetaData:
        """``file``'s footer parsed by pyarrow, not kept."""
        with naming_the_file(self.files[file - self.first], PYARROW_ERRORS):
            return parse_footer(self.raw[file - self.first], self.sizes[file - self.first])

    def parsed(self, file: int) -> pq.FileMetaData:
        """``file``'s footer parsed, and kept (among the last ``FOOTER_CACHE``, or file 0's)."""
        md = self._parsed.get(file)
        if md is None:
            md = self._parsed[file] = self.parse(file)
            while len(self._parsed) > FOOTER_CACHE + 1:
                del self._parsed[next(other for other in self._parsed if other != 0)]
        return md

    def keep_parsed(self, file: int, md: pq.FileMetaData) -> None:
        """Keep ``file``'s footer, parsed elsewhere."""
        self._parsed[file] = md

    def each_parsed(self) -> Iterator[pq.FileMetaData]:
        return (self.parsed(file) for file in self.numbers)

    def last_files(self, total: int) -> range:
        """Those of the last ``FOOTER_CACHE`` of ``total`` files that are here (whose footers a reader
        process starts with: :meth:`RowGroupReader.remember_footers`)."""
        return range(max(self.first, total - FOOTER_CACHE), self.numbers.stop)

    def parse_last(self, total: int) -> None:
        """Parse the footers of :meth:`last_files`."""
        for file in self.last_files(total):
            self.parsed(file)

    def parsed_so_far(self) -> dict[int, pq.FileMetaData]:
        return dict(self._parsed)


def parse_footer(raw: bytes, size: int) -> pq.FileMetaData:
    """pyarrow's parse of a footer's Thrift bytes (of a file of ``size`` bytes)."""
    tail = raw + struct.pack("<i", len(raw)) + b"PAR1"
    # pyarrow reads the file's last 64 KiB first: bytes before the footer that it never parses
    tail = bytes(max(0, min(size, TAIL_BYTES) - len(tail))) + tail
    return pq.read_metadata(RangeFile(size, [(size - len(tail), tail)]))


@dataclass
class IndexPart:
    """Some files' row groups (:func:`index_part`): ``entries`` ``[row groups, 4]`` (rows, first byte, end
    byte, decoded size) and each file's number of row groups."""

    entries: np.ndarray
    counts: list[int]


def index_part(footers: Footers, tables: list[FooterTable | None] | None = None) -> IndexPart:
    """``footers``' files' part of the index; from ``tables`` (:func:`.footers.footer_table`) for the files
    that have one, which saves pyarrow a metadata call per row group and column chunk."""
    tables = tables or [None] * len(footers.raw)
    per_file = [
        _footer_entries(footers.parsed(file), footers.remote) if table is None else _table_entries(table)
        for file, table in zip(footers.numbers, tables)
    ]
    entries = np.concatenate(per_file) if per_file else np.zeros((0, 4), dtype=np.int64)
    return IndexPart(entries, [len(e) for e in per_file])


def build_index(
    files: list[str], sizes: list[int], parts: list[IndexPart], schema: pa.Schema | None, remote: bool = True
) -> RowGroupIndex:
    """The index of ``files`` from their parts, in file order. Byte ranges only where the files are
    ``remote`` (local reads never use them: a zero for every row group, held once), each column its own
    array (32 bytes a row group locally, where the parts' rows held 48)."""
    entries = np.concatenate([part.entries for part in parts]) if parts else np.zeros((0, 4), dtype=np.int64)
    counts = np.array([n for part in parts for n in part.counts], dtype=np.int64)
    rows = entries[:, 0].copy()
    group_starts = np.cumsum(counts) - counts
    if remote:
        start, stop = entries[:, 1].copy(), entries[:, 2].copy()
    else:
        start = stop = no_ranges(len(rows))
    return RowGroupIndex(
        files=list(files),
        sizes=list(sizes),
        file=np.repeat(np.arange(len(counts), dtype=np.int32), counts),
        group=(np.arange(len(rows)) - np.repeat(group_starts, counts)).astype(np.int32),
        rows=rows,
        first_row=np.cumsum(rows) - rows,
        start=start,
        stop=stop,
        decoded_bytes=entries[:, 3].copy(),
        schema=schema,
    )


def no_ranges(groups: int) -> np.ndarray:
    """A zero for each of ``groups`` row groups, held once (a local index's byte ranges)."""
    return np.broadcast_to(np.zeros(1, dtype=np.int64), groups)


def _table_entries(table: FooterTable) -> np.ndarray:
    """:func:`_footer_entries` from a footer's table (byte ranges always: they cost nothing here)."""
    start, stop = table.spans()
    return np.stack([table.rows, start, stop, table.row_groups[:, 1]], axis=1)


def file_sizes(files: list[str], storage_options: dict[str, Any] | None) -> list[int]:
    if not files:
        return []
    fs, _ = get_fs(files[0], storage_options)
    paths = [get_fs(url, storage_options)[1] for url in files]
    with ThreadPoolExecutor(max_workers=16) as pool:
        return [int(size) for size in pool.map(fs.size, paths)]


def footer_batches(
    files: list[str],
    storage_options: dict[str, Any] | None,
    sizes: list[int],
    tables: bool = False,
    first_footer: pq.FileMetaData | None = None,
) -> Iterator[tuple[Footers, list[FooterTable | None] | None]]:
    """The files' footers (:func:`read_footers`), ``FOOTER_BATCH`` files at a time, with their footer
    tables (:func:`.footers.footer_table`) when ``tables``. The next batch is read, and its tables made,
    in a background thread while one is used: the reads (a disk's, an object store's) and the tables'
    kernel (it runs without the GIL) overlap the work on the batch before (a reader's index, its keys).
    ``first_footer``: file 0's, already parsed (kept in the first batch: not parsed again)."""

    def read(first: int) -> tuple[Footers, list[FooterTable | None] | None]:
        batch = slice(first, first + FOOTER_BATCH)
        footers = read_footers(files[batch], storage_options, sizes[batch], first=first)
        if first == 0 and first_footer is not None:
            footers.keep_parsed(0, first_footer)
        return footers, [footer_table(raw) for raw in footers.raw] if tables else None

    firsts = range(0, len(files), FOOTER_BATCH)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="footers") as ahead:
        pending = ahead.submit(read, 0) if files else None
        for first in firsts:
            batch = pending.result()
            pending = ahead.submit(read, first + FOOTER_BATCH) if first + FOOTER_BATCH < len(files) else None
            yield batch
            del batch  # not held while the next one is read


def read_footers(
    files: list[str], storage_options: dict[str, Any] | None = None, sizes: list[int] | None = None, first: int = 0
) -> Footers:
    """Every file's footer bytes: local files by two ``pread`` calls each (its length, then it), object
    stores by one ranged read of each file's tail (concurrent; a second one for a longer footer).
    ``first``: the number of ``files[0]`` among a reader's files (:class:`Footers`)."""
    sizes = [int(s) for s in sizes] if sizes is not None else file_sizes(files, storage_options)
    if not files:
        return Footers([], [], sizes, remote=False, first=first)
    fs, _ = get_fs(files[0], storage_options)
    paths = [get_fs(url, storage_options)[1] for url in files]
    if is_local(fs):
        raw = []
        for path, size in zip(paths, sizes):
            with open(path, "rb") as file:
                raw.append(footer_from_tail(pread_ranges(file.fileno()), size, path, read_first=8))
        return Footers(list(files), raw, sizes, remote=False, first=first)
    starts = [max(0, size - TAIL_BYTES) for size in sizes]
    tails = _cat_ranges(fs, paths, starts, sizes)
    raw = []
    for path, size, start, tail in zip(paths, sizes, starts, tails):

        def read_range(a: int, b: int, path=path, start=start, tail=tail) -> bytes:
            if a >= start:
                return tail[a - start : b - start]
            return _cat_ranges(fs, [path], [a], [start])[0] + tail[: b - start]

        raw.append(footer_from_tail(read_range, size, path, read_first=len(tail)))
    return Footers(list(files), raw, sizes, remote=True, first=first)


def footer_from_tail(read_range, size: int, path: str, read_first: int = TAIL_BYTES) -> bytes:
    """A Parquet file's footer bytes through ``read_range(start, stop)``: its last ``read_first`` bytes
    (or its length and magic alone with 8), then whatever more a longer footer needs."""
    tail = bytes(read_range(max(0, size - read_first), size)) if size >= 8 else b""
    if len(tail) < 8 or tail[-4:] != b"PAR1":
        raise UnreadableFile(f"{path} is not a Parquet file (no PAR1 magic at its end: damaged, or cut short)")
    length = struct.unpack("<i", tail[-8:-4])[0] + 8
    if not 8 < length <= size:
        raise UnreadableFile(f"{path}: its footer length ({length - 8} bytes) does not fit the file ({size} bytes)")
    if length > len(tail):
        tail = bytes(read_range(size - length, size - len(tail))) + tail
    return tail[len(tail) - length : len(tail) - 8]


def _cat_ranges(fs, paths: list[str], starts: list[int], stops: list[int]) -> list[bytes]:
    """Byte ranges of (possibly remote) files, fetched concurrently where the filesystem can."""
    if not paths:
        return []
    got = fs.cat_ranges(paths, starts, stops, on_error="return")
    for path, value in zip(paths, got):
        if isinstance(value, FileNotFoundError):  # still one: the reader says the file is gone, and why
            raise FileNotFoundError(f"reading {path}: {value}") from value
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
    """Reads row groups of the index's files; one per process (it caches parsed footers and, where the
    page decoder's kernels run, footer tables: :mod:`.footers`)."""

    def __init__(self, index: RowGroupIndex, storage_options: dict[str, Any] | None = None):
        self.index = index
        self.storage_options = storage_options
        self._client = ProcessFilesystem(index.files[0] if index.files else "", storage_options)
        self._paths = [get_fs(url, storage_options)[1] for url in index.files]
        self._footers: OrderedDict[int, pq.FileMetaData] = OrderedDict()
        self._tables: OrderedDict[int, FooterTable | None] = OrderedDict()
        self._lock = threading.Lock()
        # Columns whose whole files are read once and kept in this process (local files only): set by
        # the reader, and kept when they fit in SMALL_COLUMNS_BYTES (measured on the first file's:
        # keep_files). pyarrow's cost is per column chunk: a one-row-group layout paid it every row.
        self.kept_columns: frozenset[str] = frozenset()
        self._kept: dict[int, pa.Table] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_lock": None, "_footers": OrderedDict(), "_tables": OrderedDict(), "_kept": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    @property
    def local(self) -> bool:
        return not self.index.files or is_local(self._client.get())

    def _cached(self, cache: OrderedDict, file: int) -> Any:
        with self._lock:
            if file not in cache:
                return _MISSING
            cache.move_to_end(file)
            return cache[file]

    def _keep(self, cache: OrderedDict, file: int, value: Any) -> None:
        with self._lock:
            cache[file] = value
            while len(cache) > FOOTER_CACHE:
                cache.popitem(last=False)

    def _footer(self, file: int) -> pq.FileMetaData | None:
        md = self._cached(self._footers, file)
        return None if md is _MISSING else md

    def _remember(self, file: int, md: pq.FileMetaData) -> None:
        self._keep(self._footers, file, md)

    def _table(self, file: int, read_range) -> FooterTable | None:
        """``file``'s footer table (None: the kernel gave up on it), read from its tail when not cached."""
        table = self._cached(self._tables, file)
        if table is _MISSING:
            try:
                table = footer_table(footer_from_tail(read_range, self.index.sizes[file], "", read_first=8))
            except (ValueError, UnreadableFile):
                table = None  # pyarrow reads the file (and says what is wrong with it)
            self._keep(self._tables, file, table)
        return table

    def read(self, file: int, groups: list[int], columns: list[str] | None) -> pa.Table:
        """Row groups ``groups`` (numbers within ``file``) as one table, in that order."""
        return self.read_with_tensors(file, groups, columns, {})[0]

    def read_with_tensors(
        self, file: int, groups: list[int], columns: list[str] | None, tensors: dict[str, TensorLeaf]
    ) -> tuple[pa.Table, dict[str, list[np.ndarray]]]:
        """Row groups ``groups`` of ``file``: the tensor columns of ``tensors`` decoded from their pages
        (:mod:`.pages`; one ``[rows, *shape]`` array per row group, in ``groups`` order) and the other
        ``columns`` (None: all) as one table. A tensor column the fast path cannot read is in the table.
        Locally the chunks are found in the file's footer table, so a read whose every column is decoded
        never asks pyarrow for the footer. A file pyarrow cannot read raises :class:`.errors.UnreadableFile`."""
        with self._naming(file):
            return self._read_with_tensors(file, groups, columns, tensors)

    def _naming(self, file: int):
        """:func:`naming_the_file` for ``file``; locally it says when the file's size is not what it was
        when the reader was made (rewritten or cut short since)."""

        def changed() -> str | None:
            if not self.local:
                return None
            try:
                size = os.path.getsize(self._paths[file])
            except OSError:
                return "the file is gone"
            then = self.index.sizes[file]
            return None if size == then else f"{then} bytes when the reader was made, {size} now"

        return naming_the_file(self.index.files[file], PYARROW_ERRORS, changed)

    def _read_with_tensors(
        self, file: int, groups: list[int], columns: list[str] | None, tensors: dict[str, TensorLeaf]
    ) -> tuple[pa.Table, dict[str, list[np.ndarray]]]:
        fs = self._client.get()
        path = self._paths[file]
        wanted = [name for name in tensors if columns is None or name in columns]
        if is_local(fs):
            decoded: dict[str, list[np.ndarray]] = {}
            if wanted:
                with open(path, "rb") as raw:
                    read_range = pread_ranges(raw.fileno())
                    table = self._table(file, read_range)
                    if table is not None:
                        decoded = _decode_columns(_table_chunks(table), groups, tensors, wanted, read_range)
                    if len(decoded) < len(wanted):
                        md = self._local_footer(file, path)
                        others = [name for name in wanted if name not in decoded]
                        decoded.update(_decode_columns(_metadata_chunks(md), groups, tensors, others, read_range))
            if columns is not None and all(name in decoded for name in columns):
                return pa.table({}), decoded  # pyarrow has nothing to read
            md = self._local_footer(file, path)
            rest = _other_columns(md, columns, decoded)
            if rest is None:
                rest = md.schema.to_arrow_schema().names
            kept = [name for name in rest if name in self.kept_columns]
            read = [name for name in rest if name not in self.kept_columns]
            if read:
                with open_parquet(path, md) as pf:
                    table = pf.read_row_groups(groups, columns=read, use_threads=False)
            if not kept:
                return (table if read else pa.table({})), decoded
            taken = self._kept_file(file, path, md).take(self._file_rows(file, groups))
            if read:  # both, in the order asked for
                taken = pa.Table.from_arrays(
                    [(table if name in read else taken).column(name) for name in rest], names=rest
                )
            return taken.select(rest), decoded
        source, md = self._remote_source(fs, file, path, groups, columns)
        decoded = _decode_columns(_metadata_chunks(md), groups, tensors, wanted, lambda a, b, _: source.range(a, b))
        rest = _other_columns(md, columns, decoded)
        if rest == []:
            return pa.table({}), decoded
        return open_parquet(source, md).read_row_groups(groups, columns=rest, use_threads=False), decoded

    def keep_files(self, parsed: dict[int, pq.FileMetaData], threads: int, limit: int) -> None:
        """Read every file's kept columns now, ``threads`` files at a time (pyarrow releases the GIL),
        with the footers already ``parsed`` (file number -> footer) and pyarrow's parse of each other
        file's, dropped after its read (their weight: :class:`Footers`); none when the first file's, by
        its bytes per row, say that every row's would pass ``limit``.

        A reader does it in the process that makes it: DataLoader workers forked from there then share
        the tables, where each worker read every file's for itself in its first epoch (4 ms of pyarrow
        per 128-row encode file on the VM, in every worker) and held its own copy. A worker started by
        forkserver or spawn gets none (``__getstate__``) and reads its own on first need."""

        def keep(file: int) -> pa.Table:
            return self._kept_file(file, self._paths[file], parsed.get(file))

        first = keep(0)
        if first.nbytes * self.index.num_rows > limit * max(1, first.num_rows):
            self.kept_columns, self._kept = frozenset(), {}
            return
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="kept-columns") as pool:
            list(pool.map(keep, range(1, len(self.index.files))))

    def kept_table(self) -> pa.Table | None:
        """Every file's kept columns as one table, in file order (what the index cache keeps); None when
        none are kept, or the files' tables do not make one (a file without a column)."""
        if not self.kept_columns or len(self._kept) < len(self.index.files):
            return None
        try:
            return pa.concat_tables([self._kept[file] for file in range(len(self.index.files))])
        except pa.ArrowInvalid:
            return None

    def keep_table(self, table: pa.Table) -> bool:
        """Every file's kept columns from one table in file order (:meth:`kept_table`, from the index
        cache) instead of the files; False, and nothing taken, when it is not of these columns and rows."""
        if table.column_names != sorted(self.kept_columns) or table.num_rows != self.index.num_rows:
            return False
        files = len(self.index.files)
        rows = np.bincount(self.index.file, weights=self.index.rows, minlength=files).astype(np.int64)
        starts = np.cumsum(rows) - rows
        self._kept = {file: table.slice(int(starts[file]), int(rows[file])) for file in range(files)}
        return True

    def _kept_file(self, file: int, path: str, md: pq.FileMetaData | None) -> pa.Table:
        """``file``'s kept columns, all its rows (read by :meth:`keep_files`, or on first use in a process
        whose copy of the reader came without them)."""
        with self._lock:
            table = self._kept.get(file)
        if table is None:
            with self._naming(file), open_parquet(path, md) as pf:
                present = set(pf.schema_arrow.names)  # a file may lack one the reader never asks for
                names = sorted(name for name in self.kept_columns if name in present)
                table = pf.read(columns=names, use_threads=False).combine_chunks()
            with self._lock:
                self._kept[file] = table
        return table

    def _file_rows(self, file: int, groups: list[int]) -> np.ndarray:
        """The rows (numbers within ``file``) of its row groups ``groups``, in that order."""
        at = self.index.file_groups(file)
        first = self.index.first_row[at][groups] - self.index.first_row[at.start]  # within the file
        counts = self.index.rows[at][groups]
        return np.repeat(first - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())

    def _local_footer(self, file: int, path: str) -> pq.FileMetaData:
        md = self._footer(file)
        if md is None:
            md = pq.read_metadata(path)
            self._remember(file, md)
        return md

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
            md = open_parquet(source).metadata
        self._remember(file, md)
        return source, md

    def remember_footers(self, footers: dict[int, pq.FileMetaData], tables: dict[int, FooterTable | None]) -> None:
        """Start the caches with (the last ``FOOTER_CACHE`` of) these parsed footers and footer tables."""
        for file in sorted(footers)[-FOOTER_CACHE:]:
            self._remember(file, footers[file])
        for file in sorted(tables)[-FOOTER_CACHE:]:
            self._keep(self._tables, file, tables[file])


_MISSING = object()


def _decode_columns(
    chunk_of, groups: list[int], tensors: dict[str, TensorLeaf], wanted: list[str], read_range
) -> dict[str, list[np.ndarray]]:
    """The ``wanted`` tensor columns of row groups ``groups`` decoded from their pages (one array per
    row group); ``chunk_of(group, leaf, name)`` gives a chunk's facts and rows, None for facts when the
    leaf is not ``name`` in this file; ``read_range(start, stop, values_bytes)`` a chunk's bytes (where
    it can, placed for an uncompressed chunk's ``values_bytes`` of values: :func:`pread_ranges`). A
    column any of whose chunks is refused is left out."""
    decoded = {}
    for name in wanted:
        leaf = tensors[name]
        try:
            arrays = []
            for g in groups:
                chunk, rows = chunk_of(g, leaf.leaf, name)
                if chunk is None:
                    raise NotDecodable(f"{name} is not this file's leaf {leaf.leaf}")
                start, length = chunk_range(chunk)
                plain_bytes = rows * leaf.row_values * leaf.dtype.itemsize if chunk.compression == "UNCOMPRESSED" else 0
                arrays.append(decode_chunk(read_range(start, start + length, plain_bytes), chunk, leaf, rows))
        except (NotDecodable, IndexError, ValueError):
            continue  # pyarrow decodes this column (and says what is wrong with a damaged file)
        decoded[name] = arrays
    return decoded


def _table_chunks(table: FooterTable):
    """``chunk_of`` for :func:`_decode_columns` from a footer table (no pyarrow call)."""
    return lambda g, leaf, name: (table.chunk(g, leaf, name), int(table.rows[g]))


def _metadata_chunks(md: pq.FileMetaData):
    """``chunk_of`` for :func:`_decode_columns` from pyarrow's parsed footer (each leaf's name checked once)."""
    named: dict[int, str | None] = {}

    def chunk_of(g: int, leaf: int, name: str):
        if leaf not in named:
            named[leaf] = md.schema.column(leaf).path.split(".")[0] if leaf < md.num_columns else None
        if named[leaf] != name:
            return None, 0
        group = md.row_group(g)
        return group.column(leaf), group.num_rows

    return chunk_of


def pread_ranges(fd: int):
    """``read_range(start, stop, values_bytes=0)`` of an open local file, into a writable buffer from
    pyarrow's pool (which recycles its blocks: a new ``bytes`` per chunk is fresh memory to fault in),
    placed so that the range's last ``values_bytes`` (an uncompressed PLAIN page's values, which
    :mod:`.pages` then views in place) start 64-byte aligned."""

    def read_range(start: int, stop: int, values_bytes: int = 0) -> memoryview:
        shift = -(stop - start - values_bytes) % 64 if values_bytes else 0
        buffer = memoryview(pa.allocate_buffer(stop - start + shift))[shift:]
        return buffer[: os.preadv(fd, [buffer], start)]

    return read_range


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
