"""The loops of :mod:`.pages` over a page's bytes (its header, levels and values), compiled by
numba and run without the GIL: the readers decode in background threads, and NumPy would take
several calls (and GIL hand-overs) per page for what one loop does here.

Compiled once per machine (numba keeps the machine code next to this file, or in its user cache
where that is read-only), loaded once per process (about 0.6 s: numba's own start-up), inherited by
DataLoader workers forked after :func:`warm`. Compiled code does not check array bounds, so every
length read from a page is checked against the buffer before a loop follows it (a damaged page
returns a refusal, never reads or writes past its arrays: tests/test_pages.py damages them).
"""

from __future__ import annotations

import numba
import numpy as np


def kernel(function):
    """``function`` compiled without the GIL, its machine code cached on disk where numba finds a
    writable place (else compiled once per process: a read-only install without a home)."""
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


@kernel
def _varint(buf, pos):
    """An unsigned LEB128 integer at ``pos``: (value, next position), value -1 when truncated."""
    result = 0
    shift = 0
    while pos < buf.size:
        byte = buf[pos]
        pos += 1
        result |= (np.int64(byte) & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    return -1, pos


@kernel
def _zigzag(buf, pos):
    """A zigzag varint (Thrift's i16, i32 and i64) at ``pos``: (value, next position, whether it was whole)."""
    raw, pos = _varint(buf, pos)
    return (raw >> 1) ^ -(raw & 1), pos, raw >= 0


@kernel
def _field_header(buf, pos, last):
    """A Thrift compact struct field's header at ``pos`` (``last``: the struct's previous field id):
    (type, field id, next position); type -1 when the bytes end first."""
    if pos >= buf.size:
        return -1, 0, pos
    head = np.int64(buf[pos])
    pos += 1
    kind = head & 0x0F
    if kind == _STOP:
        return kind, 0, pos
    if head >> 4:
        return kind, last + (head >> 4), pos
    field, pos, whole = _zigzag(buf, pos)
    return (kind if whole else -1), field, pos


# What decode_values finds (0: the values are in ``out``).
DECODED, SHORT_PAGE, NULL_LEVEL, OTHER_ENCODING = 0, 1, 2, 3
PLAIN, BYTE_STREAM_SPLIT = 0, 9  # Parquet encodings
# Thrift compact protocol types.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _STRUCT = 0, 1, 2, 3, 4, 5, 6, 7, 8, 12
_MAX_DEPTH = 8


@kernel
def page_header(buf, pos):
    """The Parquet ``PageHeader`` (Thrift compact protocol) at ``pos``: ``(end of the header, page
    type, uncompressed size, compressed size, values, encoding)``, -1 for a field it does not have;
    the end is -1 when the header is cut short or holds a list, set or map (page headers of data
    pages have none: the caller then leaves the chunk to pyarrow). Only field 5 (``DataPageHeader``)
    is read inside nested structs; the others (statistics, ...) are skipped."""
    kind = uncompressed = compressed = values = encoding = -1
    last = np.zeros(_MAX_DEPTH, dtype=np.int64)  # the last field id at each nesting depth
    depth = 0
    data_page = False  # whether depth 1 is the DataPageHeader
    while True:
        kind_of_field, field, pos = _field_header(buf, pos, last[depth])
        if kind_of_field < 0:
            break
        if kind_of_field == _STOP:
            if depth == 0:
                return pos, kind, uncompressed, compressed, values, encoding
            depth -= 1
            continue
        last[depth] = field
        if kind_of_field == _TRUE or kind_of_field == _FALSE:
            continue
        if kind_of_field == _BYTE:
            pos += 1
        elif kind_of_field == _I16 or kind_of_field == _I32 or kind_of_field == _I64:
            value, pos, whole = _zigzag(buf, pos)
            if not whole:
                break
            if depth == 0:
                if field == 1:
                    kind = value
                elif field == 2:
                    uncompressed = value
                elif field == 3:
                    compressed = value
            elif depth == 1 and data_page:
                if field == 1:
                    values = value
                elif field == 2:
                    encoding = value
        elif kind_of_field == _DOUBLE:
            pos += 8
        elif kind_of_field == _BINARY:
            length, pos = _varint(buf, pos)
            if length < 0:
                break
            pos += length
        elif kind_of_field == _STRUCT and depth + 1 < _MAX_DEPTH:
            depth += 1
            last[depth] = 0
            if depth == 1:
                data_page = field == 5
        else:
            break
    return -1, kind, uncompressed, compressed, values, encoding


@kernel
def levels_all_equal(buf, start, length, count, level):
    """Whether the first ``count`` levels of the RLE / bit-packed hybrid run in
    ``buf[start:start + length]`` all equal ``level`` (Parquet's level encoding)."""
    width = 0
    rest = level
    while rest:
        width += 1
        rest >>= 1
    value_bytes = (width + 7) // 8
    pos = start
    end = start + length
    seen = 0
    while seen < count:
        header, pos = _varint(buf, pos)
        if header < 0 or pos > end:
            return False
        if header & 1 == 0:  # a repeated run: its length, then the value in whole bytes
            if pos + value_bytes > end:
                return False
            value = 0
            for k in range(value_bytes):
                value |= np.int64(buf[pos + k]) << (8 * k)
            if value != level:
                return False
            pos += value_bytes
            seen += header >> 1
        else:  # bit-packed groups of 8 values, least significant bit first
            groups = header >> 1
            if pos + groups * width > end:
                return False
            for i in range(min(groups * 8, count - seen)):
                value = 0
                for k in range(width):
                    bit = i * width + k
                    value |= ((np.int64(buf[pos + (bit >> 3)]) >> (bit & 7)) & 1) << k
                if value != level:
                    return False
            pos += groups * width
            seen += groups * 8
    return True


@kernel
def join_byte_planes(buf, start, values, itemsize, out):
    """BYTE_STREAM_SPLIT's values as bytes into ``out``: byte k of value i is ``buf[start + k * values + i]``.
    float32 and float64 are joined a whole word per value (a byte at a time, float64 took 2.6x as long on
    the VM); other sizes a byte at a time."""
    if itemsize == 4:  # float32, the common case: one 32-bit word per value
        words = out.view(np.uint32)
        p0 = buf[start : start + values]
        p1 = buf[start + values : start + 2 * values]
        p2 = buf[start + 2 * values : start + 3 * values]
        p3 = buf[start + 3 * values : start + 4 * values]
        for i in range(values):
            words[i] = np.uint32(p0[i]) | (np.uint32(p1[i]) << 8) | (np.uint32(p2[i]) << 16) | (np.uint32(p3[i]) << 24)
    elif itemsize == 8:  # float64: one 64-bit word per value
        longs = out.view(np.uint64)
        q0, q1 = buf[start : start + values], buf[start + values : start + 2 * values]
        q2, q3 = buf[start + 2 * values : start + 3 * values], buf[start + 3 * values : start + 4 * values]
        q4, q5 = buf[start + 4 * values : start + 5 * values], buf[start + 5 * values : start + 6 * values]
        q6, q7 = buf[start + 6 * values : start + 7 * values], buf[start + 7 * values : start + 8 * values]
        for i in range(values):
            low = np.uint64(q0[i]) | (np.uint64(q1[i]) << 8) | (np.uint64(q2[i]) << 16) | (np.uint64(q3[i]) << 24)
            high = np.uint64(q4[i]) | (np.uint64(q5[i]) << 8) | (np.uint64(q6[i]) << 16) | (np.uint64(q7[i]) << 24)
            longs[i] = low | (high << 32)
    else:
        for k in range(itemsize):
            plane = buf[start + k * values : start + (k + 1) * values]
            for i in range(values):
                out[i * itemsize + k] = plane[i]


@kernel
def copy_bytes(source, target):
    """``target[:] = source`` for two byte arrays of one length, as a loop over whole slices: LLVM makes it
    a vectorised copy (NumPy's speed), where numba's slice assignment copied 10x slower on the VM."""
    for i in range(target.size):
        target[i] = source[i]


@kernel
def values_start(page, values, max_repetition, max_definition, itemsize):
    """Where a v1 data page's ``values`` begin (after its levels), when no value or list is null:
    repetition levels skipped (with no null the fixed sizes say the nesting), definition levels
    checked to be all at the maximum. Minus the reason (SHORT_PAGE, NULL_LEVEL) when not."""
    at = 0
    for max_level, check in ((max_repetition, False), (max_definition, True)):
        if max_level == 0:
            continue
        if at + 4 > page.size:
            return -SHORT_PAGE
        length = np.int64(page[at]) | (np.int64(page[at + 1]) << 8) | (np.int64(page[at + 2]) << 16)
        length |= np.int64(page[at + 3]) << 24
        at += 4
        if at + length > page.size:
            return -SHORT_PAGE
        if check and not levels_all_equal(page, at, length, values, max_level):
            return -NULL_LEVEL
        at += length
    if page.size - at < values * itemsize:
        return -SHORT_PAGE
    return at


@kernel
def decode_values(page, values, max_repetition, max_definition, encoding, itemsize, out):
    """A v1 data page's ``values`` into ``out`` (bytes), when no value or list is null
    (:func:`values_start`). Returns DECODED or why not."""
    at = values_start(page, values, max_repetition, max_definition, itemsize)
    if at < 0:
        return -at
    if encoding == PLAIN:
        copy_bytes(page[at : at + values * itemsize], out[: values * itemsize])
    elif encoding == BYTE_STREAM_SPLIT:
        join_byte_planes(page, at, values, itemsize, out)
    else:
        return OTHER_ENCODING
    return DECODED


# What footer_tables keeps of each column chunk (ColumnMetaData's fields) and of its statistics.
(
    CHUNK_TYPE,
    CHUNK_CODEC,
    CHUNK_VALUES,
    CHUNK_COMPRESSED,
    CHUNK_DATA_PAGE,
    CHUNK_DICTIONARY_PAGE,
    CHUNK_MIN_AT,
    CHUNK_MIN_LENGTH,
    CHUNK_MAX_AT,
    CHUNK_MAX_LENGTH,
    CHUNK_NAME_AT,
    CHUNK_NAME_LENGTH,
) = range(12)
CHUNK_FIELDS = 12
_LIST, _SET, _MAP = 9, 10, 11
# Where footer_tables is: the struct or list it reads (what its fields or elements mean).
_FILE, _ROW_GROUPS, _ROW_GROUP, _CHUNKS, _CHUNK, _CHUNK_META, _STATISTICS, _PATH, _OTHER = range(9)


@kernel
def footer_tables(buf):
    """A Parquet footer's ``FileMetaData`` (Thrift compact protocol, ``buf`` is all of it), in two
    tables: ``row_groups [groups, 2]`` (rows, total byte size) and ``chunks [groups, columns,
    CHUNK_FIELDS]`` (see the CHUNK_ names: physical type, codec, values, compressed size, page
    offsets, -1 for a field the chunk lacks; and where in ``buf`` its statistics' ``min_value`` and
    ``max_value`` and the first name of its path in the schema are). Returns ``(ok, row_groups,
    chunks)``: not ok when the footer is cut short, holds a map or set, nests deeper than 16 or its
    row groups differ in column count (the caller then reads it with pyarrow). One pass, no
    allocation per field."""
    depth_limit = 16
    frame_list = np.zeros(depth_limit, dtype=np.bool_)  # a list (True) or a struct
    frame_what = np.zeros(depth_limit, dtype=np.int64)  # _FILE, _ROW_GROUP, ...
    last = np.zeros(depth_limit, dtype=np.int64)  # a struct's last field id
    remaining = np.zeros(depth_limit, dtype=np.int64)  # a list's elements still to read
    element = np.zeros(depth_limit, dtype=np.int64)  # a list's element type
    row_groups = np.full((0, 2), -1, dtype=np.int64)
    chunks = np.full((0, 0, CHUNK_FIELDS), -1, dtype=np.int64)
    group = column = -1
    columns = -1
    depth = 0
    frame_what[0] = _FILE
    pos = 0
    size = buf.size
    while True:
        what = frame_what[depth]
        if frame_list[depth]:
            if remaining[depth] == 0:
                depth -= 1
                continue
            remaining[depth] -= 1
            kind = element[depth]
            field = 0
            if kind == _TRUE or kind == _FALSE:  # a list's booleans take a byte each
                pos += 1
                continue
        else:
            kind, field, pos = _field_header(buf, pos, last[depth])
            if kind < 0:
                return False, row_groups, chunks
            if kind == _STOP:
                if depth == 0:
                    return True, row_groups, chunks
                depth -= 1
                continue
            last[depth] = field
            if kind == _TRUE or kind == _FALSE:
                continue
        if kind == _BYTE:
            pos += 1
        elif kind == _I16 or kind == _I32 or kind == _I64:
            value, pos, whole = _zigzag(buf, pos)
            if not whole:
                return False, row_groups, chunks
            if what == _ROW_GROUP:
                if field == 3:
                    row_groups[group, 0] = value
                elif field == 2:
                    row_groups[group, 1] = value
            elif what == _CHUNK_META:
                slot = -1
                if field == 1:
                    slot = CHUNK_TYPE
                elif field == 4:
                    slot = CHUNK_CODEC
                elif field == 5:
                    slot = CHUNK_VALUES
                elif field == 7:
                    slot = CHUNK_COMPRESSED
                elif field == 9:
                    slot = CHUNK_DATA_PAGE
                elif field == 11:
                    slot = CHUNK_DICTIONARY_PAGE
                if slot >= 0:
                    chunks[group, column, slot] = value
        elif kind == _DOUBLE:
            pos += 8
        elif kind == _BINARY:
            length, pos = _varint(buf, pos)
            if length < 0 or pos + length > size:
                return False, row_groups, chunks
            if what == _STATISTICS and (field == 5 or field == 6):
                at = CHUNK_MAX_AT if field == 5 else CHUNK_MIN_AT
                chunks[group, column, at] = pos
                chunks[group, column, at + 1] = length
            elif what == _PATH and chunks[group, column, CHUNK_NAME_AT] < 0:  # the top-level name
                chunks[group, column, CHUNK_NAME_AT] = pos
                chunks[group, column, CHUNK_NAME_LENGTH] = length
            pos += length
        elif kind == _LIST or kind == _STRUCT:
            if depth + 1 >= depth_limit:
                return False, row_groups, chunks
            inner = _OTHER
            if kind == _STRUCT:
                if what == _ROW_GROUPS:
                    inner = _ROW_GROUP
                    group += 1
                    column = -1
                elif what == _CHUNKS:
                    inner = _CHUNK
                    column += 1
                elif what == _CHUNK and field == 3:
                    inner = _CHUNK_META
                elif what == _CHUNK_META and field == 12:
                    inner = _STATISTICS
                if (inner == _CHUNK or inner == _CHUNK_META or inner == _STATISTICS) and column >= columns:
                    return False, row_groups, chunks
                depth += 1
                frame_list[depth] = False
                last[depth] = 0
            else:
                if pos >= size:
                    return False, row_groups, chunks
                head = np.int64(buf[pos])
                pos += 1
                count = head >> 4
                if count == 15:
                    count, pos = _varint(buf, pos)
                if count < 0 or count > size - pos:  # every element takes a byte at least
                    return False, row_groups, chunks
                if what == _FILE and field == 4:
                    if group >= 0 or len(row_groups):  # a second list of row groups
                        return False, row_groups, chunks
                    inner = _ROW_GROUPS
                    row_groups = np.full((count, 2), -1, dtype=np.int64)
                elif what == _ROW_GROUP and field == 1:
                    inner = _CHUNKS
                    if columns < 0:
                        columns = count
                        if len(row_groups) * count > size:
                            return False, row_groups, chunks
                        chunks = np.full((len(row_groups), count, CHUNK_FIELDS), -1, dtype=np.int64)
                    elif count != columns:
                        return False, row_groups, chunks
                elif what == _CHUNK_META and field == 3:
                    inner = _PATH
                depth += 1
                frame_list[depth] = True
                remaining[depth] = count
                element[depth] = head & 0x0F
            frame_what[depth] = inner
            if group >= len(row_groups) and inner == _ROW_GROUP:
                return False, row_groups, chunks
        else:  # a map or a set: FileMetaData has none
            return False, row_groups, chunks
        if pos > size:
            return False, row_groups, chunks


def warm() -> None:
    """Load (or compile) every kernel in this process, e.g. before DataLoader workers fork (which
    would each load them again). The pages they read are read-only arrays (a type of its own to
    numba): :mod:`.pages` passes every page read-only, so one compiled version serves all."""
    page = np.zeros(16, dtype=np.uint8)
    page[0], page[4], page[5] = 2, 2, 1  # 2 bytes of definition levels: a run of one level 1
    page.flags.writeable = False
    page_header(page, 0)
    footer_tables(page[:0])
    values_start(page, 1, 0, 1, 4)
    decode_values(page, 1, 0, 1, BYTE_STREAM_SPLIT, 4, np.empty(4, dtype=np.uint8))
