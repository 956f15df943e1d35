"""The state of an output directory: what is committed, what to skip, the final commit.

Layout under the output root::

    _lease.json                the run holding the output (engine/lease.py)
    _job.json                  job name, config fingerprint, config, run id (written first)
    _manifests/part-*.json     one per write task: files written, samples per input, errors
    <split>/part-*.parquet     data files, named from their content
    manifest.json              the merged job manifest (written at commit; ``complete`` true or false)
    errors.jsonl               one line per input (or window) that did not make it
    _SUCCESS                   written last, and only when the run is complete

A write task writes its data files first and its per-rank manifest last, so
a manifest on disk means its files are complete. Data files no manifest
names (left by a killed or failed attempt) are deleted at commit, and never
counted. A per-rank manifest rewritten without some inputs (engine/rewrite.py)
names the one it replaces in ``replaces``; a replaced manifest counts for
nothing from the moment its replacement exists, and is deleted.
"""

from __future__ import annotations

import json
import platform
import posixpath
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..storage import Storage

MANIFEST_DIR = "_manifests"
LEASE_FILE = "_lease.json"
LEASE_LOCK = "_lease.lock"  # local disk only: serialises the lease's compare-and-replace
JOB_FILE = "_job.json"
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
MIXED_ETAG = "\x00mixed"  # an input whose committed rows came from different versions of it


class OutputConflict(RuntimeError):
    """The output holds another job's or another config's data."""


@dataclass
class Progress:
    """What committed manifests say about each input key."""

    written: dict[str, set[int]] = field(default_factory=dict)  # key -> sample indices written
    expected: dict[str, int] = field(default_factory=dict)  # key -> samples the input yields
    final_errors: dict[str, dict[int, str]] = field(default_factory=dict)  # key -> {index: reason}; -1 = whole input
    etags: dict[str, str] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0

    def add_part(self, part: dict[str, Any]) -> None:
        self.files.extend(part.get("files", []))
        for key, info in part.get("inputs", {}).items():
            seen = self.written.setdefault(key, set())
            indices = set(info.get("written", []))
            self.duplicates += len(seen & indices)
            seen |= indices
            self.expected[key] = max(self.expected.get(key, 0), int(info.get("expected", 0)))
            if info.get("etag"):
                seen_etag = self.etags.setdefault(key, info["etag"])
                if seen_etag != info["etag"]:
                    self.etags[key] = MIXED_ETAG
        for error in part.get("errors", []):
            if not error.get("retry", False):
                self.final_errors.setdefault(error["key"], {})[int(error.get("index", -1))] = error["reason"]

    def done_indices(self, key: str) -> set[int]:
        return self.written.get(key, set()) | set(self.final_errors.get(key, {}))

    def is_done(self, key: str) -> bool:
        """Every sample of the input is written or failed for good (or the whole input failed)."""
        if -1 in self.final_errors.get(key, {}):
            return True
        expected = self.expected.get(key, 0)  # 0: only a whole-input error was seen, which was retryable
        return expected > 0 and len(self.done_indices(key)) >= expected


