"""What the committed manifests say about each input, in columnar form.

``Progress`` is built from the committed state's rows (engine/state_index.py), a row group at a time
(``Progress.from_groups``: only what the columns need is kept of each group), with a handful of
vectorised passes: the keys sorted and unique (a pyarrow string array), per key the expected sample
count, the identity's row, whether it failed for good as a whole, and how many distinct samples are done;
the done ``(key, sample)`` pairs as one sorted int64 array (``key_id << 32 | sample``). Lookups are
``pyarrow.compute.index_in`` against the key array, so a million committed inputs take tens of MB
instead of a Python set per input. The dict views (``written``, ``expected``, ``etags``,
``final_errors``) are built on demand for small outputs and tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .memory import release_unused_memory
from .state_index import ERROR, FILE, HEADER, INPUT, empty_table, parts_table

MIXED_ETAG = "\x00mixed"  # an input whose committed rows came from different versions of it
LOW = np.int64(0xFFFFFFFF)
# ``Progress.positions`` hashes at least this many committed keys at a time, in at most this many passes.
LOOKUP_SLICE, LOOKUP_PASSES = 1 << 17, 8
KeyColumn = Sequence[str] | pa.Array | pa.ChunkedArray  # the runner passes its inputs table's key column


class Progress:
    """What committed manifests say about each input key (built lazily from a state table)."""

    def __init__(self, table: pa.Table | None = None):
        self._tables: list[pa.Table] | None = [table] if table is not None else []

    @classmethod
    def from_groups(cls, groups: Iterable[pa.Table], identities: bool = True) -> Progress:
        """Built at once from the state's rows a group at a time (``OutputState`` hands the committed
        index a row group at a time): only the columns below are kept, never the rows themselves (at
        ten million inputs the decoded index alone was 1.5 GB). Such a ``Progress`` has no ``table``;
        without ``identities`` it has no :meth:`etag_array` either (the commit never asks: 240 MB at
        ten million inputs)."""
        progress = cls()
        progress._tables = None
        progress.__dict__["_cols"] = _build_columns(groups, identities)
        release_unused_memory()  # the groups' decoded rows and the build's temporaries
        return progress

    def add_part(self, part: dict[str, Any], name: str = "") -> None:
        """Add one manifest (tests and small tools; the engine builds from the whole state)."""
        if self._tables is None:
            raise TypeError("a Progress built from row groups cannot take more manifests")
        self._tables.append(parts_table([(name or f"#{len(self._tables)}", part)]))
        self.__dict__.pop("_cols", None)
        for view in ("written", "expected", "etags", "final_errors", "files", "error_rows"):
            self.__dict__.pop(view, None)

    @property
    def table(self) -> pa.Table:
        if self._tables is None:
            raise TypeError("a Progress built from row groups keeps no table")
        return pa.concat_tables(self._tables) if self._tables else empty_table()

    # ---- the columnar state -------------------------------------------------------------------
    @cached_property
    def _cols(self) -> dict[str, Any]:
        cols = _build_columns([self.table])
        release_unused_memory()  # the build's temporaries: a few hundred MB at a million inputs
        return cols

    @property
    def keys(self) -> pa.Array:
        """Every key a committed manifest names (inputs or errors), sorted."""
        return self._cols["keys"]

    @property
    def errors_table(self) -> pa.Table:
        """Error rows of the live manifests: key, index, retry, run_id, record (JSON)."""
        return self._cols["errors"]

    @property
    def duplicates(self) -> int:
        return self._cols["duplicates"]

    def positions(self, keys: KeyColumn) -> np.ndarray:
        """Each key's position in :attr:`keys`, -1 where nothing is committed for it.

        A lookup hashes one side: at a million keys that hash table alone grew the driver by 90 MB.
        So the smaller side is hashed: few queried keys (a run's lost inputs) are hashed whole; against
        many, the sorted committed keys are hashed a range at a time (at most ``LOOKUP_PASSES``
        ranges), each probed by the queried keys that fall in it, so every query is still probed once."""
        array = _combined(key_array(keys))
        committed, n = self.keys, len(self.keys)
        position = _position_type(n)  # a position per queried key: 40 MB at ten million
        out = np.full(len(array), -1, position)
        if not len(array) or not n:
            return out
        if len(array) <= min(n, LOOKUP_SLICE):
            queried = pc.unique(array)
            at = np.full(len(queried), -1, position)
            found = _np(pc.index_in(committed, value_set=queried).fill_null(-1), np.int64)
            hit = np.flatnonzero(found >= 0)
            at[found[hit]] = hit
            where = pc.index_in(array, value_set=queried)
            out = at[_np(where.fill_null(0), np.int64)]
            out[_np(where.is_null(), bool)] = -1
            return out
        step = max(LOOKUP_SLICE, -(-n // LOOKUP_PASSES))
        for start in range(0, n, step):
            rows, queried = None, array
            if n > step:  # the queried keys in [keys[start], keys[start + step])
                in_range = pc.greater_equal(array, committed[start]) if start else None
                if start + step < n:
                    below = pc.less(array, committed[start + step])
                    in_range = below if in_range is None else pc.and_(in_range, below)
                rows = np.flatnonzero(_np(in_range.fill_null(False), bool))
                queried = array.take(pa.array(rows))
            found = _np(pc.index_in(queried, value_set=committed.slice(start, step)).fill_null(-1), np.int64)
            hit = np.flatnonzero(found >= 0)
            out[hit if rows is None else rows[hit]] = found[hit] + start
        return out

    def done_mask(self, keys: KeyColumn) -> np.ndarray:
        """Per key: every sample written or failed for good (or the whole input failed)."""
        return self.done_at(self.positions(keys))

    def done_at(self, positions: np.ndarray) -> np.ndarray:
        done = self._cols["done"]
        if len(done) == 0:
            return np.zeros(len(positions), bool)
        return (positions >= 0) & np.take(done, positions, mode="clip")  # clip: -1 reads done[0], masked

    def done_indices_at(self, position: int) -> list[int]:
        """Sorted samples written or failed for good of the key at ``position`` (>= 0)."""
        written = self._written_at(position)
        errors = _slice(self._cols["error_codes"], position)
        return np.union1d(written, errors).tolist() if len(errors) else written.tolist()

    def _written_at(self, position: int) -> np.ndarray:
        c = self._cols
        if c["whole_range"][position]:
            return np.arange(c["expected"][position], dtype=np.int64)
        return _slice(c["written_codes"], position)

    def is_done(self, key: str) -> bool:
        return bool(self.done_mask([key])[0])

    def done_indices(self, key: str) -> set[int]:
        """Samples written or failed for good (-1 when the whole input failed for good)."""
        pos = int(self.positions([key])[0])
        if pos < 0:
            return set()
        out = set(self.done_indices_at(pos))
        return out | ({-1} if -1 in self.final_errors.get(key, {}) else set())

    def written_of(self, key: str) -> set[int]:
        pos = int(self.positions([key])[0])
        return set(self._written_at(pos).tolist()) if pos >= 0 else set()

    def count_not_done(self, keys: KeyColumn) -> int:
        return int(len(keys) - self.done_mask(keys).sum()) if len(keys) else 0

    def written_counts(self, keys: KeyColumn) -> np.ndarray:
        """Per key: how many of its samples are written (0 where nothing is committed for it)."""
        positions = self.positions(keys)
        return np.where(positions >= 0, self._cols["written_count"][np.maximum(positions, 0)], 0)

    def inputs_written(self) -> int:
        """Inputs with at least one written sample."""
        return int((self._cols["written_count"] > 0).sum())

    def in_inputs(self) -> np.ndarray:
        """Per key of :attr:`keys`: whether a committed manifest names it among its inputs (not
        only in an error row)."""
        return self._cols["in_inputs"]

    def etag_array(self) -> pa.Array:
        """Per key of :attr:`keys`: the recorded identity ("" when none, ``MIXED_ETAG`` when mixed),
        taken from the state table's rows when asked for (change detection does; the commit never)."""
        at, mixed = self._cols["etag_rows"], self._cols["mixed_etags"]
        if at is None:
            raise TypeError("this Progress was built without the inputs' identities")
        if not len(at):
            return pa.array([], pa.string())
        out = self._cols["etag_values"].take(pa.array(at, mask=at < 0))
        out = out.fill_null("") if out.null_count else out
        return out if mixed is None else pc.if_else(pa.array(mixed), MIXED_ETAG, out)

    # ---- dict views, for small outputs and tests ----------------------------------------------
    @cached_property
    def written(self) -> dict[str, set[int]]:
        c = self._cols
        out = {}
        for pos in np.flatnonzero(c["in_inputs"]):
            out[c["keys"][int(pos)].as_py()] = set(self._written_at(int(pos)).tolist())
        return out

    @cached_property
    def expected(self) -> dict[str, int]:
        c = self._cols
        where = np.flatnonzero(c["in_inputs"])
        return dict(zip(c["keys"].take(pa.array(where)).to_pylist(), c["expected"][where].tolist()))

    @cached_property
    def etags(self) -> dict[str, str]:
        keys, etags = self.keys.to_pylist(), self.etag_array().to_pylist()
        return {k: e for k, e in zip(keys, etags) if e}

    @cached_property
    def error_rows(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self._cols["errors"]["record"].to_pylist()]

    @cached_property
    def final_errors(self) -> dict[str, dict[int, str]]:
        out: dict[str, dict[int, str]] = {}
        for error in self.error_rows:
            if not error.get("retry", False):
                out.setdefault(error["key"], {})[int(error.get("index", -1))] = error["reason"]
        return out

    @cached_property
    def files(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self._cols["file_records"].to_pylist()]

    @property
    def schema(self) -> dict[str, Any]:
        """The data schema the first manifest that has one records (they all record the same)."""
        return self._cols["schema"]


def key_array(keys: KeyColumn) -> pa.Array | pa.ChunkedArray:
    """Input keys as an Arrow string column (the runner's are one already; tests pass lists)."""
    return keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys), pa.string())


