"""Per-split summary statistics of the scores, and the summary CSV format.

The CSV has one row and four columns per score: ``<prefix>mean``,
``<prefix>std``, ``<prefix>histogram_bins``, ``<prefix>histogram_counts``. The
prefix is the score's name and an underscore (``snr_db_mean``), except for the
two scores the existing tools read, which keep their columns::

    mean,std,histogram_bins,histogram_counts,energy_mean,energy_std,energy_histogram_bins,energy_histogram_counts

(``reconstruction_loss`` without a prefix, ``signal_energy`` as ``energy_``).
``*_bins`` are the histogram's bin edges (``bins + 1`` numbers) and
``*_counts`` its counts, each written as a JSON list (also a Python literal).
``std`` is the population standard deviation (NumPy's). Only finite scores
count; an empty split has NaN mean and std and numpy's default edges over
[0, 1] with zero counts.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

STAT_NAMES = ("mean", "std", "histogram_bins", "histogram_counts")
PREFIXES = {"reconstruction_loss": "", "signal_energy": "energy_"}
# The CSV columns of the reconstruction scorer's two scores (the evaluation script's format).
SUMMARY_COLUMNS = tuple(f"{PREFIXES[score]}{stat}" for score in PREFIXES for stat in STAT_NAMES)


def prefix(score: str) -> str:
    return PREFIXES.get(score, f"{score}_")


def score_stats(values: np.ndarray, bins: int = 50) -> dict[str, Any]:
    """count, mean, std, histogram edges and counts of the finite values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=bins)
    return {
        "count": int(len(values)),
        "mean": float(values.mean()) if len(values) else float("nan"),
        "std": float(values.std()) if len(values) else float("nan"),
        "histogram_bins": [float(e) for e in edges],
        "histogram_counts": [int(c) for c in counts],
    }


def split_summary(scores: dict[str, np.ndarray], bins: int = 50) -> dict[str, Any]:
    """One summary row (the CSV columns, in score order) plus item and finite-value counts."""
    row: dict[str, Any] = {}
    finite = {}
    items = 0
    for name, values in scores.items():
        stats = score_stats(values, bins)
        row.update({f"{prefix(name)}{stat}": stats[stat] for stat in STAT_NAMES})
        finite[name] = stats["count"]
        items = len(values)
    return {**row, "items": items, "finite": finite}


def csv_columns(summary: dict[str, Any]) -> list[str]:
    return [name for name in summary if name not in ("items", "finite")]


def summary_csv(summary: dict[str, Any]) -> str:
    """The one-row summary CSV of one split."""
    columns = csv_columns(summary)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerow(
        [json.dumps(summary[c]) if isinstance(summary[c], list) else repr(float(summary[c])) for c in columns]
    )
    return buffer.getvalue()


def read_summary_csv(text: str) -> dict[str, Any]:
    """Parse a summary CSV back (lists as lists, numbers as floats)."""
    row = next(csv.DictReader(io.StringIO(text)))
    return {name: json.loads(value) if value.startswith("[") else float(value) for name, value in row.items()}
