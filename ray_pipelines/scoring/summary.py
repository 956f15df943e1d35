"""Per-split summary statistics of the scores, and the summary CSV format.

The CSV has one row and the columns existing tools read::

    mean,std,histogram_bins,histogram_counts,energy_mean,energy_std,energy_histogram_bins,energy_histogram_counts

``mean``/``std`` are the reconstruction loss's, ``energy_*`` the signal
energy's. ``*_bins`` are the histogram's bin edges (``bins + 1`` numbers)
and ``*_counts`` its counts, each written as a JSON list (also a Python
literal). ``std`` is the population standard deviation (NumPy's). Only
finite scores count; an empty split has NaN mean and std and numpy's
default edges over [0, 1] with zero counts.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

SUMMARY_COLUMNS = (
    "mean",
    "std",
    "histogram_bins",
    "histogram_counts",
    "energy_mean",
    "energy_std",
    "energy_histogram_bins",
    "energy_histogram_counts",
)


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


def split_summary(loss: np.ndarray, energy: np.ndarray, bins: int = 50) -> dict[str, Any]:
    """One summary row (the CSV columns) plus item counts."""
    loss_stats, energy_stats = score_stats(loss, bins), score_stats(energy, bins)
    return {
        "mean": loss_stats["mean"],
        "std": loss_stats["std"],
        "histogram_bins": loss_stats["histogram_bins"],
        "histogram_counts": loss_stats["histogram_counts"],
        "energy_mean": energy_stats["mean"],
        "energy_std": energy_stats["std"],
        "energy_histogram_bins": energy_stats["histogram_bins"],
        "energy_histogram_counts": energy_stats["histogram_counts"],
        "items": int(len(loss)),
        "finite_loss": loss_stats["count"],
        "finite_energy": energy_stats["count"],
    }


def summary_csv(summary: dict[str, Any]) -> str:
    """The one-row summary CSV of one split."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerow(
        [json.dumps(summary[c]) if isinstance(summary[c], list) else repr(float(summary[c])) for c in SUMMARY_COLUMNS]
    )
    return buffer.getvalue()


def read_summary_csv(text: str) -> dict[str, Any]:
    """Parse a summary CSV back (lists as lists, numbers as floats)."""
    row = next(csv.DictReader(io.StringIO(text)))
    return {name: json.loads(value) if value.startswith("[") else float(value) for name, value in row.items()}