ERROR_COLUMNS = ["key", "index", "retry", "run_id", "record"]


class _KeyedRows:
    """What the build keeps of each group of state rows: per row with a key (input and error rows,
    in row order) its key, kind, expected samples, identity and whether its written list is exactly
    ``0 .. expected-1``; the written lists of the other input rows; the error rows; the file
    records; the data schema. Not the rows themselves: a group's are freed once it is read."""

    def __init__(self, identities: bool = True) -> None:
        self.identities = identities
        self.keys: list[pa.Array] = []
        self.kinds: list[np.ndarray] = []
        self.expected: list[np.ndarray] = []
        self.whole: list[np.ndarray] = []
        self.etags: list[pa.Array] = []
        self.irregular_rows: list[np.ndarray] = []  # among all keyed rows
        self.irregular_lists: list[pa.Array] = []
        self.errors: list[pa.Table] = []
        self.file_records: list[pa.Array] = []
        self.schema: dict[str, Any] | None = None
        self.count = 0

    def add(self, table: pa.Table) -> None:
        kind = _np(table["kind"], np.int8)
        keyed = (kind == INPUT) | (kind == ERROR)
        if self.schema is None:
            self.schema = _first_schema(table["record"], kind)
        self.file_records.append(_combined(table["record"].filter(pa.array(kind == FILE))))
        self.errors.append(table.select(ERROR_COLUMNS).filter(pa.array(kind == ERROR)))
        rows = table.select(["kind", "key", "expected", "written", "etag"]).filter(pa.array(keyed))
        kind = _np(rows["kind"], np.int8)
        expected = _np(rows["expected"].fill_null(0), np.int64)
        written = _combined(rows["written"])
        is_input = np.flatnonzero(kind == INPUT)
        starts, lengths, values = _list_parts(written, is_input)
        whole = np.zeros(len(kind), bool)
        whole[is_input] = (lengths == expected[is_input]) & _is_range(starts, lengths, values)
        irregular = is_input[~whole[is_input]]
        self.irregular_rows.append(irregular + self.count)
        self.irregular_lists.append(written.take(pa.array(irregular, pa.int64())))
        self.keys.append(_combined(rows["key"]))
        if self.identities:
            self.etags.append(_combined(rows["etag"]))
        self.kinds.append(kind)
        self.expected.append(expected)
        self.whole.append(whole)
        self.count += len(kind)

    def take(self, name: str, kind: pa.DataType | type) -> np.ndarray | pa.Array:
        """The pieces kept under ``name`` as one array, letting go of the pieces."""
        pieces = getattr(self, name)
        setattr(self, name, [])
        if isinstance(kind, pa.DataType):
            whole = _concat(pieces, kind)
            del pieces
            release_unused_memory()  # the pieces' pages (Arrow's pool would keep them for the build)
            return whole
        return np.concatenate(pieces) if pieces else np.zeros(0, kind)


