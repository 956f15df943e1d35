"""PyTorch datasets over the encode job's output: ``(latents [C, N], metadata)`` pairs.

- :class:`EncodedLatents` reads the ``sat`` layout through ``filelist.txt``:
  each item is ``{rank}/{id}.npy`` and its ``.json``, read ahead in threads.
- :class:`EncodedShardRows` reads the ``parquet`` layout (a
  :class:`~.parquet.ShardRows`).
- :func:`open_encoded` picks the right one from the output's ``_job.json``.

Both are ``IterableDataset``s: an epoch yields every item once across
DataLoader workers and ranks, in an order drawn from ``(seed, epoch)`` with
``shuffle=True``; ``set_epoch`` changes the order and the crops, also in
persistent workers.

``metadata["padding_mask"]`` is a bool tensor ``[N]`` (True = real audio).
With ``latent_crop_length = L`` every item is exactly ``L`` frames: longer
latents are cropped at a start drawn per (seed, epoch, key, window) among
the starts whose crop holds at least one real frame (or at 0 with
``random_crop=False``); shorter ones are zero-padded with mask 0.
stable-audio-tools' ``PreEncodedDataset`` differs on both: it draws starts only
in ``[0, last_real_frame - L]`` (0 without its ``random_crop`` or when that
range is empty) and does not pad, so its short latents stay short.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import lru_cache, partial
from typing import Any

import numpy as np
import orjson
import torch

from ..encoders.sat_layout import FILELIST
from ..seeding import derive_seed
from ..storage import Storage, is_local
from .batches import (
    ColumnSpec,
    ProcessBatchMemory,
    Window,
    check_batching,
    column_specs,
    reader_batch,
    torch_dtype,
)
from .clients import ProcessFilesystem
from .epoch import EpochDataset, batched_share, check_epoch_unchanged, epoch_order, share, stop_read_ahead
from .errors import naming_the_file, store_refusals_named
from .parquet import (
    ShardRows,
    check_job,
    manifest_files,
    not_an_output,
    output_storage,
    then_transform,
    warn_if_incomplete,
)


def crop_latents(
    latents: np.ndarray, mask: np.ndarray, length: int, draw: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``[C, N]`` latents (or ``[Q, N]`` tokens) and ``[N]`` mask -> exactly ``length`` frames, and the crop start.

    The start is the one :func:`crop_starts` picks with ``draw`` (0 when
    ``draw`` is None); shorter inputs are zero-padded.
    """
    frames = latents.shape[-1]
    if len(mask) != frames:
        raise ValueError(
            f"padding_mask has {len(mask)} entries but the latents' last axis has {frames} frames "
            f"(shape {list(latents.shape)}): latents are [C, N] (tokens [Q, N]) with a mask of N"
        )
    if frames <= length:
        pad = length - frames
        return (np.pad(latents, [(0, 0)] * (latents.ndim - 1) + [(0, pad)]), np.pad(mask, (0, pad)), 0)
    start = int(crop_starts(np.asarray(mask)[None], length, None if draw is None else [draw])[0])
    return latents[..., start : start + length], mask[start : start + length], start


def crop_starts(masks: np.ndarray, length: int, draws: list[int] | None) -> np.ndarray:
    """Crop starts of ``length`` frames for ``masks [n, N]`` (``N > length``), one per row: uniform over
    the starts whose crop holds at least one real frame (over every start where none does), the
    ``draw % count``-th of them for the row's 64-bit ``draw`` (the bias is below 1e-15); 0 without
    draws. A whole batch at once: the batched reader's crops cost a few NumPy calls, not a
    generator per item."""
    n, frames = masks.shape
    if draws is None:
        return np.zeros(n, dtype=np.int64)
    cumulative = np.zeros((n, frames + 1), dtype=np.int32)
    np.cumsum(masks > 0, axis=1, out=cumulative[:, 1:])
    usable = (cumulative[:, length:] - cumulative[:, :-length]) > 0  # [n, N - length + 1]
    usable[~usable.any(axis=1)] = True  # no real frame at all: any start
    ranks = np.cumsum(usable, axis=1)
    picks = np.array([draw % count for draw, count in zip(draws, ranks[:, -1].tolist())], dtype=np.int64)
    return np.argmax(ranks > picks[:, None], axis=1).astype(np.int64)


