"""What every reader shares: the epoch number, who reads which items, and in what order.

- :class:`SharedEpoch` keeps the epoch in shared memory, so ``set_epoch`` in the
  training process reaches DataLoader workers that were started earlier
  (``persistent_workers=True``), which hold their own copy of the dataset.
- :class:`Shard` is this process's share of an epoch: its distributed rank
  (``torch.distributed``, or given) times its DataLoader worker.
- :func:`epoch_order` and :func:`shard_pieces` turn the sizes of the units a
  reader reads (chunks of row groups, files) into the pieces one shard reads:
  the units are put in one order for the whole job (shuffled from
  ``(seed, epoch)``), their items laid end to end, and each shard takes a
  contiguous, equal share of that sequence (shares differ by one item at most),
  so every item is read exactly once per epoch by exactly one shard. A unit two
  shares split (or whose tail ``drop_last`` leaves out) is split by an order of
  its row groups and their items drawn from ``(seed, epoch, unit)``
  (:func:`unit_item_order`), so a split of one unit is shared out anew each epoch.
- :func:`windows` groups a shard's pieces into shuffle windows: the items of
  several units (from several files) are read together and yielded in a
  random order drawn from ``(seed, epoch, shard, window)``.
- :func:`stop_read_ahead` ends an epoch's background reads, however it ends.
"""

from __future__ import annotations

import multiprocessing
import operator
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info


class SharedEpoch:
    """An epoch number that DataLoader workers read at the start of each epoch.

    The value lives in shared memory, inherited by the workers when they start
    (fork, spawn or forkserver), so ``set_epoch`` reaches persistent workers.
    Pickled any other way (a copy of the dataset), it becomes a private value.
    """

    def __init__(self, value: int = 0):
        self._shared = multiprocessing.RawValue("q", int(value))

    @property
    def value(self) -> int:
        return int(self._shared.value)

    @value.setter
    def value(self, epoch: int) -> None:
        self._shared.value = int(epoch)

    def __reduce__(self):
        if get_spawning_popen() is not None:  # a worker being started: share the memory
            return (_attach, (self._shared,))
        return (SharedEpoch, (self.value,))


def _attach(shared) -> SharedEpoch:
    epoch = SharedEpoch.__new__(SharedEpoch)
    epoch._shared = shared
    return epoch


class EpochChanged(RuntimeError):
    """``set_epoch`` was called while an epoch was being read."""


def check_epoch_unchanged(epoch: SharedEpoch, used: int) -> None:
    """Fail loudly when the epoch moved under a running iteration (its order was the old epoch's)."""
    if epoch.value != used:
        raise EpochChanged(
            f"set_epoch({epoch.value}) was called while epoch {used} was being read; call set_epoch "
            "before iterating the DataLoader (for epoch in ...: dataset.set_epoch(epoch); for batch in loader: ...)"
        )


def distributed_initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def distributed_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: as given, else torch.distributed's when initialised, else ``(0, 1)``."""
    if rank is None or world_size is None:
        if distributed_initialised():
            import torch.distributed as dist

            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank, world_size = (0 if rank is None else rank), (1 if world_size is None else world_size)
    rank, world_size = _count("rank", rank), _count("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank} is not in [0, world_size={world_size}) (give both, or neither: torch.distributed's)"
        )
    return rank, world_size


@dataclass(frozen=True)
class Shard:
    """One reader process's share: ``index`` of ``count`` (ranks x DataLoader workers, ``workers`` per rank)."""

    index: int
    count: int
    workers: int = 1

    @classmethod
    def current(cls, rank: int, world_size: int) -> Shard:
        info = get_worker_info()
        if info is not None:
            warn_if_forked_from_ray()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return cls(rank * workers + worker, world_size * workers, workers)


FORKED_FROM_RAY = (
    "this DataLoader worker was forked from a process connected to Ray (ray.init, or a Ray task or actor); "
    "Ray advises against forking such a process, which can leave it hung or make it exit: give the "
    "DataLoader multiprocessing_context='forkserver' (or 'spawn')"
)
_warned_forked_from_ray = False


def warn_if_forked_from_ray() -> None:
    """Warns once per DataLoader worker that was forked from a process connected to Ray: a worker
    started by forkserver or spawn never ran ``ray.init``, a forked one inherits its parent's state."""
    global _warned_forked_from_ray
    ray = sys.modules.get("ray")
    if _warned_forked_from_ray or ray is None or not ray.is_initialized():
        return
    _warned_forked_from_ray = True
    warnings.warn(FORKED_FROM_RAY, RuntimeWarning, stacklevel=2)


def _count(name: str, value: Any) -> int:
    """``value`` as a non-negative int (NumPy's too): the orders are drawn from ``(seed, epoch)`` by NumPy,
    which refuses negatives in its own words, and a float epoch was cut to an int without a word."""
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"{name} must be 0 or more, got {number}")
    return number


