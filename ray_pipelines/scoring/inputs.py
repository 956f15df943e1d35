"""What the score job reads, as engine input rows and decoded sample rows.

Three kinds of input (``source`` in the config):

- ``audio``: audio files (any source the engine lists), decoded by the
  engine's :class:`~ray_pipelines.engine.decode.WindowDecoder`, one window
  per file; the score stage computes the log-mel.
- ``pt``: ``.pt`` files, each one mel tensor ``[n_mels, T]`` or
  ``[1, n_mels, T]``, read with ``torch.load(weights_only=True)``; usually
  laid out as ``{split}/{class}/*.pt``.
- ``shards``: another job's committed Parquet output (e.g. the augment
  job's), one tensor column (``view1``). An input is a source key; its rows
  (versions, windows) are its items.

Every decoded row carries the engine's bookkeeping columns (key, item,
samples_per_input, split, error, etag, source) plus ``class``, ``group`` and
the payload (``mel`` ``[1, n_mels, T]`` float32, or ``audio``). A problem with
one input (unreadable, not a tensor, wrong shape, non-finite values) becomes
an error row with a reason; nothing raises out of a decoder.

The decoders are pickled to Ray tasks from the driver, which never imports torch: torch is
imported where a ``.pt`` file is read, in the task.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..audio.decode import DecodeError, open_failure
from ..engine.arrow import column_to_numpy, open_parquet
from ..engine.decode import Window, python_scalar, rows_to_batch
from ..engine.manifest import OutputState
from ..sources import InputItem, SourceError, list_specs
from ..splits import train_val_split
from ..storage import Storage, get_fs

INDEX_COLUMN = "item"
# Index columns of the other jobs' outputs, tried in this order when reading their shards.
KNOWN_INDEX_COLUMNS = ("version", "window", "snippet", "index", "item")
KEY_COLUMNS = ("key", "path")  # the input key column of a job's rows (the features job's is path)
TENSOR_EXTENSIONS = ("pt",)


class PathLabels:
    """Split, class and group of an input key, from regexes with one capture group each.

    The split is the ``split_pattern`` match; without a pattern it is the
    shard's split (shard inputs) or a hash split of the key by
    ``val_fraction`` (``train`` for every key at 0). A key that does not
    match ``split_pattern`` is an error (it cannot take part in the
    filters). Class and group are empty when their pattern is unset or does
    not match.
    """

    def __init__(
        self,
        split_pattern: str | None,
        class_pattern: str | None,
        group_pattern: str | None,
        seed: int = 0,
        val_fraction: float = 0.0,
    ):
        self.split_pattern = re.compile(split_pattern) if split_pattern else None
        self.class_pattern = re.compile(class_pattern) if class_pattern else None
        self.group_pattern = re.compile(group_pattern) if group_pattern else None
        self.seed, self.val_fraction = seed, val_fraction

    @staticmethod
    def _match(pattern: re.Pattern | None, key: str) -> str | None:
        if pattern is None:
            return None
        found = pattern.search(key)
        return found.group(1) if found else None

    def of(self, key: str, shard_split: str | None = None) -> tuple[dict[str, str], str]:
        """``({"split", "class", "group"}, error)`` for ``key``."""
        error = ""
        if self.split_pattern is not None:
            split = self._match(self.split_pattern, key) or ""
            if not split:
                error = f"no split: key does not match split_pattern {self.split_pattern.pattern!r}"
        elif shard_split is not None:
            split = shard_split
        else:
            split = train_val_split(self.seed, key, self.val_fraction)
        return {
            "split": split,
            "class": self._match(self.class_pattern, key) or "",
            "group": self._match(self.group_pattern, key) or "",
        }, error

    def label(self, items: Iterable[InputItem], shard_splits: dict[str, str] | None = None) -> list[InputItem]:
        out = []
        for item in items:
            labels, error = self.of(item.key, (shard_splits or {}).get(item.key))
            item.extra = {**item.extra, **labels}
            item.error = item.error or error
            out.append(item)
        return out


# ---- listing (driver) ---------------------------------------------------------------------------
def list_tensor_files(
    specs: list[str], storage_options: dict[str, Any] | None, allow_empty: bool = False
) -> list[InputItem]:
    """``.pt`` files under each spec (directory, glob, list file, tar shards), one item per key."""
    return list_specs(specs, TENSOR_EXTENSIONS, storage_options, allow_empty)


def list_shard_inputs(
    root: str, column: str, index_column: str | None, splits: list[str] | None, storage_options: dict[str, Any] | None
) -> tuple[list[InputItem], dict[str, str]]:
    """One item per source key of a committed job output, with where each of its rows lies.

    Returns the items and each key's shard split. Reads only the key, index and
    ``source`` columns (an item's source is the source job's, e.g. the audio
    file, when the shards have that column). ``extra["locations"]`` is JSON
    ``[[file, row_group, row, index], ...]``.
    """
    storage = Storage(root, storage_options)
    if not storage.exists("manifest.json"):
        raise SourceError(f"{root} has no manifest.json: shard inputs must be a committed job output")
    manifest = storage.read_json("manifest.json")
    files = [
        f
        for f in manifest.get("files", [])
        if f["path"].endswith(".parquet") and (splits is None or f.get("split") in splits)
    ]
    locations: dict[str, list[list[Any]]] = {}
    shard_split: dict[str, str] = {}
    sources: dict[str, str] = {}
    for record in files:
        with storage.fs.open(storage.abspath(record["path"]), "rb") as f:
            parquet = open_parquet(f)
            names = parquet.schema_arrow.names
            if column not in names:
                raise SourceError(
                    f"tensor_column {column!r} is not in {storage.url(record['path'])} (columns: {', '.join(names)})"
                )
            index_name = index_column or next((n for n in KNOWN_INDEX_COLUMNS if n in names), None)
            if index_name is not None and index_name not in names:
                raise SourceError(f"shard_index_column {index_name!r} is not in {storage.url(record['path'])}")
            # the input's key: `key`, or `path` where the source job names it so (the features job)
            key_name = next((n for n in KEY_COLUMNS if n in names), None)
            if key_name is None:
                raise SourceError(
                    f"{storage.url(record['path'])} has no key column ({' or '.join(KEY_COLUMNS)}; columns: "
                    f"{', '.join(names)}): shard inputs must be a job's output"
                )
            wanted = [key_name] + [n for n in (index_name, "source") if n in names]
            # The whole file's small columns in one read (the writer puts a tensor row in a row group of
            # its own, so a read per row group would be a read per row); row groups from the footer.
            table = parquet.read(columns=wanted, use_threads=False)
            sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
            groups = np.repeat(np.arange(len(sizes)), sizes).tolist()
            rows = (np.arange(sum(sizes)) - np.repeat(np.cumsum(sizes) - sizes, sizes)).tolist()
            keys = table.column(key_name).to_pylist()
            indices = table.column(index_name).to_pylist() if index_name else [None] * len(keys)
            origins = table.column("source").to_pylist() if "source" in wanted else [None] * len(keys)
            for group, row, key, index, origin in zip(groups, rows, keys, indices, origins):
                entry = locations.setdefault(key, [])
                entry.append([record["path"], group, row, int(index) if index is not None else len(entry)])
                shard_split.setdefault(key, record.get("split", ""))
                sources.setdefault(key, origin or storage.url(record["path"]))
    # A key's identity: the source output's config and the identity of the input its rows came from,
    # so rows the source job rewrote (a re-uploaded recording) are scored again.
    fingerprint = str(manifest.get("fingerprint", ""))[:16]
    source_etags = OutputState(storage).progress().etags
    items = [
        InputItem(
            key=key,
            uri=storage.root,
            size=0,
            etag=f"{fingerprint}/{source_etags.get(key, '')}",  # outputs scored before: the fingerprint alone
            source=sources[key],
            extra={"locations": json.dumps(sorted(locs, key=lambda loc: loc[3]))},
        )
        for key, locs in sorted(locations.items())
    ]
    return items, shard_split


# ---- decoding (workers) -------------------------------------------------------------------------
class FirstWindow:
    """The audio plan: one window per file, from ``offset`` seconds in, whatever the file's length (of a file
    that ends within the window, its samples from ``offset`` on). A file that ends less than
    ``min_duration`` after ``offset`` has nothing there to score: an error row. (Until 2026-12-06 the window
    of a file shorter than ``offset + duration`` was moved earlier, into what ``offset`` skips: an intro.)"""

    def __init__(self, offset: float, duration: float, min_duration: float = 0.0):
        self.offset, self.duration, self.min_duration = offset, duration, min_duration

    def __call__(self, key: str, file_seconds: float) -> list[Window]:
        left = file_seconds - self.offset
        if self.offset > 0 and (left <= 0 or left < self.min_duration):
            raise DecodeError(
                f"too short for offset: {file_seconds:.3f} s ends "
                + (f"before offset {self.offset:g} s" if left <= 0 else f"{left:.3f} s after offset {self.offset:g} s")
                + (f" (min_duration {self.min_duration:g} s)" if left > 0 else "")
            )
        return [Window(0, float(self.offset))]


def conform_mel(value: Any, n_mels: int, frames: int) -> tuple[np.ndarray | None, str]:
    """A ``[1, n_mels, frames]`` float32 array from a tensor or array, or ``(None, reason)``."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            return None, f"wrong dtype: {value.dtype} (a real-valued mel spectrogram is expected)"
        value = value.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        return None, f"wrong dtype: {array.dtype} (a real-valued mel spectrogram is expected)"
    if array.ndim == 2:
        array = array[None]
    if array.shape != (1, n_mels, frames):
        return None, (
            f"wrong shape: expected [1, {n_mels}, {frames}] or [{n_mels}, {frames}] "
            f"(n_mels, frames), got {list(np.shape(value))}"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int((~np.isfinite(array)).sum())
    if bad:
        return None, f"non-finite values: {bad} NaN/inf in the spectrogram"
    return array, ""


class TensorRows:
    """Row building shared by the tensor decoders."""

    def __init__(self, n_mels: int, frames: int):
        self.n_mels, self.frames = n_mels, frames

    def row(
        self, item: dict[str, Any], index: int, expected: int, error: str, mel: np.ndarray | None
    ) -> dict[str, Any]:
        return {
            "key": item["key"],
            INDEX_COLUMN: int(index),
            "samples_per_input": int(expected),
            "split": item.get("split") or "",
            "error": error,
            "etag": item.get("etag", ""),
            "source": item.get("source") or item.get("uri", ""),
            "class": item.get("class") or "",
            "group": item.get("group") or "",
            "mel": mel if mel is not None else np.zeros((1, self.n_mels, self.frames), dtype=np.float32),
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(batch)
        rows: list[dict[str, Any]] = []
        for i in range(len(batch["key"])):
            item = {name: python_scalar(batch[name][i]) for name in names}
            if item.get("error"):
                rows.append(self.row(item, -1, 0, str(item["error"]), None))
                continue
            skip = set(np.asarray(item["skip"]).tolist()) if item.get("skip") is not None else set()
            try:
                rows.extend(self.decode_input(item, skip))
            except Exception as e:  # a decoder bug must not take the other inputs down with it
                rows.append(self.row(item, -1, 0, f"undecodable: {type(e).__name__}: {e}", None))
        return rows_to_batch(rows)

    def decode_input(self, item: dict[str, Any], skip: set[int]) -> list[dict[str, Any]]:
        raise NotImplementedError


class TensorFileDecoder(TensorRows):
    """``.pt`` inputs (plain files or tar members) -> one mel row each."""

    def __init__(self, *, n_mels: int, frames: int, storage_options: dict[str, Any] | None = None):
        super().__init__(n_mels, frames)
        self.storage_options = storage_options or {}

    def read_bytes(self, item: dict[str, Any]) -> bytes:
        fs, path = get_fs(str(item["uri"]), self.storage_options)
        with fs.open(path, "rb") as f:
            if int(item.get("member_offset", -1)) >= 0:
                f.seek(int(item["member_offset"]))
                return f.read(int(item["size"]))
            return f.read()

    def decode_input(self, item: dict[str, Any], skip: set[int]) -> list[dict[str, Any]]:
        if 0 in skip:
            return []
        try:
            data = self.read_bytes(item)
        except Exception as e:  # missing, network or permission errors: retried on a later run
            return [self.row(item, -1, 0, open_failure(e), None)]
        if not data:
            return [self.row(item, -1, 0, "empty file (0 bytes)", None)]
        import torch

        try:
            value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            return [self.row(item, -1, 0, f"undecodable: {torch_load_reason(data, e)}", None)]
        if not isinstance(value, torch.Tensor):
            return [self.row(item, -1, 0, f"not a tensor: the file holds a {type(value).__name__}", None)]
        mel, error = conform_mel(value, self.n_mels, self.frames)
        return [self.row(item, 0 if mel is not None else -1, 1 if mel is not None else 0, error, mel)]


class ShardDecoder(TensorRows):
    """Shard inputs -> one mel row per source row.

    Each file is opened (and its footer parsed) once and kept open (the last
    ``open_files``); an item's row groups in one file are read in one call, and
    the last ``cache_row_groups`` row groups are kept for the next items.
    """

    def __init__(
        self,
        *,
        root: str,
        column: str,
        n_mels: int,
        frames: int,
        storage_options: dict[str, Any] | None = None,
        cache_row_groups: int = 2,
        open_files: int = 4,
    ):
        super().__init__(n_mels, frames)
        self.root, self.column = root, column
        self.storage_options = storage_options or {}
        self.cache_row_groups = cache_row_groups
        self.open_files = open_files
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._files: OrderedDict[str, tuple[Any, pq.ParquetFile]] = OrderedDict()
        self._storage: Storage | None = None

    def __getstate__(self) -> dict[str, Any]:  # open files and the filesystem stay in their process
        return {**self.__dict__, "_cache": OrderedDict(), "_files": OrderedDict(), "_storage": None}

    def parquet_file(self, path: str) -> pq.ParquetFile:
        """``path`` opened once and kept open (its footer parsed once)."""
        if path in self._files:
            self._files.move_to_end(path)
            return self._files[path][1]
        if self._storage is None:
            self._storage = Storage(self.root, self.storage_options)
        handle = self._storage.fs.open(self._storage.abspath(path), "rb")
        try:
            parquet = open_parquet(handle)
        except BaseException:
            handle.close()
            raise
        self._files[path] = (handle, parquet)
        while len(self._files) > self.open_files:
            _, (old, _) = self._files.popitem(last=False)
            old.close()
        return parquet

    def row_groups(self, path: str, groups: list[int]) -> dict[int, np.ndarray]:
        """The column's values of ``groups`` of ``path``: cached ones, the others read in one call."""
        found = {}
        for group in groups:
            if (path, group) in self._cache:
                self._cache.move_to_end((path, group))
                found[group] = self._cache[path, group]
        missing = sorted(set(groups) - found.keys())
        if missing:
            parquet = self.parquet_file(path)
            values = column_to_numpy(parquet.read_row_groups(missing, columns=[self.column]).column(self.column))
            sizes = [parquet.metadata.row_group(g).num_rows for g in missing]
            for group, part in zip(missing, np.split(values, np.cumsum(sizes)[:-1])):
                found[group] = self._cache[path, group] = part
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return found

    def row_group(self, path: str, group: int) -> np.ndarray:
        return self.row_groups(path, [group])[group]

    def decode_input(self, item: dict[str, Any], skip: set[int]) -> list[dict[str, Any]]:
        locations = [loc for loc in json.loads(item["locations"]) if loc[3] not in skip]
        by_file: dict[str, dict[int, np.ndarray] | str] = {}
        for path in dict.fromkeys(loc[0] for loc in locations):
            try:
                by_file[path] = self.row_groups(path, sorted({loc[1] for loc in locations if loc[0] == path}))
            except FileNotFoundError:
                by_file[path] = f"missing: shard file {path} not found"
            except Exception as e:
                by_file[path] = f"unreadable: {path}: {type(e).__name__}: {e}"
        total = len(json.loads(item["locations"]))
        rows = []
        for path, group, row, index in locations:
            values = by_file[path]
            if isinstance(values, str):
                mel, error = None, values
            else:
                try:
                    mel, error = conform_mel(values[group][row], self.n_mels, self.frames)
                except Exception as e:
                    mel, error = None, f"unreadable: {path}: {type(e).__name__}: {e}"
            rows.append(self.row(item, index, total, error, mel))
        return rows


def torch_load_reason(data: bytes, error: Exception) -> str:
    """A short reason for a failed weights-only ``torch.load`` (torch's own message is a page long)."""
    if not (data.startswith(b"PK\x03\x04") or data.startswith(b"\x80")):
        return "not a torch.save file (neither a zip archive nor a pickle)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    unpickler = next((line for line in lines if "WeightsUnpickler error:" in line), None)
    if unpickler is not None:  # a real pickle with a type weights_only refuses (an nn.Module, a custom class)
        detail = unpickler.split("WeightsUnpickler error:", 1)[1].strip().split(". Please use")[0]
        return f"not loadable with weights_only=True: {detail}"
    first = lines[0].split(". ")[0] if lines else type(error).__name__
    return f"corrupt torch file: {first}"
