"""The stored scores: read from a score job's output (Parquet) or a scores CSV, written as CSV.

CSV columns: ``filename,split,class,group,<score columns...>,item``; with the
reconstruction scorer alone that is the evaluation script's
``filename,split,class,group,reconstruction_loss,signal_energy`` plus ``item``
(which numbers the items of one input, 0 for files). Every column that is not
a label (key/filename, item, split, class, group, source) is a score. Floats
are written with ``repr`` (shortest text that reads back to the same float).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..engine.arrow import open_parquet
from ..storage import Storage, get_fs
from .scorers import configured_scorers, score_columns

LABEL_COLUMNS = ("key", "item", "split", "class", "group")
NOT_SCORES = frozenset({*LABEL_COLUMNS, "source", "filename"})


@dataclass
class ScoreTable:
    """Scores of every item, sorted by (key, item). Columns are NumPy arrays named as in Parquet;
    ``scores`` names the score columns (float64) in their stored order."""

    columns: dict[str, np.ndarray]
    scores: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.columns["key"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> ScoreTable:
        n = len(columns["key"])
        data = {
            "key": np.asarray(columns["key"], dtype=object).astype(str).astype(object),
            "item": np.asarray(columns.get("item", np.zeros(n)), dtype=np.int64),
            "split": np.asarray(columns["split"], dtype=object).astype(str).astype(object),
            "class": np.asarray(columns.get("class", [""] * n), dtype=object).astype(str).astype(object),
            "group": np.asarray(columns.get("group", [""] * n), dtype=object).astype(str).astype(object),
        }
        scores = tuple(name for name in columns if name not in NOT_SCORES)
        data.update({name: np.asarray(columns[name], dtype=np.float64) for name in scores})
        order = np.lexsort((data["item"], data["key"].astype(str)))
        return cls({name: values[order] for name, values in data.items()}, scores)

    @classmethod
    def from_output(
        cls, root: str, storage_options: dict[str, Any] | None = None, manifest: dict[str, Any] | None = None
    ) -> ScoreTable:
        """Every score file a committed score job output lists in its manifest."""
        storage = Storage(root, storage_options)
        manifest = manifest or storage.read_json("manifest.json")
        tables = []
        for record in manifest.get("files", []):
            if record["path"].endswith(".parquet"):
                with storage.fs.open(storage.abspath(record["path"]), "rb") as f:
                    parquet = open_parquet(f)
                    wanted = [n for n in parquet.schema_arrow.names if n != "source"]
                    tables.append(parquet.read(columns=wanted))
        if not tables:  # every input an error row: the columns the config's scorers give, no rows
            config = manifest.get("config", {})
            scores = score_columns(configured_scorers(config.get("scorers"), config.get("source", "audio")))
            return cls.from_columns({name: [] for name in (*LABEL_COLUMNS, *scores)})
        table = pa.concat_tables(tables)
        return cls.from_columns({name: table.column(name).to_numpy() for name in table.column_names})

    @classmethod
    def from_csv(cls, url: str, storage_options: dict[str, Any] | None = None) -> ScoreTable:
        """A scores CSV (this job's, or an evaluation script's): filename, split, score columns;
        class/group/item optional."""
        fs, path = get_fs(url, storage_options)
        with fs.open(path, "r", encoding="utf-8-sig") as f:  # without the BOM Windows tools write
            reader = csv.DictReader(f)
            header, rows = list(reader.fieldnames or []), list(reader)
        missing = [c for c in ("filename", "split") if c not in header]
        scores = [c for c in header if c not in NOT_SCORES]
        if missing or not scores:
            raise ValueError(f"{url}: needs the columns filename, split and at least one score (has: {header})")
        values: dict[str, list[float]] = {name: [] for name in scores}
        for line, row in enumerate(rows, start=2):  # the header is line 1
            for name in scores:
                try:
                    values[name].append(float(row[name]))
                except (TypeError, ValueError):  # an empty cell, text, a short row (None)
                    raise ValueError(
                        f"{url}: line {line} ({row.get('filename')}): {name} is not a number: {row[name]!r} "
                        "(a missing score is written nan: its item is then not kept)"
                    ) from None
        return cls.from_columns(
            {
                "key": [r["filename"] for r in rows],
                "item": [int(r.get("item") or 0) for r in rows],
                "split": [r["split"] for r in rows],
                "class": [r.get("class") or "" for r in rows],
                "group": [r.get("group") or "" for r in rows],
                **values,
            }
        )

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["filename", "split", "class", "group", *self.scores, "item"])
        c = self.columns
        for i in range(len(self)):
            writer.writerow(
                [
                    c["key"][i],
                    c["split"][i],
                    c["class"][i],
                    c["group"][i],
                    *(repr(float(c[name][i])) for name in self.scores),
                    int(c["item"][i]),
                ]
            )
        return buffer.getvalue()


def read_errors(root: str, storage_options: dict[str, Any] | None = None) -> list[tuple[str, int, str]]:
    """``(key, index, reason)`` per line of an output's errors.jsonl (none when there is no such file).

    Index -1 means the whole input failed.
    """
    storage = Storage(root, storage_options)
    if not storage.exists("errors.jsonl"):
        return []
    errors = []
    with storage.fs.open(storage.abspath("errors.jsonl"), "r") as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                errors.append((entry["key"], int(entry.get("index", -1)), entry.get("reason", "error")))
    return errors


def live_errors(table: ScoreTable, errors: list[tuple[str, int, str]]) -> dict[str, str]:
    """``{key: reason}`` of the errors the scores do not contradict.

    errors.jsonl keeps a retryable error (storage hiccup) from an earlier
    attempt even after a later run scored that input; such an error is stale
    when its (key, index) -- or, for a whole-input error, any item of its key
    -- has a score.
    """
    scored = set(zip(table["key"].tolist(), table["item"].tolist()))
    scored_keys = {key for key, _ in scored}
    live: dict[str, str] = {}
    for key, index, reason in errors:
        if (key, index) in scored or (index == -1 and key in scored_keys):
            continue
        live.setdefault(key, reason)
    return live


def read_predictions(url: str, storage_options: dict[str, Any] | None = None) -> dict[tuple[str, int], str]:
    """``{(filename, item): prediction}`` from a CSV with columns filename, prediction (item optional)."""
    fs, path = get_fs(url, storage_options)
    with fs.open(path, "r", encoding="utf-8-sig") as f:  # without the BOM Windows tools write
        rows = list(csv.DictReader(f))
    if rows and ("filename" not in rows[0] or "prediction" not in rows[0]):
        raise ValueError(f"{url}: a predictions CSV needs the columns filename and prediction")
    return {(r["filename"], int(r.get("item") or 0)): r["prediction"] for r in rows}
