"""Whole batches assembled where the rows are decoded: the readers' batched mode.

Through DataLoader workers, a reader that yields items pays twice per batch:
every item becomes its own arrays and tensors, and ``default_collate`` then
stacks them into fresh shared memory. With ``batch_size=B`` a reader yields
batches instead (the DataLoader then takes ``batch_size=None``): each column of
a batch is ONE tensor, all of a batch's columns views of one storage, allocated
in shared memory when the reader runs in a DataLoader worker, and the rows are
copied into it once, straight from the buffers pyarrow decoded. torch sends a
tensor whose storage is already shared as a handle (one file descriptor per
storage, so one per batch), so the batch reaches the training process without
another copy.

- Large tensor columns (a row of at least :data:`VIEW_BYTES`, e.g. a view or
  latents) are kept as zero-copy NumPy views of the decoded Arrow buffers, one
  per Arrow chunk (a row group), and copied row by row into the batch.
- Small numeric columns (scalars, masks) are gathered into one array per
  piece read and then taken into the batch with one NumPy call.
- Other columns (strings) become a list per batch.

Fresh memory costs more than the copy into it: the kernel faults in and zeroes
every page of a new batch (1.7-2 ms per MB of shared memory on the 2-core VM,
against 0.1 ms to copy into pages already touched). ``reuse_batches=R`` on a
reader makes each reader process write its batches into the memory of R
batches in turn (:class:`BatchMemory`): a batch's tensors are rewritten when
its process fills its R-th next batch. A DataLoader with W workers and
``prefetch_factor`` P asks a worker for a batch only when it hands one out,
and keeps P per worker asked ahead, so with R >= P + 1 a batch is intact while
the next W x (R - P) - 1 batches are taken and may change from the moment the
W x (R - P)-th is handed out (in-process: intact while R - 1 more are taken).
A training loop that has used a batch (stepped on it, moved it to the GPU, or
had ``pin_memory`` copy it) before asking for the next needs only R = P + 1.
"""

from __future__ import annotations

import ctypes
import functools
import math
import operator
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

from ..engine.arrow import column_to_numpy, tensor_shape

# Rows at least this large are copied from the decoded buffers (no intermediate copy); smaller
# ones are gathered per piece first, which takes one NumPy call per batch instead of one per row.
VIEW_BYTES = 4096
# Float dtypes a reader's ``dtype`` may ask for that NumPy does not have (filled through float32).
NO_NUMPY_DTYPES = (torch.bfloat16,)


@dataclass(frozen=True)
class ColumnSpec:
    """How one column becomes a batch: ``kind`` "view" (large rows), "gather" (small numbers) or "list"."""

    name: str
    kind: str
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None


