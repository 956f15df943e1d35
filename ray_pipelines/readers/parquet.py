"""Stream rows out of a job's Parquet shards, for training loops.

:class:`ShardRows` is an ``IterableDataset`` over any set of the jobs' Parquet
files. An epoch:

1. cuts the files into chunks (consecutive row groups of one file, up to
   ``CHUNK_BYTES`` decoded) and puts the chunks of all files in one order,
   shuffled from ``(seed, epoch)`` (:mod:`.epoch`);
2. gives each rank and DataLoader worker a contiguous, equal share of the
   rows in that order (every row on exactly one of them, shares differing by
   one row at most);
3. reads each share a window at a time (at least ``WINDOW_CHUNKS`` chunks and
   about ``WINDOW_BYTES`` decoded, or ``shuffle_buffer`` rows), the
   next window in background threads while the current one is yielded, and
   yields each window's rows in a random order.

Each row group is decompressed once per epoch, and only the row groups that
hold rows the epoch wants (a subclass may pick rows per epoch, see
:meth:`ShardRows.epoch_rows`: :class:`~.contrastive.ContrastiveViews` reads one
version of each clip). Local files are read by pyarrow; ``s3://`` (any fsspec
URL) with ranged reads of whole row groups, a window's ranges fetched
concurrently. ``set_epoch`` reaches persistent DataLoader workers (the epoch
lives in shared memory); ``torch.distributed``'s rank and world size are
used when it is initialised.
"""

from __future__ import annotations

import math
import os
import posixpath
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import get_worker_info

from ..engine.arrow import column_to_numpy
from ..engine.hf import split_name
from ..engine.memory import release_unused_memory
from ..storage import Storage, misspelt_options_problem, url_problem
from . import index_cache as index_cache_module
from .batches import (
    BatchBuilder,
    ColumnSpec,
    CustomFill,
    ProcessBatchMemory,
    ViewRows,
    Window,
    check_batching,
    column_specs,
    gather_rows,
    numeric_shape,
    piece_columns,
    reader_batch,
)
from .epoch import (
    EpochDataset,
    Shard,
    batched_share,
    check_epoch_unchanged,
    epoch_order,
    range_pieces,
    shard_pieces,
    stop_read_ahead,
    unit_item_order,
    window_order,
    windows,
)
from .errors import store_refusals_named
from .footers import FooterTable
from .pages import load_kernels, tensor_leaves
from .rowgroups import (
    SMALL_COLUMNS_BYTES,
    Footers,
    IndexPart,
    RowGroupIndex,
    RowGroupReader,
    build_index,
    file_sizes,
    footer_batches,
    index_part,
    read_footers,
)

# Tensor columns decoded from their Parquet pages when they allow it (.pages); "0": pyarrow decodes
# everything (the benchmark's comparison, and a way out should a file ever be misread).
DECODE_PAGES = os.environ.get("RAY_PIPELINES_DECODE_PAGES", "1") != "0"
# A chunk (the unit that is ordered and read at once): consecutive row groups of one file.
CHUNK_BYTES = 8 * 1024 * 1024
# A shuffle window: rows of several chunks, yielded in a random order. Two are held per
# reader process (the one being yielded and the next one being read).
WINDOW_BYTES = 32 * 1024 * 1024
# ... and at least this many chunks, so that a window mixes several files even with few rows.
WINDOW_CHUNKS = 4


# Each job's reader, named where another job's output is given to a reader (score: OutputRows).
READER_OF_JOB = {
    "augment": "ContrastiveViews",
    "teacher": "TeacherCache",
    "encode": "open_encoded",
    "features": "FeatureSnippets",
}


def check_job(output: str, written_by: str | None, expected: str | None) -> None:
    """Refuse another job's output by name (its columns would be refused too, in words that do not say why)."""
    if expected is None or written_by is None or written_by == expected:
        return
    reader = READER_OF_JOB.get(written_by, "OutputRows")
    raise ValueError(
        f"{output} is the {written_by} job's output, not the {expected} job's: read it with {reader}"
        + ("" if reader == "OutputRows" else " (or OutputRows, which reads any job's rows)")
    )


NOT_COMMITTED = (
    "has no manifest.json: no run has committed it yet (one still running, or stopped before its first commit: "
    "rerun the job's command to finish it)"
)
INCOMPLETE = (
    "its last run left {to_retry} inputs to retry (no _SUCCESS), whose rows are not read: rerun the job to "
    "finish it; reading the rows committed"
)


def _counts_said(manifest: dict[str, Any]) -> str:
    counts, inputs = manifest.get("counts", {}), manifest.get("inputs", {})
    said = [f"{counts.get('listed', 0)} inputs selected", f"{counts.get('errors', 0)} with errors (errors.jsonl)"]
    if inputs.get("left_out"):
        said.append(f"{inputs['left_out']} left out by keep/ignore lists or limit")
    return ", ".join(said)


