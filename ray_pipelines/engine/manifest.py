"""The state of an output directory: what is committed, what to skip, the final commit.

Layout under the output root::

    _job.json                  job name, config fingerprint, config (written first)
    _manifests/part-*.json     one per write task: files written, samples per input, errors
    <split>/part-*.parquet     data files, named from their content
    manifest.json              the merged job manifest (written at commit)
    errors.jsonl               one line per input (or window) that did not make it
    _SUCCESS                   written last; absent while a run is in progress

A write task writes its data files first and its per-rank manifest last, so
a manifest on disk means its files are complete. Data files no manifest
names (left by a killed or failed attempt) are deleted at commit, and never
counted.
"""

from __future__ import annotations

import json
import platform
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..storage import Storage

MANIFEST_DIR = "_manifests"
JOB_FILE = "_job.json"
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"


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
                self.etags[key] = info["etag"]
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
        self, job: str, fingerprint: str, config: dict[str, Any], fingerprinted: dict[str, Any], overwrite: bool
    ) -> str:
        """Claim the output for this job and config; returns this run's id.

        The run id in ``_job.json`` fences off an earlier run's stray writers (Ray
        workers that outlive a killed driver): a write task commits its manifest
        only while ``_job.json`` still names its run (see ``ShardSink``).

        Raises :class:`OutputConflict` when the output belongs to another job or
        config fingerprint and ``overwrite`` is false.
        """
        existing = self.storage.read_json(JOB_FILE) if self.storage.exists(JOB_FILE) else None
        if existing is None and not self.storage.is_empty() and not overwrite:
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
        if overwrite and not self.storage.is_empty():
            self.storage.remove("")
        self.storage.makedirs(MANIFEST_DIR)
        self.storage.remove(SUCCESS_FILE)
        run_id = uuid.uuid4().hex
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

    def load_parts(self) -> list[dict[str, Any]]:
        parts = []
        for path in self.storage.list(MANIFEST_DIR):
            if path.endswith(".json"):
                parts.append(self.storage.read_json(path))
        return parts

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
    ) -> dict[str, Any]:
        """Merge per-rank manifests into manifest.json and errors.jsonl, then write _SUCCESS."""
        parts = self.load_parts()
        progress = progress_of(parts)
        orphans = self.remove_orphans(progress)

        errors: list[dict[str, Any]] = []
        for part in parts:
            errors.extend(e for e in part.get("errors", []) if not _superseded(e, progress))
        logged = {(e["key"], int(e.get("index", -1))) for e in errors}
        lost = []
        for key in processed_keys:
            if not progress.is_done(key) and (key, -1) not in logged:
                lost.append(
                    {
                        "key": key,
                        "index": -1,
                        "retry": True,
                        "reason": "lost: its block failed after bounded retries (worker crash or out of "
                        "memory); it will be retried on the next run",
                    }
                )
        errors.extend(lost)
        errors.sort(key=lambda e: (e["key"], int(e.get("index", -1))))

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
            "counts": {
                "listed": listed,
                "skipped_already_committed": skipped,
                "processed_this_run": len(processed_keys),
                "inputs_with_output": inputs_written,
                "rows_written": sum(splits.values()),
                "errors": len({e["key"] for e in errors}),
                "error_rows": len(errors),
                "lost": len(lost),
                "duplicates": progress.duplicates,
                "orphans_removed": len(orphans),
            },
            "splits": splits,
            "schema": schema,
            "files": files,
            "timings": timings,
            "committed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **(extra or {}),
        }
        self.storage.write_bytes(ERRORS_FILE, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors).encode())
        self.storage.write_json(MANIFEST_FILE, manifest)
        self.storage.write_bytes(SUCCESS_FILE, b"")
        return manifest


def progress_of(parts: list[dict[str, Any]]) -> Progress:
    progress = Progress()
    for part in parts:
        progress.add_part(part)
    return progress


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
