"""The committed state as one columnar table: per-block manifests folded into ``_manifests/index.parquet``.

Every per-block manifest (``_manifests/part-*.json``, engine/sink.py) becomes rows of one Arrow table
with a ``part`` column naming the manifest it came from:

- one *header* row (the manifest's own fields but inputs, errors and files, as JSON; its ``replaces``
  list as a list column),
- one *input* row per input it names (key, expected samples, written indices, identity),
- one *error* row per error row (key, index, retry, the error as JSON),
- one *file* row per file it names (the file record as JSON).

The commit writes the live part of that table (replaced manifests left out) to ``index.parquet`` in one
atomic write and then deletes the manifests it folded; a run reads the index plus whatever manifests
are still on disk (written since, or left by a fold that was killed before it deleted them). A manifest
on disk always wins over the folded one of the same name (engine/manifest.py: ``OutputState._live_groups``), so a
manifest that is both folded and present counts once. Reading it back is one GET; its size grows with
the committed inputs, about 20-30 bytes each.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage import Storage
from .arrow import open_parquet
from .memory import release_unused_memory

INDEX_FILE = "_manifests/index.parquet"
HEADER, INPUT, ERROR, FILE = 0, 1, 2, 3
# In memory the columns that repeat one value per manifest are dictionary-encoded (at a million
# inputs the manifest names alone were 37 MB as plain strings, 5 MB this way); the file stores them as
# plain strings (STORED_SCHEMA; Parquet dictionary-encodes them on its own), so its bytes and what
# older code reads from it stay as they were.
NAMES = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema(
    [
        ("part", NAMES),  # the manifest's relpath (_manifests/part-<hash>.json)
        ("kind", pa.int8()),
        ("key", pa.string()),  # input and error rows
        ("expected", pa.int64()),  # input rows: samples the input yields
        ("written", pa.list_(pa.int32())),  # input rows: sample indices written
        ("etag", pa.string()),  # input rows: the identity the rows were made from
        ("index", pa.int64()),  # error rows: the sample (-1: the whole input)
        ("retry", pa.bool_()),  # error rows: retried by the next run
        ("run_id", NAMES),  # every row: the run that wrote the manifest
        ("replaces", pa.list_(pa.string())),  # header rows: manifests this one replaces (engine/rewrite.py)
        ("record", pa.string()),  # header, error and file rows: the rest, as JSON
    ]
)
DICTIONARY_COLUMNS = [f.name for f in SCHEMA if f.type == NAMES]
STORED_SCHEMA = pa.schema([f.with_type(pa.string()) if f.type == NAMES else f for f in SCHEMA])
PART_FIELDS = ("inputs", "errors", "files", "replaces")  # what the other columns hold


def parts_table(parts: Iterable[tuple[str, dict[str, Any]]]) -> pa.Table:
    """The rows of many manifests (relpath, content), built in one pass: each kind's columns as
    plain lists, then one Arrow table per kind (the other columns null)."""
    head: dict[str, list] = {"part": [], "run_id": [], "replaces": [], "record": []}
    inp: dict[str, list] = {"part": [], "run_id": [], "key": [], "expected": [], "written": [], "etag": []}
    err: dict[str, list] = {"part": [], "run_id": [], "key": [], "index": [], "retry": [], "record": []}
    fil: dict[str, list] = {"part": [], "run_id": [], "record": []}
    for name, part in parts:
        run_id = str(part.get("run_id", ""))
        head["part"].append(name)
        head["run_id"].append(run_id)
        head["replaces"].append(list(part.get("replaces", ())))
        head["record"].append(dumps({k: v for k, v in part.items() if k not in PART_FIELDS}))
        inputs = part.get("inputs", {})
        inp["part"].extend([name] * len(inputs))
        inp["run_id"].extend([run_id] * len(inputs))
        for key, info in inputs.items():
            inp["key"].append(key)
            inp["expected"].append(int(info.get("expected", 0)))
            inp["written"].append(info.get("written", []))
            inp["etag"].append(str(info.get("etag", "")))
        for error in part.get("errors", ()):
            for column, value in zip(
                err,
                (
                    name,
                    run_id,
                    error["key"],
                    int(error.get("index", -1)),
                    bool(error.get("retry", False)),
                    dumps(error),
                ),
            ):
                err[column].append(value)
        for record in part.get("files", ()):
            fil["part"].append(name)
            fil["run_id"].append(run_id)
            fil["record"].append(dumps(record))
    tables = [_kind_table(kind, columns) for kind, columns in ((HEADER, head), (INPUT, inp), (ERROR, err), (FILE, fil))]
    return pa.concat_tables([t for t in tables if t.num_rows] or [empty_table()])


def _kind_table(kind: int, columns: dict[str, list]) -> pa.Table:
    n = len(columns["part"])
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type)
        for f in SCHEMA
        if f.name != "kind"
    ]
    arrays.insert(SCHEMA.get_field_index("kind"), pa.array(np.full(n, kind, np.int8)))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def empty_table() -> pa.Table:
    return SCHEMA.empty_table()


def part_of(table: pa.Table, name: str) -> dict[str, Any]:
    """One manifest's content again, from its rows (for a rewrite of a folded manifest)."""
    rows = table.filter(pc.equal(table["part"], name)).to_pylist()
    part: dict[str, Any] = {"inputs": {}, "errors": [], "files": []}
    for r in rows:
        kind = r["kind"]
        if kind == HEADER:
            part.update(json.loads(r["record"]))
            if r["replaces"]:
                part["replaces"] = list(r["replaces"])
        elif kind == INPUT:
            part["inputs"][r["key"]] = {"expected": r["expected"], "written": list(r["written"]), "etag": r["etag"]}
        elif kind == ERROR:
            part["errors"].append(json.loads(r["record"]))
        else:
            part["files"].append(json.loads(r["record"]))
    return part


