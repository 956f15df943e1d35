"""Inputs that changed since their rows were committed: new, changed, deleted, unchanged.

Every run compares each listed input's identity (``InputItem.etag``: the store's etag, or
``mtime/size`` where it has none; ray_pipelines/sources.py) with the one the output's per-rank manifests
recorded for it (``Progress.etags``), and the committed keys with the listed ones:

- **new**: listed, nothing committed;
- **changed**: listed, committed from another version of it (``on_change: reprocess`` takes its rows
  out, engine/rewrite.py, and processes it again; ``keep`` leaves them and reports it);
- **deleted**: committed, no longer listed (``on_delete: keep`` reports it; ``prune`` takes its rows out);
- **unchanged**: the rest (resumed where a killed run left it).

An identity missing on either side (generated inputs) counts as unchanged. The comparison works on
the dicts ``Progress`` already holds, once per run (cost: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..sources import InputItem
from .manifest import Progress

REPORTED_KEYS = 100  # stale keys named in manifest.json (all of them are counted)


def identity_changed(recorded: str, listed: str) -> bool:
    """Whether an input's content differs from what its committed rows were made from.

    Unknown on either side: no. An identity recorded before it had its last ``/part`` (a bare
    mtime before sizes were added; a score shard input's fingerprint before the source input's
    identity was) matches a listed one that starts with it.
    """
    return bool(recorded and listed) and recorded != listed and not listed.startswith(recorded + "/")


@dataclass
class InputChanges:
    new: int = 0
    unchanged: int = 0
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def stale(self, on_change: str, on_delete: str) -> set[str]:
        """Keys whose committed rows must leave the output before this run writes."""
        return set(self.changed if on_change == "reprocess" else ()) | set(self.deleted if on_delete == "prune" else ())

    def report(self, on_change: str, on_delete: str) -> dict[str, Any]:
        """For manifest.json and the summary: counts, what was done, and the stale keys kept."""
        kept = {
            "changed": self.changed[:REPORTED_KEYS] if on_change == "keep" else [],
            "deleted": self.deleted[:REPORTED_KEYS] if on_delete == "keep" else [],
        }
        return {
            "new": self.new,
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "unchanged": self.unchanged,
            "on_change": on_change,
            "on_delete": on_delete,
            "kept_stale": {what: keys for what, keys in kept.items() if keys},
        }


def detect_changes(listed: Iterable[InputItem], progress: Progress) -> InputChanges:
    """Classify the listed inputs against the committed ones (``progress.expected`` holds every key a
    live manifest names; ``progress.etags`` the identity its rows were made from). Listed keys are unique."""
    committed, recorded = progress.expected, progress.etags
    listed = list(listed)
    keys = {item.key for item in listed}
    changed = [
        item.key
        for item in listed  # fast path: the same identity, or none recorded (get's default)
        if recorded.get(item.key, item.etag) != item.etag
        and item.key in committed
        and identity_changed(recorded[item.key], item.etag)
    ]
    deleted = committed.keys() - keys
    new = len(keys) - (len(committed) - len(deleted))  # listed and not committed
    return InputChanges(
        new=new, unchanged=len(keys) - new - len(changed), changed=sorted(changed), deleted=sorted(deleted)
    )
