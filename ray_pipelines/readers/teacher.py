"""A teacher cache read back for training: ``(x, y, f0, db)`` tuples or dicts.

An :class:`~.parquet.OutputRows` (so a :class:`~.parquet.ShardRows`): each
epoch reads every row exactly once across DataLoader workers and ranks, in
an order shuffled from ``(seed, epoch)`` over all shards (row groups of
several files mixed in a window), decompressing each row group once.

Which columns make the tuple is up to the caller: a synthetic cache with an
effect teacher has ``x, y, f0, db`` as written; for an audio cache name the
teacher columns instead, e.g. ``fields=("x", "pesto_f0", "pesto_confidence",
"loudness_db")`` (``y`` is an effect teacher's output).
"""

from __future__ import annotations

from .parquet import OutputRows, RowToDict, RowToTuple

DEFAULT_FIELDS = ("x", "y", "f0", "db")
CLIP_COLUMNS = (
    "key",
    "window",
    "start_seconds",
    "valid_samples",
    "family",
    "source",
    "x",
)  # the rest: drawn f0/db, teacher outputs

__all__ = ["DEFAULT_FIELDS", "RowToDict", "RowToTuple", "TeacherCache"]


class TeacherCache(OutputRows):
    """Rows of a teacher job's output split.

    ``fields``: the columns of each tuple (default ``x, y, f0, db``);
    ``as_dict=True`` yields ``{column: value}`` for ``columns`` (default all).
    ``dtype``: cast float tensors (e.g. ``torch.float32`` from a float64 cache).
    ``shuffle``/``seed``/``shuffle_buffer``: reproducible per ``(seed, epoch)`` for a given number of
    ranks and DataLoader workers (with another, the same rows in another order);
    call :meth:`set_epoch` between epochs. ``rank``/``world_size`` shard
    between distributed processes (default: ``torch.distributed``'s).
    """

    default_fields = DEFAULT_FIELDS
    job = "teacher"

    def _missing_hint(self, missing: list[str]) -> str:
        return " (no teacher in this cache outputs y)" if "y" in missing else ""

    def _fields_advice(self, available: list[str]) -> str:
        targets = [name for name in available if name not in CLIP_COLUMNS]
        example = ", ".join(f'"{name}"' for name in ["x", *targets])
        return f"name the columns, e.g. fields=({example}), or read them all with as_dict=True"