def warn_if_incomplete(output: str, manifest: dict[str, Any]) -> None:
    """Warn when the output's last run ended 3 or was stopped (rows of some inputs are missing), at the
    line that made the reader (built directly, through ``open_*`` or by ``manifest_files``)."""
    if manifest.get("complete") is False:
        to_retry = manifest.get("counts", {}).get("to_retry", 0)
        message = f"{output} is incomplete: {INCOMPLETE.format(to_retry=to_retry)}"
        warnings.warn(message, RuntimeWarning, stacklevel=_first_caller_outside_the_readers())


def _first_caller_outside_the_readers() -> int:
    """``warnings.warn``'s stacklevel, for a warning raised by its caller, of the first frame outside this
    package."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def output_storage(output: str, storage_options: dict[str, Any] | None) -> Storage:
    """The :class:`Storage` of an output a reader opens, refused first where the URL or a storage option is
    mistyped (a did-you-mean, as the jobs' configs give)."""
    for problem in (url_problem(output), misspelt_options_problem(output, storage_options)):
        if problem:
            raise ValueError(f"{output}: {problem}")
    return Storage(output, storage_options)


def manifest_files(
    output: str | os.PathLike,
    split: str | None = None,
    storage_options: dict[str, Any] | None = None,
    *,
    job: str | None = None,
) -> list[dict[str, Any]]:
    """File records (``path``, ``split``, ``rows``, ``bytes``) of a committed output, optionally one split's.

    ``job``: the job whose output the caller reads (:func:`check_job`). ``output`` may be a ``Path``.
    """
    output = os.fspath(output)
    storage = output_storage(output, storage_options)
    with store_refusals_named(output):
        committed = storage.exists("manifest.json")
    if not committed:
        why = not_an_output(storage, "manifest.json", "and a split as split=")
        raise FileNotFoundError(f"{output} {why or NOT_COMMITTED}")
    manifest = storage.read_json("manifest.json")
    check_job(output, manifest.get("job"), job)
    warn_if_incomplete(output, manifest)
    if manifest["files"] and not any(f["path"].endswith(".parquet") for f in manifest["files"]):
        sat = manifest.get("config", {}).get("layout") == "sat"  # the encode job's .npy + .json pairs
        how = ": it is in stable-audio-tools' layout (.npy and .json); read it with open_encoded" if sat else ""
        raise ValueError(f"{output} holds no Parquet files{how}")
    # A split by its folder, or by the name datasets gives it (files at the root, as the encode job's: train)
    files = [
        f for f in manifest["files"] if split is None or split in (f.get("split", ""), split_name(f.get("split", "")))
    ]
    if split is not None and not files:
        splits = sorted({split_name(str(f.get("split", ""))) for f in manifest["files"]})
        if not splits:  # every input an error row, or none selected (errors.jsonl, manifest.json's counts)
            raise ValueError(f"{output} has no rows at all (counts: {_counts_said(manifest)})")
        raise ValueError(f"split {split!r} not in {output} (splits: {', '.join(splits)})")
    return [{**f, "url": storage.url(f["path"])} for f in files if f["path"].endswith(".parquet")]


def list_shards(output: str, split: str | None = None, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Data files of a committed output (from manifest.json), optionally one split's."""
    return [f["url"] for f in manifest_files(output, split, storage_options)]


def not_an_output(storage: Storage, marker: str, also: str = "") -> str | None:
    """Why the folder a reader was given holds no ``marker`` (a file every committed output has) where it
    is an easy mistake: a typo, the marker file itself, a folder inside the output (``also``: what else to
    give then). None: none of those."""
    if not storage.fs.exists(storage.path):
        return "not found"
    if storage.fs.isfile(storage.path):
        return "is a file: give the job's output folder"
    parent = posixpath.dirname(storage.root)
    if parent and parent != storage.root and Storage(parent, storage.storage_options).exists(marker):
        return f"is a folder inside the output {parent}: give the output's root (the folder holding {marker})" + (
            f", {also}" if also else ""
        )
    return None


def take_rows(column: pa.ChunkedArray, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` (ascending) of a column, as a new writable array (tensors ``[n, *shape]``).

    Tensor columns (``fixed_shape_tensor`` or nested fixed-size lists) are copied
    chunk by chunk from zero-copy views, once; other columns go through
    :func:`~ray_pipelines.engine.arrow.column_to_numpy`.
    """
    chunks = [c for c in column.chunks if len(c)]
    if chunks and _is_tensor(column.type):
        views = [column_to_numpy(c) for c in chunks]
        if all(v.dtype != object for v in views):
            out = np.empty((len(positions), *views[0].shape[1:]), dtype=views[0].dtype)
            bounds = np.cumsum([0] + [len(v) for v in views])
            cuts = np.searchsorted(positions, bounds)
            for view, lo, a, b in zip(views, bounds, cuts[:-1], cuts[1:]):
                if b > a:
                    np.take(view, positions[a:b] - lo, axis=0, out=out[a:b])
            return out
    values = column_to_numpy(column)
    return values[positions]


def _is_tensor(type_: pa.DataType) -> bool:
    if isinstance(type_, pa.BaseExtensionType):
        type_ = type_.storage_type
    return pa.types.is_fixed_size_list(type_)


def to_tensor(value: Any) -> torch.Tensor:
    """An array or number as a tensor (sharing memory with the reader's own arrays)."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return torch.as_tensor(value)


class ShardRows(EpochDataset):
    """Rows (dicts of NumPy values) of Parquet shards, a shuffled window at a time.

    ``transform(row) -> item`` turns a row into what training needs (a picklable
    callable: DataLoader workers may pickle it). ``set_epoch(n)`` changes the
    order (and, in subclasses, the rows) between epochs, also in persistent
    workers. ``rank``/``world_size`` default to ``torch.distributed``'s.
    ``threads``: background reads per reader process (default on local disk:
    :func:`local_read_threads`, 1 or 2; 8 on object stores, where requests wait on
    the network).

    ``batch_size=B``: yield whole batches (use the DataLoader with ``batch_size=None``):
    a dict ``{column: tensor [n, *shape]}`` (strings: a list), ``n = B`` except for the
    rank's last batch (``drop_last``: every rank the smallest share's full batches, as
    many on each, which DistributedDataParallel needs), each column one tensor in shared
    memory in a DataLoader worker (see :mod:`.batches`); ``batch_transform(batch)``
    turns it into what training needs (``transform`` is for items only). The items
    and every guarantee are those of the item mode; the rank's batches are split
    among its workers in contiguous runs, so ``len`` is the rank's number of batches.
    ``reuse_batches=R`` (batched mode): each reader process writes its batches into
    the memory of R batches in turn instead of fresh memory (no page faults per
    batch). With the DataLoader's ``prefetch_factor`` P (default 2) use ``R >= P + 1``:
    a batch is then intact while the next ``num_workers x (R - P) - 1`` batches are
    taken (in-process: ``R - 1``), enough for a loop that uses each batch before
    asking for the next (or ``pin_memory=True``); clone what you keep longer.

    ``index_cache``: a folder (local or any fsspec URL, with ``storage_options``) where the
    reader's index is kept for the next readers of the same files, which then read it
    instead of every file's footer (:mod:`.index_cache`; for large outputs and many ranks).
    """

    def __init__(
        self,
        files: Sequence[str],
        columns: Sequence[str] | None = None,
        *,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        threads: int | None = None,
        sizes: Sequence[int] | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
        batch_transform: Callable[[dict[str, Any]], Any] | None = None,
        reuse_batches: int = 0,
        index_cache: str | None = None,
    ):
        super().__init__(seed, shuffle, rank, world_size)
        check_batching(batch_size, reuse_batches, drop_last, batch_transform, transform)
        if index_cache is not None:
            index_cache = os.fspath(index_cache)
            if not index_cache.strip():  # was the working directory, wherever the training started
                raise ValueError("index_cache is empty: give a folder or a URL (or None for no cache)")
            if problem := url_problem(index_cache, written=True):
                raise ValueError(f"index_cache {index_cache}: {problem}")
        self.batch_size, self.drop_last, self.batch_transform = batch_size, drop_last, batch_transform
        self.batch_memory = ProcessBatchMemory(reuse_batches, batch_size or 0)
        self.files = list(files)
        # One column's name is that column (list("x") would split it into its letters)
        self.columns = ([columns] if isinstance(columns, str) else list(columns)) if columns is not None else None
        self.shuffle_buffer = shuffle_buffer
        self.transform = transform
        self.storage_options = storage_options
        self.index_cache = index_cache
        sizes = [int(size) for size in sizes] if sizes is not None else file_sizes(self.files, storage_options)
        # What a subclass keeps in the index cache (_cached_arrays), and the kept small columns, when the
        # index came from there.
        self.cached: dict[str, np.ndarray] | None = None
        self._cached_kept: pa.Table | None = None
        parsed, tables = self._read_footers(sizes)
        self._check_columns()
        self.reader = RowGroupReader(self.index, storage_options)
        self.threads = threads  # None: decided in the process that reads (_read_threads)
        self.chunk_groups = chunk_row_groups(self.index)
        # Each chunk's rows, [first, end) in the numbering across all files.
        self.chunk_first_row = self.index.first_row[self.chunk_groups[:, 0]]
        self.chunk_end_row = (
            self.index.first_row[self.chunk_groups[:, 1] - 1] + self.index.rows[self.chunk_groups[:, 1] - 1]
        )
        self._after_index()
        self.warn_if_ranks_differ()
        from_cache, self.cached = self.cached is not None, None
        self.reader.remember_footers(parsed, tables)  # the first reads need not read them again
        if self.reader.local and self.files:
            wanted = self.columns if self.columns is not None else self.index.schema.names
            self.reader.kept_columns = kept_columns(self.index, [n for n in wanted if n not in self.tensor_leaves])
            cached_kept = self._cached_kept
            if self.reader.kept_columns and not (cached_kept is not None and self.reader.keep_table(cached_kept)):
                # Read here, before DataLoader workers fork: they share these tables instead of each
                # reading (and holding) its own in its first epoch.
                self.reader.keep_files(parsed, threads=min(8, os.cpu_count() or 1), limit=SMALL_COLUMNS_BYTES)
        del self._cached_kept
        if (
            index_cache is not None
            and self.files
            and not from_cache
            and index_cache_module.writes_here(index_cache, storage_options, self.rank)
        ):
            arrays = index_cache_module.index_arrays(self.index, self._cached_arrays(), self.reader.kept_table())
            index_cache_module.save(index_cache, self._cache_name(sizes), arrays, storage_options)
        # What making the reader parsed and read is freed (footers' bytes and tables; each footer parsed
        # for a kept read, 1.4 MB for an encode file), and glibc keeps freed memory per thread: given
        # back before DataLoader workers fork (0.5-2 ms), it no longer sits in the training process.
        del parsed, tables
        release_unused_memory()

    def _check_columns(self) -> None:
        """Refuse ``columns`` the files do not have, naming the ones they do (pyarrow's KeyError named neither)."""
        if self.columns is None or self.index.schema is None:
            return
        available = self.index.schema.names
        missing = [name for name in self.columns if name not in available]
        if missing:
            raise ValueError(f"no column {', '.join(missing)} in these files; columns: {', '.join(available)}")

    def _read_footers(self, sizes: list[int]) -> tuple[dict[int, pq.FileMetaData], dict[int, FooterTable | None]]:
        """Builds ``self.index`` from the files' footers, read ``FOOTER_BATCH`` files at a time and each
        batch dropped once its part of the index is made (and what a subclass takes from the footers:
        :meth:`_footer_batch`), so that making a reader holds a batch's footers, not every file's.

        Returns what a reader process starts its caches with: file 0's parsed footer and the last
        ``FOOTER_CACHE`` files' parsed footers (where reads will ask pyarrow for them: parsed here, once,
        not in every worker) and footer tables."""
        parts: list[IndexPart] = []
        parsed: dict[int, pq.FileMetaData] = {}
        tables: dict[int, FooterTable | None] = {}
        self.tensor_leaves = {}
        first, schema, pyarrow_reads, remote = None, None, False, False
        if self.files:  # the first file's footer says how the others are read
            first_file = read_footers(self.files[:1], self.storage_options, sizes[:1])
            first, remote = first_file.parsed(0), first_file.remote
            del first_file
            schema = first.schema.to_arrow_schema()
            # Tensor columns read from their pages where they are in the layout the sink writes (.pages).
            self.tensor_leaves = tensor_leaves(first, schema.names) if DECODE_PAGES else {}
            if self.tensor_leaves:
                load_kernels().warm()  # here, before DataLoader workers fork, not once in each of them
            wanted = self.columns if self.columns is not None else schema.names
            pyarrow_reads = remote or not self.tensor_leaves or not all(name in self.tensor_leaves for name in wanted)
            if pyarrow_reads:
                import_pandas()
            if self.index_cache is not None and self._load_cached_index(sizes, first, remote):
                return {0: first}, {}
        # With the kernels, the index from footer tables, without pyarrow (.footers)
        batches = footer_batches(self.files, self.storage_options, sizes, bool(self.tensor_leaves), first)
        for footers, batch_tables in batches:
            if pyarrow_reads:
                footers.parse_last(len(self.files))
            parts.append(index_part(footers, batch_tables))
            self._footer_batch(footers, batch_tables, first)
            last = footers.last_files(len(self.files))
            parsed.update((file, md) for file, md in footers.parsed_so_far().items() if file == 0 or file in last)
            if batch_tables is not None:
                tables.update((file, t) for file, t in zip(footers.numbers, batch_tables) if file in last)
        self.index = build_index(self.files, sizes, parts, schema, remote)
        return parsed, tables

    def _cache_name(self, sizes: list[int]) -> str:
        return index_cache_module.cache_name(type(self).__name__, self.columns, self.files, sizes)

    def _load_cached_index(self, sizes: list[int], first: pq.FileMetaData, remote: bool) -> bool:
        """``self.index`` (and ``self.cached``) from the index cache; False when it has none for these
        files, or one that does not agree with the first file's footer (``first``)."""
        arrays = index_cache_module.load(self.index_cache, self._cache_name(sizes), self.storage_options)
        if arrays is None:
            return False
        try:
            cached = index_cache_module.index_from_arrays(arrays, self.files, sizes, remote)
            first_groups = cached.index.file_groups(0)
            if not cached.index.schema.equals(first.schema.to_arrow_schema()) or (
                first_groups.stop - first_groups.start != first.num_row_groups
            ):
                raise ValueError(f"it is not of {self.files[0]} as that file is now")
            self._check_cached(cached.extra, cached.index)
            self.index, self.cached, self._cached_kept = cached.index, cached.extra, cached.kept
        except ValueError as error:
            warnings.warn(
                f"reader index cache in {self.index_cache} not used ({error}): made from the footers", stacklevel=2
            )
            return False
        return True

    # ---- for subclasses ----------------------------------------------------------------
    def _footer_batch(self, footers: Footers, tables: list[FooterTable | None] | None, first: pq.FileMetaData) -> None:
        """Called with each batch of the files' footers, in file order, while the index is made (the
        batch's footer tables where :mod:`.footers` made them; ``first``: file 0's parsed footer):
        subclasses take what they need from them here, the batch is dropped after."""

    def _after_index(self) -> None:
        """Called once the index is built (and the reader made); ``self.cached`` holds what
        :meth:`_cached_arrays` returned when the index came from the index cache (else None)."""

    def _cached_arrays(self) -> dict[str, np.ndarray]:
        """What the subclass took from the footers, kept in the index cache with the index (after
        :meth:`_after_index`)."""
        return {}

    def _check_cached(self, cached: dict[str, np.ndarray], index: RowGroupIndex) -> None:
        """Raises ValueError when ``cached`` (from a cache file) is not what :meth:`_cached_arrays` gives
        for ``index`` (a damaged file): the reader is then made from the footers."""

    def epoch_rows(self, epoch: int) -> np.ndarray | None:
        """The rows (numbers across all files, ascending) this epoch yields; None: all of them."""
        return None

    def __getitem__(self, index: int):
        # torch's Dataset says only "Subclasses of Dataset should implement __getitem__"
        raise TypeError(
            f"{type(self).__name__} reads an epoch as a stream (row groups in a shuffled order), not by index: "
            f"iterate it, or give it to a DataLoader{self.by_index}"
        )

    by_index = ""  # where a reader that takes an index is, for the error above

    def epoch_items(self) -> int:
        rows = self.epoch_rows(self.epoch)
        return self.index.num_rows if rows is None else len(rows)

    def _chunk_items(self, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Items per chunk, and where each chunk's items start in ``rows``."""
        if rows is None:
            return self.chunk_end_row - self.chunk_first_row, None
        starts = np.searchsorted(rows, self.chunk_first_row)
        return np.searchsorted(rows, self.chunk_end_row) - starts, starts

    # ---- reading -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self._iter_batches() if self.batch_size else self._iter_items()

    def _iter_items(self) -> Iterator[Any]:
        shard = self.current_shard()
        epoch = self.epoch
        rows = self.epoch_rows(epoch)
        sizes, starts = self._chunk_items(rows)
        pieces = shard_pieces(sizes, epoch_order(len(sizes), self.seed, epoch, self.shuffle), shard)
        for w, read in enumerate(self._read_windows(pieces, epoch, rows, sizes, starts, self._read_piece)):
            yield from self._yield_window(read, epoch, shard, w)
        check_epoch_unchanged(self._epoch, epoch)

    def _iter_batches(self) -> Iterator[Any]:
        shard = self.current_shard()
        epoch = self.epoch
        rows = self.epoch_rows(epoch)
        sizes, starts = self._chunk_items(rows)
        lo, hi = batched_share(int(sizes.sum()), shard, self.batch_size, self.drop_last)
        pieces = range_pieces(sizes, epoch_order(len(sizes), self.seed, epoch, self.shuffle), lo, hi)
        copied, sources, custom, fill = self._batch_plan(epoch)
        builder = BatchBuilder(copied, self.batch_size, hi - lo, self.batch_memory.get(), custom, fill)
        read_piece = partial(self._read_batch_piece, [*copied, *sources])
        for w, read in enumerate(self._read_windows(pieces, epoch, rows, sizes, starts, read_piece)):
            window = Window(read)
            for batch in builder.add(window, window_order(window.items, self.seed, epoch, shard, w, self.shuffle)):
                yield reader_batch(self._finish_batch(batch))
        check_epoch_unchanged(self._epoch, epoch)

    def _read_windows(
        self,
        pieces: list[tuple[int, int, int]],
        epoch: int,
        rows: np.ndarray | None,
        sizes: np.ndarray,
        starts: np.ndarray | None,
        read_piece: Callable[[int, np.ndarray], Any],
    ) -> Iterator[list[Any]]:
        """``read_piece`` of each piece, a window at a time, the next window read in background threads."""
        wanted = [(chunk, self._piece_rows(chunk, a, b, epoch, rows, sizes, starts)) for chunk, a, b in pieces]
        bounds = np.cumsum([0] + [len(w) for w in windows(pieces, self._window_items(), WINDOW_CHUNKS)]).tolist()
        pool = ThreadPoolExecutor(max_workers=self._read_threads(), thread_name_prefix="shard-rows")

        def read_window(w: int) -> list[Future]:
            return [pool.submit(read_piece, *piece) for piece in wanted[bounds[w] : bounds[w + 1]]]

        try:
            ahead = read_window(0) if len(bounds) > 1 else []
            for w in range(len(bounds) - 1):
                current, ahead = ahead, read_window(w + 1) if w + 2 < len(bounds) else []  # read the next one now
                yield [f.result() for f in current]
        finally:
            stop_read_ahead(pool)

    def _piece_rows(
        self,
        chunk: int,
        a: int,
        b: int,
        epoch: int,
        rows: np.ndarray | None,
        sizes: np.ndarray,
        starts: np.ndarray | None,
    ) -> np.ndarray:
        """The row numbers (ascending) of items ``a:b`` of ``chunk`` this epoch. A whole chunk's are its rows; a
        part (a chunk that shares split, or whose tail ``drop_last`` leaves out) takes the chunk's items in the
        order :func:`~.epoch.unit_item_order` draws, the same in every shard: in file order, the shards of a
        one-chunk split read the same rows every epoch and ``drop_last`` left the same rows out, for ever."""
        size = int(sizes[chunk])
        first = int(starts[chunk]) if rows is not None else 0
        chunk_rows = rows[first : first + size] if rows is not None else self.chunk_first_row[chunk] + np.arange(size)
        if (a, b) == (0, size) or not self.shuffle:
            return chunk_rows[a:b]
        lo, hi = self.chunk_groups[chunk]
        group_of = np.searchsorted(self.index.first_row[lo:hi], chunk_rows, side="right") - 1
        return np.sort(chunk_rows[unit_item_order(group_of, self.seed, epoch, chunk)[a:b]])

    def _read_threads(self) -> int:
        return self.threads or (local_read_threads() if self.reader.local else 8)

    # ---- batched mode: what subclasses change ----------------------------------------------
    def _batch_names(self) -> list[str]:
        return list(self.columns) if self.columns is not None else list(self.index.schema.names)

    def _batch_plan(self, epoch: int) -> tuple[list[ColumnSpec], list[ColumnSpec], list[ColumnSpec], CustomFill | None]:
        """Columns copied into batches as they are; columns read only for ``fill``; columns ``fill`` makes."""
        return column_specs(self.index.schema, self._batch_names(), self._batch_float_dtype()), [], [], None

    def _batch_float_dtype(self) -> torch.dtype | None:
        return None

    def _finish_batch(self, batch: dict[str, Any]) -> Any:
        return self.batch_transform(batch) if self.batch_transform else batch

    def _window_items(self) -> int:
        if self.shuffle_buffer:
            return self.shuffle_buffer
        row_bytes = max(1, int(self.index.decoded_bytes.sum()) // max(1, self.index.num_rows))
        return max(1, WINDOW_BYTES // row_bytes)

    def _read_piece(self, chunk: int, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Columns of ``rows`` (ascending row numbers within ``chunk``), decoding only their row groups."""
        piece = self._piece_read(chunk, rows)
        names = self.columns if self.columns is not None else self.index.schema.names
        return {
            name: gather_rows(piece.tensor_rows(name))
            if name in piece.tensors
            else take_rows(piece.table.column(name), piece.positions)
            for name in names
        }

    def _read_batch_piece(self, specs: list[ColumnSpec], chunk: int, rows: np.ndarray):
        """The batched mode's piece: views of the decoded buffers of large columns, small ones gathered."""
        piece = self._piece_read(chunk, rows, [spec.name for spec in specs])
        return piece_columns(piece.table, piece.positions, specs, take_rows, piece.tensor_rows)

    def _piece_read(self, chunk: int, rows: np.ndarray, columns: list[str] | None = None) -> PieceRead:
        """The row groups of ``chunk`` that hold ``rows``: tensor columns decoded from their pages, the
        others by pyarrow, and where each row is in them."""
        index = self.index
        lo, hi = self.chunk_groups[chunk]
        at = lo + np.searchsorted(index.first_row[lo:hi], rows, side="right") - 1
        needed, first_of = np.unique(at, return_index=True)
        table, tensors = self.reader.read_with_tensors(
            int(index.file[lo]), index.group[needed].tolist(), columns or self.columns, self.tensor_leaves
        )
        offsets = np.concatenate([[0], np.cumsum(index.rows[needed])[:-1]])
        positions = offsets[np.repeat(np.arange(len(needed)), np.diff(np.append(first_of, len(rows))))]
        in_group = rows - index.first_row[at]
        return PieceRead(table, positions + in_group, tensors, np.searchsorted(needed, at), in_group)

    def _yield_window(self, pieces: list[dict[str, np.ndarray]], epoch: int, shard: Shard, w: int) -> Iterator[Any]:
        if not pieces:
            return
        names = list(pieces[0])
        counts = [len(p[names[0]]) for p in pieces] if names else [0 for _ in pieces]
        piece_of = np.repeat(np.arange(len(pieces)), counts)
        row_of = np.concatenate([np.arange(n) for n in counts]) if counts else np.zeros(0, dtype=np.int64)
        transform = self.transform
        for i in window_order(len(piece_of), self.seed, epoch, shard, w, self.shuffle).tolist():
            piece, r = pieces[piece_of[i]], row_of[i]
            row = {name: piece[name][r] for name in names}
            yield transform(row) if transform else row


def import_pandas() -> None:
    """Import pandas (when installed) in the process that makes a reader whose workers will convert
    columns with pyarrow: pyarrow imports it on its first conversion of a column to NumPy or of NumPy
    indices, and DataLoader workers forked without it each imported it in their first epoch (0.3 s of
    CPU on the VM). Importing the readers does not (no pandas, no Ray: a training process may not
    need them); a reader of tensor columns only (``ContrastiveViews``) never converts that way."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


def local_read_threads() -> int:
    """Background read threads for a reader process on local disk: 2 where the machine has 3 cores for
    each reader process (DataLoader workers, times the ranks on this machine as torchrun's
    ``LOCAL_WORLD_SIZE`` says): one for the thread that fills the batches and one for each read
    thread; else 1. A local read is mostly decoding (the bytes are in the page cache), so a second
    thread gains only where a core would idle, and where the threads outnumber the cores it costs CPU
    (2-core VM: 2 workers with 2 threads each, 7-25 % more CPU per item than with 1; one process
    with 2, 50-60 % more and a third fewer augment items/s in its later epochs)."""
    info = get_worker_info()
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    processes = max(1, info.num_workers if info is not None else 1) * ranks
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 if cores >= 3 * processes else 1


@dataclass
class PieceRead:
    """A piece's row groups read: ``table`` (the columns pyarrow decoded; row ``positions[i]`` is the
    piece's row i) and ``tensors`` (columns decoded from their pages: one array per row group read;
    row i is row ``in_group[i]`` of array ``group[i]``)."""

    table: pa.Table
    positions: np.ndarray
    tensors: dict[str, list[np.ndarray]]
    group: np.ndarray
    in_group: np.ndarray

    def tensor_rows(self, name: str) -> ViewRows | None:
        """The piece's rows of a column decoded from its pages, as views; None for other columns."""
        if name not in self.tensors:
            return None
        return ViewRows(self.tensors[name], self.group, self.in_group)


def kept_columns(index: RowGroupIndex, names: list[str]) -> frozenset[str]:
    """``names`` when a reader process may keep them for every row, else none: numbers, booleans and
    tensors of them and strings, unless their least size (a string at its 4-byte offset alone) passes
    :data:`.rowgroups.SMALL_COLUMNS_BYTES`. Whether they fit is then measured on the first file's
    (:meth:`.rowgroups.RowGroupReader.keep_files`). Columns of other types (variable-length lists,
    structs) are never kept."""
    per_row = 0
    kept = []
    for name in names:
        row_bytes = _fixed_row_bytes(index.schema.field(name).type)
        if row_bytes is not None:
            per_row += row_bytes
            kept.append(name)
    return frozenset(kept) if kept and index.num_rows * per_row <= SMALL_COLUMNS_BYTES else frozenset()


# A string or binary value's least weight in a kept table (its offset).
STRING_ROW_BYTES = 4


def _fixed_row_bytes(arrow_type: pa.DataType) -> int | None:
    """A row's bytes for numbers, booleans and tensors of them; ``STRING_ROW_BYTES`` (the least) for
    strings; None for any other type."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_binary(arrow_type):
        return STRING_ROW_BYTES
    numeric = numeric_shape(arrow_type)
    if numeric is None:
        return None
    shape, value_type = numeric
    return max(1, math.prod(shape) * max(1, value_type.bit_width // 8))


def chunk_row_groups(index: RowGroupIndex, chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """``[n_chunks, 2]``: each chunk's first and end position in the index (row groups of one file).

    A chunk takes row groups while they fit in ``chunk_bytes`` (at least one); a loop per
    chunk, not per row group (a one-row-group-per-row output has thousands per file).
    """
    bounds: list[tuple[int, int]] = []
    ends = np.cumsum(index.decoded_bytes)
    file_ends = np.flatnonzero(np.diff(index.file)) + 1 if len(index) else np.zeros(0, np.int64)
    for lo, hi in zip([0, *file_ends.tolist()], [*file_ends.tolist(), len(index)]):
        start = lo
        while start < hi:
            before = int(ends[start - 1]) if start else 0
            stop = int(np.searchsorted(ends[start:hi], before + chunk_bytes, side="right")) + start
            stop = max(stop, start + 1)
            bounds.append((start, stop))
            start = stop
    return np.array(bounds, dtype=np.int64).reshape(-1, 2)


# ---- a job's output, rows as tuples or dicts of tensors ---------------------------------------------


def _to_torch(value: Any, dtype: torch.dtype | None) -> Any:
    """Arrays and numbers become tensors (floats cast to ``dtype`` if given); strings stay strings."""
    if isinstance(value, str):
        return value
    tensor = to_tensor(value)
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


class RowToTuple:
    """Row dict -> tuple of tensors in ``fields`` order (a class, not a lambda: workers may pickle it)."""

    def __init__(self, fields: Sequence[str], dtype: torch.dtype | None):
        self.fields, self.dtype = tuple(fields), dtype

    def __call__(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(_to_torch(row[name], self.dtype) for name in self.fields)


class Then:
    """``then(first(row))``: a reader's own conversion of a row, then the user's ``transform`` (a class, not a
    lambda: workers may pickle it)."""

    def __init__(self, first: Callable[[Any], Any], then: Callable[[Any], Any]):
        self.first, self.then = first, then

    def __call__(self, row: Any) -> Any:
        return self.then(self.first(row))


def then_transform(convert: Callable[[Any], Any], transform: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """A reader's item conversion followed by the user's ``transform`` if one was given (it gets the reader's
    item, a tuple or dict of tensors, not the raw row)."""
    return convert if transform is None else Then(convert, transform)


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_dtype(dtype: Any) -> None:
    """``dtype`` casts float columns: an integer or bool one would truncate the values without a word (and
    the float8 types have no NumPy form the batched mode could fill)."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        names = ", ".join(str(d) for d in FLOAT_DTYPES)
        raise ValueError(f"dtype casts the float columns: give one of {names}; got {dtype!r}")


class RowToDict:
    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {name: _to_torch(value, self.dtype) for name, value in row.items()}


class OutputRows(ShardRows):
    """Rows of one split of a job's output, as tuples of tensors (``fields``) or dicts (``as_dict``).

    ``fields``: the columns of each tuple; ``as_dict=True`` yields ``{column: value}``
    for ``columns`` (default all). Either name picks the columns for either form. ``dtype``: cast float tensors (e.g.
    ``torch.float32`` from a float64 output). ``transform``, in item mode, gets each item (the tuple or
    dict of tensors) and returns what training needs. The rest as :class:`ShardRows`.
    """

    default_fields: tuple[str, ...] = ()
    job: str | None = None  # the job whose output this reads (None: any)

    def __init__(
        self,
        output: str,
        split: str = "train",
        *,
        fields: Sequence[str] | None = None,
        as_dict: bool = False,
        columns: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        storage_options: dict[str, Any] | None = None,
        **kwargs,
    ):
        check_float_dtype(dtype)
        records = manifest_files(output, split, storage_options, job=self.job)
        super().__init__(
            [f["url"] for f in records],
            storage_options=storage_options,
            sizes=[int(f["bytes"]) for f in records],
            **kwargs,
        )
        # One column's name is that column (it was split into its letters: "has no column f, 0")
        fields, columns = ((name,) if isinstance(name, str) else name for name in (fields, columns))
        if fields and columns and list(fields) != list(columns):
            raise ValueError(f"fields={tuple(fields)} and columns={tuple(columns)} differ: give one of them")
        available = self.index.schema.names if self.index.schema is not None else []
        chosen = fields or columns  # columns= for tuples (or fields= for dicts) was once ignored without a word
        wanted = list(chosen or (() if as_dict else self.default_fields) or available)
        missing = [name for name in wanted if name not in available]
        if missing:
            advice = "" if (chosen or as_dict) else f"; {self._fields_advice(available)}"
            raise ValueError(
                f"{output} [{split}] has no column {', '.join(missing)}{self._missing_hint(missing)}; "
                f"columns: {', '.join(available)}{advice}"
            )
        self.columns = wanted
        self.as_dict, self.dtype = as_dict, dtype
        self.transform = then_transform(RowToDict(dtype) if as_dict else RowToTuple(wanted, dtype), self.transform)

    def _batch_float_dtype(self) -> torch.dtype | None:
        return self.dtype

    def _finish_batch(self, batch: dict[str, Any]) -> Any:
        """A dict of the columns (``as_dict``) or a tuple in ``fields`` order, like the items."""
        if self.batch_transform:
            return self.batch_transform(batch)
        return batch if self.as_dict else tuple(batch[name] for name in self.columns)

    def _missing_hint(self, missing: list[str]) -> str:
        return ""

    def _fields_advice(self, available: list[str]) -> str:
        """What to pass when the default fields are not in this output."""
        return "name the columns with fields=(...) or read them all with as_dict=True"
