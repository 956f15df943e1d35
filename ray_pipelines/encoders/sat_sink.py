"""The stable-audio-tools pre-encoded layout: one ``.npy`` and one ``.json`` per sample.

::

    {output}/{rank}/{id}.npy     one [C, N] array (float16/float32 latents, int64 tokens)
    {output}/{rank}/{id}.json    padding_mask, seconds_start, seconds_total, path, relpath,
                                 timestamps, sample_rate (+ key, window, ...)
    {output}/filelist.txt        every .npy, relative to the root (written at commit)
    {output}/details.json        model, sample_size, config (written at commit)

Exactly once with a file per sample: ``{id}`` is 13 digits derived from a
hash of (key, window), never a counter, so a retried or resumed write of a
window lands on the same name (in the same rank folder it overwrites; in
another one the old copy is an orphan, deleted at commit because no
manifest names it). The per-rank manifest lists every file it wrote and is
written after them; ``filelist.txt`` is rebuilt from all manifests at every
commit.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..engine.manifest import default_is_data_file
from ..engine.sink import KEY, ShardSink
from ..seeding import derive_seed
from ..storage import TEMP_MARK, Storage, is_local
from .sat_layout import FILELIST

ID_DIGITS = 13
DETAILS = "details.json"
# {rank}/{13 digits}.npy|.json, and the temp files a killed writer may leave next to them.
_SAMPLE_FILE = re.compile(rf"^(?:[\w.=-]+/)?\d+/\d{{{ID_DIGITS}}}\.(npy|json)({re.escape(TEMP_MARK)}[\w.-]+)?$")
# Columns copied into each sample's .json (besides padding_mask), under these names.
METADATA_COLUMNS = {
    "key": "key",
    "window": "window",
    "seconds_start": "seconds_start",
    "seconds_total": "seconds_total",
    "timestamps": "timestamps",
    "sample_rate": "sample_rate",
    "path": "path",
    "relpath": "relpath",
    "start_seconds": "start_seconds",
    "valid_samples": "valid_samples",
    "samples_per_input": "num_windows",
}


def sample_id(key: str, window: int) -> str:
    """13 digits, a pure function of (key, window): stable across runs, retries and machines."""
    return f"{derive_seed(0, 'sat-sample-id', key, int(window)) % 10**ID_DIGITS:0{ID_DIGITS}d}"


def is_sample_file(relpath: str) -> bool:
    """A per-sample file of this layout (or its temp file); not filelist.txt / details.json."""
    return bool(_SAMPLE_FILE.match(relpath))


def is_encode_data_file(relpath: str) -> bool:
    """Files orphan cleanup may delete: SAT sample files and Parquet parts."""
    return is_sample_file(relpath) or default_is_data_file(relpath)


def sample_metadata(rows: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    md: dict[str, Any] = {"padding_mask": [int(v) for v in rows["padding_mask"][i]]}
    for column, name in METADATA_COLUMNS.items():
        if column in rows:
            value = rows[column][i]
            md[name] = value.tolist() if hasattr(value, "tolist") else value
    md["latent_shape"] = list(rows["latents"][i].shape)
    return md


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class SatSink(ShardSink):
    """Writes each sample as ``{rank}/{id}.npy`` + ``.json``; with ``write_parquet`` also Parquet shards.

    ``rank`` is the write task's index (``ctx.task_idx``, unpadded). Writes to
    object stores go through a small thread pool (two small PUTs per sample).
    """

    layout_uses_rank = True

    def __init__(self, *, write_parquet: bool = False, io_threads: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.write_parquet = write_parquet
        self.io_threads = io_threads
        self.rank = 0

    def write_rows(self, columns: dict[str, np.ndarray], rank: int) -> dict[str, Any]:
        self.rank = rank  # one write task at a time per sink copy; read by write_split
        return super().write_rows(columns, rank)

    def write_split(
        self, storage: Storage, split: str, rows: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        records: list[dict[str, Any]] = []
        schema: dict[str, Any] = {}
        if self.write_parquet:
            records, schema = super().write_split(storage, split, rows)
        folder = posixpath.join(split, str(self.rank)) if split else str(self.rank)
        count_rows = not self.write_parquet  # rows are counted once, by the Parquet files when both exist

        def write_one(i: int) -> list[dict[str, Any]]:
            key, window = str(rows[KEY][i]), int(rows[self.index_column][i])
            stem = posixpath.join(folder, sample_id(key, window))
            data = npy_bytes(rows["latents"][i])
            meta = json.dumps(sample_metadata(rows, i)).encode()
            storage.write_bytes(stem + ".npy", data)
            storage.write_bytes(stem + ".json", meta)
            return [
                {
                    "path": stem + ".npy",
                    "split": split,
                    "rows": int(count_rows),
                    "bytes": len(data),
                    "key": key,
                    "window": window,
                },
                {"path": stem + ".json", "split": split, "rows": 0, "bytes": len(meta)},
            ]

        indices = range(len(rows[KEY]))
        if is_local(storage.fs) or self.io_threads <= 1:
            written = [write_one(i) for i in indices]
        else:
            with ThreadPoolExecutor(max_workers=self.io_threads) as pool:
                written = list(pool.map(write_one, indices))
        records.extend(r for pair in written for r in pair)
        latents = rows["latents"]
        return records, schema or {
            "latents": {"type": "npy", "dtype": str(latents.dtype), "shape": list(latents.shape[1:])},
            "padding_mask": {"type": "json", "length": int(rows["padding_mask"].shape[1])},
        }

    def drop_from_files(self, storage: Storage, files: list[dict[str, Any]], keys: set[str]) -> list[dict[str, Any]]:
        """Per-sample files of ``keys`` leave with their ``.json`` partners (whose records name no key)."""
        stems = {r["path"][:-4] for r in files if r["path"].endswith(".npy") and r.get("key") in keys}
        partnered = [r for r in files if not (r["path"].endswith(".json") and r["path"][:-5] in stems)]
        return super().drop_from_files(storage, partnered, keys)


def id_collisions(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples of different windows that drew the same 13-digit id (about n^2 / 2e13 expected)."""
    seen: dict[str, tuple[str, int, str]] = {}
    collisions = []
    for f in files:
        if not f["path"].endswith(".npy") or "key" not in f:
            continue
        sid = posixpath.basename(f["path"])[:-4]
        mine = (f["key"], int(f["window"]), f["path"])
        other = seen.setdefault(sid, mine)
        if other[:2] != mine[:2]:
            collisions.append({"id": sid, "samples": [list(other), list(mine)], "overwritten": other[2] == mine[2]})
    return collisions


def write_filelist(storage: Storage, files: list[dict[str, Any]]) -> list[str]:
    """``filelist.txt``: every committed ``.npy``, relative to the root, sorted; one per window.

    Should two manifests name the same window (writers of a killed run that
    finished after the resumed run had started), the window is listed once,
    under its first path.
    """
    chosen: dict[tuple[str, int] | str, str] = {}
    for f in sorted(files, key=lambda f: f["path"]):
        path = f["path"]
        if path.endswith(".npy") and is_sample_file(path):
            chosen.setdefault((f["key"], int(f["window"])) if "key" in f else path, path)
    paths = sorted(chosen.values())
    storage.write_bytes(FILELIST, "".join(p + "\n" for p in paths).encode())
    return paths
