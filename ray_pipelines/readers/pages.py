"""Tensor columns decoded from their Parquet pages, without the nested-list machinery.

A tensor column (nested fixed-size lists of numbers, engine/arrow.py) is stored
by Parquet as a list column: every value carries a repetition and a definition
level, and pyarrow rebuilds the nesting from them value by value (on the 2-core
VM 180-330 us of CPU per 66 KB augment view; docs/benchmarks.md, "readers"). A
fixed-size list with no null anywhere needs none of that: its values are the
rows' values, in order. So for such a column chunk this module reads the page
headers (Thrift compact protocol), checks that every definition level is the
maximum (no null row, no null value) and that the value count is rows x row
size, decompresses each page with pyarrow's own codecs and takes the values as
they are (PLAIN) or joins their byte planes (BYTE_STREAM_SPLIT, what the sink
writes for floats): 36-40 us per view. The loops over a page's bytes are numba
kernels (:mod:`.page_kernels`) that release the GIL, as pyarrow's decompression
does: the readers decode in two threads.

Anything else (dictionary pages, data pages v2, other encodings, codecs or
value types, a null, a count that does not add up, a damaged chunk) raises
:class:`NotDecodable` and the caller lets pyarrow decode the chunk: this is a
fast path for the layout the project writes, never a second Parquet reader.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..engine.arrow import tensor_shape

# Parquet physical types this path reads, as NumPy dtypes (little-endian on disk).
PHYSICAL_DTYPES = {
    "FLOAT": np.dtype("<f4"),
    "DOUBLE": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
# Rows smaller than this are left to pyarrow: the fast path's fixed cost per chunk (the chunk's
# metadata, a read, two kernel calls and a decompression: about 30 us) is more than pyarrow spends
# on a small row.
MIN_ROW_BYTES = 16 * 1024
# Parquet codec name -> pyarrow codec (LZ4 is Hadoop-framed or a raw block: both handled below).
CODECS = {"UNCOMPRESSED": None, "LZ4": "lz4_raw", "LZ4_RAW": "lz4_raw", "ZSTD": "zstd", "SNAPPY": "snappy"}
DATA_PAGE = 0  # Parquet page type (v1)


class NotDecodable(Exception):
    """This chunk is not in the layout the fast path reads (the caller falls back to pyarrow)."""


@dataclass(frozen=True)
class TensorLeaf:
    """What decoding one tensor column's chunks needs: its leaf column, levels and row shape."""

    name: str
    leaf: int  # the Parquet leaf column's number
    shape: tuple[int, ...]
    dtype: np.dtype
    max_definition_level: int
    max_repetition_level: int

    @property
    def row_values(self) -> int:
        return math.prod(self.shape)


def tensor_leaves(md: pq.FileMetaData, names: list[str]) -> dict[str, TensorLeaf]:
    """The columns of ``names`` this path reads: tensor columns of numbers with one Parquet leaf and
    rows of at least ``MIN_ROW_BYTES``."""
    arrow_schema = md.schema.to_arrow_schema()
    leaves: dict[str, list[int]] = {}
    for i in range(md.num_columns):
        leaves.setdefault(md.schema.column(i).path.split(".")[0], []).append(i)
    found = {}
    for name in names:
        if name not in arrow_schema.names or len(leaves.get(name, [])) != 1:
            continue
        described = tensor_shape(arrow_schema.field(name).type)
        column = md.schema.column(leaves[name][0])
        dtype = PHYSICAL_DTYPES.get(column.physical_type)
        if described is None or dtype is None or np.dtype(described[1].to_pandas_dtype()) != dtype:
            continue  # e.g. int16 tokens (INT32 on disk) or booleans: pyarrow converts those
        if math.prod(described[0]) * dtype.itemsize < MIN_ROW_BYTES:
            continue
        found[name] = TensorLeaf(
            name,
            leaves[name][0],
            tuple(described[0]),
            dtype,
            column.max_definition_level,
            column.max_repetition_level,
        )
    return found


