"""run_job: the one place where a job meets Ray.

    lease ─► list inputs ─► changes ─► drop committed ─► input blocks ─► decode (CPU tasks) ─► stages
    (actor pools) ─► ShardSink (write tasks) ─► [lost inputs again] ─► commit (driver) ─► release

On a CPU cluster a one-stage job runs as a single actor pool instead: each actor
decodes its input block, runs the stage and writes the shards itself
(DecodeStageWrite), so neither audio nor output tensors cross the object store.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import ActorPoolStrategy
from ray.data.block import BlockAccessor

from ..config import CommonConfig, ConfigError
from ..sources import InputItem, SourceError, overlapping_input, read_key_list
from ..storage import Storage, in_ray_job_supervisor_folder, is_local, ray_working_dir_copy, relative_local
from .changes import InputChanges, detect_changes, listed_identities
from .control import OutputStoreError, RunControl, store_failures_raised
from .decode import PIECE_BYTES, concat_batches
from .job import Job, StageSpec
from .lease import Lease, LeaseLost, held_lease
from .manifest import JOB_FILE, LEASE_FILE, OutputState, Progress, claiming_run, enclosing_output, lost_keys, stop_point
from .memory import release_unused_memory
from .progress import ProgressDisplay
from .rewrite import drop_inputs
from .runtime import (
    MAX_TASK_RETRIES,
    WRITE_TASK_CPUS,
    PoolPlan,
    configure_data_context,
    connect,
    data_context_kept,
    plan_pool,
)
from .shared_paths import check_nodes_see_local_paths, local_files
from .sink import ShardSink
from .timeline import mark
from .write_stream import report_rows, stream_write

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    manifest: dict[str, Any]
    seconds: float
    output: str
    ray: str = ""
    run_rows: int = 0  # rows written by this run (the manifest counts the whole output)
    writes: list[dict[str, Any]] = field(default_factory=list)  # what each write task reported
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return self.manifest["counts"]

    @property
    def complete(self) -> bool:
        """Every selected input is output rows or a final error (``_SUCCESS`` was written)."""
        return bool(self.manifest.get("complete"))

    @property
    def steady_rows_per_second(self) -> float | None:
        """Rows/s once the pipeline is full: rows finished while every writer was running
        (after the last writer's first write, up to the first writer's last write), so neither
        Ray's and the actors' staggered start-up nor the uneven tail count. Falls back to the
        span from the first to the last write when the writers never overlapped; None with
        fewer than 3 writes."""
        done = sorted((w["finished_at"], w["rows"], w.get("writer", "")) for w in self.writes if "finished_at" in w)
        if len(done) < 3 or done[-1][0] <= done[0][0]:
            return None
        by_writer: dict[str, list[float]] = {}
        for at, _, writer in done:
            by_writer.setdefault(writer, []).append(at)
        start = max(times[0] for times in by_writer.values())
        end = min(times[-1] for times in by_writer.values())
        if end <= start:
            start, end = done[0][0], done[-1][0]
        rows = sum(n for at, n, _ in done if start < at <= end)
        return rows / (end - start) if rows else None


def apply_key_lists(items: list[InputItem], cfg: CommonConfig) -> list[InputItem]:
    """Only ``keep_list`` keys (when given), none of the ``ignore_list`` keys."""
    listed = items
    if cfg.keep_list:
        keep = read_key_list(cfg.keep_list, cfg.storage_options)
        kept = [i for i in items if i.key in keep]
        if keep and items and not kept and not cfg.allow_empty:
            # Keys of another root (paths, URLs, another input folder's): a run of nothing, exit 0 and _SUCCESS
            raise SourceError(
                f"keep_list {cfg.keep_list}: none of its {len(keep)} keys names a listed input "
                f"({', '.join(repr(k) for k in sorted(keep)[:3])}{', ...' if len(keep) > 3 else ''}); a listed "
                f"input's key: {items[0].key!r} (set allow_empty: true to allow it)"
            )
        if len(kept) < len(keep):  # listed keys are unique: each kept item matched one key
            _warn_unmatched_keys("keep_list", cfg.keep_list, keep, kept, items[0].key if items else None)
        items = kept
    if cfg.ignore_list:
        ignore = read_key_list(cfg.ignore_list, cfg.storage_options)
        left = [i for i in items if i.key not in ignore]
        # Keys of inputs since deleted are an ignore list's everyday lot; none naming any listed input (the
        # keep list's or not) is paths or URLs where keys belong, which skipped nothing without a word
        if ignore and listed and not any(i.key in ignore for i in listed):
            _warn_unmatched_keys("ignore_list", cfg.ignore_list, ignore, [], listed[0].key)
        items = left
    return items


def _warn_unmatched_keys(what: str, spec: str, keys: set[str], matched: list[InputItem], a_key: str | None) -> None:
    """A key list's keys that name no listed input: a typo, a file since deleted, or paths or URLs
    where keys belong (a key is the path below its input spec's folder, as ``a_key``)."""
    unmatched = sorted(keys.difference(i.key for i in matched))
    example = f"; a listed input's key: {a_key!r}" if a_key is not None else ""
    log.warning(
        "%s %s: %d of its %d keys name no listed input (%s)%s",
        what,
        spec,
        len(unmatched),
        len(keys),
        ", ".join(repr(k) for k in unmatched[:5]) + (", ..." if len(unmatched) > 5 else ""),
        example,
    )


def select_inputs(job: Job, listed: list[InputItem] | None = None, consume: bool = False) -> pa.Table:
    """Listed inputs after keep/ignore lists, the job's pick and ``limit`` (applied to sorted keys):
    one row per input, the fields of :class:`InputItem` and the job's columns. ``consume``: the
    items leave ``listed`` as they become rows (the runner's listing, of which it keeps two columns:
    at a million inputs the driver then never holds the items and the table whole)."""
    cfg = job.config
    source = job.list_inputs() if listed is None else listed
    items = job.pick_inputs(apply_key_lists(source, cfg))
    if items is source and (listed is None or consume):
        items.sort(key=lambda i: i.key)  # in place: a sorted copy would keep every item alive
    else:
        items = sorted(items, key=lambda i: i.key)
    if cfg.limit is not None:
        del items[cfg.limit :]
    return inputs_table(items, consume=True)


ITEM_COLUMNS = {
    "key": pa.string(),
    "uri": pa.string(),
    "size": pa.int64(),
    "etag": pa.string(),
    "member_offset": pa.int64(),
    "error": pa.string(),
}  # then "source" (null: the uri)
INPUTS_SLICE = 1 << 16  # items turned into columns at a time


def inputs_table(items: list[InputItem], consume: bool = False) -> pa.Table:
    """The inputs as columns, built field by field: no Python row per input (a million row dicts
    were 280 MB of the driver's memory). A job column whose values Arrow cannot type as one column
    (strings and numbers mixed) is kept as pickled Python objects, as Ray Data itself does.
    ``consume``: the items are taken out of ``items`` a slice at a time as they become rows."""
    job_columns = {}
    for name in dict.fromkeys(name for i in items for name in i.extra):
        values = [i.extra.get(name) for i in items]
        try:
            job_columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            job_columns[name] = BlockAccessor.batch_to_block({name: np.array(values, dtype=object)})[name]
    if consume:
        pieces = []
        while items:
            pieces.append(_item_columns(items[:INPUTS_SLICE]))
            del items[:INPUTS_SLICE]
    else:
        pieces = [_item_columns(items[at : at + INPUTS_SLICE]) for at in range(0, len(items), INPUTS_SLICE)]
    table = pa.concat_tables(pieces).combine_chunks() if pieces else _item_columns([])
    del pieces
    for name, column in job_columns.items():
        table = table.append_column(name, column)
    release_unused_memory()  # the array builders' spare capacity, the slices
    return table


def _item_columns(items: list[InputItem]) -> pa.Table:
    columns = {name: pa.array([getattr(i, name) for i in items], kind) for name, kind in ITEM_COLUMNS.items()}
    # Where it came from, for people; null where that is the uri (the decoders fall back to it): the
    # uri again would be 45 MB at a million inputs.
    columns["source"] = pa.array([i.source or None for i in items], pa.string())
    return pa.table(columns)


def pending_inputs(selected: pa.Table, progress: Progress) -> pa.Table:
    """The resume check: the inputs not done yet, each with the sample indices to skip (``skip``)."""
    if "skip" in selected.column_names:
        selected = selected.drop_columns(["skip"])
    positions = progress.positions(selected["key"]) if selected.num_rows else np.zeros(0, np.int64)
    not_done = np.flatnonzero(~progress.done_at(positions))
    # Only the inputs not done become Python values: a rerun of a million done inputs makes none.
    skip = [progress.done_indices_at(p) if p >= 0 else [] for p in positions[not_done].tolist()]
    pending = selected.take(pa.array(not_done, pa.int64())).append_column("skip", pa.array(skip, pa.list_(pa.int64())))
    release_unused_memory()  # the lookup's hash table of every committed key
    return pending


def run_job(
    job: Job,
    *,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    monitor: ProgressDisplay | None = None,
    break_lease: bool = False,
) -> JobResult:
    """Run ``job`` to completion (resuming whatever its output already holds), holding the output's lease.

    ``progress``: Ray Data's own progress display. ``monitor`` gets the input counts and then every
    write report as it arrives (engine/progress.py: the CLI's live progress).

    Raises ConfigError / OutputConflict (another job, config or live run owns the output; LeaseLost
    when this run was fenced off), SourceError (the input cannot be listed or matched nothing) and
    OutputStoreError (the output store refuses writes). An incomplete run returns normally with
    ``result.complete`` false.
    """
    cfg = job.config
    copy = ray_working_dir_copy(cfg.output)
    if copy:
        raise ConfigError(
            f"output {cfg.output} is inside {copy}, the copy of the working directory Ray made for this job, "
            "which Ray deletes with what is in it: give an absolute path outside it (on a cluster, one every "
            "node mounts) or a URL (s3://bucket/...)"
        )
    overlap = overlapping_input(cfg.inputs(), cfg.output, cfg.storage_options)
    if overlap:
        raise ConfigError(
            f"output {cfg.output} overlaps input {overlap}: the next run would read the job's own files; "
            "write the output outside the input tree"
        )
    relative = submitted_relative_output(cfg.output)
    if relative:
        raise ConfigError(relative)
    storage = Storage(cfg.output, cfg.storage_options)
    if storage.fs.isfile(storage.root):
        raise ConfigError(f"output {cfg.output} is a file: give the folder (or prefix) the job writes its output into")
    file_above = local_file_above(storage)
    if file_above:
        raise ConfigError(f"output {cfg.output} is below {file_above}, which is a file: no folder can be made there")
    outer = enclosing_output(storage)
    if outer and storage.exists(JOB_FILE):  # made there before such outputs were refused: resumed, as it is safe
        log.warning(
            "output %s is inside %s, another run's output: each keeps its own files, but a new output belongs "
            "beside it, not in it",
            cfg.output,
            outer,
        )
    elif outer:
        raise ConfigError(
            f"output {cfg.output} is inside {outer}, another run's output (its _job.json): that output's next "
            "commit would delete the files it does not name; give a path outside it (a sibling, such as "
            f"{outer.rstrip('/')}-v2)"
        )
    with (
        store_failures_raised(storage.root),
        held_lease(storage, uuid.uuid4().hex, cfg.lease_timeout, break_lease) as lease,
    ):
        return _run_holding_lease(
            job, storage, lease, address=address, overwrite=overwrite, progress=progress, monitor=monitor
        )


def submitted_relative_output(output: str) -> str:
    """Why a relative local ``output`` is refused in a job submitted without ``--working-dir`` whose driver
    still runs where Ray's job supervisor does (the folder the Ray head was started in, not where
    ``ray job submit`` ran), else ``""``. Inside a working_dir copy the caller's own check says more."""
    head_folder = in_ray_job_supervisor_folder() if relative_local(output) else ""
    if not head_folder or ray_working_dir_copy("."):
        return ""
    return (
        f"output {output} is relative, and this submitted job's driver runs in {head_folder} (where the Ray head "
        "was started, not where ray job submit ran): give an absolute path (on a cluster, one every node "
        "mounts) or a URL (s3://bucket/...)"
    )


def local_file_above(storage: Storage) -> str:
    """The nearest existing ancestor of a local output that is a file, or ``""``."""
    if not is_local(storage.fs):
        return ""
    folder = os.path.dirname(os.path.abspath(storage.path))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return folder if os.path.isfile(folder) else ""


def _holds_files(spec: str) -> bool:
    """Whether a local input names anything to read: a file, a folder with a file that is not hidden (a data
    folder Ray's working_dir copy kept for its .gitkeep alone holds none), or a glob that matches."""
    if os.path.isdir(spec):
        return any(not name.startswith(".") for _, _, names in os.walk(spec) for name in names)
    return os.path.exists(spec) or bool(glob.glob(spec))


def _where_relative_inputs_were_read(specs: list[str]) -> str:
    """What to add to a listing error where a relative input was not found in a submitted job's folder: Ray's
    copy of its working directory (which leaves out what .gitignore names, data folders usually) or, without
    one, the folder the Ray head was started in."""
    missing = [s for s in specs if relative_local(s) and not _holds_files(os.path.expanduser(s))]
    if not missing:
        return ""
    copy = ray_working_dir_copy(".")
    if copy:
        return (
            f" (relative inputs such as {missing[0]} are read in {copy}, Ray's copy of the working directory, "
            "which leaves out what .gitignore names: give an absolute path or a URL)"
        )
    head_folder = in_ray_job_supervisor_folder()
    if head_folder:
        return (
            f" (relative inputs such as {missing[0]} are read in {head_folder}, where the Ray head was started: "
            "this submitted job has no --working-dir; give an absolute path or a URL)"
        )
    return ""


def _run_holding_lease(
    job: Job,
    storage: Storage,
    lease: Lease,
    *,
    address: str | None,
    overwrite: bool,
    progress: bool,
    monitor: ProgressDisplay | None,
) -> JobResult:
    cfg = job.config
    started = time.time()
    fingerprint_extra = job.fingerprint_extra()  # may hash model weights: once per run
    fingerprint = cfg.fingerprint(fingerprint_extra)
    config = cfg.recorded()
    state = OutputState(storage, job.is_data_file)
    # What a refusal compares to name what changed: the config's keys and the models' hashes ("models.")
    fingerprinted = {**cfg.fingerprinted(), **({"models": fingerprint_extra} if fingerprint_extra else {})}
    run_id = state.prepare(job.name, fingerprint, config, fingerprinted, overwrite, lease.run_id)

    mark("prepared")
    stop_point("run:prepared")  # tests: a run stopped while it lists (minutes for a bucket of millions)
    try:
        try:
            listed = job.list_inputs()
        except SourceError as e:
            raise SourceError(f"{e}{_where_relative_inputs_were_read(cfg.inputs())}") from None
        mark("listed")
        if not listed and not cfg.allow_empty:
            raise SourceError(f"no inputs matched {', '.join(cfg.inputs())} (set allow_empty: true to allow it)")
        # From here on the listing is two columns: the InputItem list (the driver's biggest object at a
        # million inputs) becomes the inputs table's rows as it goes, before the committed state is built.
        identities, listed_count = listed_identities(listed), len(listed)
        selected = select_inputs(job, listed, consume=True)
    except Exception:
        # Nothing changed yet (an empty nightly prefix, a listing outage, two files of one key): a complete
        # output stays complete (a stop, KeyboardInterrupt, is no Exception: it leaves no _SUCCESS)
        state.restore_success()
        raise
    del listed
    release_unused_memory()
    listed_at = time.time()
    done = state.progress()
    # The keys this run took, where a list or limit took fewer than listed (a copy of the column: not
    # made for the usual run, which takes them all).
    taken = selected["key"].combine_chunks() if selected.num_rows < listed_count else None
    changes = detect_changes(identities, done, taken)
    del taken, identities
    stale = changes.stale(cfg.on_change, cfg.on_delete)
    if stale:
        _warn_taken_out(job.name, changes, cfg.on_change, cfg.on_delete)
        rewritten = drop_inputs(state, job.make_sink(fingerprint), stale, still_holds=lease.check)
        log.info("%s: took %d stale inputs out of %d manifests", job.name, len(stale), rewritten)
        done = state.progress()
    pending = pending_inputs(selected, done)
    skipped = selected.num_rows - pending.num_rows
    # Neither is needed while the run processes: the committed state's columns and its decoded index
    # (the lost-input check and the commit build their own from the bytes already read).
    del done
    state.forget_decoded()
    mark("resume checked")
    log.info(
        "%s: %d inputs listed (%d new, %d changed, %d deleted, %d unchanged), %d selected, %d already committed, "
        "%d to process",
        job.name,
        listed_count,
        changes.new,
        len(changes.changed),
        len(changes.deleted),
        changes.unchanged,
        selected.num_rows,
        skipped,
        pending.num_rows,
    )
    report = changes.report(cfg.on_change, cfg.on_delete)
    _warn_kept_stale(job.name, report)

    how, writes, finished = "", [], False
    if monitor is not None:
        monitor.start(listed=listed_count, skipped=skipped, to_do=pending.num_rows, selected=selected.num_rows)
    try:
        if pending.num_rows:
            lease.check()  # lost while the run listed: no Ray started for a run that cannot commit
            mark("ray.init start")
            if monitor is not None:  # (30 s for a cluster that does not answer: not a run making no progress)
                at = address or os.environ.get("RAY_ADDRESS")
                monitor.waiting(f"waiting for Ray at {at}" if at else "waiting for Ray")
            how = connect(address)
            if monitor is not None:
                monitor.waiting("")
            mark("ray.init done")
            with data_context_kept():  # a caller's own pipelines keep their settings
                configure_data_context(cfg, progress)
                check_nodes_see_local_paths(
                    cfg.output,
                    storage.abspath(LEASE_FILE) if is_local(storage.fs) else None,
                    lease.run_id,
                    local_files(pending["uri"].take([0, pending.num_rows - 1]).to_pylist()),
                )
                mark("local paths checked")
                control = RunControl()
                lease.on_lost = lambda reason: control.stop("fenced", reason)
                try:
                    # The heartbeat told no one while Ray started: a lease lost by now ends the run here, not
                    # after every block was computed and fenced off (twice, as "lost" and retried).
                    lease.check()
                    writes = _execute_with_retries(job, pending, fingerprint, run_id, state, control, monitor)
                finally:
                    lease.on_lost = None  # a lease lost from here on fails the commit (still_holds)
                    control.close()
        finished = True
    except Exception:  # an error, not a stop (Ctrl-C and SIGTERM are KeyboardInterrupts): "failed"
        if monitor is not None:
            monitor.failed = True
        raise
    finally:
        if monitor is not None:
            monitor.close(finished)
    ran_at = time.time()
    mark("run done")

    extra: dict[str, Any] = {}
    manifest = state.commit(
        job=job.name,
        fingerprint=fingerprint,
        config=config,
        listed=listed_count,
        selected=selected.num_rows,
        skipped=skipped,
        processed_keys=pending["key"],
        timings={
            "list_seconds": round(listed_at - started, 3),
            "run_seconds": round(ran_at - listed_at, 3),
            "commit_seconds": round(time.time() - ran_at, 3),
        },
        extra={"fingerprint_extra": fingerprint_extra},
        run_id=run_id,
        selected_keys=selected["key"],
        inputs=report,
        still_holds=lease.renew,
        write_derived=lambda committed: extra.update(job.after_commit(storage, committed) or {}),
        before_success=monitor.writing_success if monitor is not None else None,
    )
    mark("committed")
    return JobResult(
        manifest=manifest,
        seconds=time.time() - started,
        output=storage.root,
        ray=how,
        run_rows=sum(w["rows"] for w in writes),
        writes=writes,
        extra=extra,
    )


def _warn_taken_out(name: str, changes: InputChanges, on_change: str, on_delete: str) -> None:
    """Names the inputs whose rows leave the output, before they do: a run stopped or killed after that commits
    no report of them, and the run that then finishes counts a changed one as new and a deleted one not at all."""
    for what, keys in changes.stale_groups(on_change, on_delete):
        more = f" and {len(keys) - 10} more" if len(keys) > 10 else ""
        log.warning("%s: %d %s: %s%s", name, len(keys), what, ", ".join(keys[:10]), more)


def _warn_kept_stale(name: str, report: dict[str, Any]) -> None:
    for what, keys in report["kept_stale"].items():
        count = report[what] - (report.get("deleted_unretried", 0) if what == "deleted" else 0)
        setting = "on_change: keep" if what == "changed" else "on_delete: keep"
        log.warning("%s: %d %s inputs keep their old rows (%s): %s", name, count, what, setting, ", ".join(keys[:10]))


def _execute_with_retries(
    job: Job,
    pending: pa.Table,
    fingerprint: str,
    run_id: str,
    state: OutputState,
    control: RunControl,
    monitor: ProgressDisplay | None = None,
) -> list[dict[str, Any]]:
    """Run the plan, handing each write report to ``monitor`` as it arrives; inputs whose blocks were
    lost (a worker or node died) run again on a pool planned for the cluster as it is then, up to
    ``lost_retries`` times. A stop (the output store failed, or this run was fenced off) ends the run."""
    writes: list[dict[str, Any]] = []
    retries = job.config.lost_retries
    for attempt in range(retries + 1):
        try:
            with control.watch_nodes():
                # A retry of a few lost inputs runs each alone: an input that kills its worker (a native
                # crash, an out-of-memory kill) took the blocks queued on that worker with it, every time. (A
                # lost node's many inputs run in blocks as before: one file and manifest each would be many.)
                alone = attempt > 0 and pending.num_rows <= ALONE_AT_MOST * job.config.inputs_per_block
                try:
                    reports = _execute(job, pending, fingerprint, run_id, control, alone=alone)
                except ConfigError as e:
                    if not attempt:
                        raise
                    # The cluster as it is now cannot run them (its one GPU node lost): lost, for the next run.
                    log.warning("%s: the lost inputs cannot run again in this run: %s", job.name, e)
                    break
                try:
                    for report in reports:
                        if report.get("fenced"):  # another run took the output over: nothing more of this is kept
                            control.stop("fenced", _taken_over(state, run_id))
                            _raise_if_stopped(control)
                        if not writes:
                            mark("first block written")
                            stop_point("run:first-block")  # tests: a run killed or held with blocks still to write
                        writes.append(report)
                        if monitor is not None:
                            monitor.update(report)
                finally:
                    # The plan's execution ends here, on a stop too (Ctrl-C, SIGTERM, an error), before a
                    # caller shuts Ray down: not whenever the garbage collector gets to the iterator.
                    reports.close()
        except Exception as e:
            _raise_if_stopped(control, e)
            raise
        _raise_if_stopped(control)
        progress = state.progress(identities=False)  # reads only the manifests written since; the commit reuses it
        lost = lost_keys(pending["key"], progress, run_id)
        if not lost or attempt == retries:
            break
        log.warning(
            "%s: %d inputs were lost to worker or node failures; running them again (retry %d of %d)",
            job.name,
            len(lost),
            attempt + 1,
            retries,
        )
        pending = pending_inputs(
            pending.filter(pc.is_in(pending["key"], value_set=pa.array(lost, pa.string()))), progress
        )
    return writes


def _taken_over(state: OutputState, run_id: str) -> str:
    """Why a write of this run was fenced off: ``_job.json`` names another run. (Its blocks were each retried as
    "lost to worker or node failures", their work done twice, until the heartbeat noticed.)"""
    other = claiming_run(state.storage) or "?"
    return (
        f"this run ({run_id}) lost its lease on {state.storage.root}: run {other} took the output over (its "
        "_job.json names it; --break-lease, or a lease taken as stale); this run was fenced off and commits nothing"
    )


def _raise_if_stopped(control: RunControl, cause: BaseException | None = None) -> None:
    kind, reason = control.state()
    if kind == "store":
        raise OutputStoreError(reason) from cause
    if kind == "fenced":
        raise LeaseLost(reason) from cause


class ControlledStage:
    """An actor stage under the run's control: registered (so a lost node's actor is let go) and
    stopped before a block when the run was told to stop. Wraps stages that do not decode.
    ``stage_cls`` may be a ``"package.module:ClassName"`` (``StageSpec.cls``): imported here, in the actor."""

    def __init__(self, stage_cls: type | str, stage_kwargs: dict[str, Any], control: RunControl | None = None):
        from .job import stage_class

        self.stage = stage_class(stage_cls)(**stage_kwargs)
        self.control = control
        if control is not None:
            control.register_actor()
        mark("actor ready")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.control is not None:
            self.control.check()
        return self.stage(batch)


# A GPU actor makes blocks several times faster than one write task encodes them: on an H200 the
# augment stage made about 15,000 views/s, one write task wrote 2,700 (a 41 MB block of 624 views
# in 230 ms of Parquet encoding), so a job with one write task at a time ran at 2,608 views/s.
WRITE_TASKS_PER_GPU_ACTOR = 8


def write_tasks(plan: PoolPlan) -> int:
    """Write tasks at once: one per CPU actor keeps up with it (more would only start more worker
    processes, each paying seconds of imports, for the same bytes); a GPU actor needs several."""
    return plan.max_size * (WRITE_TASKS_PER_GPU_ACTOR if plan.num_gpus > 0 else 1)


def controlled(stage_cls: type | str) -> type:
    """:class:`ControlledStage` under the stage's own name: Ray Data names an operator after its
    class, so the plan, the progress and the dashboard say ``MapBatches(AugmentStage)``, for a
    class and for its ``"package.module:AugmentStage"`` name alike (the name is not imported here)."""
    from .job import stage_name

    return type(stage_name(stage_cls), (ControlledStage,), {"__doc__": ControlledStage.__doc__})


class DecodeThenStage:
    """An actor stage with the decoder in front: input rows in, stage output out.

    ``chunk`` inputs at a time go through decode and stage (None: the whole block):
    large blocks keep per-block costs low, small chunks keep the decoded audio in cache.
    ``stage_cls`` may be a ``"package.module:ClassName"``, imported here (in the actor).
    """

    def __init__(
        self,
        decoder,
        stage_cls: type | str,
        stage_kwargs: dict[str, Any],
        chunk: int | None = None,
        control=None,
        piece_bytes: int = PIECE_BYTES,
    ):
        from .job import stage_class

        mark("actor constructor start")
        self.decoder = decoder
        self.stage = stage_class(stage_cls)(**stage_kwargs)
        self.chunk = chunk
        self.piece_bytes = piece_bytes
        self.control = control  # the run's RunControl: registered; a stopped run decodes nothing more
        if control is not None:
            control.register_actor()
        mark("actor ready")

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The block's stage output: decoded and staged a piece of about ``piece_bytes`` of audio at a time
        (nearly every block is one piece), handed on as one batch, or one per ``piece_bytes`` of output
        where it is more (a teacher's every clip of a long file; an encode block's latents stay one)."""
        if self.control is not None:
            self.control.check()
        n = len(next(iter(batch.values()), ()))
        size = self.chunk or max(1, n)
        outputs, held, handed_on = [], 0, False
        for start in range(0, n, size):
            chunk = {name: values[start : start + size] for name, values in batch.items()}
            pieces = (
                self.decoder.pieces(chunk, self.piece_bytes)
                if hasattr(self.decoder, "pieces")
                else [self.decoder(chunk)]
            )
            for decoded in pieces:
                output = self.stage(decoded) if decoded else decoded
                del decoded  # the piece's audio, before the next is decoded
                outputs.append(output)
                held += sum(v.nbytes for v in output.values() if isinstance(v, np.ndarray) and v.dtype != object)
                if held >= self.piece_bytes:
                    yield concat_batches(outputs)
                    outputs, held, handed_on = [], 0, True
        if outputs or not handed_on:
            yield concat_batches(outputs)


class DecodeStageWrite(DecodeThenStage):
    """:class:`DecodeThenStage` that also writes its output (``sink.write_block``) and returns
    only the write report, one row per block. For CPU clusters: on a GPU cluster the shards
    are written by CPU tasks so the GPU actors never wait on Parquet encoding."""

    def __init__(self, sink: ShardSink, **decode_then_stage):
        super().__init__(**decode_then_stage)
        self.sink = sink
        self.blocks_written = 0  # the report's "rank": informational, names no file

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for output in super().__call__(batch):  # a piece written before the next is decoded
            report = self.sink.write_block(output, rank=self.blocks_written)
            self.blocks_written += 1
            yield {name: np.array([value]) for name, value in report.items()}


def input_dataset(pending: pa.Table, per_block: int) -> ray.data.Dataset:
    """The pending inputs as Ray blocks of ``per_block`` rows, sliced without copies.

    ``from_blocks`` takes each block's metadata here in the driver; ``from_arrow`` would run a Ray
    task per block for it and wait, which on a fresh cluster first starts a worker process (1.2-1.6 s
    before the plan could start, measured on the 2-core VM) and at a million inputs runs 31,250 tasks."""
    pending = pending.combine_chunks()
    return ray.data.from_blocks([pending.slice(start, per_block) for start in range(0, pending.num_rows, per_block)])


# A retry of at most this many blocks' worth of lost inputs runs each input alone (see _execute_with_retries).
ALONE_AT_MOST = 4

# What a CPU actor gets: Ray 2.60 leaves CUDA_VISIBLE_DEVICES unset for an actor that asks for no GPU, so on
# a GPU node torch saw the node's GPUs and the stage ran there, unreserved (num_gpus: 0 did not mean CPU).
CPU_ONLY = {"runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}}


def _execute(
    job: Job,
    pending: pa.Table,
    fingerprint: str,
    run_id: str,
    control: RunControl | None = None,
    alone: bool = False,
) -> Iterator[dict[str, Any]]:
    """Build the Ray Data plan; the iterator runs it, yielding each write's report (from an actor
    or a write task) as it arrives. ``alone``: a block per input and one task at a time per actor (a
    lost input's rerun, so that one whose worker dies takes no other with it)."""
    cfg = job.config
    stages = job.stages()
    per_block = 1 if alone else cfg.inputs_per_block
    num_blocks = max(1, math.ceil(pending.num_rows / per_block))
    plan = plan_pool(cfg, uses_gpu=any(s.gpu for s in stages), max_useful=num_blocks, pools=len(stages))
    with warnings.catch_warnings():
        # Retry and restart bounds are only reachable through ray_remote_args in Ray 2.60,
        # which warns that the keyword moves in 2.64.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = input_dataset(pending, per_block)
        # Restarted whenever one dies (Ray Data's own default): a pool actor that stays dead still counts in the
        # pool, which never replaces it, and the run stalled until Ray Data's no-progress timeout (30 min), then
        # exited 1, when one input killed its actor every time. Its task still fails after MAX_TASK_RETRIES.
        actor_args = dict(num_cpus=plan.num_cpus, max_restarts=-1, max_task_retries=MAX_TASK_RETRIES)
        sink = job.make_sink(fingerprint)
        sink.run_id, sink.control = run_id, control
        fused_write = False
        if plan.num_gpus == 0:
            # CPU cluster: the first actor stage decodes its own input block, so decoded
            # audio never crosses the object store and no CPU sits reserved for decode tasks.
            first, *rest = stages
            fused = {
                "decoder": job.decoder(),
                "stage_cls": first.cls,
                "stage_kwargs": first.kwargs,
                "chunk": job.decode_chunk,
                "control": control,
                "piece_bytes": job.piece_bytes,
            }
            # A one-stage job's actors also write their output (unless the sink lays files
            # out by write-task rank): no output tensors through the object store, no write tasks.
            fused_write = not rest and not sink.layout_uses_rank
            if fused_write:
                stages = [StageSpec(DecodeStageWrite, {"sink": sink, **fused}, batch_size=None)]
            else:
                stages = [StageSpec(DecodeThenStage, fused, batch_size=None), *rest]
        else:
            ds = ds.map_batches(
                job.decoder(),
                batch_size=None,
                batch_format="numpy",
                num_cpus=plan.decode_cpus,
                max_retries=MAX_TASK_RETRIES,
            )
        for stage in stages:
            gpus = plan.num_gpus if stage.gpu else 0.0
            # Decoding stages take whole input blocks; other stages take rows in batches.
            decodes = isinstance(stage.cls, type) and issubclass(stage.cls, DecodeThenStage)
            batch_size = None if decodes else (stage.batch_size or cfg.batch_size)
            cls, kwargs = stage.cls, stage.kwargs
            if not decodes:  # under the run's control, as DecodeThenStage is
                cls, kwargs = controlled(cls), {"stage_cls": cls, "stage_kwargs": kwargs, "control": control}
            ds = ds.map_batches(
                cls,
                fn_constructor_kwargs=kwargs,
                batch_size=batch_size,
                batch_format="numpy",
                # (alone: one task at a time per actor never looks busy enough to Ray Data to grow a pool)
                compute=ActorPoolStrategy(
                    min_size=plan.min_size,
                    max_size=plan.min_size if alone else plan.max_size,
                    max_tasks_in_flight_per_actor=1 if alone else None,
                ),
                num_gpus=gpus or None,
                **actor_args,
                **({} if gpus else CPU_ONLY),
            )
    mark("plan built")
    if fused_write:
        return report_rows(ds)
    return stream_write(
        ds,
        sink,
        ray_remote_args={"num_cpus": WRITE_TASK_CPUS, "max_retries": MAX_TASK_RETRIES},
        concurrency=write_tasks(plan),
    )
