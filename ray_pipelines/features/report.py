"""The class-balance report: songs and snippets per label and split.

A label is under-represented when it has fewer songs (with output) than the
25th percentile of songs per label, over-represented above the 75th
(numpy's linear percentile over the kept labels). Written as ``balance.json``
and as a stacked bar chart ``balance.png``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def balance_report(
    names: list[str],
    songs: dict[str, dict[str, str]],
    snippets: dict[str, int],
    failed: set[str],
    split_names: list[str],
    filled_splits: list[str] | None = None,
) -> dict[str, Any]:
    """``songs``: key -> {"label", "split"}; ``snippets``: key -> snippets written; ``failed``: keys
    with no output because they could not be decoded. ``without_rows``: each label with no snippet in a
    split of ``filled_splits`` (those with a fraction above 0; default all), as the output holds it: a song
    that fails to decode, or that a keep or ignore list or ``limit`` leaves out, writes nothing there, and
    a label the plan could not cover (``library.uncovered``) has no song there to begin with."""
    per_label = {
        name: {"songs": dict.fromkeys(split_names, 0), "snippets": dict.fromkeys(split_names, 0), "failed_songs": 0}
        for name in names
    }
    for key, song in songs.items():
        entry = per_label.get(song["label"])
        if entry is None:
            continue
        written = int(snippets.get(key, 0))
        if written:
            entry["songs"][song["split"]] = entry["songs"].get(song["split"], 0) + 1
            entry["snippets"][song["split"]] = entry["snippets"].get(song["split"], 0) + written
        elif key in failed:
            entry["failed_songs"] += 1
    labels = []
    for index, name in enumerate(names):
        entry = per_label[name]
        labels.append(
            {
                "index": index,
                "name": name,
                "songs": entry["songs"],
                "snippets": entry["snippets"],
                "songs_total": sum(entry["songs"].values()),
                "snippets_total": sum(entry["snippets"].values()),
                "failed_songs": entry["failed_songs"],
            }
        )
    totals = np.array([entry["songs_total"] for entry in labels], dtype=float)
    low, high = (float(np.percentile(totals, 25)), float(np.percentile(totals, 75))) if len(totals) else (0.0, 0.0)
    return {
        "splits": list(split_names),
        "labels": labels,
        "songs_per_label_p25": low,
        "songs_per_label_p75": high,
        "without_rows": {
            e["name"]: missing
            for e in labels
            if (missing := [s for s in (filled_splits or split_names) if not e["snippets"].get(s)])
        },
        "under_represented": [e["name"] for e in labels if e["songs_total"] < low],
        "over_represented": [e["name"] for e in labels if e["songs_total"] > high],
        "totals": {
            "songs": {s: sum(e["songs"][s] for e in labels) for s in split_names},
            "snippets": {s: sum(e["snippets"][s] for e in labels) for s in split_names},
        },
    }


def balance_chart(report: dict[str, Any]) -> bytes:
    """A PNG: songs (top) and snippets (bottom) per label, stacked by split, with the
    25th/75th percentile lines; under-represented labels in red, over in blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = report["labels"]
    names = [e["name"] for e in labels]
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(names) + 2), 7), sharex=True)
    for ax, what in zip(axes, ("songs", "snippets")):
        bottom = np.zeros(len(names))
        for split in report["splits"]:
            heights = np.array([e[what].get(split, 0) for e in labels], dtype=float)
            ax.bar(x, heights, bottom=bottom, label=split, width=0.8)
            bottom += heights
        ax.set_ylabel(what)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(report["songs_per_label_p25"], color="tab:red", ls="--", lw=1, label="25th percentile")
    axes[0].axhline(report["songs_per_label_p75"], color="tab:blue", ls="--", lw=1, label="75th percentile")
    axes[0].legend(fontsize=8, ncol=3)
    axes[0].set_title("Class balance: songs and snippets per label and split")
    axes[1].set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    under, over = set(report["under_represented"]), set(report["over_represented"])
    for tick, name in zip(axes[1].get_xticklabels(), names):
        tick.set_color("tab:red" if name in under else "tab:blue" if name in over else "black")
    library = report.get("library") or {}
    notes = []
    if library.get("dropped_labels"):
        notes.append(
            "dropped (fewer than min_per_label songs): "
            + ", ".join(f"{name} ({count})" for name, count in library["dropped_labels"].items())
        )
    if library.get("unlabelled_files"):
        notes.append(f"{library['unlabelled_files']} files without a label folder left out")
    if notes:
        fig.text(0.01, 0.005, "; ".join(notes), fontsize=7, va="bottom")
    fig.tight_layout(rect=(0, 0.03 if notes else 0, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
