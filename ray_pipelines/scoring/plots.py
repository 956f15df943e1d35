"""Histogram PNGs of a score per split, with the filter's cut lines.

Uses matplotlib's object API with the Agg canvas (no pyplot global state),
so it is safe in any process and thread.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def histogram_figure(
    values_by_split: dict[str, np.ndarray],
    name: str,
    low: float | None = None,
    high: float | None = None,
    bins: int = 50,
) -> Figure:
    """One step histogram per split over shared bins; dashed red lines at the bounds that are set."""
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    finite = {}
    for split, values in values_by_split.items():
        values = np.asarray(values, dtype=np.float64)
        finite[split] = values[np.isfinite(values)]
    everything = np.concatenate([*finite.values(), np.zeros(0)])
    edges = np.histogram_bin_edges(everything, bins=bins) if len(everything) else np.linspace(0, 1, bins + 1)
    for split, values in sorted(finite.items()):
        counts, _ = np.histogram(values, bins=edges)
        axes.stairs(counts, edges, label=f"{split or 'all'} ({len(values)})")
    for bound, label in ((low, "low"), (high, "high")):
        if bound is not None:
            axes.axvline(bound, color="red", linestyle="--", label=f"{label} cut {bound:.4g}")
    axes.set_xlabel(name)
    axes.set_ylabel("items")
    axes.set_title(f"{name} by split")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