def torch_dtype(np_dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype


def numeric_shape(arrow_type: pa.DataType) -> tuple[tuple[int, ...], pa.DataType] | None:
    """``(row shape, value type)`` of a column of numbers or booleans (shape ``()``) or of fixed-shape
    tensors of them; None for any other column (strings, variable-length lists, structs)."""
    described = tensor_shape(arrow_type)
    shape, value_type = (tuple(described[0]), described[1]) if described is not None else ((), arrow_type)
    if pa.types.is_integer(value_type) or pa.types.is_floating(value_type) or pa.types.is_boolean(value_type):
        return shape, value_type
    return None


def column_specs(schema: pa.Schema, names: list[str], float_dtype: torch.dtype | None = None) -> list[ColumnSpec]:
    """Specs of ``names`` from the files' Arrow schema; float columns cast to ``float_dtype`` if given."""
    specs = []
    for name in names:
        numeric = numeric_shape(schema.field(name).type)
        if numeric is None:
            specs.append(ColumnSpec(name, "list"))
            continue
        shape, value_type = numeric
        np_dtype = np.dtype(bool) if pa.types.is_boolean(value_type) else np.dtype(value_type.to_pandas_dtype())
        dtype = torch_dtype(np_dtype)
        if float_dtype is not None and dtype.is_floating_point:
            dtype = float_dtype
        row_bytes = math.prod(shape) * np_dtype.itemsize
        # Booleans are bit-packed in Arrow: no zero-copy view, gather them.
        kind = "view" if row_bytes >= VIEW_BYTES and np_dtype.kind != "b" else "gather"
        specs.append(ColumnSpec(name, kind, shape, dtype))
    return specs


@dataclass
class ViewRows:
    """Rows of a column as (views of decoded chunks, which chunk and position each row is at)."""

    views: list[np.ndarray]
    chunk: np.ndarray
    position: np.ndarray


def view_rows(column: pa.ChunkedArray, positions: np.ndarray) -> ViewRows | None:
    """Rows ``positions`` (ascending) of ``column`` as views of its decoded buffers; None when a
    chunk has no zero-copy view (nulls)."""
    views, bounds = [], [0]
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        view = column_to_numpy(chunk)
        if view.dtype == object:
            return None
        views.append(view)
        bounds.append(bounds[-1] + len(chunk))
    chunk_of = np.searchsorted(np.asarray(bounds), positions, side="right") - 1
    return ViewRows(views, chunk_of, positions - np.asarray(bounds)[chunk_of])


@dataclass
class PieceColumns:
    """What one piece (rows of one chunk of row groups) holds per column, in the piece's row order."""

    rows: int
    views: dict[str, ViewRows] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # gathered numbers, or objects for lists


def piece_columns(
    table: pa.Table,
    positions: np.ndarray,
    specs: list[ColumnSpec],
    take_rows,
    decoded_rows: Callable[[str], ViewRows | None] = lambda name: None,
) -> PieceColumns:
    """The piece's rows ``positions`` of ``table``: views for large columns, gathered arrays for the rest;
    a column ``decoded_rows`` has (decoded from its pages, :mod:`.pages`) is taken from there."""
    piece = PieceColumns(len(positions))
    for spec in specs:
        decoded = decoded_rows(spec.name)
        if decoded is not None:
            if spec.kind == "view":
                piece.views[spec.name] = decoded
            else:
                piece.arrays[spec.name] = gather_rows(decoded)
            continue
        column = table.column(spec.name)
        if spec.kind == "view":
            rows = view_rows(column, positions)
            if rows is not None:
                piece.views[spec.name] = rows
                continue
        piece.arrays[spec.name] = take_rows(column, positions)
    return piece


class Window:
    """The pieces of one shuffle window, their rows numbered ``0..items`` in piece order."""

    def __init__(self, pieces: list[PieceColumns]):
        self.items = sum(p.rows for p in pieces)
        self.views: dict[str, tuple[list[np.ndarray], list[int], list[int]]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        if not pieces:
            return
        for name in pieces[0].views.keys() | pieces[0].arrays.keys():
            if all(name in p.views for p in pieces):
                views: list[np.ndarray] = []
                chunks, positions = [], []
                for p in pieces:
                    chunks.append(p.views[name].chunk + len(views))
                    positions.append(p.views[name].position)
                    views.extend(p.views[name].views)
                # lists: the batch copies index them once per row, faster than NumPy scalars
                self.views[name] = (views, np.concatenate(chunks).tolist(), np.concatenate(positions).tolist())
            else:  # some piece had no views (nulls): gather this column everywhere
                self.arrays[name] = np.concatenate(
                    [p.arrays[name] if name in p.arrays else gather_rows(p.views[name]) for p in pieces]
                )
        for name in pieces[0].arrays:
            if name not in self.arrays:
                self.arrays[name] = np.concatenate([p.arrays[name] for p in pieces])

    def row(self, name: str, i: int) -> np.ndarray:
        """Row ``i`` of a column (a view for large columns)."""
        if name in self.views:
            views, chunk, position = self.views[name]
            return views[chunk[i]][position[i]]
        return self.arrays[name][i]


def gather_rows(rows: ViewRows) -> np.ndarray:
    """The rows as one new ``[n, *shape]`` array."""
    return np.stack([rows.views[c][p] for c, p in zip(rows.chunk.tolist(), rows.position.tolist())])


def empty_tensor(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor, its pages already mapped (:func:`populate`); in shared memory when
    ``shared`` (then torch sends it to another process as a handle, without copying it)."""
    if not shared:
        return populate(torch.empty(shape, dtype=dtype))
    # Allocated in shared memory directly (as default_collate does): torch.empty(...).share_memory_()
    # would copy the fresh tensor into it once more (17 vs 12 CPU-ms for a 17 MB batch on the VM).
    storage = torch.UntypedStorage._new_shared(max(1, math.prod(shape)) * dtype.itemsize)
    return populate(torch.empty(0, dtype=dtype).set_(storage, 0, shape))


# A column's place in a batch's storage starts at a multiple of this many bytes (any dtype's itemsize
# divides it, and a column starts on a cache line).
COLUMN_ALIGN = 64


def batch_tensors(columns: list[tuple[str, tuple[int, ...], torch.dtype]], shared: bool) -> dict[str, torch.Tensor]:
    """Uninitialised tensors for a batch's ``(name, shape, dtype)`` columns, all views of ONE storage
    (its pages mapped at once, :func:`populate`; in shared memory when ``shared``). torch sends tensors
    that share a storage to another process as one file descriptor: a batch of 12 columns each in its
    own shared memory cost the training process 2.7 ms to receive, 0.35-0.54 ms as views of one."""
    if not columns:  # a batch of strings only: no memory to share
        return {}
    offsets, size = [], 0
    for _, shape, dtype in columns:
        size = -(-size // COLUMN_ALIGN) * COLUMN_ALIGN
        offsets.append(size)
        size += math.prod(shape) * dtype.itemsize
    whole = empty_tensor((max(1, size),), torch.uint8, shared)
    storage = whole.untyped_storage()
    return {
        name: torch.empty(0, dtype=dtype).set_(storage, offset // dtype.itemsize, shape)
        for (name, shape, dtype), offset in zip(columns, offsets)
    }


MADV_POPULATE_WRITE = 23  # Linux 5.14+
PAGE = 4096


def populate(tensor: torch.Tensor) -> torch.Tensor:
    """Map a fresh tensor's pages in one system call (``madvise(MADV_POPULATE_WRITE)``) instead of a
    page fault per 4 KiB as rows are copied in: on the VM, 17 MB took 34-36 ms of faults and 8-9 ms
    populated, the copy included. A batch's memory is new on every batch without ``reuse_batches``,
    and on the first epoch with it. Best effort: elsewhere (another OS, an older kernel) the faults
    happen as before."""
    libc = _libc()
    size = tensor.numel() * tensor.element_size()
    if libc is not None and size >= 16 * PAGE:
        start = tensor.data_ptr() // PAGE * PAGE
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(tensor.data_ptr() + size - start), MADV_POPULATE_WRITE)
    return tensor


@functools.cache
def _libc():
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def check_batching(
    batch_size: int | None,
    reuse_batches: int,
    drop_last: bool = False,
    batch_transform: Callable | None = None,
    transform: Callable | None = None,
) -> None:
    """Refuse a reader's batch arguments that cannot work, with what to pass instead: the batched mode's
    own options without it would be ignored without a word (a DDP run's ``drop_last=True`` among them),
    and so would an item ``transform`` with it."""
    if batch_size is not None and (isinstance(batch_size, bool) or not _is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be an integer of at least 1 (or None for items), got {batch_size!r}")
    if isinstance(reuse_batches, bool) or not _is_int(reuse_batches) or reuse_batches < 0:
        raise ValueError(f"reuse_batches must be 0 (fresh memory per batch) or more, got {reuse_batches!r}")
    given = [name for name, value in (("reuse_batches", reuse_batches), ("drop_last", drop_last)) if value]
    given += ["batch_transform"] * (batch_transform is not None)
    if given and batch_size is None:
        raise ValueError(
            f"{', '.join(given)} needs the batched mode: pass batch_size= too (and the DataLoader batch_size=None)"
            + ("; in item mode the DataLoader's own drop_last applies" if drop_last else "")
        )
    if transform is not None and batch_size is not None:
        raise ValueError(
            "transform applies to items, and batch_size= yields whole batches: pass batch_transform= "
            "(it gets each batch) or leave batch_size out"
        )


class BatchDict(dict):
    """A batch a reader yields as a dict (batched mode): a dict, marked so that a DataLoader that would
    batch it again is refused (:func:`refuse_batching_again`)."""


class BatchTuple(tuple):
    """A batch a reader yields as a tuple (batched mode), marked as :class:`BatchDict` is."""


def reader_batch(batch: Any) -> Any:
    """``batch`` marked as a whole batch where it is a plain dict or tuple (what else a ``batch_transform``
    returns is left as it is)."""
    if type(batch) is dict:
        return BatchDict(batch)
    if type(batch) is tuple:
        return BatchTuple(batch)
    return batch


def refuse_batching_again(batch: list, *, collate_fn_map: dict | None = None) -> Any:
    """``default_collate`` of a reader's whole batches: a DataLoader given ``batch_size=N`` as well would
    stack N batches into one, ``[N, B, ...]``, without a word (and N times the memory)."""
    raise TypeError(
        "the reader yields whole batches (its batch_size=), and the DataLoader, given a batch_size too, would "
        f"stack them again ({len(batch)} of them into one): give the DataLoader batch_size=None (or the reader "
        "no batch_size, for items; or the DataLoader a collate_fn of your own to combine batches)"
    )


# torch's documented way to extend default_collate (its collate() docs): registered wherever a reader
# module is imported, so in every DataLoader worker that unpickles a reader too.
default_collate_fn_map.update({BatchDict: refuse_batching_again, BatchTuple: refuse_batching_again})


def _is_int(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


class BatchMemory:
    """Where one reader process's batches live: fresh memory per batch (``reuse=0``), or the
    memory of ``reuse`` batches used in turn (see the module's docstring for when a batch is
    rewritten). A batch's columns are views of one storage (:func:`batch_tensors`); a slot's are
    kept while the columns' names, dtypes and row shapes stay the same and its rows suffice, and a
    shorter batch is a view of the slot's first rows. A new slot holds ``capacity`` rows when that
    is more than its first batch's (the reader's batch size): an epoch's short last batch that is a
    slot's first would otherwise make it too small, and its next full batch would map the slot's
    memory anew (on the VM, 8,300 page faults for a 34 MB augment batch, in the second epoch)."""

    def __init__(self, shared: bool, reuse: int = 0, capacity: int = 0):
        self.shared, self.reuse, self.capacity = shared, reuse, capacity
        # per slot: (the columns' names, row shapes and dtypes; rows it holds; its tensors)
        self._slots: list[tuple[tuple, int, dict[str, torch.Tensor]] | None] = [None] * reuse
        self._slot = -1

    def next_batch(self) -> None:
        """Move to the next batch's memory (call once per batch, before its tensors)."""
        if self.reuse:
            self._slot = (self._slot + 1) % self.reuse

    def tensors(self, columns: list[tuple[str, tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
        """Uninitialised tensors for the current batch's ``(name, shape, dtype)`` columns (every shape
        ``[rows, ...]`` with the batch's rows)."""
        if not self.reuse:
            return batch_tensors(columns, self.shared)
        rows = columns[0][1][0] if columns else 0
        layout = tuple((name, shape[1:], dtype) for name, shape, dtype in columns)
        kept = self._slots[self._slot]
        if kept is None or kept[0] != layout or kept[1] < rows:
            held = max(rows, self.capacity)
            full = [(name, (held, *shape[1:]), dtype) for name, shape, dtype in columns]
            kept = self._slots[self._slot] = (layout, held, batch_tensors(full, self.shared))
        return {name: tensor[:rows] for name, tensor in kept[2].items()}


class ProcessBatchMemory:
    """A reader's :class:`BatchMemory`, one per process (made where the reader iterates: a DataLoader
    worker's copy of the reader gets its own, in shared memory) and kept across epochs; never pickled."""

    def __init__(self, reuse: int, capacity: int = 0):
        self.reuse, self.capacity = reuse, capacity  # capacity: the reader's batch size (BatchMemory)
        self._memory: BatchMemory | None = None
        self._pid = 0

    def get(self) -> BatchMemory:
        """This process's memory: shared only where a batch travels to another process (a DataLoader
        worker's)."""
        shared = get_worker_info() is not None
        if self._memory is None or self._pid != os.getpid() or self._memory.shared != shared:
            self._memory, self._pid = BatchMemory(shared, self.reuse, self.capacity), os.getpid()
        return self._memory

    def __getstate__(self) -> dict[str, Any]:
        return {"reuse": self.reuse, "capacity": self.capacity, "_memory": None, "_pid": 0}


# fill(batch, window, order, at): the columns a reader fills itself (e.g. crops), after the others.
CustomFill = Callable[[dict[str, Any], Window, np.ndarray, int], None]


class BatchBuilder:
    """Cuts a stream of windows (each with the order its rows are yielded in) into batches of
    ``batch_size`` (the last one of ``total`` items shorter), filling each column once."""

    def __init__(
        self,
        specs: list[ColumnSpec],
        batch_size: int,
        total: int,
        memory: BatchMemory,
        custom: list[ColumnSpec] | None = None,
        fill: CustomFill | None = None,
    ):
        self.specs, self.custom, self.fill = specs, custom or [], fill
        self.batch_size, self.left, self.memory = batch_size, total, memory
        self._batch: dict[str, Any] | None = None
        self._size = self._filled = 0

    def _new_batch(self) -> None:
        self._size = min(self.batch_size, self.left)
        self._filled = 0
        self._batch = {}
        self.memory.next_batch()
        specs = [*self.specs, *self.custom]
        tensors = self.memory.tensors(
            [(spec.name, (self._size, *spec.shape), spec.dtype) for spec in specs if spec.kind != "list"]
        )
        for spec in specs:
            self._batch[spec.name] = [] if spec.kind == "list" else tensors[spec.name]

    def add(self, window: Window, order: np.ndarray) -> Iterator[dict[str, Any]]:
        """Batches completed by ``window``'s rows, in ``order``."""
        done = 0
        while done < len(order) and self.left > 0:
            if self._batch is None:
                self._new_batch()
            take = min(len(order) - done, self._size - self._filled)
            self._fill(window, order[done : done + take], self._filled)
            done += take
            self._filled += take
            if self._filled == self._size:
                batch, self._batch = self._batch, None
                self.left -= self._size
                yield batch

    def _fill(self, window: Window, order: np.ndarray, at: int) -> None:
        batch, stop = self._batch, at + len(order)
        for spec in self.specs:
            out = batch[spec.name]
            if spec.kind == "list":
                out.extend(window.arrays[spec.name][order].tolist())
                continue
            # NumPy has no bfloat16: such a column's rows are gathered as float32, then cast by torch
            staged = out.dtype in NO_NUMPY_DTYPES
            target = np.empty((stop - at, *out.shape[1:]), np.float32) if staged else out.numpy()[at:stop]
            if spec.name in window.views:
                views, chunk, position = window.views[spec.name]
                for j, i in enumerate(order.tolist()):
                    target[j] = views[chunk[i]][position[i]]
            else:
                source = window.arrays[spec.name]
                if source.dtype == target.dtype:
                    np.take(source, order, axis=0, out=target)
                else:
                    target[...] = source[order]
            if staged:
                out[at:stop] = torch.from_numpy(target)
        if self.fill is not None:
            self.fill(batch, window, order, at)
