"""The shard sink: Parquet files named from their content, plus a per-rank manifest.

Each writer (a CPU actor writing its own block, or a Ray write task) gets a
block of output rows (``write_block``). It sorts its rows
by (key, index), writes them as one or more ``<split>/part-<hash>.parquet``
files (the hash covers the config fingerprint and the rows' keys, never a
run id), then writes ``_manifests/part-<hash>.json`` naming those files, the
sample indices written per input, and the error rows. The manifest is
written last, so its presence means the files are complete.

A failure of the output store itself (no space, read-only, permission,
credentials) raises :class:`~ray_pipelines.engine.control.OutputStoreError` and
tells the run's :class:`~ray_pipelines.engine.control.RunControl`, so every
other block stops before it starts and the driver exits with the store's own error.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import socket
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from ..audio.decode import is_retryable
from ..storage import Storage
from .arrow import open_parquet, table_from_columns, tensor_shape
from .control import OutputStoreError, store_failure
from .decode import concat_batches
from .hf import huggingface_metadata
from .manifest import JOB_FILE, MANIFEST_DIR

# Bookkeeping columns every row carries through the pipeline; never written as data.
KEY, ERROR, SPLIT, EXPECTED, ETAG = "key", "error", "split", "samples_per_input", "etag"
# Row groups are the unit a reader can read alone (pyarrow reads no less), so a tensor row of an
# output read in part each epoch (augment's view pairs, 130 KiB: ContrastiveViews reads one version of
# each clip) gets one of its own: the epoch then decodes one version of each clip instead of all of
# them (2-3x less reader CPU). Scalar tables (scores) get groups of about this size too.
TARGET_ROW_GROUP_BYTES = 128 * 1024
# Outputs whose every row each epoch reads (teacher clips, latents, feature snippets: 160-520 KiB a
# row) get groups of a few rows: the readers' cost per row group (its chunks found, read, checked)
# is then paid once for several rows (with the values viewed in place, readers/pages.py: an epoch of
# teacher clips 27 % less reader CPU in one process, of latents 15 %, of feature snippets 14 %).
# The readers' shuffle is unchanged: they order chunks of 8 MiB of row groups either way.
# Measured by bench/readers.py (docs/benchmarks.md, "Row groups of a few rows, PLAIN pages viewed").
WHOLE_READ_ROW_GROUP_BYTES = 2 * 1024 * 1024
# A column chunk in one page (pyarrow cuts pages at 1 MiB): a multi-row group's tensor chunk, uncompressed
# and PLAIN, is then one run of values the readers take where it lies (readers/pages.py); cut into
# pages, each page's values are copied out. Only a single row larger than this is cut.
PAGE_BYTES = 64 * 1024 * 1024
# zstd level 1 (when zstd is chosen): on log-mels the same size as Arrow's default level 3 at three
# quarters of the CPU (measured on the augment job's shards).
ZSTD_LEVEL = 1


def content_hash(
    fingerprint: str, keys: Iterable[str], indices: Iterable[int], etags: Iterable[str] | None = None
) -> str:
    """A name for rows: the same rows (keys, samples and, where given, the inputs' identities) get the
    same name in every run, so a write done again replaces itself. The identities tell a changed input's
    new rows from the ones it replaces: under the old rows' name, its new manifest was the one the
    rewrite had retired (``engine.rewrite``), so the new rows counted for nothing and the input was lost
    (a re-recorded file whose block held what its old block held: one input, or one long input's piece)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(fingerprint.encode())
    if etags is None:
        for key, index in zip(keys, indices):
            h.update(f"\n{key}\x1f{int(index)}".encode())
    else:
        for key, index, etag in zip(keys, indices, etags):
            h.update(f"\n{key}\x1f{int(index)}\x1f{etag}".encode())
    return h.hexdigest()


class ShardSink(Datasink):
    """Writes output rows as Parquet shards and per-rank manifests.

    Subclasses change the file layout by overriding :meth:`write_split`
    (e.g. one ``.npy`` per sample) and keep the manifest bookkeeping.
    """

    # Whether file paths depend on the write task's rank: such a sink needs Ray's write tasks
    # (ranks from ctx.task_idx) and is never run inside the actors.
    layout_uses_rank = False

    def __init__(
        self,
        *,
        output: str,
        storage_options: dict[str, Any] | None,
        fingerprint: str,
        index_column: str,
        output_columns: list[str],
        rows_per_file: int = 512,
        compression: str = "lz4",
        schema_metadata: dict[str, str] | None = None,
        class_labels: dict[str, list[str]] | None = None,
        direct_io: bool = True,
        key_column: str = KEY,
        row_group_bytes: int | None = None,
    ):
        self.output = output
        self.key_column = key_column
        self.storage_options = storage_options or {}
        self.fingerprint = fingerprint
        self.index_column = index_column
        self.output_columns = output_columns
        self.rows_per_file = rows_per_file
        self.compression = None if compression == "none" else compression
        self.schema_metadata = schema_metadata or {}
        self.class_labels = class_labels or {}  # column -> label names (a ClassLabel for datasets)
        self.direct_io = direct_io  # local shard files past the page cache (ray_pipelines/direct_io.py)
        self.row_group_bytes = row_group_bytes  # None: TARGET_ROW_GROUP_BYTES
        self.run_id = ""  # set by the runner; fences off writers of an earlier, killed run
        self.control = None  # the run's RunControl (set by the runner): checked before every block
        self.write_returns: list[dict[str, Any]] = []

    # ---- Datasink interface -----------------------------------------------------
    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        batches = [BlockAccessor.for_block(b).to_numpy() for b in blocks]
        return self.write_block(concat_batches(batches), rank=int(getattr(ctx, "task_idx", 0)))

    def on_write_complete(self, write_result) -> None:
        returns = getattr(write_result, "write_returns", write_result)
        self.write_returns = [r for r in returns if r]

    # ---- the work --------------------------------------------------------------
    def write_block(self, columns: dict[str, np.ndarray], rank: int) -> dict[str, Any]:
        """Write a batch of output rows (possibly none); returns the write report (:func:`report`)."""
        if self.control is not None:
            self.control.check()
        if len(columns.get(KEY, ())) == 0:
            return report()
        try:
            return self.write_rows(columns, rank)
        except OSError as e:
            reason = store_failure(e, where=self.output)
            if not reason:
                raise
            if self.control is not None:
                self.control.stop("store", reason)
            raise OutputStoreError(reason) from e

    def write_rows(self, columns: dict[str, np.ndarray], rank: int) -> dict[str, Any]:
        storage = Storage(self.output, self.storage_options)
        # Sort and group on small index arrays; tensor data is gathered once, per file.
        keys = columns[KEY].astype(str)
        indices = columns[self.index_column].astype(np.int64)
        order = np.lexsort((indices, keys))
        keys, indices = keys[order], indices[order]
        errors = columns[ERROR].astype(str)[order]
        expected = columns[EXPECTED][order]
        etags = columns[ETAG].astype(str)[order] if ETAG in columns else None
        splits = columns[SPLIT].astype(str)[order] if SPLIT in columns else np.full(len(keys), "", dtype=object)
        ok = errors == ""

        inputs: dict[str, dict[str, Any]] = {}
        # Inputs whose last sample (or one error row) is in this write: the progress's inputs done. A long
        # input's samples come in several writes (pieces), each naming it, and only its last finishes it.
        finished = int(np.count_nonzero(indices == expected.astype(np.int64) - 1))  # an error row of one: -1, 0
        for i, key in enumerate(keys):
            entry = inputs.setdefault(key, {"expected": 0, "written": [], "etag": ""})
            entry["expected"] = max(entry["expected"], int(expected[i]))
            if etags is not None:
                entry["etag"] = etags[i]
            if ok[i]:
                entry["written"].append(int(indices[i]))
        error_rows = [
            {"key": keys[i], "index": int(indices[i]), "reason": errors[i], "retry": is_retryable(errors[i])}
            for i in np.flatnonzero(~ok)
        ]

        files: list[dict[str, Any]] = []
        schema: dict[str, Any] = {}
        for split in sorted(set(splits[ok])):
            rows = order[ok & (splits == split)]  # original positions, in (key, index) order
            for start in range(0, len(rows), self.rows_per_file):
                take = rows[start : start + self.rows_per_file]
                record, schema = self.write_split(
                    storage, split, {name: values[take] for name, values in columns.items()}
                )
                files.extend(record)

        part = {
            "rank": rank,
            "run_id": self.run_id,
            "fingerprint": self.fingerprint,
            "files": files,
            "inputs": inputs,
            "errors": error_rows,
            "schema": schema,
        }
        if self.run_id and storage.read_json(JOB_FILE).get("run_id") != self.run_id:
            # A newer run owns the output (this task outlived a killed driver): leave the
            # files as orphans for that run's commit to remove, and commit nothing.
            return report(fenced=True)
        name = content_hash(self.fingerprint, keys, indices, etags)
        storage.write_json(f"{MANIFEST_DIR}/part-{name}.json", part, compact=True)
        return report(
            inputs=finished,
            rows=int(ok.sum()),
            error_rows=len(error_rows),
            files=len(files),
            bytes=sum(int(f["bytes"]) for f in files),
        )

    def make_table(self, rows: dict[str, np.ndarray]) -> pa.Table:
        """The Arrow table of one file's rows (tensors as nested fixed-size lists, ``engine.arrow``),
        with the job's metadata and the ``datasets`` features of its columns (``engine.hf``)."""
        table = table_from_columns({c: rows[c] for c in self.output_columns})
        metadata = {
            "ray_pipelines.fingerprint": self.fingerprint,
            **self.schema_metadata,
            **huggingface_metadata(table.schema, self.class_labels),
        }
        return table.replace_schema_metadata(metadata)

    def write_split(
        self, storage: Storage, split: str, rows: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Write one file of ``rows`` (sorted, all in ``split``); return its file records and schema."""
        table = self.make_table(rows)
        etags = rows[ETAG].astype(str) if ETAG in rows else None
        name = content_hash(self.fingerprint, rows[KEY].astype(str), rows[self.index_column], etags)
        relpath = f"{split}/part-{name}.parquet" if split else f"part-{name}.parquet"
        group_rows = rows_per_group(table, self.row_group_bytes or TARGET_ROW_GROUP_BYTES)
        with storage.open_atomic(relpath, direct=self.direct_io) as f:
            pq.write_table(table, f, row_group_size=group_rows, **self.parquet_options(table))
        size = storage.fs.size(storage.abspath(relpath))
        return [{"path": relpath, "split": split, "rows": table.num_rows, "bytes": int(size)}], describe_schema(
            table.schema
        )

    def parquet_options(self, table: pa.Table) -> dict[str, Any]:
        """How this sink encodes a table's columns (shared by the writes and the rewrites)."""
        return encoding_options(table.schema, self.compression, ZSTD_LEVEL if self.compression == "zstd" else None)

    # ---- dropping committed rows (engine/rewrite.py) ----------------------------------------
    def drop_from_files(self, storage: Storage, files: list[dict[str, Any]], keys: set[str]) -> list[dict[str, Any]]:
        """The file records of a per-rank manifest once the rows of ``keys`` are gone from its files.

        A Parquet file holding some of those rows is written again without them, under the content
        name of the rows it keeps; a file left without rows disappears from the list; per-sample
        files (records with a ``key``) of those keys are dropped. Everything else is kept as it is.
        Old files are not deleted here: once no live manifest names them, the commit does.
        """
        kept = []
        for record in files:
            if "key" in record:
                if record["key"] not in keys:
                    kept.append(record)
            elif record["path"].endswith(".parquet"):
                kept.extend(self.parquet_without(storage, record, keys))
            else:
                kept.append(record)
        return kept

    def parquet_without(self, storage: Storage, record: dict[str, Any], keys: set[str]) -> list[dict[str, Any]]:
        """``[record]`` of the Parquet file without the rows of ``keys`` (``[]`` when none remain),
        written row group by row group (bounded memory, however large the file)."""
        path = record["path"]
        with storage.fs.open(storage.abspath(path), "rb") as f:
            source = open_parquet(f)
            ids = source.read(columns=[self.key_column, self.index_column])
            stale = pa.array(sorted(keys)).cast(ids.schema.field(self.key_column).type)
            keep = pc.invert(pc.is_in(ids.column(self.key_column), value_set=stale))
            remaining = ids.filter(keep)
            if remaining.num_rows == ids.num_rows:
                return [record]
            if remaining.num_rows == 0:
                return []
            kept_keys = np.asarray(remaining.column(self.key_column).to_pylist(), dtype=object)
            name = content_hash(self.fingerprint, kept_keys.astype(str), remaining.column(self.index_column).to_numpy())
            relpath = posixpath.join(posixpath.dirname(path), f"part-{name}.parquet")
            keep = keep.combine_chunks() if isinstance(keep, pa.ChunkedArray) else keep
            with storage.open_atomic(relpath, direct=self.direct_io) as out:
                first = source.read_row_group(0)
                with pq.ParquetWriter(out, source.schema_arrow, **self.parquet_options(first)) as writer:
                    start = 0
                    for group in range(source.num_row_groups):
                        table = first if group == 0 else source.read_row_group(group)
                        mask = keep.slice(start, table.num_rows)
                        start += table.num_rows
                        if pc.any(mask).as_py():
                            writer.write_table(table.filter(mask))
        size = storage.fs.size(storage.abspath(relpath))
        return [{**record, "path": relpath, "rows": remaining.num_rows, "bytes": int(size)}]


def report(
    inputs: int = 0, rows: int = 0, error_rows: int = 0, files: int = 0, bytes: int = 0, fenced: bool = False
) -> dict[str, Any]:
    """What a write reports to the driver (``JobResult.writes``, the live progress): the same keys
    every time (``inputs``: the inputs whose last sample or error row this write holds; ``writer`` names
    the process that wrote, for the steady-state rate)."""
    return {
        "inputs": inputs,
        "rows": rows,
        "error_rows": error_rows,
        "files": files,
        "bytes": bytes,
        "fenced": fenced,
        "finished_at": time.time(),
        "writer": f"{socket.gethostname()}:{os.getpid()}",
    }


def rows_per_group(table: pa.Table, target_bytes: int) -> int:
    """Rows of ``table`` in a row group of about ``target_bytes`` (at least one)."""
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    return max(1, target_bytes // row_bytes)


def encoding_options(schema: pa.Schema, compression: str | None, compression_level: int | None) -> dict[str, Any]:
    """``pq.write_table``'s options for the sink's encodings of ``schema``'s columns with a codec: dictionary
    and statistics for scalar columns only, float tensor values byte-stream-split when compressed (the
    benchmarks' copies of outputs are written with them too). Uncompressed they stay PLAIN: the split
    only helps a codec, and the readers take a PLAIN page's values where they lie, without a copy
    (readers/pages.py), where split planes must be joined. A column chunk is one page (``PAGE_BYTES``)."""
    scalars = scalar_columns(schema)
    return dict(
        compression=compression,
        compression_level=compression_level,
        use_dictionary=scalars,
        write_statistics=scalars,
        use_byte_stream_split=(compression is not None and float_tensor_leaves(schema)) or False,
        data_page_size=PAGE_BYTES,
    )


def scalar_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary encoding and min/max statistics: not tensors. Tensor values almost
    never repeat (Parquet's failed dictionary attempt costs more than writing them plainly), and the
    minimum of a million spectrogram bins selects nothing."""
    return [f.name for f in schema if tensor_shape(f.type) is None and not pa.types.is_fixed_size_list(f.type)]


def float_tensor_leaves(schema: pa.Schema) -> list[str]:
    """Parquet paths of the float32/float64 values inside tensor columns, for BYTE_STREAM_SPLIT:
    the values' bytes regrouped by significance, so the codec finds the sign/exponent bytes alike
    (on log-mels with zstd: 9 % smaller, a third faster to read, 9 % slower to write; on AST
    features with lz4: 0.86 of raw instead of 1.0, read 20 % faster). Parquet readers have read
    it for floats since format 2.8 (2019); other types are left alone for older readers."""
    leaves = []
    for field in schema:
        described = tensor_shape(field.type)
        if described is None or isinstance(field.type, pa.FixedShapeTensorType):
            continue
        shape, value_type = described
        if pa.types.is_float32(value_type) or pa.types.is_float64(value_type):
            leaves.append(field.name + ".list.element" * len(shape))
    return leaves


def describe_schema(schema: pa.Schema) -> dict[str, Any]:
    """The manifest's schema: tensors as ``{"type": "tensor", "dtype": "float32", "shape": [...]}``."""
    out = {}
    for field in schema:
        described = tensor_shape(field.type)
        if described is None:
            out[field.name] = {"type": str(field.type)}
        else:
            shape, value_type = described
            out[field.name] = {"type": "tensor", "dtype": value_type.to_pandas_dtype().__name__, "shape": shape}
    return out
