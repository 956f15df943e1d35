"""What the committed manifests say about each input, in columnar form.

``Progress`` is built from the committed state's table (engine/state_index.py) with a handful of
vectorised passes: the keys sorted and unique (a pyarrow string array), per key the expected sample
count, the identity, whether it failed for good as a whole, and how many distinct samples are done;
the done ``(key, sample)`` pairs as one sorted int64 array (``key_id << 32 | sample``). Lookups are
``pyarrow.compute.index_in`` against the key array, so a million committed inputs take tens of MB
instead of a Python set per input. The dict views (``written``, ``expected``, ``etags``,
``final_errors``) are built on demand for small outputs and tests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .memory import release_unused_memory
from .state_index import ERROR, FILE, INPUT, empty_table, parts_table

MIXED_ETAG = "\x00mixed"  # an input whose committed rows came from different versions of it
LOW = np.int64(0xFFFFFFFF)
# ``Progress.positions`` hashes at least this many committed keys at a time, in at most this many passes.
LOOKUP_SLICE, LOOKUP_PASSES = 1 << 17, 8
KeyColumn = Sequence[str] | pa.Array | pa.ChunkedArray  # the runner passes its inputs table's key column


class Progress:
    """What committed manifests say about each input key (built lazily from a state table)."""

    def __init__(self, table: pa.Table | None = None):
        self._tables = [table] if table is not None else []

    def add_part(self, part: dict[str, Any], name: str = "") -> None:
        """Add one manifest (tests and small tools; the engine builds from the whole table)."""
        self._tables.append(parts_table([(name or f"#{len(self._tables)}", part)]))
        self.__dict__.pop("_cols", None)
        for view in ("written", "expected", "etags", "final_errors", "files", "error_rows"):
            self.__dict__.pop(view, None)

    @property
    def table(self) -> pa.Table:
        return pa.concat_tables(self._tables) if self._tables else empty_table()

    # ---- the columnar state -------------------------------------------------------------------
    @cached_property
    def _cols(self) -> dict[str, Any]:
        cols = _build_columns(self.table)
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
        array = key_array(keys)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        committed, n = self.keys, len(self.keys)
        out = np.full(len(array), -1, np.int64)
        if not len(array) or not n:
            return out
        if len(array) <= min(n, LOOKUP_SLICE):
            queried = pc.unique(array)
            at = np.full(len(queried), -1, np.int64)
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
        return (positions >= 0) & done[np.maximum(positions, 0)]

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

    def inputs_written(self) -> int:
        """Inputs with at least one written sample."""
        return int((self._cols["written_count"] > 0).sum())

    def in_inputs(self) -> np.ndarray:
        """Per key of :attr:`keys`: whether a committed manifest names it among its inputs (not
        only in an error row)."""
        return self._cols["in_inputs"]

    def etag_array(self) -> pa.Array:
        """Per key of :attr:`keys`: the recorded identity ("" when none, ``MIXED_ETAG`` when mixed)."""
        return self._cols["etags"]

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
        table = self.table
        return [json.loads(r) for r in table["record"].filter(pc.equal(table["kind"], FILE)).to_pylist()]


def key_array(keys: KeyColumn) -> pa.Array | pa.ChunkedArray:
    """Input keys as an Arrow string column (the runner's are one already; tests pass lists)."""
    return keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(list(keys), pa.string())


def _build_columns(table: pa.Table) -> dict[str, Any]:
    """The columnar state from the state table. Works on whole columns with NumPy masks rather than
    a filtered copy of the input rows (at a million inputs the copy alone was 87 MB): the input
    columns (expected, written, etag) are null on every other kind of row."""
    kind = _np(table["kind"], np.int8)
    is_input, is_error = kind == INPUT, kind == ERROR
    errors = table.select(["key", "index", "retry", "run_id", "record"]).filter(pa.array(is_error))
    keys, ids = _sorted_keys(table["key"], is_input | is_error)  # ids: per row; -1 on rows without a key
    n = len(keys)
    ids_in = ids[is_input]
    expected = np.zeros(n, np.int64)
    np.maximum.at(expected, ids_in, _np(table["expected"].fill_null(0), np.int64)[is_input])
    in_inputs = np.zeros(n, bool)
    in_inputs[ids_in] = True
    del ids_in
    etags = _etags(np.where(is_input, ids, -1), table["etag"], n)
    ids_error = ids[is_error]

    written = _written_samples(table["written"], is_input, ids, expected)
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
        "etags": etags,
        "whole_range": written["whole_range"],
        "written_codes": written["codes"],
        "error_codes": error_codes,
        "written_count": written["count"],
        "done": done,
        "duplicates": written["duplicates"],
        "errors": errors,
    }


