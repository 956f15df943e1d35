"""Inputs that changed since their rows were committed: new, changed, deleted, unchanged.

Every run compares each listed input's identity (``InputItem.etag``: the store's etag, or
``mtime/size`` where it has none; ray_pipelines/sources.py) with the one the output's per-rank manifests
recorded for it (``Progress.etags``), and the committed keys with the listed ones:

- **new**: listed, nothing committed;
- **changed**: listed, committed from another version of it (``on_change: reprocess`` takes its rows
  out, engine/rewrite.py, and processes it again; ``keep`` leaves them and reports it);
- **deleted**: committed, no longer listed (``on_delete: keep`` reports it; ``prune`` takes its rows out);
  but where a tar shard was written again, what its old version gave that its new one does not (the
  shard's own "unreadable" error row once it reads, or the members of a shard that no longer reads)
  is **changed**: the input (the shard) is there, with new content (:func:`rewritten_shards`);
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
    # Of ``changed``, the keys no longer listed themselves: a tar shard's key whose shard came back whole
    # (its members are listed instead), so the listing's count is new + changed + unchanged + left out less these.
    rewritten: int = 0
    # Deleted inputs committed as a retryable error alone (missing, a read that failed, lost): nothing of
    # them to keep, and no run can retry them; they leave the output whatever on_delete says.
    deleted_unretried: list[str] = field(default_factory=list)

    def stale_groups(self, on_change: str, on_delete: str) -> list[tuple[str, list[str]]]:
        """The keys whose committed rows (or error rows) must leave the output before this run writes, in
        groups said as the run's warning says them."""
        groups = []
        if on_change == "reprocess" and self.changed:
            groups.append(("changed inputs' old rows leave the output, to be processed again", self.changed))
        if on_delete == "prune" and self.deleted:
            groups.append(("deleted inputs leave the output (on_delete: prune)", self.deleted))
        elif self.deleted_unretried:
            groups.append(
                ("deleted inputs committed only as retryable errors leave the output", self.deleted_unretried)
            )
        return groups

    def stale(self, on_change: str, on_delete: str) -> set[str]:
        """Keys whose committed rows must leave the output before this run writes."""
        return {key for _, keys in self.stale_groups(on_change, on_delete) for key in keys}

    def report(self, on_change: str, on_delete: str) -> dict[str, Any]:
        """For manifest.json and the summary: counts, what was done, and the stale keys kept."""
        unretried = set(self.deleted_unretried)
        kept = {
            "changed": self.changed[:REPORTED_KEYS] if on_change == "keep" else [],
            "deleted": [key for key in self.deleted if key not in unretried][:REPORTED_KEYS]
            if on_delete == "keep"
            else [],
        }
        return {
            "new": self.new,
            "changed": len(self.changed),
            "deleted": len(self.deleted),
            "deleted_unretried": len(self.deleted_unretried),
            "unchanged": self.unchanged,
            "left_out": self.left_out,
            "rewritten": self.rewritten,
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
    rewritten: list[str] = []
    if deleted:
        rewritten = rewritten_shards(pa.array(deleted, pa.string()), progress.etag_array().take(pa.array(gone)), listed)
        gone_for_good = set(deleted) - set(rewritten)
        deleted = [key for key in deleted if key in gone_for_good]
    new = int((taken & ~in_committed).sum())
    left_out = int((~taken & ~in_committed).sum()) + len(changed_at) - len(changed)  # the changed not taken
    committed = int(in_committed.sum())
    del keys, etags, recorded, positions, at, taken
    release_unused_memory()  # the lookups' hash tables
    return InputChanges(
        new=new,
        unchanged=committed - len(changed_at),
        changed=sorted(changed + rewritten),
        deleted=sorted(deleted),
        left_out=left_out,
        rewritten=len(rewritten),
        deleted_unretried=unretried(deleted, progress) if deleted else [],
    )


def unretried(deleted: list[str], progress: Progress) -> list[str]:
    """The ``deleted`` inputs whose record is a retryable error of the whole input (``index`` -1: missing,
    a read that failed, lost) and no committed rows. Left in, their "retry" rows stayed in a complete
    output's errors.jsonl for good."""
    errors = progress.errors_table
    whole_retry = pc.and_(pc.fill_null(errors["retry"], False), pc.less(pc.fill_null(errors["index"], -1), 0))
    keys = pc.unique(errors["key"].filter(whole_retry))
    found = keys.filter(pc.is_in(keys, value_set=pa.array(deleted, pa.string())))
    return sorted(key for key, written in zip(found.to_pylist(), progress.written_counts(found)) if written == 0)


# A tar shard's items are keyed "<shard key>/<member name>", its own error row (unreadable) "<shard key>"
# (sources._list_tar); all of them carry the shard's identity.
# sources._is_tar takes .TAR too. A shard inside a folder whose name ends in .tar is taken for that folder
# (the keys alone cannot tell them apart): its keys keep the plain rule.
_MEMBER_NAME = r"(?i)(\.tar)/.*$"


def rewritten_shards(deleted: pa.Array, recorded: pa.Array, listed: pa.Table) -> list[str]:
    """The ``deleted`` keys (``recorded``: their committed identities) that a tar shard written again
    no longer gives: a shard's own key when its members are now listed, or a member when the shard's own
    key is now listed (it no longer reads), with another identity than the key's rows were made from.
    One side is always the shard's own key, which only a tar file gives (a folder named ``x.tar`` does
    not: its files keep being deleted one by one). Only tar keys are looked at, and the listing scanned
    only when a deleted key is one."""
    shard_of_deleted = pc.replace_substring_regex(deleted, _MEMBER_NAME, r"\1")
    is_shard = pc.and_(pc.match_substring_regex(deleted, r"(?i)\.tar$"), pc.equal(shard_of_deleted, deleted))
    is_member = pc.not_equal(shard_of_deleted, deleted)
    if not pc.any(pc.or_(is_shard, is_member)).as_py():
        return []
    keys, etags = listed["key"].combine_chunks(), listed["etag"].combine_chunks()
    listed_shards = pc.replace_substring_regex(keys, _MEMBER_NAME, r"\1")
    members_listed = pc.not_equal(listed_shards, keys)
    # Each affected shard's identity now: from a listed member (for a deleted shard key) or from the shard's
    # own listed key (for deleted members).
    wanted = pc.unique(shard_of_deleted)
    by_member = pc.and_(members_listed, pc.is_in(listed_shards, value_set=wanted))
    by_own_key = pc.is_in(keys, value_set=wanted)
    now = dict(zip(listed_shards.filter(by_member).to_pylist(), etags.filter(by_member).to_pylist()))
    now_unreadable = dict(zip(keys.filter(by_own_key).to_pylist(), etags.filter(by_own_key).to_pylist()))
    rewritten = []
    for key, shard, shard_key, identity in zip(
        deleted.to_pylist(), shard_of_deleted.to_pylist(), is_shard.to_pylist(), recorded.to_pylist()
    ):
        identity_now = now.get(shard) if shard_key else now_unreadable.get(shard)
        if identity_now is not None and identity_changed(identity or "", identity_now):
            rewritten.append(key)
    return rewritten
