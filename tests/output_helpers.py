"""Helpers for tests of whole outputs: a store (local disk or moto's S3) to write inputs to, and an
output's committed rows read the way a plain reader would (every data file on disk, no project code)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq


class Store:
    """Where a test keeps its inputs and outputs: a local folder or an S3 bucket (moto server)."""

    def __init__(self, root: str, options: dict[str, Any], fs):
        self.root, self.options, self.fs = root.rstrip("/"), options, fs

    @classmethod
    def local(cls, path: Path) -> Store:
        return cls(str(path), {}, fsspec.filesystem("file"))

    @classmethod
    def s3(cls, bucket: str, options: dict[str, Any], fs) -> Store:
        return cls(f"s3://{bucket}", options, fs)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith("s3://")

    def url(self, relpath: str) -> str:
        return f"{self.root}/{relpath}"

    def path(self, relpath: str) -> str:
        """The filesystem path (no protocol) of ``relpath``."""
        return self.url(relpath).split("://", 1)[-1]

    def write(self, relpath: str, data: bytes) -> None:
        if not self.is_s3:
            Path(self.path(relpath)).parent.mkdir(parents=True, exist_ok=True)
        self.fs.pipe_file(self.path(relpath), data)

    def delete(self, relpath: str) -> None:
        self.fs.rm(self.path(relpath))

    def exists(self, relpath: str) -> bool:
        self.fs.invalidate_cache()
        return self.fs.exists(self.path(relpath))

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.fs.cat_file(self.path(relpath)))

    def read_jsonl(self, relpath: str) -> list[Any]:
        return [json.loads(line) for line in self.fs.cat_file(self.path(relpath)).decode().splitlines()]

    def files(self, relpath: str) -> list[str]:
        """Every file under ``relpath``, relative to it."""
        self.fs.invalidate_cache()
        base = self.path(relpath).rstrip("/")
        return sorted(p[len(base) + 1 :] for p in self.fs.find(base))


def committed_rows(store: Store, output: str, key_column: str, index_column: str) -> dict[tuple, dict[str, Any]]:
    """(key, index) -> {column: value} of every row in every Parquet data file under ``output``, read
    with plain pyarrow (what a reader globbing the folder sees). Checks that the files on disk are
    exactly the ones manifest.json names, and that no row appears twice."""
    manifest = store.read_json(f"{output}/manifest.json")
    on_disk = [p for p in store.files(output) if p.endswith(".parquet") and not p.startswith("_")]
    assert sorted(on_disk) == sorted(f["path"] for f in manifest["files"] if f["path"].endswith(".parquet"))
    rows: dict[tuple, dict[str, Any]] = {}
    for relpath in on_disk:
        table = pq.read_table(store.path(f"{output}/{relpath}"), filesystem=store.fs)
        split = relpath.split("/")[0] if "/" in relpath else ""
        for row in table.to_pylist():
            at = (row[key_column], row[index_column])
            assert at not in rows, f"duplicate row {at}"
            rows[at] = {**row, "_split": split}
    return rows


def error_rows(store: Store, output: str) -> list[tuple[str, int, str]]:
    text = store.fs.cat_file(store.path(f"{output}/errors.jsonl")).decode()
    return sorted((e["key"], e["index"], e["reason"]) for e in map(json.loads, text.splitlines()))


def assert_no_leftovers(store: Store, output: str) -> None:
    """Every per-rank manifest was folded into the index (none left, none replaced), and the data
    files on disk are exactly those the committed state names, which are those manifest.json names."""
    from ray_pipelines.engine.manifest import OutputState
    from ray_pipelines.storage import Storage

    left = store.files(f"{output}/_manifests")
    assert left == ["index.parquet"], left
    parts = OutputState(Storage(store.url(output), store.options)).live_parts()
    assert not any(part.get("replaces") for part in parts.values())
    named = sorted(f["path"] for part in parts.values() for f in part["files"])
    assert named == sorted(f["path"] for f in store.read_json(f"{output}/manifest.json")["files"])
    on_disk = [p for p in store.files(output) if p.split("/")[-1].startswith("part-") and not p.startswith("_")]
    assert sorted(on_disk) == named