def _build_columns(tables: Iterable[pa.Table], identities: bool = True) -> dict[str, Any]:
    """The columnar state from the state's rows, one table (or row group) at a time: what each
    keyed row says (``_KeyedRows``), then whole-array passes over those rows with NumPy masks."""
    kept = _KeyedRows(identities)
    for table in tables:
        kept.add(table)
    # Each list of pieces is let go of as soon as it is one array (at ten million inputs the keys
    # are 270 MB, the identities 240 MB).
    kind = kept.take("kinds", np.int8)
    is_input, is_error = kind == INPUT, kind == ERROR
    keys, ids = _sorted_keys(kept)  # ids: per keyed row
    del kind
    n = len(keys)
    expected_rows = kept.take("expected", np.int64)
    ids_in = ids[is_input]
    expected = np.zeros(n, np.int64)
    np.maximum.at(expected, ids_in, expected_rows[is_input])
    in_inputs = np.zeros(n, bool)
    in_inputs[ids_in] = True
    del ids_in
    etag_values, etag_rows, mixed_etags = None, None, None
    if identities:
        etag_values = kept.take("etags", pa.string())
        etag_rows, mixed_etags = _etag_rows(ids, is_input, etag_values, n)
    irregular = (kept.take("irregular_rows", np.int64), kept.take("irregular_lists", pa.list_(pa.int32())))
    whole_rows = kept.take("whole", bool)
    written = _written_samples(ids, is_input, whole_rows, expected_rows, irregular, expected)
    del expected_rows, irregular, whole_rows

    errors = pa.concat_tables(kept.errors) if kept.errors else empty_table().select(ERROR_COLUMNS)
    ids_error = ids[is_error]
    del ids
    is_final = ~_np(errors["retry"].fill_null(False), bool)
    final = errors.filter(pa.array(is_final))
    final_ids = ids_error[is_final]
    final_index = _np(final["index"].fill_null(-1), np.int64)
    whole_error = np.zeros(n, bool)
    whole_error[final_ids[final_index < 0]] = True
    sample = final_index >= 0
    error_codes = _sorted_unique((final_ids[sample].astype(np.int64) << 32) | final_index[sample])
    # Samples failed for good that were not also written count towards done.
    error_ids, error_index = error_codes >> 32, error_codes & LOW
    in_written = np.where(
        written["whole_range"][error_ids],
        error_index < expected[error_ids],
        _contains(written["codes"], error_codes),
    )
    done_count = written["count"] + np.bincount(error_ids[~in_written], minlength=n)
    done = whole_error | ((expected > 0) & (done_count >= expected))
    return {
        "keys": keys,
        "expected": expected,
        "in_inputs": in_inputs,
        "etag_values": etag_values,
        "etag_rows": etag_rows,
        "mixed_etags": mixed_etags,
        "whole_range": written["whole_range"],
        "written_codes": written["codes"],
        "error_codes": error_codes,
        "written_count": written["count"],
        "done": done,
        "duplicates": written["duplicates"],
        "errors": errors,
        "file_records": kept.take("file_records", pa.string()),
        "schema": kept.schema or {},
    }