def _written_samples(column: pa.ChunkedArray, is_input: np.ndarray, ids: np.ndarray, expected: np.ndarray) -> dict:
    """The written samples per key, compactly. Almost every key has one input row whose written list
    is exactly ``0 .. expected-1``: such a key is marked ``whole_range`` and costs one flag; only the
    other keys' samples are kept, as sorted distinct codes ``key_id << 32 | sample``. (Every sample
    as a code was 40 MB at a million inputs, and twice that while it was sorted.) Chunk by chunk, so
    no copy of the whole list column is made."""
    n = len(expected)
    rows_per_key = np.bincount(ids[is_input], minlength=n)
    sole_and_whole = np.zeros(n, bool)  # set per key from its row; valid where rows_per_key == 1
    irregular_rows, start = [], 0
    for chunk in column.chunks:
        rows = np.flatnonzero(is_input[start : start + len(chunk)])
        keys = ids[start + rows]
        starts, lengths, values = _list_parts(chunk, rows)
        whole = (lengths == expected[keys]) & _is_range(starts, lengths, values)
        sole_and_whole[keys[whole]] = True
        irregular_rows.append(start + rows[~whole | (rows_per_key[keys] > 1)])
        start += len(chunk)
    whole_range = sole_and_whole & (rows_per_key == 1)
    # The rows of every key not marked: its one row is not a whole range, or it has several rows.
    irregular = np.concatenate(irregular_rows) if irregular_rows else np.zeros(0, np.int64)
    codes = _codes_of_rows(column, irregular, ids)
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


def _codes_of_rows(column: pa.ChunkedArray, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``key_id << 32 | sample`` for every sample the lists at ``rows`` (sorted) hold."""
    out, start = [], 0
    for chunk in column.chunks:
        local = rows[(rows >= start) & (rows < start + len(chunk))] - start
        if len(local):
            starts, lengths, values = _list_parts(chunk, local)
            first = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths)
            samples = values[first + np.arange(int(lengths.sum()))]
            out.append((np.repeat(ids[start + local], lengths) << 32) | samples.astype(np.int64))
        start += len(chunk)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def _contains(sorted_codes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    if not len(sorted_codes):
        return np.zeros(len(codes), bool)
    at = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    return sorted_codes[at] == codes


def _sorted_keys(column: pa.ChunkedArray, has_key: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """The distinct keys of the rows ``has_key`` marks, sorted, and each row's position among them
    (-1 on the other rows). A sort and a comparison of neighbours, not a hash table: at a million
    keys Arrow's ``unique`` grew the driver by 150 MB, the sort by a fifth of that."""
    rows = np.flatnonzero(has_key)
    ids = np.full(len(has_key), -1, np.int64)
    if not len(rows):
        return pa.array([], pa.string()), ids
    values = column.filter(pa.array(has_key))
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    order = pc.sort_indices(values)
    values = values.take(order)
    release_unused_memory()  # each copy of the keys freed here would stay in the driver (Arrow's pool)
    first = np.ones(len(values), bool)  # the first row of each distinct key, in sorted order
    if len(values) > 1:
        first[1:] = _np(pc.not_equal(values.slice(1), values.slice(0, len(values) - 1)), bool)
    rank = np.cumsum(first, dtype=np.int64)
    rank -= 1
    ids[rows[order.to_numpy().view(np.int64)]] = rank
    keys = values if first.all() else values.filter(pa.array(first))
    del values, order, first, rows, rank
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
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _slice(codes: np.ndarray, pos: int) -> np.ndarray:
    lo, hi = np.searchsorted(codes, [np.int64(pos) << 32, np.int64(pos + 1) << 32])
    return codes[lo:hi] & LOW


def _etags(ids: np.ndarray, etag: pa.ChunkedArray, n: int) -> pa.Array:
    """Per key: the one non-empty identity its input rows record, "" when none, MIXED_ETAG when they
    differ. ``ids``: each row's key id, -1 on rows that are not inputs."""
    if len(ids) == 0:
        return pa.array([""] * n, pa.string())
    etag = etag.combine_chunks() if isinstance(etag, pa.ChunkedArray) else etag
    nonempty = (ids >= 0) & _np(pc.not_equal(etag, "").fill_null(False), bool)
    rows = np.flatnonzero(nonempty)
    ids = ids[rows]
    if not len(ids):
        return pa.array([""] * n, pa.string())
    at = np.full(n, -1, np.int64)
    if np.bincount(ids, minlength=n).max() <= 1:  # the usual state: one input row per key, one string copy
        at[ids] = rows
        out = etag.take(pa.array(at, mask=at < 0))
        return out.fill_null("") if out.null_count else out
    order = np.argsort(ids, kind="stable")
    ids, etag = ids[order], etag.take(pa.array(rows[order]))
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    group_first = np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    differs = _np(pc.not_equal(etag, etag.take(pa.array(group_first))), bool)
    mixed = np.zeros(n, bool)
    mixed[ids[differs]] = True
    at[ids[starts]] = starts
    out = etag.take(pa.array(at, mask=at < 0)).fill_null("")
    return pc.if_else(pa.array(mixed), MIXED_ETAG, out)
