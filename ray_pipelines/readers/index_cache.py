"""A reader's index kept between runs: made once from the footers, loaded by every later reader of the
same files.

Making a reader reads every file's footer: about 3 s per million row groups on local disk (the
readers' benchmark, *Making a reader at scale*), and on an object store a request per file from every
rank at every start (64 ranks over the 80,000 files of ten million clips: 5 million requests before
the first batch). With ``index_cache=FOLDER`` (a local folder or any fsspec URL, reached with the
reader's ``storage_options``), a reader looks there first for a file named by digests of its kind, its
columns and the files' URLs and sizes (below): found, it is read (one request) instead of the footers;
not found, the reader is made as before and one process per folder (:func:`writes_here`) writes it for
the next ones (whole or not at all). A cache that cannot be read or written is said in a warning, and
the reader goes on from the footers.

What is kept: the row-group index (:class:`~.rowgroups.RowGroupIndex`: its arrays, the schema in
Arrow's IPC form), what a reader derives from the footers besides (``ContrastiveViews``: the clips'
keys and versions) and, where a local reader keeps every file's small columns
(:meth:`~.rowgroups.RowGroupReader.keep_files`, read from every file when it is made), those columns
as one Arrow table: NumPy arrays in one ``.npz``, read without pickle (a cache in a shared bucket cannot
run code). The files are known by their URLs and sizes, as within one reader's life: a file
rewritten in place to the same size is not noticed.

A cache file's name is ``index-<reader>-<files>.npz``: ``<reader>`` a digest of the reader's kind, its
columns and the folder its files are in (an output's split), ``<files>`` one of the files' URLs and
sizes. An output rewritten (a nightly job's new files) gets a new ``<files>``, and writing that file
removes the folder's other files of the same ``<reader>``: a cache serving a changing output holds one
file per reader and folder, not one per night. (Readers of different subsets of one folder's files,
of the same kind and columns, replace each other's file: give them cache folders of their own.)
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..storage import Storage, is_local, missing_bucket
from .rowgroups import RowGroupIndex, no_ranges

# Part of every cache file's name: a change to what is kept, or to how the index is made, changes it.
FORMAT = 2
# The index's arrays in a cache file (``first_row`` is derived from ``rows``), with their dtypes.
INDEX_ARRAYS = {"file": np.int32, "group": np.int32, "rows": np.int64, "decoded_bytes": np.int64}
RANGE_ARRAYS = ("start", "stop")  # an object store's index only (a local one reads no byte ranges)
INDEX = "index."  # the index's arrays' names in the file start with this (np.savez has a ``file`` argument)
SCHEMA = "schema"
EXTRA = "extra."  # what a subclass keeps: its arrays' names start with this
KEPT = "kept"  # the kept small columns, an Arrow IPC stream


@dataclass
class CachedIndex:
    """What a cache file gives back: the index, the subclass's arrays, the kept columns (or None)."""

    index: RowGroupIndex
    extra: dict[str, np.ndarray]
    kept: pa.Table | None


def cache_name(kind: str, columns: Sequence[str] | None, files: Sequence[str], sizes: Sequence[int]) -> str:
    """The cache file of a reader of ``kind`` reading ``columns`` (None: all) of ``files`` of ``sizes``."""
    return f"{reader_prefix(kind, columns, files)}{files_digest(files, sizes)}.npz"


def reader_prefix(kind: str, columns: Sequence[str] | None, files: Sequence[str]) -> str:
    """What the names of every cache file of one reader over one folder start with, whatever its files."""
    folder = posixpath.commonpath([posixpath.dirname(url) for url in files]) if files else ""
    digest = hashlib.sha256(f"{FORMAT}\n{kind}\n{columns}\n{folder}\n".encode())
    return f"index-{digest.hexdigest()[:16]}-"


def files_digest(files: Sequence[str], sizes: Sequence[int]) -> str:
    digest = hashlib.sha256()
    for url, size in zip(files, sizes):
        digest.update(f"{url}\t{size}\n".encode())
    return digest.hexdigest()[:32]


def index_arrays(index: RowGroupIndex, extra: dict[str, np.ndarray], kept: pa.Table | None) -> dict[str, np.ndarray]:
    """What a cache file holds for ``index``, a subclass's ``extra`` arrays and the ``kept`` columns."""
    names = [*INDEX_ARRAYS, *(RANGE_ARRAYS if index.has_ranges else ())]
    arrays = {INDEX + name: np.ascontiguousarray(getattr(index, name)) for name in names}
    arrays[SCHEMA] = np.frombuffer(index.schema.serialize(), dtype=np.uint8)
    arrays.update((EXTRA + name, value) for name, value in extra.items())
    if kept is not None:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, kept.schema) as stream:
            stream.write_table(kept)
        arrays[KEPT] = np.frombuffer(sink.getvalue(), dtype=np.uint8)
    return arrays