def _written_samples(
    ids: np.ndarray,
    is_input: np.ndarray,
    whole_rows: np.ndarray,
    expected_rows: np.ndarray,
    irregular: tuple[np.ndarray, pa.ListArray],
    expected: np.ndarray,
) -> dict:
    """The written samples per key, compactly. Almost every key has one input row whose written list
    is exactly ``0 .. expected-1`` (``whole_rows``): such a key is marked ``whole_range`` and costs
    one flag; only the other keys' samples are kept, as sorted distinct codes ``key_id << 32 |
    sample``. (Every sample as a code was 40 MB at a million inputs, and twice that while it was
    sorted.) A whole row's samples need no list: they are ``0 .. expected-1`` of that row; the other
    rows' lists come in ``irregular`` (their rows among the keyed rows, and the lists)."""
    n = len(expected)
    rows_per_key = np.bincount(ids[is_input], minlength=n)
    whole_range = np.zeros(n, bool)
    whole_range[ids[is_input & whole_rows]] = True
    whole_range &= rows_per_key == 1
    # Keys not marked: the samples of each of their input rows, whole or not.
    whole_of_others = np.flatnonzero(is_input & whole_rows & ~whole_range[np.maximum(ids, 0)])
    lengths = expected_rows[whole_of_others]
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    samples = np.arange(int(lengths.sum()), dtype=np.int64) - first
    codes = [(np.repeat(ids[whole_of_others].astype(np.int64), lengths) << 32) | samples]
    irregular_rows, lists = irregular
    if len(irregular_rows):
        starts, lengths, values = _list_parts(lists, np.arange(len(lists)))
        first = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
        samples = values[first + np.arange(int(lengths.sum()))].astype(np.int64)
        codes.append((np.repeat(ids[irregular_rows].astype(np.int64), lengths) << 32) | samples)
    codes = np.concatenate(codes)
    total = len(codes)
    codes = _sorted_unique(codes)
    count = np.where(whole_range, expected, _counts(codes, n))
    return {"whole_range": whole_range, "codes": codes, "count": count, "duplicates": int(total - len(codes))}


