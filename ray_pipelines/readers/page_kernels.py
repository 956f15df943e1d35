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
    while pos < buf.size:
        head = np.int64(buf[pos])
        pos += 1
        kind_of_field = head & 0x0F
        if kind_of_field == _STOP:
            if depth == 0:
                return pos, kind, uncompressed, compressed, values, encoding
            depth -= 1
            continue
        if head >> 4:
            field = last[depth] + (head >> 4)
        else:
            raw, pos = _varint(buf, pos)
            field = (raw >> 1) ^ -(raw & 1)
        last[depth] = field
        if kind_of_field == _TRUE or kind_of_field == _FALSE:
            continue
        if kind_of_field == _BYTE:
            pos += 1
        elif kind_of_field == _I16 or kind_of_field == _I32 or kind_of_field == _I64:
            raw, pos = _varint(buf, pos)
            if raw < 0:
                break
            value = (raw >> 1) ^ -(raw & 1)
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
    """BYTE_STREAM_SPLIT's values as bytes into ``out``: byte k of value i is ``buf[start + k * values + i]``."""
    if itemsize == 4:  # float32, the common case: one 32-bit word per value
        words = out.view(np.uint32)
        p0 = buf[start : start + values]
        p1 = buf[start + values : start + 2 * values]
        p2 = buf[start + 2 * values : start + 3 * values]
        p3 = buf[start + 3 * values : start + 4 * values]
        for i in range(values):
            words[i] = np.uint32(p0[i]) | (np.uint32(p1[i]) << 8) | (np.uint32(p2[i]) << 16) | (np.uint32(p3[i]) << 24)
    else:
        for k in range(itemsize):
            plane = buf[start + k * values : start + (k + 1) * values]
            for i in range(values):
                out[i * itemsize + k] = plane[i]


@kernel
def decode_values(page, values, max_repetition, max_definition, encoding, itemsize, out):
    """A v1 data page's ``values`` (after its levels) into ``out`` (bytes), when no value or list
    is null: repetition levels skipped (with no null the fixed sizes say the nesting), definition
    levels checked to be all at the maximum. Returns DECODED or why not."""
    at = 0
    for max_level, check in ((max_repetition, False), (max_definition, True)):
        if max_level == 0:
            continue
        if at + 4 > page.size:
            return SHORT_PAGE
        length = np.int64(page[at]) | (np.int64(page[at + 1]) << 8) | (np.int64(page[at + 2]) << 16)
        length |= np.int64(page[at + 3]) << 24
        at += 4
        if at + length > page.size:
            return SHORT_PAGE
        if check and not levels_all_equal(page, at, length, values, max_level):
            return NULL_LEVEL
        at += length
    if page.size - at < values * itemsize:
        return SHORT_PAGE
    if encoding == PLAIN:
        out[: values * itemsize] = page[at : at + values * itemsize]
    elif encoding == BYTE_STREAM_SPLIT:
        join_byte_planes(page, at, values, itemsize, out)
    else:
        return OTHER_ENCODING
    return DECODED


def warm() -> None:
    """Load (or compile) every kernel in this process, e.g. before DataLoader workers fork (which
    would each load them again). The pages they read are read-only arrays (a type of its own to
    numba): :mod:`.pages` passes every page read-only, so one compiled version serves all."""
    page = np.zeros(16, dtype=np.uint8)
    page[0], page[4], page[5] = 2, 2, 1  # 2 bytes of definition levels: a run of one level 1
    page.flags.writeable = False
    page_header(page, 0)
    decode_values(page, 1, 0, 1, BYTE_STREAM_SPLIT, 4, np.empty(4, dtype=np.uint8))