def array_from_npy(data: bytes) -> np.ndarray:
    """An ``.npy`` file's array (``data``: all its bytes) as a read-only view of ``data``: ``np.load``
    of a ``BytesIO`` copies the values out once more (about 40 us of a 165 KB latent's 80). Anything but
    a plain array of numbers in format 1.0 or 2.0 goes to ``np.load``, which reads or refuses it."""
    layout = _npy_layout(_npy_header(data))
    if layout is not None:
        shape, fortran_order, dtype, offset = layout
        values = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
        return values.reshape(shape, order="F" if fortran_order else "C")
    with _NUMPY_HEADER_PARSE:
        return np.load(io.BytesIO(data), allow_pickle=False)


# NumPy parses an .npy header with ast.literal_eval, and CPython 3.11 keeps the AST constructor's
# recursion depth per interpreter: a conversion that another one interrupts (another thread's, or one
# that a garbage collection inside it starts, as pytest's hook for errors in finalizers does when it
# formats a traceback) fails with "SystemError: AST constructor recursion depth mismatch" (cpython
# gh-106905). The SAT reader's DataLoader workers hit it now and then in the test suite. So the header
# NumPy writes for a plain array is read without ast (_PLAIN_HEADER), and anything else goes to NumPy
# one thread at a time.
_NUMPY_HEADER_PARSE = threading.Lock()
# The dict NumPy writes (np.lib.format: its keys sorted, the values repr'd), then spaces and a newline.
_PLAIN_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(((?:\d+, )*(?:\d+,?)?)\), \} *\n?"
)


def mask_array(mask: Any) -> np.ndarray:
    """A padding mask as uint8 values. A ``.json``'s list of 0/1 goes through ``bytes`` (4 us for 645
    values, ``np.asarray`` 10), read-only; anything else (arrays, floats, values past 255) as
    ``np.asarray(mask, dtype=np.uint8)`` converts or refuses it."""
    if isinstance(mask, list):
        try:
            return np.frombuffer(bytes(mask), dtype=np.uint8)
        except (TypeError, ValueError):
            pass
    return np.asarray(mask, dtype=np.uint8)


# 19 digits in a row: a number orjson may read otherwise than json (integers past 64 bits, below -2**63
# too, become floats). Found by mapping every digit to "0" and searching for 19 of them: the whole
# call then takes 7 us, where a regular expression's search alone took 17.
_DIGITS_AS_ZEROS = bytes(48 if chr(b).isdigit() and b < 128 else 32 for b in range(256))
_LONG_DIGITS = b"0" * 19


def loads_json(data: bytes) -> Any:
    """An item's ``.json`` as ``json.loads`` reads it, parsed by orjson where that is the same (6 us for
    a 645-frame mask's 2.3 KB, json's 31): what orjson refuses (``NaN``) or may read otherwise (19
    digits in a row: integers past 64 bits) goes to json."""
    if _LONG_DIGITS not in data.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def _npy_header(data: bytes) -> bytes:
    """The magic, version and header of an ``.npy`` file (format 1.0: a 2-byte length; 2.0: 4 bytes)."""
    if data[:6] != np.lib.format.MAGIC_PREFIX:
        np.lib.format.read_magic(io.BytesIO(data))  # raises: not an .npy file
    if data[6:8] == b"\x01\x00":
        return data[: 10 + int.from_bytes(data[8:10], "little")]
    if data[6:8] == b"\x02\x00":
        return data[: 12 + int.from_bytes(data[8:12], "little")]
    return b""