def part_names(table: pa.Table) -> list[str]:
    return pc.unique(table["part"]).to_pylist()


def replaced_names(table: pa.Table) -> set[str]:
    """Every manifest a header row in ``table`` says it replaces."""
    replaces = table["replaces"]
    flat = pc.list_flatten(replaces.combine_chunks() if isinstance(replaces, pa.ChunkedArray) else replaces)
    return set(flat.to_pylist()) if len(flat) else set()


def folded(table: pa.Table) -> pa.Table:
    """What the index keeps of the live state: ``replaces`` emptied (what they replaced is gone from
    the state, and a manifest written later under such a name must count) and tombstones (manifests
    that name nothing, which only retire a folded one) left out."""
    named = pc.unique(table["part"].filter(pc.not_equal(table["kind"], HEADER)))
    if len(named) < len(pc.unique(table["part"])):
        table = table.filter(pc.is_in(table["part"], value_set=named.dictionary_decode()))
    return table.set_column(
        SCHEMA.get_field_index("replaces"), "replaces", pa.nulls(table.num_rows, pa.list_(pa.string()))
    )


def read_index_bytes(storage: Storage) -> bytes | None:
    """The index file as stored (zstd Parquet: 2.4 MB for a million inputs), None when there is none."""
    try:
        return storage.fs.cat_file(storage.abspath(INDEX_FILE))
    except FileNotFoundError:
        return None


def decode_index(data: bytes) -> pa.Table:
    """The index file's rows as a table of :data:`SCHEMA`."""
    groups = list(index_groups(data))
    return pa.concat_tables(groups) if groups else empty_table()


def index_groups(data: bytes) -> Iterator[pa.Table]:
    """The index file's rows a row group at a time (``WRITE_ROWS`` each), as tables of :data:`SCHEMA`."""
    # Handing the reader's buffers back after each: reading the whole file at once held twice the
    # table's size again (230 MB more at a million inputs). Cast always: Parquet names list items
    # "element", and the index's bytes must not depend on whether its rows were read back or built here.
    file = open_parquet(pa.BufferReader(data), read_dictionary=DICTIONARY_COLUMNS)
    for group in range(file.num_row_groups):
        rows = file.read_row_group(group).cast(SCHEMA)
        release_unused_memory()
        yield rows


WRITE_ROWS = 1 << 18  # rows sorted and written at a time (one row group each)


