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
the columnar ``Progress`` (Arrow arrays), once per run (cost: docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..sources import InputItem
from .committed import Progress
from .memory import release_unused_memory

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
    left_out: int = 0  # listed, never committed, and not selected (keep/ignore list, limit, the job's pick)

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
            "left_out": self.left_out,
            "on_change": on_change,
            "on_delete": on_delete,
            "kept_stale": {what: keys for what, keys in kept.items() if keys},
        }


def listed_identities(listed: Iterable[InputItem]) -> pa.Table:
    """What change detection needs of the listing: each input's key and identity, as two columns
    (the runner keeps these and lets go of the ``InputItem`` list: 440 MB at a million inputs)."""
    listed = list(listed)
    table = pa.table(
        {
            "key": pa.array([item.key for item in listed], pa.string()),
            "etag": pa.array([item.etag or "" for item in listed], pa.string()),
        }
    )
    release_unused_memory()  # the builders' spare capacity: 40 MB at a million inputs
    return table


def detect_changes(
    listed: pa.Table | Iterable[InputItem], progress: Progress, selected: pa.Array | None = None
) -> InputChanges:
    """Classify the listed inputs against the committed ones (``progress.in_inputs()``: the keys a
    live manifest names among its inputs; ``progress.etag_array()`` the identity its rows were made from).
    Listed keys are unique. One lookup of the listed keys (``progress.positions``), then NumPy over the
    committed keys' positions; only differing identities reach Python.

    ``selected``: the keys this run takes (after keep/ignore lists, ``limit``). An input outside them is
    left alone: uncommitted, it is ``left_out``, not ``new`` (else a keep list's other inputs would be new
    on every run); changed, it is ``left_out`` too and keeps its rows until a run selects it (taking them
    out would leave the input with no rows at all). Deleted and unchanged are over the whole listing: an
    input left out still exists, so its committed rows are not deleted."""
    listed = listed if isinstance(listed, pa.Table) else listed_identities(listed)
    keys, etags = listed["key"].combine_chunks(), listed["etag"].combine_chunks()
    positions = progress.positions(keys)
    known = positions >= 0
    at = np.maximum(positions, 0)
    recorded = progress.etag_array().take(pa.array(at)) if len(progress.keys) else etags
    differs = known & np.asarray(
        pc.and_(pc.not_equal(recorded, etags), pc.and_(pc.not_equal(recorded, ""), pc.not_equal(etags, ""))),
        dtype=bool,
    )
    # Committed keys are the ones a manifest names among its inputs (not those only in an error row).
    in_inputs = progress.in_inputs()
    in_committed = known & in_inputs[at] if len(in_inputs) else known
    taken = np.ones(listed.num_rows, bool)
    if selected is not None and len(selected) < listed.num_rows:
        taken = np.asarray(pc.is_in(keys, value_set=selected), dtype=bool)
    changed_at = [
        int(i)
        for i in np.flatnonzero(differs & in_committed)
        if identity_changed(recorded[int(i)].as_py(), etags[int(i)].as_py())
    ]
    changed = [keys[i].as_py() for i in changed_at if taken[i]]
    still_listed = np.zeros(len(in_inputs), bool)
    still_listed[positions[known]] = True
    gone = np.flatnonzero(in_inputs & ~still_listed)
    deleted = progress.keys.take(pa.array(gone)).to_pylist() if len(gone) else []
    new = int((taken & ~in_committed).sum())
    left_out = int((~taken & ~in_committed).sum()) + len(changed_at) - len(changed)  # the changed not taken
    committed = int(in_committed.sum())
    del keys, etags, recorded, positions, at, taken
    release_unused_memory()  # the lookups' hash tables
    return InputChanges(
        new=new,
        unchanged=committed - len(changed_at),
        changed=sorted(changed),
        deleted=sorted(deleted),
        left_out=left_out,
    )
