"""The library plan of one output: label names, each song's label and split.

Written next to the data before any row is (``labels.json``, ``splits.json``),
read back by the next run on the same output so that label indices and song
splits never change once given, whatever is added to the library:

    labels.json   ["ambient", "bass", ...]            index = label integer
    splits.json   {"seed": 0, "fractions": {...},
                   "songs": {"rock/a.mp3": {"label": "rock", "split": "train"}, ...}}

``splits.json`` keeps every song the output ever assigned, so it describes
every row the output holds even after a song leaves the library.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError
from ..sources import InputItem
from ..storage import Storage
from .library import LibraryScan, extend_label_names, scan_library
from .split import SplitAssignment, assign_splits

log = logging.getLogger(__name__)

LABELS_FILE = "labels.json"
SPLITS_FILE = "splits.json"
NO_LABEL = -1  # an input the listing could not read: an error row, never a row


@dataclass
class LibraryPlan:
    names: list[str]  # label names in index order
    songs: dict[str, dict[str, str]]  # key -> {"label", "split"}: every song of this output
    scan: LibraryScan  # this run's listing: kept songs, dropped labels, ...
    assignment: SplitAssignment  # this run's split decisions (moved keys, uncovered labels)
    new_labels: list[str] = field(default_factory=list)

    def label_index(self, name: str) -> int:
        return self.names.index(name)

    def items(self) -> list[InputItem]:
        """Kept songs with ``label`` (int), ``split`` and ``path`` attached for the decoder, then the
        inputs the listing could not read (they become error rows)."""
        index = {name: i for i, name in enumerate(self.names)}
        out = []
        for item in self.scan.items:
            song = self.songs[item.key]
            item.extra = {**item.extra, "label": index[song["label"]], "split": song["split"], "path": item.key}
            out.append(item)
        for item in self.scan.unreadable:
            # No rows come of it, but its columns keep their types (a missing label made the column float).
            item.extra = {**item.extra, "label": NO_LABEL, "split": "", "path": item.key}
            out.append(item)
        return out


def read_memory(
    storage: Storage, seed: int, fractions: dict[str, float]
) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Label names and song assignments an earlier run of this output recorded."""
    names = storage.read_json(LABELS_FILE) if storage.exists(LABELS_FILE) else []
    songs: dict[str, dict[str, str]] = {}
    if storage.exists(SPLITS_FILE):
        recorded = storage.read_json(SPLITS_FILE)
        if recorded.get("seed") == seed and recorded.get("fractions") == fractions:
            songs = recorded.get("songs", {})
        else:  # the engine refuses a changed config first; this guards hand-edited files
            log.warning("%s was written with another seed or split fractions; ignoring it", SPLITS_FILE)
    return list(names), songs


def plan_library(
    items: list[InputItem],
    *,
    storage: Storage,
    seed: int,
    fractions: dict[str, float],
    skip_dirs: list[str],
    min_per_label: int,
) -> LibraryPlan:
    """Scan, keep labels, and split songs, honouring what the output already recorded."""
    known_names, recorded = read_memory(storage, seed, fractions)
    scan = scan_library(items, skip_dirs=skip_dirs, min_per_label=min_per_label, always_keep=set(known_names))
    labels = scan.labels
    relabelled = sorted(key for key, label in labels.items() if key in recorded and recorded[key]["label"] != label)
    if relabelled:  # the same song's rows under two labels: only a change of how labels are read does this
        first = relabelled[0]
        raise ConfigError(
            f"{len(relabelled)} songs this output recorded under one label now fall under another (e.g. {first}: "
            f"{recorded[first]['label']!r}, now {labels[first]!r}): since 2026-12-07 a tar member's label is "
            "the first folder inside its shard even where the shard's path holds a '#', and a path's '.' and "
            "'..' parts are resolved before its first folder is read (x/../rock/a.mp3 is rock's); write the "
            "dataset to a new output (or delete this one)"
        )
    fixed = {key: recorded[key]["split"] for key in labels if key in recorded}  # recorded songs never move
    assignment = assign_splits(labels, fractions, seed, fixed)
    names = extend_label_names(known_names, list(scan.songs_per_label))
    songs = {**recorded, **{key: {"label": labels[key], "split": split} for key, split in assignment.splits.items()}}
    return LibraryPlan(
        names=names,
        songs=songs,
        scan=scan,
        assignment=assignment,
        new_labels=[n for n in names if n not in set(known_names)],
    )


def save_plan(storage: Storage, plan: LibraryPlan, seed: int, fractions: dict[str, float]) -> None:
    storage.write_json(LABELS_FILE, plan.names)
    storage.write_json(
        SPLITS_FILE,
        {"seed": seed, "fractions": fractions, "songs": {key: plan.songs[key] for key in sorted(plan.songs)}},
    )


def describe(plan: LibraryPlan, min_per_label: int) -> dict[str, Any]:
    """What the scan left out and what balancing did, for logs and the report."""
    return {
        "labels": len(plan.names),
        "songs": len(plan.scan.items),
        "dropped_labels": dict(plan.scan.dropped),
        "min_per_label": min_per_label,
        "unlabelled_files": len(plan.scan.unlabelled),
        "skipped_files": plan.scan.skipped,
        "moved_by_balancing": list(plan.assignment.moved),
        "uncovered": {label: splits for label, splits in plan.assignment.uncovered.items()},
        "new_labels": list(plan.new_labels),
    }