def index_from_arrays(arrays: dict[str, np.ndarray], files: list[str], sizes: list[int], remote: bool) -> CachedIndex:
    """The index, the subclass's arrays and the kept columns back from a cache file's; raises ValueError
    when they do not make an index of ``files`` (a damaged or foreign file)."""
    names = [*INDEX_ARRAYS, *(RANGE_ARRAYS if remote else ())]
    missing = [name for name in names if INDEX + name not in arrays] + ([SCHEMA] if SCHEMA not in arrays else [])
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    columns = {name: arrays[INDEX + name] for name in names}
    groups = len(columns["rows"])
    for name, values in columns.items():
        if values.ndim != 1 or len(values) != groups or values.dtype != INDEX_ARRAYS.get(name, np.int64):
            raise ValueError(f"{name}: {values.dtype} {values.shape}, not {groups} row groups")
    file, rows = columns["file"], columns["rows"]
    if groups and (file[0] < 0 or file[-1] >= len(files) or (np.diff(file) < 0).any() or (rows < 0).any()):
        raise ValueError("row groups of files the reader does not have, or out of order")
    schema = pa.ipc.read_schema(pa.py_buffer(arrays[SCHEMA].tobytes()))
    start = columns["start"] if remote else no_ranges(groups)
    stop = columns["stop"] if remote else no_ranges(groups)
    index = RowGroupIndex(
        files=list(files),
        sizes=list(sizes),
        file=file,
        group=columns["group"],
        rows=rows,
        first_row=np.cumsum(rows) - rows,
        start=start,
        stop=stop,
        decoded_bytes=columns["decoded_bytes"],
        schema=schema,
    )
    extra = {name[len(EXTRA) :]: value for name, value in arrays.items() if name.startswith(EXTRA)}
    kept = None
    if KEPT in arrays:
        try:  # the table's buffers are the array's bytes (no copy)
            kept = pa.ipc.open_stream(pa.py_buffer(arrays[KEPT])).read_all()
        except pa.ArrowInvalid as error:
            raise ValueError(f"its kept columns: {error}") from error
    return CachedIndex(index, extra, kept)


def load(folder: str, name: str, storage_options: dict[str, Any] | None) -> dict[str, np.ndarray] | None:
    """The arrays of cache file ``name`` in ``folder``; None when there is none, or it cannot be read
    (then said in a warning)."""
    storage = Storage(folder, storage_options)
    try:
        with storage.fs.open(storage.abspath(name), "rb") as f, np.load(f, allow_pickle=False) as saved:
            return {key: saved[key] for key in saved.files}
    except (FileNotFoundError, NotADirectoryError):  # none yet (a folder that cannot be: save says so)
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(f"reader index cache {storage.url(name)} not read ({error}): made from the footers", stacklevel=3)
        return None


def writes_here(folder: str, storage_options: dict[str, Any] | None, rank: int) -> bool:
    """Whether this process writes a cache file it did not find: one writer per cache folder, not every
    rank (64 ranks would each upload the same 2.5 GB for ten million clips). On an object store (one
    folder for all nodes) rank 0; on local disk each node's first process (``LOCAL_RANK`` 0, as torchrun
    sets it: the folder may be that node's own), or every process where no launcher says which."""
    if not is_local(Storage(folder, storage_options).fs):
        return rank == 0
    return os.environ.get("LOCAL_RANK", "0") == "0"


def save(folder: str, name: str, arrays: dict[str, np.ndarray], storage_options: dict[str, Any] | None) -> None:
    """Write cache file ``name`` in ``folder`` (whole or not at all), then remove the folder's older
    files of the same reader (``name``'s prefix: the same folder's files before they changed); a
    failure is said in a warning."""
    try:
        storage = Storage(folder, storage_options)
        if bucket := missing_bucket(storage):  # s3fs's (gcsfs's, adlfs's) makedirs would create it
            raise FileNotFoundError(f"no bucket {bucket!r} (or no right to see it): the cache makes none")
        with storage.open_atomic(name) as f:
            np.savez(f, **arrays)
    except OSError as error:
        warnings.warn(f"reader index cache not written to {folder} ({error})", stacklevel=3)
        return
    prefix = name[: name.rindex("-") + 1]
    try:
        older = [path for path in storage.list("") if path.startswith(prefix) and path.endswith(".npz")]
        storage.remove_many([path for path in older if path != name])  # (not another rank's temp file)
    except OSError as error:
        warnings.warn(f"older reader index cache files in {folder} not removed ({error})", stacklevel=3)
