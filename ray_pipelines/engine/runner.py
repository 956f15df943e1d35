"""run_job: the one place where a job meets Ray.

    list inputs ─► drop committed ─► from_items ─► decode (CPU tasks) ─► stages (actor pools)
                                                 ─► ShardSink (write tasks) ─► commit (driver)

On a CPU cluster a one-stage job runs as a single actor pool instead: each actor
decodes its input block, runs the stage and writes the shards itself
(DecodeStageWrite), so neither audio nor output tensors cross the object store.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy

from ..config import CommonConfig
from ..sources import InputItem, read_key_list
from ..storage import Storage
from .decode import concat_batches, python_scalar
from .job import Job, StageSpec
from .manifest import OutputState
from .progress import Progress
from .runtime import MAX_TASK_RETRIES, WRITE_TASK_CPUS, configure_data_context, connect, plan_pool
from .sink import ShardSink
from .write_stream import stream_write

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
    if cfg.keep_list:
        keep = read_key_list(cfg.keep_list, cfg.storage_options)
        items = [i for i in items if i.key in keep]
    if cfg.ignore_list:
        ignore = read_key_list(cfg.ignore_list, cfg.storage_options)
        items = [i for i in items if i.key not in ignore]
    return items


def select_inputs(job: Job) -> list[dict[str, Any]]:
    """Listed inputs after keep/ignore lists and ``limit`` (applied to sorted keys)."""
    cfg = job.config
    items = apply_key_lists(job.list_inputs(), cfg)
    items.sort(key=lambda i: i.key)
    if cfg.limit is not None:
        items = items[: cfg.limit]
    return [i.to_row() for i in items]


def run_job(
    job: Job,
    *,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    monitor: Progress | None = None,
) -> JobResult:
    """Run ``job`` to completion (resuming whatever its output already holds).

    ``progress``: Ray Data's own progress display. ``monitor`` gets the input counts and then
    every write report as it arrives (engine/progress.py: the CLI's live progress)."""
    cfg = job.config
    started = time.time()
    storage = Storage(cfg.output, cfg.storage_options)
    fingerprint_extra = job.fingerprint_extra()  # may hash model weights: once per run
    fingerprint = cfg.fingerprint(fingerprint_extra)
    config = cfg.model_dump(mode="json")
    state = OutputState(storage, job.is_data_file)
    run_id = state.prepare(job.name, fingerprint, config, cfg.fingerprinted(), overwrite)

    rows = select_inputs(job)
    listed_at = time.time()
    done = state.progress()
    pending = []
    for row in rows:
        if done.is_done(row["key"]):
            continue
        already = done.done_indices(row["key"])
        row["skip"] = sorted(already) if already else []
        pending.append(row)
    skipped = len(rows) - len(pending)
    log.info("%s: %d inputs listed, %d already committed, %d to process", job.name, len(rows), skipped, len(pending))

    how, writes, finished = "", [], False
    if monitor is not None:
        monitor.start(listed=len(rows), skipped=skipped, to_do=len(pending))
    try:
        if pending:
            how = connect(address)
            configure_data_context(cfg, progress)
            for report in _execute(job, pending, fingerprint, run_id):
                writes.append(report)
                if monitor is not None:
                    monitor.update(report)
        finished = True
    finally:
        if monitor is not None:
            monitor.close(finished)
    ran_at = time.time()

    manifest = state.commit(
        job=job.name,
        fingerprint=fingerprint,
        config=config,
        listed=len(rows),
        skipped=skipped,
        processed_keys=[r["key"] for r in pending],
        timings={
            "list_seconds": round(listed_at - started, 3),
            "run_seconds": round(ran_at - listed_at, 3),
            "commit_seconds": round(time.time() - ran_at, 3),
        },
        extra={"fingerprint_extra": fingerprint_extra},
    )
    extra = job.after_commit(storage, manifest)
    return JobResult(
        manifest=manifest,
        seconds=time.time() - started,
        output=storage.root,
        ray=how,
        run_rows=sum(w["rows"] for w in writes),
        writes=writes,
        extra=extra,
    )


class DecodeThenStage:
    """An actor stage with the decoder in front: input rows in, stage output out.

    ``chunk`` inputs at a time go through decode and stage (None: the whole block):
    large blocks keep per-block costs low, small chunks keep the decoded audio in cache.
    """

    def __init__(self, decoder, stage_cls: type, stage_kwargs: dict[str, Any], chunk: int | None = None):
        self.decoder = decoder
        self.stage = stage_cls(**stage_kwargs)
        self.chunk = chunk

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(next(iter(batch.values()), ()))
        size = self.chunk or max(1, n)
        outputs = []
        for start in range(0, n, size):
            decoded = self.decoder({name: values[start : start + size] for name, values in batch.items()})
            outputs.append(self.stage(decoded) if decoded else decoded)
        return concat_batches(outputs)


class DecodeStageWrite(DecodeThenStage):
    """:class:`DecodeThenStage` that also writes its output (``sink.write_block``) and returns
    only the write report, one row per block. For CPU clusters: on a GPU cluster the shards
    are written by CPU tasks so the GPU actors never wait on Parquet encoding."""

    def __init__(self, sink: ShardSink, **decode_then_stage):
        super().__init__(**decode_then_stage)
        self.sink = sink
        self.blocks_written = 0  # the report's "rank": informational, names no file

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        report = self.sink.write_block(super().__call__(batch), rank=self.blocks_written)
        self.blocks_written += 1
        return {name: np.array([value]) for name, value in report.items()}


def _execute(job: Job, pending: list[dict[str, Any]], fingerprint: str, run_id: str) -> Iterator[dict[str, Any]]:
    """Build the Ray Data plan; the iterator runs it, yielding each write's report (from an actor
    or a write task) as it arrives."""
    cfg = job.config
    stages = job.stages()
    num_blocks = max(1, math.ceil(len(pending) / cfg.inputs_per_block))
    plan = plan_pool(cfg, uses_gpu=any(s.gpu for s in stages), max_useful=num_blocks)
    with warnings.catch_warnings():
        # Retry and restart bounds are only reachable through ray_remote_args in Ray 2.60,
        # which warns that the keyword moves in 2.64.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
        ds = ray.data.from_items(pending, override_num_blocks=num_blocks)
        actor_args = dict(num_cpus=plan.num_cpus, max_restarts=MAX_TASK_RETRIES, max_task_retries=MAX_TASK_RETRIES)
        sink = job.make_sink(fingerprint)
        sink.run_id = run_id
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
            batch_size = None if issubclass(stage.cls, DecodeThenStage) else (stage.batch_size or cfg.batch_size)
            ds = ds.map_batches(
                stage.cls,
                fn_constructor_kwargs=stage.kwargs,
                batch_size=batch_size,
                batch_format="numpy",
                compute=ActorPoolStrategy(min_size=plan.min_size, max_size=plan.max_size),
                num_gpus=gpus or None,
                **actor_args,
            )
    if fused_write:
        return ({name: python_scalar(value) for name, value in row.items()} for row in ds.iter_rows())
    # One writer per actor keeps up; more would only start more worker processes
    # (each pays seconds of imports) for the same bytes.
    return stream_write(
        ds,
        sink,
        ray_remote_args={"num_cpus": WRITE_TASK_CPUS, "max_retries": MAX_TASK_RETRIES},
        concurrency=plan.max_size,
    )