def _list_parts(chunk: pa.ListArray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the lists at ``rows`` of one chunk: where each starts in ``values``, its length (0 for a
    null list), and the chunk's values as NumPy (no copy)."""
    offsets = chunk.offsets.to_numpy().astype(np.int64)
    valid = _np(chunk.is_valid(), bool)[rows] if chunk.null_count else np.ones(len(rows), bool)
    lengths = np.where(valid, offsets[rows + 1] - offsets[rows], 0)
    # Only this chunk's values (a sliced chunk's child array holds its neighbours' too).
    values = chunk.values.slice(offsets[0], offsets[-1] - offsets[0])
    return offsets[rows] - offsets[0], lengths, values.to_numpy(zero_copy_only=False)


def _is_range(starts: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per list: whether it is exactly ``0, 1, ..., length-1`` (empty lists are)."""
    if not len(values):
        return np.ones(len(starts), bool)
    # Count, before each position, the steps that are not +1; a list is a range when it starts at 0
    # and has none inside it.
    breaks = np.zeros(len(values) + 1, np.int32)
    np.cumsum(np.diff(values) != 1, out=breaks[2:], dtype=np.int32)
    last = len(values)  # empty lists may start there; their answer does not depend on these
    inside = breaks[np.minimum(starts + np.maximum(lengths, 1), last)] - breaks[np.minimum(starts + 1, last)]
    first = values[np.minimum(starts, last - 1)]
    return (lengths == 0) | ((first == 0) & (inside == 0))


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if not len(sorted_codes):
        return np.zeros(len(codes), bool)
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[at] == codes


def _sorted_keys(kept: _KeyedRows) -> tuple[pa.Array, np.ndarray]:
    """The distinct keys of the keyed rows, sorted, and each row's position among them (int32 below
    2**31 keys). A sort and a comparison of neighbours, not a hash table: at a million keys Arrow's
    ``unique`` grew the driver by 150 MB, the sort by a fifth of that. The keys in row order are let
    go of once sorted (at ten million, 270 MB)."""
    values = kept.take("keys", pa.string())
    if not len(values):
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    order = pc.sort_indices(values)
    sorted_values = values.take(order)
    del values
    release_unused_memory()
    first = np.ones(len(sorted_values), bool)  # the first row of each distinct key, in sorted order
    if len(sorted_values) > 1:
        first[1:] = _np(pc.not_equal(sorted_values.slice(1), sorted_values.slice(0, len(sorted_values) - 1)), bool)
    position = _position_type(len(first))
    ids = np.empty(len(first), position)
    ids[order.to_numpy().view(np.int64)] = np.cumsum(first, dtype=position) - 1
    keys = sorted_values if first.all() else sorted_values.filter(pa.array(first))
    del sorted_values, order, first
    release_unused_memory()  # the sort's copies of every key: Arrow's pool would keep them
    return keys, ids


def _counts(codes: np.ndarray, n: int) -> np.ndarray:
    """Per key id below ``n``: how many of the sorted ``codes`` it has (without the temporary copy of
    every code that ``bincount(codes >> 32)`` makes)."""
    return np.diff(np.searchsorted(codes, np.arange(n + 1, dtype=np.int64) << 32))


def _sorted_unique(codes: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a diff: numpy 2's hash-based ``unique`` took 5.5 s on 5M
    int64 codes, the sort 0.4 s). ``codes`` itself when they are distinct already (the usual state:
    no sample written twice), so the driver holds one copy, not two."""
    codes.sort()  # in place: the callers' arrays are their own temporaries
    if len(codes) < 2:
        return codes
    keep = np.empty(len(codes), bool)
    keep[0] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    return codes if keep.all() else codes[keep]


def _np(column: pa.ChunkedArray | pa.Array, dtype) -> np.ndarray:
    return _combined(column).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _position_type(count: int) -> type:
    """The integer type of positions among ``count`` keys: int32 while it can hold them."""
    return np.int32 if count < 2**31 else np.int64


def _slice(codes: np.ndarray, pos: int) -> np.ndarray:
    lo, hi = np.searchsorted(codes, [np.int64(pos) << 32, np.int64(pos + 1) << 32])
    return codes[lo:hi] & LOW


def _etag_rows(ids: np.ndarray, is_input: np.ndarray, etag: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per key: the keyed row whose identity it records (-1 when none), and per key whether its
    input rows record different ones (None when no key has two rows with one). Rows, not the
    strings: the commit never needs the identities. ``ids``: each keyed row's key id; ``etag``:
    each keyed row's identity."""
    at = np.full(n, -1, np.int64)
    if len(ids) == 0:
        return at, None
    rows = np.flatnonzero(is_input & _np(pc.not_equal(etag, "").fill_null(False), bool))
    key_ids = ids[rows]
    at[key_ids] = rows
    if np.count_nonzero(at >= 0) == len(rows):  # the usual state: one input row per key
        return at, None
    order = np.argsort(key_ids, kind="stable")
    key_ids, rows = key_ids[order], rows[order]
    values = etag.take(pa.array(rows))
    starts = np.flatnonzero(np.r_[True, key_ids[1:] != key_ids[:-1]])
    group_first = np.repeat(starts, np.diff(np.r_[starts, len(key_ids)]))
    differs = _np(pc.not_equal(values, values.take(pa.array(group_first))), bool)
    mixed = np.zeros(n, bool)
    mixed[key_ids[differs]] = True
    at[key_ids[starts]] = rows[starts]  # each key's first row
    return at, mixed


def _combined(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column


def _concat(arrays: list[pa.Array], kind: pa.DataType) -> pa.Array:
    """One array of the pieces (their copies are let go of by the caller)."""
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return pa.array([], kind)
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _first_schema(records: pa.ChunkedArray | pa.Array, kind: np.ndarray) -> dict[str, Any] | None:
    """The data schema the first header row with one records, read a record at a time."""
    headers = np.flatnonzero(kind == HEADER)
    records = _combined(records) if len(headers) else records
    for row in headers:
        schema = json.loads(records[int(row)].as_py()).get("schema")
        if schema:
            return schema
    return None
