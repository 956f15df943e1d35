"""The state of an output directory: what is committed, what to skip, the final commit.

Layout under the output root::

    _lease.json                the run holding the output (engine/lease.py)
    _job.json                  job name, config fingerprint, config, run id (written first)
    _manifests/part-*.json     one per write task: files written, samples per input, errors (until folded)
    _manifests/index.parquet   the folded manifests, one columnar table (engine/state_index.py)
    <split>/part-*.parquet     data files, named from their content
    manifest.json              the merged job manifest (written at commit; ``complete`` true or false)
    errors.jsonl               one line per input (or window) that did not make it
    _SUCCESS                   written last (after the job's derived files), and only when the run is complete

A write task writes its data files first and its per-rank manifest last, so
a manifest on disk means its files are complete. Data files no manifest
names (left by a killed or failed attempt), and the temp files of a writer
killed mid-write, are deleted at commit, and never counted. A per-rank
manifest rewritten without some inputs (engine/rewrite.py) names the one it
replaces in ``replaces``; a replaced manifest counts for nothing from the
moment its replacement exists, and is deleted.

The commit folds every live manifest into ``_manifests/index.parquet`` and deletes the folded
manifests (``OutputState.fold``), so a run reads one index and only the manifests written since.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import posixpath
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage import TEMP_MARK, Storage, is_temp_file, split_protocol
from .committed import MIXED_ETAG, KeyColumn, Progress, key_array
from .memory import release_unused_memory
from .state_index import (
    INDEX_FILE,
    decode_index,
    empty_table,
    folded,
    index_groups,
    part_names,
    part_of,
    parts_table,
    read_index_bytes,
    replaced_names,
    write_index,
)

MANIFEST_DIR = "_manifests"
LEASE_FILE = "_lease.json"
LEASE_LOCK = "_lease.lock"  # local disk only: serialises the lease's compare-and-replace
JOB_FILE = "_job.json"
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
READ_BATCH = 1000  # manifests fetched per concurrent batch (fsspec ``cat`` of a list of paths)
DELETE_BATCH = 1000  # manifests deleted per request (S3 DeleteObjects takes up to 1,000 keys)
KILL_AT = "RAY_PIPELINES_KILL_AT"  # tests: SIGKILL this process at the named step (``stop_point``)
WAIT_AT = "RAY_PIPELINES_WAIT_AT"  # tests: hold this process at the named step until a signal

log = logging.getLogger(__name__)

__all__ = ["MIXED_ETAG", "INDEX_FILE", "OutputState", "Progress"]


class OutputConflict(RuntimeError):
    """The output holds another job's or another config's data."""


def claiming_run(storage: Storage) -> str | None:
    """The run ``_job.json`` names (None where there is none, or it cannot be read): for messages."""
    try:
        return storage.read_json(JOB_FILE).get("run_id")
    except Exception:  # a name for a message only
        return None


class OutputState:
    """Reads and commits one output root."""

    def __init__(self, storage: Storage, is_data_file: Callable[[str], bool] | None = None):
        self.storage = storage
        self._removed_success = False  # prepare found a _SUCCESS and removed it
        self.is_data_file = is_data_file or default_is_data_file
        self._index: pa.Table | None = None  # decoded from _index_data, or the last fold's
        self._index_data: bytes | None = None  # the index file as read (once per run)
        self._index_read = False
        self._disk = empty_table()  # rows of the manifests on disk read so far
        self._disk_names: set[str] = set()
        self._progress: Progress | None = None
        self._progress_identities = False
        self._index_parts: set[str] | None = None  # names of the manifests the index holds

    # ---- before a run ------------------------------------------------------------
    def prepare(
        self,
        job: str,
        fingerprint: str,
        config: dict[str, Any],
        fingerprinted: dict[str, Any],
        overwrite: bool,
        run_id: str | None = None,
    ) -> str:
        """Claim the output for this job and config; returns this run's id (``run_id``, the
        lease's, or a new one).

        The run id in ``_job.json`` fences off an earlier run's stray writers (Ray
        workers that outlive a killed driver): a write task commits its manifest
        only while ``_job.json`` still names its run (see ``ShardSink``).

        Raises :class:`OutputConflict` when the output belongs to another job or
        config fingerprint and ``overwrite`` is false; with ``overwrite`` such an output (or one not
        written by ray-pipelines) is emptied, and one of this job and config is resumed as without it.
        """
        existing = self.storage.read_json(JOB_FILE) if self.storage.exists(JOB_FILE) else None
        if existing is None and not overwrite and any(not name.startswith(".") for name in self._contents()):
            # Hidden names are the OS's and tools' (.DS_Store, .gitkeep), not data the run could spoil.
            raise OutputConflict(
                f"output {self.storage.root} is not empty and was not written by ray-pipelines; "
                "choose another output or pass --overwrite to replace its contents"
            )
        conflict = None if existing is None else _claim_conflict(existing, job, fingerprint, fingerprinted)
        if conflict and not overwrite:
            refusal, claimed_by = conflict
            if self._committed_anything():
                raise OutputConflict(f"output {self.storage.root} {refusal}")
            # A run that stopped before its first commit (nothing matched its input, a listing error,
            # a stop while it listed) leaves only its claim: nothing there for another config to spoil.
            log.warning(
                "output %s was claimed by %s that committed nothing: this run takes it", self.storage.root, claimed_by
            )
            overwrite = True
        if overwrite and existing is not None and conflict is None:
            # --overwrite replaces an output of another job or config; on this one's it would throw away
            # every committed input of a run that is only resuming (a nightly command that kept the flag)
            log.warning(
                "output %s holds this job's output of this config: --overwrite has nothing to replace, the run "
                "resumes it (delete the output to start over)",
                self.storage.root,
            )
            overwrite = False
        if overwrite:
            for relpath in self._contents():  # everything but the lease this run holds
                self.storage.remove(relpath)
        self.storage.makedirs(MANIFEST_DIR)
        self._removed_success = self.storage.exists(SUCCESS_FILE)  # put back by restore_success
        self.storage.remove(SUCCESS_FILE)
        run_id = run_id or uuid.uuid4().hex
        self.storage.write_json(
            JOB_FILE,
            {
                "job": job,
                "fingerprint": fingerprint,
                "config": config,
                "fingerprinted": fingerprinted,
                "run_id": run_id,
            },
        )
        return run_id

    def restore_success(self) -> None:
        """``_SUCCESS`` back where :meth:`prepare` removed it: for a run that failed before it changed anything
        (its listing failed or matched nothing), which leaves the output as it found it. Only that: a run
        stopped after it took inputs out leaves the last ``manifest.json`` saying complete, and no ``_SUCCESS``.
        (A run stopped while it lists leaves none either: exit 130/143 says no ``_SUCCESS``.)"""
        if self._removed_success:
            self.storage.write_bytes(SUCCESS_FILE, b"")

    def _files_named_by_manifest(self) -> frozenset[str]:
        """The data files the last ``manifest.json`` names (none where there is none, or it is unreadable)."""
        try:
            return frozenset(str(f["path"]) for f in self.storage.read_json(MANIFEST_FILE).get("files", []))
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):  # none, or not one of ours
            return frozenset()

    def _committed_anything(self) -> bool:
        """Whether a run ever committed here: a manifest, the index or a block's manifest."""
        if self.storage.exists(MANIFEST_FILE):
            return True
        return any(p.endswith((".json", ".parquet")) for p in self.storage.list(MANIFEST_DIR))

    def _contents(self) -> list[str]:
        """Top-level entries of the output root (relative), lease files left out."""
        fs, root = self.storage.fs, self.storage.path
        if not fs.exists(root):
            return []
        fs.invalidate_cache(root)
        # An object store lists a folder's own marker (``out/``, the S3 console's "Create folder") in it.
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if p.rstrip("/") != root]
        return sorted(n for n in names if not is_lease_file(n))

    # ---- the committed state -----------------------------------------------------
    # Read once per run: the index (one GET) and each per-block manifest once (fetched
    # concurrently, in batches); later calls read only manifests that appeared since.
    def index(self) -> pa.Table | None:
        """The folded state (engine/state_index.py), read once; None for outputs without one."""
        if self._index is None and self._index_bytes() is not None:
            self._index = decode_index(self._index_data)
        return self._index

    def _index_bytes(self) -> bytes | None:
        if not self._index_read:
            self._index_data, self._index_read = read_index_bytes(self.storage), True
        return self._index_data

    def _index_groups(self) -> Iterator[pa.Table]:
        """The index's rows a row group at a time (whole when decoded already), in file order."""
        if self._index is not None:
            yield self._index
        elif self._index_bytes() is not None:
            yield from index_groups(self._index_data)

    # The live state: the index's manifests that no manifest on disk overrides (same name: the one on
    # disk wins, so one both folded and still present counts once) or replaces, and the manifests on
    # disk that none replaces.
    def _live_index_groups(self) -> Iterator[pa.Table]:
        """The index's live rows, a row group at a time."""
        drop = _names(self._disk_names | replaced_names(self._disk))
        for group in self._index_groups():
            yield without_parts(group, drop)

    def _live_disk(self) -> pa.Table:
        """The live rows of the manifests on disk."""
        return without_parts(self._disk, _names(replaced_names(self._disk)))

    def _live_groups(self) -> Iterator[pa.Table]:
        yield from self._live_index_groups()
        yield self._live_disk()

    def forget_decoded(self) -> None:
        """Let go of the decoded committed state while a run processes (at a million inputs the
        index's rows are 115 MB, its file 2.4 MB): it is decoded again from the bytes already read
        when the run looks for lost inputs and commits. The file is still read once per run."""
        if self._index_data is not None:
            self._index = None
        self._progress = None
        release_unused_memory()

    def folded_parts(self) -> frozenset[str]:
        """The names of the manifests the index holds (a rewrite retires those with a tombstone)."""
        if self._index_parts is None:
            self.state_table()
        return frozenset(self._index_parts or ())

    def refresh(self) -> None:
        """List the manifests on disk; forget the ones gone, read the new ones."""
        listed = {p for p in self.storage.list(MANIFEST_DIR) if p.endswith(".json")}
        gone, new = self._disk_names - listed, sorted(listed - self._disk_names)
        if not gone and not new:
            return
        self._disk = without_parts(self._disk, _names(gone))
        tables = [self._disk]
        for start in range(0, len(new), READ_BATCH):
            batch = self.storage.cat_many(new[start : start + READ_BATCH])
            tables.append(parts_table((name, json.loads(batch[name])) for name in new[start : start + READ_BATCH]))
        self._disk = pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]
        self._disk_names = listed
        self._progress = None

    def state_table(self) -> pa.Table:
        """Rows of every live manifest: the index's, overridden by manifests on disk of the same
        name, less the ones a manifest on disk replaces."""
        self.refresh()
        index = self.index()
        if index is not None and self._index_parts is None:
            self._index_parts = set(part_names(index))
        return pa.concat_tables(list(self._live_groups()))

    def read_parts(self) -> dict[str, dict[str, Any]]:
        """Every per-rank manifest on disk (not folded yet), replaced ones included: relpath -> content."""
        self.refresh()
        return {name: part_of(self._disk, name) for name in sorted(self._disk_names)}

    def live_parts(self) -> dict[str, dict[str, Any]]:
        """The per-rank manifests that count, folded or not: relpath -> content (replaced ones left out)."""
        table = self.state_table()
        return {name: part_of(table, name) for name in sorted(part_names(table))}

    def load_parts(self) -> list[dict[str, Any]]:
        return list(self.live_parts().values())

    def progress(self, identities: bool = True) -> Progress:
        """The committed state's columns, built from the index a row group at a time (the decoded
        rows are never all held: 1.5 GB at ten million inputs); ``identities``: with each input's
        identity (change detection needs them, the commit does not)."""
        self.refresh()
        if self._progress is None or (identities and not self._progress_identities):
            self._progress = Progress.from_groups(self._live_groups(), identities)
            self._progress_identities = identities
        return self._progress

    # ---- after a run -------------------------------------------------------------
    def remove_orphans(
        self, progress: Progress, named: Callable[[], frozenset[str]] = frozenset
    ) -> tuple[list[str], list[str]]:
        """Delete what a failed attempt left: data files no committed manifest names, and a manifest's
        temp file (a writer killed mid-write, its node lost: the manifest never appeared, so its
        files are orphans too). Those in ``named()`` (the files the last ``manifest.json`` names: an input
        taken out, its files rewritten; asked only when there are orphans) are left for after the new
        ``manifest.json``, which no longer names them (:meth:`commit`). Returns (deleted, left for later)."""
        referenced = {f["path"] for f in progress.files}
        nested_claim = "/" + JOB_FILE

        def is_orphan_or_claim(rel: str) -> bool:
            if rel.endswith(nested_claim):
                return True
            if rel.startswith(MANIFEST_DIR + "/"):
                return is_temp_file(rel)
            return rel not in referenced and self.is_data_file(rel)

        found = self.storage.select_files(is_orphan_or_claim)
        # Another run's output in a folder of this one (made before such outputs were refused, or this one
        # made around it) keeps its files: its data files are named by its own manifests, not this run's.
        nested = tuple(rel[: -len(JOB_FILE)] for rel in found if rel.endswith(nested_claim))
        orphans = [rel for rel in found if not rel.endswith(nested_claim) and not (nested and rel.startswith(nested))]
        last_named = named() if orphans else frozenset()
        removed = [rel for rel in orphans if rel not in last_named]
        self.storage.remove_many(removed)
        return removed, [rel for rel in orphans if rel in last_named]

    def fold(self) -> None:
        """Write the live state as the new index, then delete the manifests it folded.

        The old index's rows are read a row group at a time and merged in order with the manifests on
        disk (``write_index``): the driver never holds the whole state's rows. A kill before the index
        is written leaves the old index and the manifests (nothing changed); after it, manifests not
        yet deleted are read again and override their folded copies, which are the same. Replaced
        manifests are deleted before the index is written: once their replacement is folded, its
        ``replaces`` list is gone, so they must not be found again. Folds the manifests on disk as
        last read (``refresh``, which the commit's ``progress`` did)."""
        replaced = sorted(self._disk_names & replaced_names(self._disk))
        self.storage.remove_many(replaced)
        stop_point("fold:before-index")
        write_index(self.storage, folded(self._live_disk()), self._live_index_groups())
        stop_point("fold:after-index")
        folded_parts = sorted(self._disk_names - set(replaced))
        for start in range(0, len(folded_parts), DELETE_BATCH):
            self.storage.remove_many(folded_parts[start : start + DELETE_BATCH])
            stop_point("fold:deleting")
        # Read again if asked for (one GET): the new index is not held.
        self._index, self._index_data, self._index_read, self._index_parts = None, None, False, None
        self._disk, self._disk_names, self._progress = empty_table(), set(), None

    def commit(
        self,
        *,
        job: str,
        fingerprint: str,
        config: dict[str, Any],
        listed: int,
        skipped: int,
        processed_keys: KeyColumn,
        selected: int | None = None,
        timings: dict[str, float],
        extra: dict[str, Any] | None = None,
        run_id: str = "",
        selected_keys: KeyColumn | None = None,
        inputs: dict[str, Any] | None = None,
        still_holds: Callable[[], None] | None = None,
        write_derived: Callable[[dict[str, Any]], None] | None = None,
        before_success: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Fold the per-rank manifests into the index (``fold``) and write manifest.json and errors.jsonl;
        write _SUCCESS only when the run is complete: every selected input (``selected_keys``, else
        ``processed_keys``) is rows or a final error. ``still_holds`` raises when this run no longer
        holds the output (lease lost): it is called before anything is deleted and again before the
        index and manifest.json are written. ``write_derived(manifest)`` writes what the job derives
        from the committed output (the dataset card, the score job's lists), after manifest.json and
        before _SUCCESS, which stays the last file: a run stopped between them is not complete.
        ``before_success()`` is called just before _SUCCESS is written (the CLI: a stop from there on came
        too late to stop the run)."""
        check_lease = still_holds or (lambda: None)
        check_lease()
        progress = self.progress(identities=False)
        errors = [e for e in progress.error_rows if not _superseded(e, progress)]
        # After the state's columns are built (the driver's peak): not with the data-file listing held. Files
        # the last manifest.json names stay until the new one is written: a reader of it finds every file.
        orphans, named_orphans = self.remove_orphans(progress, self._files_named_by_manifest)
        lost = [
            {
                "key": key,
                "index": -1,
                "retry": True,
                "reason": "lost: its rows never committed (the worker or node running its block died, or the "
                "block raised: see the driver log); it is retried by the next run",
            }
            for key in lost_keys(processed_keys, progress, run_id)
        ]
        errors.extend(lost)
        errors.sort(key=lambda e: (e["key"], int(e.get("index", -1))))
        scope = processed_keys if selected_keys is None else selected_keys
        to_retry = progress.count_not_done(scope)

        files = sorted(progress.files, key=lambda f: f["path"])
        splits: dict[str, int] = {}
        for f in files:
            splits[f.get("split", "")] = splits.get(f.get("split", ""), 0) + int(f["rows"])
        manifest = {
            "job": job,
            "fingerprint": fingerprint,
            "config": config,
            "versions": library_versions(),
            "complete": to_retry == 0,
            "counts": {
                "listed": listed,  # the listing (before 2026-12-07: the selected inputs, as "selected" is now)
                "selected": listed if selected is None else selected,  # taken by keep/ignore lists and limit
                "skipped_already_committed": skipped,
                "processed_this_run": len(processed_keys),
                "inputs_with_output": progress.inputs_written(),
                "rows_written": sum(splits.values()),
                "errors": len({e["key"] for e in errors}),
                "error_rows": len(errors),
                "lost": len(lost),
                "to_retry": to_retry,
                "duplicates": progress.duplicates,
                "orphans_removed": len(orphans) + len(named_orphans),
            },
            "inputs": inputs or {},
            "splits": splits,
            "schema": progress.schema,
            "files": files,
            "error_reasons": common_errors(errors),
            "timings": timings,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        check_lease()
        del progress  # the fold does not need it: its columns (100 MB at a million inputs) go first
        self.forget_decoded()
        self.fold()
        self.storage.write_bytes(ERRORS_FILE, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
        self.storage.write_json(MANIFEST_FILE, manifest)
        self.storage.remove_many(named_orphans)
        if write_derived is not None:
            write_derived(manifest)
        if manifest["complete"]:
            stop_point("commit:before-success")
            check_lease()  # the derived files can take a while (the score job reads every score)
            if before_success is not None:
                before_success()
            self.storage.write_bytes(SUCCESS_FILE, b"")
            stop_point("commit:after-success")
        return manifest


def enclosing_output(storage: Storage) -> str | None:
    """The folder above ``storage``'s root that holds another run's output (its ``_job.json``), or None. A
    run's commit deletes the data files its own manifests do not name, anywhere in its folder: an output
    inside another's would lose its files to the other's next commit."""
    fs, path = storage.fs, storage.path.rstrip("/")
    parent = fs._parent(path)
    while parent and parent != path:
        try:
            if fs.exists(posixpath.join(parent, JOB_FILE)):
                return parent if "://" not in storage.root else f"{split_protocol(storage.root)[0]}://{parent}"
        except OSError:  # a parent this run may not read (an S3 policy on a prefix): nothing known above it
            return None
        path, parent = parent, fs._parent(parent)
    return None


def common_errors(errors: list[dict[str, Any]], top: int = 3) -> list[dict[str, Any]]:
    """The ``top`` most common kinds of error row (a reason's text before its first ``": "``: ``too short``,
    ``teacher failed``, ``unreadable``), each with its count and its first row as an example: what the
    summary shows, so a run whose every input failed says why without opening errors.jsonl."""
    kinds: dict[str, dict[str, Any]] = {}
    for error in errors:
        reason = str(error["reason"])
        kind = reason.split(": ", 1)[0][:80]
        entry = kinds.setdefault(kind, {"reason": kind, "rows": 0, "example": f"{error['key']}: {reason}"[:240]})
        entry["rows"] += 1
    return sorted(kinds.values(), key=lambda entry: (-entry["rows"], entry["reason"]))[:top]


def without_parts(table: pa.Table, names: pa.Array) -> pa.Table:
    """``table`` less the rows of the manifests ``names``."""
    return table.filter(pc.invert(pc.is_in(table["part"], value_set=names))) if len(names) else table


def _names(names: set[str]) -> pa.Array:
    return pa.array(sorted(names), pa.string())


def progress_of(parts: Iterable[dict[str, Any]]) -> Progress:
    return Progress(parts_table((f"#{i}", part) for i, part in enumerate(parts)))


def live_of(parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Leave out the per-rank manifests a rewritten one replaces (its ``replaces`` list)."""
    replaced = {name for part in parts.values() for name in part.get("replaces", ())}
    return {path: part for path, part in parts.items() if path not in replaced}


def lost_keys(processed_keys: KeyColumn, progress: Progress, run_id: str) -> list[str]:
    """Inputs this run sent that are not done and got no error row from it: their rows never
    committed (a worker or node died, or the block raised). Without a run id, errors of any run count."""
    if not len(processed_keys):
        return []
    keys = key_array(processed_keys)
    errors = progress.errors_table
    if run_id:
        errors = errors.filter(pc.equal(errors["run_id"], run_id))
    lost = ~progress.done_mask(keys)
    if errors.num_rows:
        lost &= ~np.asarray(pc.is_in(keys, value_set=errors["key"].combine_chunks()), dtype=bool)
    return keys.filter(pa.array(lost)).to_pylist()


class _GoOn(Exception):
    """SIGUSR1 ended a stop point's wait."""


def _go_on(signum, frame) -> None:
    raise _GoOn


def stop_point(name: str) -> None:
    """Tests kill the driver here (``RAY_PIPELINES_KILL_AT=<name>``) to check what each step leaves, or hold
    it here (``RAY_PIPELINES_WAIT_AT=<name>[,<name>...]``, from the main thread) until a signal of theirs: SIGUSR1 lets
    the run go on, Ctrl-C's SIGINT raises ``KeyboardInterrupt`` in the wait, where the driver would wait
    for its next report anyway. A held driver says so on stderr once it can take the signal."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in os.environ.get(WAIT_AT, "").split(","):
        previous = signal.signal(signal.SIGUSR1, _go_on)
        try:
            print(f"waiting at {name} ({WAIT_AT})", file=sys.stderr, flush=True)
            time.sleep(3600)
        except _GoOn:
            pass
        finally:
            signal.signal(signal.SIGUSR1, previous)


def is_lease_file(relpath: str) -> bool:
    """The lease and its lock (and a lease's temp file), never data or state to clean up."""
    name = posixpath.basename(relpath)
    return name in (LEASE_FILE, LEASE_LOCK) or name.startswith(LEASE_FILE + TEMP_MARK)


def _superseded(error: dict[str, Any], progress: Progress) -> bool:
    """A retryable error that a later run healed: its sample (or whole input) is now written."""
    if not error.get("retry"):
        return False
    index = int(error.get("index", -1))
    return progress.is_done(error["key"]) if index < 0 else index in progress.written_of(error["key"])


def default_is_data_file(relpath: str) -> bool:
    """Data files are the ``part-*`` files the sinks write (other files are left alone)."""
    return posixpath.basename(relpath).startswith("part-")


def _claim_conflict(
    existing: dict[str, Any], job: str, fingerprint: str, fingerprinted: dict[str, Any]
) -> tuple[str, str] | None:
    """Why ``_job.json``'s claim is not this run's, or None when it is: (the refusal's words after
    "output X", what the claiming run was)."""
    if existing.get("job") != job:
        return (
            f"holds the {existing.get('job')} job's data, not the {job} job's; "
            "choose another output or pass --overwrite",
            f"a {existing.get('job')} job's run",
        )
    if existing.get("fingerprint") != fingerprint:
        old = existing.get("fingerprinted", {})
        changed = ", ".join(_changed_keys(old, fingerprinted)) or "?"
        if "models" in fingerprinted and "models" not in old:  # a claim of ray-pipelines before 2026-12-06
            changed += " (its claim predates the models' hashes in _job.json: their code is hashed since then)"
        return (
            f"was written with another config (fingerprint {existing.get('fingerprint', '?')[:12]} != "
            f"{fingerprint[:12]}; changed: {changed}). Use a new output path for a new version, or pass "
            "--overwrite to replace it",
            f"a run with another config (changed: {changed})",
        )
    return None


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(_changed_keys(a, b, f"{prefix}{key}."))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a != b:  # the teachers' hashes
            changed.extend(_changed_keys(dict(enumerate(a)), dict(enumerate(b)), f"{prefix}{key}."))
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("ray", "torch", "torchaudio", "pyarrow", "numpy", "soundfile", "ray-pipelines"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out