class EpochDataset(IterableDataset):
    """What every reader has: a seed, a shared epoch, and its rank's share of each epoch.

    ``rank``/``world_size`` default to ``torch.distributed``'s, looked up again in the
    training process at ``set_epoch``, ``len``, the start of each epoch and when a
    DataLoader worker gets its copy (pickled for spawn and forkserver); a forked worker
    looks them up in what it inherited. So a reader made before ``init_process_group``
    reads its rank's share, set_epoch or not.
    """

    batch_size: int | None = None  # batched mode's (None: items), set by the reader
    drop_last = False

    def __init__(self, seed: int, shuffle: bool, rank: int | None, world_size: int | None):
        self.seed, self.shuffle = _count("seed", seed), shuffle
        self._rank_given = (rank, world_size)
        self.rank, self.world_size = distributed_rank(rank, world_size)
        self._epoch = SharedEpoch(0)
        self._world_size_checked: int | None = None  # the world size warn_if_ranks_differ checked

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """The next epoch's order (and rows or crops); reaches DataLoader workers, persistent ones too."""
        self._epoch.value = _count("epoch", epoch)
        self._refresh_rank()
        if self._world_size_checked is not None and self.world_size != self._world_size_checked:
            # a reader made before init_process_group was checked as rank 0 of 1
            self.warn_if_ranks_differ()

    def _refresh_rank(self) -> None:
        # In the training process, where torch.distributed lives, or in a worker forked from it (which
        # inherits its process group); a spawned worker keeps what its pickled copy says (__getstate__).
        if get_worker_info() is None or distributed_initialised():
            self.rank, self.world_size = distributed_rank(*self._rank_given)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a DataLoader worker started by spawn or forkserver: the rank as it is now."""
        self._refresh_rank()
        return self.__dict__

    def rank_length(self, total: int, batch_size: int | None, drop_last: bool) -> int:
        """How many of an epoch's ``total`` items (batches, with ``batch_size``) this rank reads."""
        self._refresh_rank()
        if batch_size:
            return rank_batches(total, self.rank, self.world_size, batch_size, drop_last)
        lo, hi = share(total, self.rank, self.world_size)
        return hi - lo

    def epoch_items(self) -> int:
        """The current epoch's items, all ranks'."""
        raise NotImplementedError

    def __len__(self) -> int:
        """Items this rank reads in the current epoch (all of them with one process); batches in batched mode."""
        return self.rank_length(self.epoch_items(), self.batch_size, self.drop_last)

    def warn_if_ranks_differ(self) -> None:
        """Warns, where the reader is made, when the ranks' numbers of batches of an epoch's items differ
        (:func:`rank_batches`); again at ``set_epoch`` where the world size has changed since (a reader made
        before ``init_process_group``)."""
        self._world_size_checked = self.world_size
        if self.batch_size and self.world_size > 1:
            items, batch_size = self.epoch_items(), self.batch_size
            counts = {
                rank_batches(items, r, self.world_size, batch_size, self.drop_last) for r in range(self.world_size)
            }
            if len(counts) > 1:
                warnings.warn(uneven_batches(items, self.world_size, batch_size, counts), RuntimeWarning, stacklevel=3)

    def current_shard(self) -> Shard:
        """This process's share: its rank times its DataLoader worker."""
        self._refresh_rank()
        return Shard.current(self.rank, self.world_size)