def decode_chunk(raw: memoryview, chunk: pq.ColumnChunkMetaData, leaf: TensorLeaf, rows: int) -> np.ndarray:
    """The ``[rows, *shape]`` values of one column chunk (its bytes, from its first page); raises
    :class:`NotDecodable` when the chunk is not in the layout this path reads."""
    codec = CODECS.get(chunk.compression, "unsupported")
    if codec == "unsupported" or chunk.has_dictionary_page:
        raise NotDecodable(f"codec {chunk.compression} or a dictionary page")
    if PHYSICAL_DTYPES.get(chunk.physical_type) != leaf.dtype:
        raise NotDecodable(f"{chunk.physical_type} values in this file")
    total = rows * leaf.row_values
    if chunk.num_values != total:
        raise NotDecodable("the value count is not rows x row size")
    kernels = load_kernels()
    buf = read_only(np.frombuffer(raw, dtype=np.uint8))
    if codec is None:
        viewed = _plain_values(raw, buf, kernels, leaf, total)
        if viewed is not None:
            return viewed.reshape(rows, *leaf.shape)
    out = pool_array(total, leaf.dtype)
    out_bytes = out.view(np.uint8)
    itemsize = leaf.dtype.itemsize
    pos = done = 0
    while done < total:
        end, kind, uncompressed, compressed, values, encoding = kernels.page_header(buf, pos)
        if end < 0 or kind != DATA_PAGE or compressed < 0 or end + compressed > len(buf):
            raise NotDecodable("not a data page (v1)")
        if values <= 0 or done + values > total:
            raise NotDecodable("page value count")
        # levels take at most 2 x 2 bytes per value: a larger size is a damaged header (not an allocation)
        if codec is not None and not values * itemsize <= uncompressed <= values * (itemsize + 4) + 64:
            raise NotDecodable("page size")
        page = _decompress(raw[end : end + compressed], codec, chunk.compression, uncompressed)
        found = kernels.decode_values(
            page,
            values,
            leaf.max_repetition_level,
            leaf.max_definition_level,
            encoding,
            itemsize,
            out_bytes[done * itemsize : (done + values) * itemsize],
        )
        if found != kernels.DECODED:
            why = {
                kernels.NULL_LEVEL: "a null (definition level below the maximum)",
                kernels.OTHER_ENCODING: f"encoding {encoding}",
            }
            raise NotDecodable(why.get(found, "page shorter than its levels and values"))
        pos = end + compressed
        done += values
    return out.reshape(rows, *leaf.shape)


def _plain_values(raw: memoryview, buf: np.ndarray, kernels: ModuleType, leaf: TensorLeaf, total: int):
    """The values of an uncompressed chunk whose one PLAIN page holds them all, as a view of the chunk's
    bytes: nothing to decode, so nothing copied (the batch's copy of each row is the only one). None
    when the chunk is otherwise, its bytes are read-only (a view would give read-only tensors) or its
    values are not aligned for their type: the page loop decodes (or refuses) those."""
    if raw.readonly:
        return None
    end, kind, _, compressed, values, encoding = kernels.page_header(buf, 0)
    if end < 0 or kind != DATA_PAGE or encoding != kernels.PLAIN or values != total:
        return None
    if compressed < 0 or end + compressed > len(buf):
        return None
    at = kernels.values_start(
        buf[end : end + compressed], values, leaf.max_repetition_level, leaf.max_definition_level, leaf.dtype.itemsize
    )
    if at < 0 or (buf.ctypes.data + end + at) % leaf.dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype=leaf.dtype, count=total, offset=end + at)


@functools.cache
def load_kernels() -> ModuleType:
    """:mod:`.page_kernels`, imported on first use: numba (and LLVM with it) loads only in a process that
    decodes pages, never in a job's driver that merely imports the readers. Cached: the decoder asks per
    column chunk, and an import statement there costs 2 us of a 40 us chunk."""
    from . import page_kernels as kernels

    return kernels


def pool_array(size: int, dtype: np.dtype) -> np.ndarray:
    """An uninitialised array in pyarrow's memory pool, which keeps freed blocks for the next ones:
    NumPy's large arrays are fresh pages from the kernel each time, and their page faults cost more
    than the decoding (the readers decode a few hundred KiB per row, row after row)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(size * dtype.itemsize), dtype=dtype)


def read_only(array: np.ndarray) -> np.ndarray:
    """``array``, read-only (the one array type the kernels are compiled for)."""
    array.flags.writeable = False
    return array


def _decompress(page: memoryview, codec: str | None, name: str, size: int) -> np.ndarray:
    """A page's bytes after its header, decompressed, as a read-only uint8 array."""
    if codec is None:
        return read_only(np.frombuffer(page, dtype=np.uint8))
    if name == "LZ4" and len(page) >= 8:  # Hadoop framing (one block): big-endian sizes first
        if int.from_bytes(page[:4], "big") == size and int.from_bytes(page[4:8], "big") == len(page) - 8:
            page = page[8:]
    try:
        return read_only(
            np.frombuffer(pa.decompress(page, decompressed_size=size, codec=codec, asbytes=False), dtype=np.uint8)
        )
    except (OSError, ValueError) as error:  # e.g. a multi-block Hadoop frame: let pyarrow read it
        raise NotDecodable(f"{name}: {error}") from error
