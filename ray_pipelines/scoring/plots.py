"""Score plots: a histogram per score with the filter's cut lines, and a scatter of two scores.

Uses matplotlib's object API with the Agg canvas (no pyplot global state),
so it is safe in any process and thread.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def _figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def histogram_figure(
    values_by_split: dict[str, np.ndarray],
    name: str,
    low: float | None = None,
    high: float | None = None,
    bins: int = 50,
) -> Figure:
    """One step histogram per split over shared bins; dashed red lines at the bounds that are set.

    A cut outside the data's range is not drawn (it would only stretch the axis, e.g. a low cut
    of -0.58 under a loss that is never negative); the legend says which side of every item it is
    and so whether it rejects all of them or none (a ``speech_fraction`` low cut of 0.5 on music).
    """
    figure, axes = _figure()
    finite = {}
    for split, values in values_by_split.items():
        values = np.asarray(values, dtype=np.float64)
        finite[split] = values[np.isfinite(values)]
    everything = np.concatenate([*finite.values(), np.zeros(0)])
    edges = np.histogram_bin_edges(everything, bins=bins) if len(everything) else np.linspace(0, 1, bins + 1)
    for split, values in sorted(finite.items()):
        counts, _ = np.histogram(values, bins=edges)
        axes.stairs(counts, edges, label=f"{split or 'all'} ({len(values)})")
    handles, labels = axes.get_legend_handles_labels()
    for bound, label in ((low, "low"), (high, "high")):
        if bound is None:
            continue
        if len(everything) == 0 or edges[0] <= bound <= edges[-1]:
            handles.append(axes.axvline(bound, color="red", linestyle="--"))
            labels.append(f"{label} cut {bound:.4g}")
        else:  # outside the data: named, not drawn
            above = bound > edges[-1]
            rejects_all = above if label == "low" else not above  # items are kept from the low cut up to the high
            handles.append(Line2D([], [], color="red", linestyle=":"))
            side = "above" if above else "below"
            labels.append(f"{label} cut {bound:.4g}: {side} every item, rejects {'all' if rejects_all else 'none'}")
    if len(everything):
        axes.set_xlim(edges[0], edges[-1])
    axes.set_xlabel(name)
    axes.set_ylabel("items")
    axes.set_title(f"{name} by split")
    if handles:
        axes.legend(handles, labels, fontsize="small")
    figure.tight_layout()
    return figure


def scatter_figure(x: np.ndarray, y: np.ndarray, kept: np.ndarray, x_name: str, y_name: str) -> Figure:
    """Two scores per item, kept items in blue and ignored ones in red (non-finite points left out)."""
    figure, axes = _figure()
    x, y, kept = np.asarray(x, np.float64), np.asarray(y, np.float64), np.asarray(kept, bool)
    finite = np.isfinite(x) & np.isfinite(y)
    for mask, label, color in ((kept, "kept", "tab:blue"), (~kept, "ignored", "tab:red")):
        mask = mask & finite
        axes.scatter(x[mask], y[mask], s=8, alpha=0.6, color=color, label=f"{label} ({int(mask.sum())})")
    axes.set_xlabel(x_name)
    axes.set_ylabel(y_name)
    axes.set_title(f"{y_name} against {x_name}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