def epoch_order(units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order units are read in this epoch: the same in every rank and worker."""
    if not shuffle:
        return np.arange(units)
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(units)


def unit_item_order(group_of: np.ndarray, seed: int, epoch: int, unit: int) -> np.ndarray:
    """The order in which shards that split a unit take their parts of it this epoch, the same in every rank
    and worker (``group_of``: the row group of each of its items, ascending): its row groups in an order drawn
    from ``(seed, epoch, unit)``, each group's items rotated by a drawn offset. A part is a run of that order,
    so it decodes its own groups and at most two that another part holds rows of (an order of rows made every
    shard decode nearly all the unit's groups), and which rows each shard reads changes with the epoch."""
    groups, first, counts = np.unique(group_of, return_index=True, return_counts=True)
    rng = np.random.default_rng([seed, epoch, unit, 0xC4C7])
    rank = np.empty(len(groups), dtype=np.int64)
    rank[rng.permutation(len(groups))] = np.arange(len(groups))
    offsets = rng.integers(0, counts)
    group = np.searchsorted(groups, group_of)
    rotated = (np.arange(len(group_of)) - first[group] + offsets[group]) % counts[group]
    return np.lexsort((rotated, rank[group]))


def share(total: int, index: int, count: int) -> tuple[int, int]:
    """Items ``[start, stop)`` of ``total`` that share ``index`` of ``count`` takes (sizes differ by one at most)."""
    return index * total // count, (index + 1) * total // count


def shard_pieces(sizes: np.ndarray, order: np.ndarray, shard: Shard) -> list[tuple[int, int, int]]:
    """``(unit, first, stop)`` pieces of the units in ``order`` whose items fall in ``shard``'s share.

    ``sizes[u]`` is the number of items unit ``u`` has this epoch; the pieces are
    in reading order and ``first:stop`` counts items within the unit.
    """
    lo, hi = share(int(np.sum(sizes)), shard.index, shard.count)
    return range_pieces(sizes, order, lo, hi)


def batched_share(total: int, shard: Shard, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """Items ``[start, stop)`` of an epoch's ``total`` that a shard reads when its workers yield whole batches.

    The rank (``shard.index // shard.workers``) takes its share as in item mode; its
    ``ceil(n / batch_size)`` batches (``floor`` with ``drop_last``) are split
    among its DataLoader workers in contiguous runs, so only the rank's last batch may be
    short and the rank yields exactly :func:`rank_batches` batches.
    """
    workers = shard.workers
    rank, worker = divmod(shard.index, workers)
    ranks = shard.count // workers
    lo, hi = share(total, rank, ranks)
    batches = rank_batches(total, rank, ranks, batch_size, drop_last)
    first, stop = share(batches, worker, workers)
    return lo + first * batch_size, min(hi, lo + stop * batch_size)


def rank_batches(total: int, rank: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """Batches ``rank`` yields of an epoch's ``total`` items.

    Under DistributedDataParallel every rank must run as many steps: a rank with one batch more
    waits in its gradients' all-reduce for ranks that have ended the epoch, for ever. With
    ``drop_last`` every rank yields the full batches of the smallest share. Without it a rank's
    share (they differ by one item at most) ends in its one short batch, which makes the counts
    equal unless the smallest share is whole batches and a larger one is not; then no split gives
    every item once and every rank as many batches (:func:`uneven_batches` says so).
    """
    if drop_last:
        return total // world_size // batch_size
    lo, hi = share(total, rank, world_size)
    return -(-(hi - lo) // batch_size)


def uneven_batches(total: int, world_size: int, batch_size: int, counts: set[int]) -> str:
    return (
        f"the {world_size} ranks yield {' or '.join(map(str, sorted(counts)))} batches of {batch_size} from this "
        f"epoch's {total} items: under DistributedDataParallel a rank with a batch more waits for the others at "
        "the epoch's end for ever; give the reader drop_last=True (every rank the same full batches), another "
        "batch_size, or run the loop in DDP's model.join()"
    )


def range_pieces(sizes: np.ndarray, order: np.ndarray, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """``(unit, first, stop)`` pieces of the units in ``order`` holding items ``[lo, hi)`` of the
    sequence the units' items make laid end to end in that order (none for an empty range: a
    DataLoader worker whose share is no batch reads nothing)."""
    if lo >= hi:
        return []
    ordered = np.asarray(sizes, dtype=np.int64)[order]
    ends = np.cumsum(ordered)
    starts = ends - ordered
    pieces = []
    for position in range(int(np.searchsorted(ends, lo, side="right")), len(order)):
        if starts[position] >= hi:
            break
        if ordered[position] == 0:
            continue
        first = max(lo, int(starts[position])) - int(starts[position])
        stop = min(hi, int(ends[position])) - int(starts[position])
        pieces.append((int(order[position]), first, stop))
    return pieces


def windows(
    pieces: list[tuple[int, int, int]], min_items: int, min_pieces: int
) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive pieces grouped until a group holds ``min_items`` items and ``min_pieces`` pieces
    (units: several files), the last group whatever is left."""
    group: list[tuple[int, int, int]] = []
    items = 0
    for piece in pieces:
        group.append(piece)
        items += piece[2] - piece[1]
        if items >= min_items and len(group) >= min_pieces:
            yield group
            group, items = [], 0
    if group:
        yield group


def window_order(items: int, seed: int, epoch: int, shard: Shard, window: int, shuffle: bool) -> np.ndarray:
    """The order a window's items are yielded in."""
    if not shuffle:
        return np.arange(items)
    return np.random.default_rng([seed, epoch, shard.index, shard.count, window]).permutation(items)


def stop_read_ahead(pool: ThreadPoolExecutor, _is_finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
    """Cancel the reads an epoch's ``pool`` has not started, without waiting for those it has. Not while
    the interpreter shuts down: an epoch left half-read is closed then, after ``concurrent.futures`` has
    joined its threads, and its module globals are gone (``shutdown`` raised ``'NoneType' object has no
    attribute 'Empty'``). ``_is_finalizing`` is bound here, as this module's globals may be gone too."""
    if not _is_finalizing():
        pool.shutdown(wait=False, cancel_futures=True)