def write_index(storage: Storage, table: pa.Table, folded_groups: Iterable[pa.Table] = ()) -> None:
    """One atomic write (local: temp file renamed; object stores: the upload completes on close) of
    ``folded_groups`` (rows already in order: the old index's, a row group at a time) merged with
    ``table``'s rows. Rows in (part, kind) order, so the same state gives the same bytes whichever
    way it came; ``WRITE_ROWS`` rows per row group. ``table``'s rows are taken in that order a slice
    at a time, so the driver never holds a sorted copy of it (150 MB at a million inputs), nor the
    old index whole (1.5 GB at ten million)."""
    names, ranks = _part_ranks(table["part"])
    names = names.to_pylist()
    order = _row_order(table, ranks)
    ranks = ranks[order.to_numpy()]  # in the sorted rows' order: ascending, each an index into ``names``
    taken = 0

    def rows_before(name: str | None) -> pa.Table:
        """``table``'s rows not yet taken whose manifest sorts before ``name`` (None: all)."""
        nonlocal taken
        end = len(order) if name is None else int(np.searchsorted(ranks, bisect.bisect_left(names, name)))
        rows, taken = table.take(order.slice(taken, max(end - taken, 0))), max(end, taken)
        return rows

    with storage.open_atomic(INDEX_FILE) as f, pq.ParquetWriter(f, STORED_SCHEMA, compression="zstd") as writer:
        out = _RowGroups(writer)
        for group in folded_groups:
            if group.num_rows:
                last = group["part"][group.num_rows - 1].as_py()
                out.add(_in_order(pa.concat_tables([group.cast(SCHEMA), rows_before(last)])))
        out.add(rows_before(None))
        out.close(empty=table)


class _RowGroups:
    """Rows written ``WRITE_ROWS`` to a row group, as they come."""

    def __init__(self, writer: pq.ParquetWriter):
        self.writer, self.pending, self.count, self.written = writer, [], 0, 0

    def add(self, rows: pa.Table) -> None:
        if rows.num_rows:
            self.pending.append(rows.cast(STORED_SCHEMA))
            self.count += rows.num_rows
        while self.count >= WRITE_ROWS:
            self._write(WRITE_ROWS)

    def close(self, empty: pa.Table) -> None:
        if self.count:
            self._write(self.count)
        if not self.written:
            self.writer.write_table(empty.cast(STORED_SCHEMA))

    def _write(self, count: int) -> None:
        rows = pa.concat_tables(self.pending)
        self.writer.write_table(rows.slice(0, count).combine_chunks(), row_group_size=WRITE_ROWS)
        rest = rows.slice(count)
        self.pending, self.count, self.written = [rest] if rest.num_rows else [], rest.num_rows, self.written + count
        del rows, rest
        release_unused_memory()  # the slice's temporaries: else each slice's stay (150 MB at 1M)


def _row_order(table: pa.Table, part_ranks: np.ndarray | None = None) -> pa.Array:
    """``table``'s rows in (part, kind) order (stable: rows of one manifest and kind keep theirs);
    ``part_ranks``: ``_part_ranks(table["part"])[1]`` where the caller has it already."""
    ranks = _part_ranks(table["part"])[1] if part_ranks is None else part_ranks
    sort_key = pa.table({"part": ranks, "kind": table["kind"]})
    return pc.sort_indices(sort_key, sort_keys=[("part", "ascending"), ("kind", "ascending")])


def _in_order(table: pa.Table) -> pa.Table:
    return table.take(_row_order(table))


def _part_ranks(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """The values of a dictionary column (the manifest names) sorted, and per row its value's rank
    among them (Arrow sorts tables by plain columns only, and decoding the names to sort them would
    copy every row's string)."""
    column = pa.chunked_array(column.chunks, NAMES) if column.num_chunks else pa.chunked_array([], NAMES)
    chunks = pa.table({"c": column}).unify_dictionaries()["c"].chunks
    if not chunks:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    values = chunks[0].dictionary
    by_value = pc.sort_indices(values)
    ranks = np.empty(len(values), np.int64)
    ranks[by_value.to_numpy()] = np.arange(len(values))
    rows = np.concatenate([ranks[c.indices.to_numpy(zero_copy_only=False)] for c in chunks])
    return values.take(by_value), rows


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