class OutputState:
    """Reads and commits one output root."""

    def __init__(self, storage: Storage, is_data_file: Callable[[str], bool] | None = None):
        self.storage = storage
        self.is_data_file = is_data_file or default_is_data_file

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
        config fingerprint and ``overwrite`` is false.
        """
        existing = self.storage.read_json(JOB_FILE) if self.storage.exists(JOB_FILE) else None
        if existing is None and self._contents() and not overwrite:
            raise OutputConflict(
                f"output {self.storage.root} is not empty and was not written by ray-pipelines; "
                "choose another output or pass --overwrite to replace its contents"
            )
        if existing is not None and not overwrite:
            if existing.get("job") != job:
                raise OutputConflict(
                    f"output {self.storage.root} holds a '{existing.get('job')}' job's data, not '{job}'; "
                    "choose another output or pass --overwrite"
                )
            if existing.get("fingerprint") != fingerprint:
                changed = _changed_keys(existing.get("fingerprinted", {}), fingerprinted)
                raise OutputConflict(
                    f"output {self.storage.root} was written with another config (fingerprint "
                    f"{existing.get('fingerprint', '?')[:12]} != {fingerprint[:12]}; "
                    f"changed: {', '.join(changed) or '?'}). "
                    "Use a new output path for a new version, or pass --overwrite to replace it"
                )
        if overwrite:
            for relpath in self._contents():  # everything but the lease this run holds
                self.storage.remove(relpath)
        self.storage.makedirs(MANIFEST_DIR)
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

    def _contents(self) -> list[str]:
        """Top-level entries of the output root (relative), lease files left out."""
        fs, root = self.storage.fs, self.storage.path
        if not fs.exists(root):
            return []
        fs.invalidate_cache(root)
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False)]
        return sorted(n for n in names if not is_lease_file(n))

    def read_parts(self) -> dict[str, dict[str, Any]]:
        """Every per-rank manifest on disk, replaced ones included: relpath -> content."""
        return {
            path: self.storage.read_json(path) for path in self.storage.list(MANIFEST_DIR) if path.endswith(".json")
        }

    def live_parts(self) -> dict[str, dict[str, Any]]:
        """The per-rank manifests that count: relpath -> content (replaced ones left out)."""
        return live_of(self.read_parts())

    def load_parts(self) -> list[dict[str, Any]]:
        return list(self.live_parts().values())

    def progress(self) -> Progress:
        return progress_of(self.load_parts())

    # ---- after a run -------------------------------------------------------------
    def remove_orphans(self, progress: Progress) -> list[str]:
        """Delete data files that no committed manifest names (a failed attempt's)."""
        referenced = {f["path"] for f in progress.files}
        fs, root = self.storage.fs, self.storage.path
        removed = []
        if not fs.exists(root):
            return removed
        fs.invalidate_cache(root)
        for path in fs.find(root):
            rel = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.relpath(path, root)
            if rel.startswith(MANIFEST_DIR + "/") or rel in referenced or not self.is_data_file(rel):
                continue
            fs.rm(path)
            removed.append(rel)
        return removed

    def commit(
        self,
        *,
        job: str,
        fingerprint: str,
        config: dict[str, Any],
        listed: int,
        skipped: int,
        processed_keys: list[str],
        timings: dict[str, float],
        extra: dict[str, Any] | None = None,
        run_id: str = "",
        selected_keys: list[str] | None = None,
        inputs: dict[str, Any] | None = None,
        still_holds: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Merge per-rank manifests into manifest.json and errors.jsonl; write _SUCCESS only when the
        run is complete: every selected input (``selected_keys``, else ``processed_keys``) is rows or
        a final error. ``still_holds`` raises when this run no longer holds the output (lease lost):
        it is called before anything is deleted and again before manifest.json is written."""
        check_lease = still_holds or (lambda: None)
        check_lease()
        everything = self.read_parts()
        live = live_of(everything)
        for path in everything.keys() - live.keys():  # replaced by a rewritten manifest
            self.storage.remove(path)
        parts = list(live.values())
        progress = progress_of(parts)
        orphans = self.remove_orphans(progress)

        errors: list[dict[str, Any]] = []
        for part in parts:
            errors.extend(e for e in part.get("errors", []) if not _superseded(e, progress))
        lost = [
            {
                "key": key,
                "index": -1,
                "retry": True,
                "reason": "lost: its rows never committed (the worker or node running its block died, or the "
                "block raised: see the driver log); it is retried by the next run",
            }
            for key in lost_keys(processed_keys, progress, parts, run_id)
        ]
        errors.extend(lost)
        errors.sort(key=lambda e: (e["key"], int(e.get("index", -1))))
        scope = processed_keys if selected_keys is None else selected_keys
        to_retry = sum(1 for key in scope if not progress.is_done(key))

        files = sorted(progress.files, key=lambda f: f["path"])
        splits: dict[str, int] = {}
        for f in files:
            splits[f.get("split", "")] = splits.get(f.get("split", ""), 0) + int(f["rows"])
        schema = next((p["schema"] for p in parts if p.get("schema")), {})
        inputs_written = sum(1 for k, v in progress.written.items() if v)
        manifest = {
            "job": job,
            "fingerprint": fingerprint,
            "config": config,
            "versions": library_versions(),
            "complete": to_retry == 0,
            "counts": {
                "listed": listed,
                "skipped_already_committed": skipped,
                "processed_this_run": len(processed_keys),
                "inputs_with_output": inputs_written,
                "rows_written": sum(splits.values()),
                "errors": len({e["key"] for e in errors}),
                "error_rows": len(errors),
                "lost": len(lost),
                "to_retry": to_retry,
                "duplicates": progress.duplicates,
                "orphans_removed": len(orphans),
            },
            "inputs": inputs or {},
            "splits": splits,
            "schema": schema,
            "files": files,
            "timings": timings,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        check_lease()
        self.storage.write_bytes(ERRORS_FILE, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
        self.storage.write_json(MANIFEST_FILE, manifest)
        if manifest["complete"]:
            self.storage.write_bytes(SUCCESS_FILE, b"")
        return manifest


def progress_of(parts: Iterable[dict[str, Any]]) -> Progress:
    progress = Progress()
    for part in parts:
        progress.add_part(part)
    return progress


def live_of(parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Leave out the per-rank manifests a rewritten one replaces (its ``replaces`` list)."""
    replaced = {name for part in parts.values() for name in part.get("replaces", ())}
    return {path: part for path, part in parts.items() if path not in replaced}


def lost_keys(processed_keys: list[str], progress: Progress, parts: list[dict[str, Any]], run_id: str) -> list[str]:
    """Inputs this run sent that are not done and got no error row from it: their rows never
    committed (a worker or node died, or the block raised). Without a run id, errors of any run count."""
    failed = {e["key"] for p in parts if not run_id or p.get("run_id") == run_id for e in p.get("errors", ())}
    return [key for key in processed_keys if not progress.is_done(key) and key not in failed]


def is_lease_file(relpath: str) -> bool:
    """The lease and its lock (and a lease's temp file), never data or state to clean up."""
    name = posixpath.basename(relpath)
    return name in (LEASE_FILE, LEASE_LOCK) or name.startswith(LEASE_FILE + ".tmp-")


def _superseded(error: dict[str, Any], progress: Progress) -> bool:
    """A retryable error that a later run healed: its sample (or whole input) is now written."""
    if not error.get("retry"):
        return False
    index = int(error.get("index", -1))
    return progress.is_done(error["key"]) if index < 0 else index in progress.written.get(error["key"], set())


def default_is_data_file(relpath: str) -> bool:
    """Data files are the ``part-*`` files the sinks write (other files are left alone)."""
    return posixpath.basename(relpath).startswith("part-")


def _changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed.extend(_changed_keys(a, b, f"{prefix}{key}."))
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