@lru_cache(maxsize=64)
def _npy_layout(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """``(shape, fortran_order, dtype, offset of the values)`` of a plain array's header, else None.
    Cached: an output's latents share a handful of headers, and parsing one took 15 of the 18 us an
    item's array took."""
    if not header:
        return None
    plain = _PLAIN_HEADER.fullmatch(header, 10 if header[6:7] == b"\x01" else 12)
    if plain is not None:
        descr, fortran_order, shape = plain.groups()
        dtype = np.dtype(descr.decode())
        shape = tuple(int(size) for size in shape.split(b",") if size.strip())
        fortran_order = fortran_order == b"True"
    else:
        stream = io.BytesIO(header)
        version = np.lib.format.read_magic(stream)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        with _NUMPY_HEADER_PARSE:
            shape, fortran_order, dtype = read(stream)
    if dtype.hasobject:
        return None
    return shape, fortran_order, dtype, len(header)


class _Cropper:
    """Shared by both datasets: mask to bool tensor, optional crop, tensors out."""

    def __init__(self, latent_crop_length: int | None, random_crop: bool, seed: int):
        self.latent_crop_length = latent_crop_length
        self.random_crop = random_crop
        self.seed = seed

    def draws(self, keys, windows, epoch: int) -> list[int] | None:
        """Each item's crop draw, from ``(seed, epoch, key, window)`` (None with ``random_crop=False``)."""
        if not self.random_crop:
            return None
        return [derive_seed(self.seed, "crop", epoch, key, int(window)) for key, window in zip(keys, windows)]

    def arrays(
        self, latents: np.ndarray, mask: np.ndarray, key: str, window: int, epoch: int
    ) -> tuple[np.ndarray, np.ndarray, int | None]:
        """The item's latents and uint8 mask, cropped (views where possible), and the crop start (None: no crop)."""
        mask = mask_array(mask)
        if self.latent_crop_length is None:
            return latents, mask, None
        draws = self.draws([key], [window], epoch)
        return crop_latents(latents, mask, self.latent_crop_length, None if draws is None else draws[0])

    def batch(
        self, latents: list[np.ndarray], masks: list, keys: list, windows: list, epoch: int
    ) -> list[tuple[np.ndarray, np.ndarray, int | None]]:
        """Each item cropped as :meth:`arrays` crops it; the starts of items of one length drawn at once."""
        masks = [mask_array(mask) for mask in masks]
        length = self.latent_crop_length
        frames = {z.shape[-1] for z in latents} | {len(mask) for mask in masks}
        if length is None or len(frames) != 1 or frames.pop() <= length:  # no crop, padding, or lengths differ
            return [self.arrays(*item, epoch) for item in zip(latents, masks, keys, windows)]
        starts = crop_starts(np.stack(masks), length, self.draws(keys, windows, epoch)).tolist()
        return [(z[..., s : s + length], mask[s : s + length], s) for z, mask, s in zip(latents, masks, starts)]

    def __call__(
        self, latents: np.ndarray, metadata: dict[str, Any], epoch: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        key, window = metadata.get("key", ""), int(metadata.get("window", 0))
        latents, mask, start = self.arrays(latents, metadata["padding_mask"], key, window, epoch)
        if start is not None:
            metadata["latent_crop_start"] = start
            metadata["latent_crop_length"] = self.latent_crop_length
        metadata["padding_mask"] = torch.from_numpy(mask.astype(bool))
        return torch.from_numpy(np.array(latents, copy=True)), metadata


class EncodedLatents(EpochDataset):
    """The ``sat`` layout: items listed in ``filelist.txt``, each an ``.npy`` and its ``.json``.

    Iterated, an epoch yields every item once across DataLoader workers and ranks
    (``shuffle``: in an order drawn from ``(seed, epoch)``), reading ``prefetch``
    items ahead in background threads (default 4 on local disk, 64 on object stores; at most 16 threads read at once).
    ``dataset[i]`` reads item ``i`` of ``filelist.txt`` alone, as stable-audio-tools'
    ``PreEncodedDataset`` does. ``batch_size=B`` (DataLoader ``batch_size=None``)
    yields ``(latents [B, C, L], metadata)`` batches assembled in the worker (see
    :meth:`_batches`); ``reuse_batches`` as for :class:`~.parquet.ShardRows`.
    ``transform`` gets each item and ``batch_transform`` each batch as a dict of its columns
    (``latents`` among them), as the Parquet layout's do, and return what training needs.
    ``index_cache`` is accepted so that one call opens either layout (:func:`open_encoded`),
    and unused: this layout's index is ``filelist.txt``, one read, with no footers to keep.
    """

    def __init__(
        self,
        output: str,
        *,
        latent_crop_length: int | None = None,
        random_crop: bool = True,
        seed: int = 0,
        shuffle: bool = False,
        storage_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        prefetch: int | None = None,
        batch_size: int | None = None,
        drop_last: bool = False,
        reuse_batches: int = 0,
        index_cache: str | None = None,
        transform: Callable[[Any], Any] | None = None,
        batch_transform: Callable[[Any], Any] | None = None,
    ):
        super().__init__(seed, shuffle, rank, world_size)
        check_batching(batch_size, reuse_batches, drop_last, batch_transform, transform)
        self.batch_size, self.drop_last = batch_size, drop_last
        self.transform, self.batch_transform = transform, batch_transform
        self.batch_memory = ProcessBatchMemory(reuse_batches, batch_size or 0)
        self.storage = output_storage(output, storage_options)
        self._client = ProcessFilesystem(self.storage.root, storage_options)
        with store_refusals_named(output):
            listed = self.storage.exists(FILELIST)
        if not listed:
            why = (
                not_an_output(self.storage, FILELIST)
                or f"has no {FILELIST}: is it an encode job's committed sat-layout output?"
            )
            raise FileNotFoundError(f"{output} {why}")
        if self.storage.exists("manifest.json"):  # (an output of an older version may lack it)
            manifest = self.storage.read_json("manifest.json")
            check_job(output, manifest.get("job"), "encode")
            warn_if_incomplete(output, manifest)
        with self.storage.fs.open(self.storage.abspath(FILELIST), "rb") as f:
            self.files = [line.strip() for line in f.read().decode().splitlines() if line.strip()]
        # An epoch goes through the files by sample id (the file name), not the list's order: a window's rank
        # folder is the write task's that took its block, so two encodes of the same inputs list their files
        # in other orders, and a seed's order (a permutation of positions) would differ between them.
        # ``dataset[i]`` stays the list's item i, as stable-audio-tools reads it.
        by_id = sorted(range(len(self.files)), key=lambda i: (posixpath.basename(self.files[i]), self.files[i]))
        self.by_sample_id = np.array(by_id, dtype=np.int64)
        self.warn_if_ranks_differ()
        self.crop = _Cropper(latent_crop_length, random_crop, seed)
        # Local reads are CPU work (the page cache) more than waiting: more threads there only contend
        # for the GIL and each takes its own malloc arena (fresh pages in the first epoch). On the 2-core
        # VM 4 took 176-206 CPU us per item in a first epoch against 16's 209-219, later 159-199 vs 176-196.
        self.prefetch = prefetch or (4 if is_local(self.storage.fs) else 64)

    def epoch_items(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> tuple[np.ndarray, dict[str, Any]]:
        relpath = self.files[index]
        stem = posixpath.splitext(relpath)[0]
        url = self.storage.url(relpath)
        # A damaged .npy or .json raises NumPy's or json's ValueError, which does not say which file.
        with naming_the_file(url, (ValueError, OSError)):
            latents = array_from_npy(self._client.cat(self.storage.abspath(relpath)))
        with naming_the_file(self.storage.url(stem + ".json"), (ValueError, OSError)):
            metadata = loads_json(self._client.cat(self.storage.abspath(stem + ".json")))
        metadata["latent_filename"] = url
        return latents, metadata

    def __getitem__(self, index: int) -> Any:
        latents, metadata = self._load(index)
        return self._item(latents, metadata, self.epoch)

    def _item(self, latents: np.ndarray, metadata: dict[str, Any], epoch: int) -> Any:
        item = self.crop(latents, metadata, epoch)
        return self.transform(item) if self.transform else item

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any]]:
        shard = self.current_shard()
        epoch = self.epoch
        if self.batch_size:
            lo, hi = batched_share(len(self.files), shard, self.batch_size, self.drop_last)
        else:
            lo, hi = share(len(self.files), shard.index, shard.count)
        mine = self.by_sample_id[epoch_order(len(self.files), self.seed, epoch, self.shuffle)[lo:hi]].tolist()
        pool = ThreadPoolExecutor(max_workers=min(self.prefetch, 16), thread_name_prefix="sat-latents")
        try:
            loaded = self._read_ahead(pool, mine)
            if self.batch_size:
                yield from self._batches(loaded, len(mine), epoch)
            else:
                for latents, metadata in loaded:
                    yield self._item(latents, metadata, epoch)
        finally:
            stop_read_ahead(pool)
        check_epoch_unchanged(self._epoch, epoch)

    def _read_ahead(self, pool: ThreadPoolExecutor, mine: list[int]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        ahead = deque(pool.submit(self._load, i) for i in mine[: self.prefetch])
        for i in mine[self.prefetch :] + [None] * len(ahead):
            loaded = ahead.popleft().result()
            if i is not None:
                ahead.append(pool.submit(self._load, i))
            yield loaded

    def _batches(self, loaded: Iterator, total: int, epoch: int) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
        """``(latents [n, C, L], metadata)``: ``padding_mask`` ``[n, L]`` bool and ``latent_crop_start``
        ``[n]`` tensors, every other field a list; each tensor in shared memory in a DataLoader worker."""
        memory = self.batch_memory.get()
        while total > 0:
            size = min(self.batch_size, total)
            total -= size
            memory.next_batch()
            items = [next(loaded) for _ in range(size)]
            crops = self.crop.batch(
                [z for z, _ in items],
                [md.pop("padding_mask") for _, md in items],
                [md.get("key", "") for _, md in items],
                [md.get("window", 0) for _, md in items],
                epoch,
            )
            first, first_mask, _ = crops[0]
            tensors = memory.tensors(
                [
                    ("latents", (size, *first.shape), torch_dtype(first.dtype)),
                    ("padding_mask", (size, len(first_mask)), torch.bool),
                    ("latent_crop_start", (size,), torch.int64),
                ]
            )
            latents, masks, starts = tensors["latents"], tensors["padding_mask"], tensors["latent_crop_start"]
            latents_out, masks_out, starts_out = latents.numpy(), masks.numpy(), starts.numpy()
            metadata: dict[str, Any] = {}
            for j, ((z, mask, start), (_, md)) in enumerate(zip(crops, items)):
                if z.shape != latents.shape[1:]:
                    raise ValueError(
                        f"{md.get('latent_filename')}: latents {list(z.shape)} differ from the batch's "
                        f"{list(latents.shape[1:])}; set latent_crop_length to batch latents of several lengths"
                    )
                latents_out[j], masks_out[j], starts_out[j] = z, mask, start or 0
                for name, value in md.items():
                    metadata.setdefault(name, []).append(value)
            metadata["padding_mask"] = masks
            if self.crop.latent_crop_length is not None:
                metadata["latent_crop_start"] = starts
                metadata["latent_crop_length"] = self.crop.latent_crop_length
            if self.batch_transform:  # given the columns as a dict, as the Parquet layout's is
                yield reader_batch(self.batch_transform({"latents": latents, **metadata}))
            else:
                yield reader_batch((latents, metadata))


class EncodedShardRows(ShardRows):
    """The ``parquet`` layout, a :class:`~.parquet.ShardRows` (shuffled windows, workers, ranks, S3)."""

    by_index = " (the sat layout's items are read by index: open_encoded(output, 'sat'))"

    def __init__(
        self,
        output: str,
        *,
        latent_crop_length: int | None = None,
        random_crop: bool = True,
        seed: int = 0,
        storage_options: dict[str, Any] | None = None,
        **kwargs,
    ):
        records = manifest_files(output, storage_options=storage_options, job="encode")
        super().__init__(
            [f["url"] for f in records],
            seed=seed,
            storage_options=storage_options,
            sizes=[int(f["bytes"]) for f in records],
            **kwargs,
        )
        self.crop = _Cropper(latent_crop_length, random_crop, seed)
        self._check_crop_columns()
        self.transform = then_transform(self._to_item, self.transform)

    def _check_crop_columns(self) -> None:
        """``columns`` must hold what an item is made of: without ``key`` and ``window`` every item's crop
        would be drawn from the same ``("", 0)``, one start for all."""
        if self.columns is None:
            return
        needed = ["latents", "padding_mask"]
        if self.crop.latent_crop_length is not None and self.crop.random_crop:
            needed += ["key", "window"]  # the crop is drawn per (seed, epoch, key, window)
        missing = [name for name in needed if name not in self.columns]
        if missing:
            raise ValueError(
                f"columns= leaves out {', '.join(missing)}, which an encode item needs"
                + (" (a random crop is drawn per key and window)" if {"key", "window"} & set(missing) else "")
                + f": add {', '.join(missing)} (or leave columns out)"
            )

    def _batch_plan(self, epoch: int):
        """Latents ``[n, C, L]`` and ``padding_mask`` ``[n, L]`` bool, cropped per item as the items are
        (the same starts), ``latent_crop_start`` ``[n]``; the other columns batched as they are."""
        specs = column_specs(self.index.schema, self._batch_names())
        by_name = {spec.name: spec for spec in specs}
        if "latents" not in by_name or "padding_mask" not in by_name:
            raise ValueError("an encode output's Parquet files have latents and padding_mask columns")
        mask = by_name["padding_mask"]
        if self.crop.latent_crop_length is None:
            return [s if s is not mask else replace(mask, dtype=torch.bool) for s in specs], [], [], None
        length, latents = self.crop.latent_crop_length, by_name["latents"]
        copied = [s for s in specs if s.name not in ("latents", "padding_mask")]
        sources = [latents, replace(mask, kind="gather")]
        custom = [
            replace(latents, shape=(*latents.shape[:-1], length)),
            ColumnSpec("padding_mask", "gather", (length,), torch.bool),
            ColumnSpec("latent_crop_start", "gather", (), torch.int64),
        ]
        return copied, sources, custom, partial(self._crop_into, epoch)

    def _crop_into(self, epoch: int, batch: dict[str, Any], window: Window, order: np.ndarray, at: int) -> None:
        """The crops of ``order``'s items (:meth:`_Cropper.batch`: their starts drawn at once), copied in."""
        latents, masks = batch["latents"].numpy(), batch["padding_mask"].numpy()
        starts = batch["latent_crop_start"].numpy()
        keys, numbers = window.arrays.get("key"), window.arrays.get("window")
        crops = self.crop.batch(
            [window.row("latents", i) for i in order.tolist()],
            list(window.arrays["padding_mask"][order]),
            keys[order] if keys is not None else [""] * len(order),
            numbers[order] if numbers is not None else [0] * len(order),
            epoch,
        )
        for j, (z, mask, start) in enumerate(crops, start=at):
            latents[j], masks[j], starts[j] = z, mask, start

    def _finish_batch(self, batch: dict[str, Any]) -> Any:
        """``(latents [n, C, L], metadata)``: the other columns batched (tensors, strings as lists)."""
        if self.crop.latent_crop_length is not None:  # in a batch_transform's dict too, as the sat layout's
            batch["latent_crop_length"] = self.crop.latent_crop_length
        if self.batch_transform:
            return self.batch_transform(batch)
        latents = batch.pop("latents")
        return latents, batch

    def _to_item(self, row: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        metadata = {
            name: (
                value.tolist()
                if isinstance(value, np.ndarray) and name != "padding_mask"
                else value.item()
                if isinstance(value, np.generic)
                else value
            )
            for name, value in row.items()
            if name != "latents"
        }
        return self.crop(row["latents"], metadata, self.epoch)


def open_encoded(output: str, layout: str | None = None, **kwargs) -> EncodedLatents | EncodedShardRows:
    """The dataset for an encode output; ``layout`` (``sat``/``parquet``) picks one of a ``both`` output."""
    if layout not in (None, "sat", "parquet"):  # open_encoded(out, "train"): the other readers' split habit
        what = (
            "a layout: both is an output's, which holds the two: pick one to read"
            if layout == "both"
            else "open_encoded takes no split: it reads the output's windows of every split"
        )
        raise ValueError(f"layout must be 'sat' or 'parquet' (or None: the output's own), got {layout!r} ({what})")
    storage = output_storage(output, kwargs.get("storage_options"))
    with store_refusals_named(output):
        job = storage.read_json("_job.json") if storage.exists("_job.json") else {}
    check_job(output, job.get("job"), "encode")
    written = job.get("config", {}).get("layout", "sat")
    chosen = layout or ("sat" if written in ("sat", "both") else "parquet")
    # Without _job.json (no output there, or one of an older version) the reader says what it finds.
    if job and written != "both" and chosen != written:
        raise ValueError(f"{output} was written with layout {written!r}, not {chosen!r}")
    return EncodedLatents(output, **kwargs) if chosen == "sat" else EncodedShardRows(output, **kwargs)


def collate_encoded(items: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Stack latents ``[B, C, N]`` (items must share a length: use ``latent_crop_length``); keep metadata a list."""
    return torch.stack([latents for latents, _ in items]), [metadata for _, metadata in items]


def read_details(output: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    return Storage(output, storage_options).read_json("details.json")
