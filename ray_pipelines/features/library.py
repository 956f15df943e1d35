"""A music library as labelled songs: the label is the first folder under the root.

    rock/Album/01 song.mp3      -> label "rock"
    rock/CD1/extras/02.flac     -> label "rock" (deeper folders keep the label)
    jazz/.cache/x.mp3           -> skipped when ".*" is in skip_dirs
    loose.mp3                   -> unlabelled (no folder), reported and left out
    ./rock/a.mp3, x/../rock/a   -> label "rock" (``.`` and ``..`` are path syntax, read resolved)
    ../lib/rock/a.mp3           -> unlabelled: above the root (a list file's ``../`` line), reported
    broken.tar, 2024/broken.tar -> an error row (an input the listing could not read, a damaged
                                   shard or a link member among them, is neither a song of a label
                                   nor an unlabelled song: it is accounted for, and counts for no label)

Paths are relative to the source root the engine lists from (the directory,
the glob's fixed prefix, the list file's folder; for a tar shard, the member
name inside the shard), so a library reads the same from disk, S3 or tars.
``skip_dirs`` applies to every folder of the key: a shard's own folders too.
"""

from __future__ import annotations

import fnmatch
import posixpath
import unicodedata
from dataclasses import dataclass, field

from ..sources import InputItem


def library_path(item: InputItem) -> str:
    """The path that carries the label: the key, or the member name for a tar member (its source is
    ``<shard url>#<member>``, and the shard's URL, its ``uri``, may hold a ``#`` of its own)."""
    shard = f"{item.uri}#"
    if item.member_offset >= 0 and item.source.startswith(shard):
        return item.source[len(shard) :]
    return item.key


def _resolved_parts(path: str) -> list[str]:
    """The parts of ``path`` with ``.`` and ``..`` resolved as the listing reads a list file's lines
    (``a/./b/x`` is ``a/b/x``, ``a/../b/x`` is ``b/x``); a path above the root keeps its leading ``..``.
    Keys stay as written (outputs already committed name them so): only their reading here changes."""
    return [part for part in posixpath.normpath(path or ".").split("/") if part not in ("", ".")]


def above_root(path: str) -> bool:
    """Whether ``path`` leads above the root it is relative to (a list file's ``../lib/rock/a.mp3``)."""
    parts = _resolved_parts(path)
    return bool(parts) and parts[0] == ".."


def label_of(path: str) -> str | None:
    """The first folder of the resolved path, or None for a file directly at the root or above it."""
    parts = _resolved_parts(path)
    return parts[0] if len(parts) > 1 and parts[0] != ".." else None


def in_skipped_dir(path: str, skip_dirs: list[str]) -> bool:
    """Whether any folder of ``path`` (at any depth, not the file name) matches a skip pattern. ``.`` and
    ``..`` are path syntax, not folders (``tar -C lib .`` names members ``./rock/a.mp3``): ``.*`` skips
    hidden folders, not every file of such a shard."""
    folders = [part for part in _resolved_parts(path)[:-1] if part != ".."]
    return any(fnmatch.fnmatchcase(folder, pattern) for folder in folders for pattern in skip_dirs)


@dataclass
class LibraryScan:
    """The outcome of scanning: kept songs with their labels, and what was left out and why."""

    items: list[InputItem]  # kept songs, sorted by key
    labels: dict[str, str]  # key -> label name, kept songs only
    songs_per_label: dict[str, int]  # kept labels -> songs
    dropped: dict[str, int] = field(default_factory=dict)  # labels under min_per_label -> songs
    unlabelled: list[str] = field(default_factory=list)  # keys of files at the root (or above it)
    above_root: list[str] = field(default_factory=list)  # the unlabelled ones above the root (``../`` lines)
    skipped: int = 0  # files inside skip_dirs
    unreadable: list[InputItem] = field(default_factory=list)  # listing errors: error rows, in no label

    @property
    def loose(self) -> list[str]:
        """The unlabelled files directly at the root (not those above it)."""
        above = set(self.above_root)
        return [key for key in self.unlabelled if key not in above]


def scan_library(
    items: list[InputItem], *, skip_dirs: list[str], min_per_label: int, always_keep: set[str] = frozenset()
) -> LibraryScan:
    """Label every listed file and drop labels with fewer than ``min_per_label`` songs.

    ``always_keep`` names labels that stay whatever their count (labels an
    earlier run of the same output already wrote rows for).
    """
    by_label: dict[str, list[InputItem]] = {}
    unlabelled: list[str] = []
    above: list[str] = []
    unreadable: list[InputItem] = []
    skipped = 0
    for item in sorted(items, key=lambda i: i.key):
        if in_skipped_dir(item.key, skip_dirs):  # the key's folders: a tar shard's and its member's
            skipped += 1
            continue
        if item.error:
            # A damaged shard, a link member, a name that is not UTF-8: listed as one input each, and to be
            # accounted for, but no song: counted in a label it would keep one of under min_per_label, or
            # be the song a split got when others could have.
            unreadable.append(item)
            continue
        path = library_path(item)
        label = label_of(path)
        if label is None:
            unlabelled.append(item.key)
            if above_root(path):
                above.append(item.key)
            continue
        by_label.setdefault(label, []).append(item)

    kept_items: list[InputItem] = []
    labels: dict[str, str] = {}
    counts: dict[str, int] = {}
    dropped: dict[str, int] = {}
    for label in sorted(by_label):
        songs = by_label[label]
        if len(songs) < min_per_label and label not in always_keep:
            dropped[label] = len(songs)
            continue
        counts[label] = len(songs)
        for item in songs:
            labels[item.key] = label
            kept_items.append(item)
    kept_items.sort(key=lambda i: i.key)
    return LibraryScan(
        items=kept_items,
        labels=labels,
        songs_per_label=counts,
        dropped=dropped,
        unlabelled=unlabelled,
        above_root=above,
        skipped=skipped,
        unreadable=unreadable,
    )


def lookalike_labels(names: list[str]) -> list[list[str]]:
    """Label names that differ only in their Unicode form (``Électro`` written precomposed on Linux,
    decomposed by a macOS copy): two labels to the job, one to a person."""
    by_form: dict[str, list[str]] = {}
    for name in names:
        by_form.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    return [sorted(group) for group in by_form.values() if len(group) > 1]


def extend_label_names(known: list[str], current: list[str]) -> list[str]:
    """Label names in index order: ``known`` ones keep their index, new ones follow, sorted.

    A fresh output gets the sorted names; a rerun after a new genre folder
    appeared appends it, so labels already written keep their integer.
    """
    seen = set(known)
    return list(known) + sorted(name for name in set(current) if name not in seen)
