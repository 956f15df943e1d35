"""Each write's report streamed to the driver as it finishes, read in the driver's own thread.

:func:`report_rows`: the rows of a plan whose actors write their own output (their reports). Not
``ds.iter_rows()``: it reads in Ray Data's threads (a worker and a prefetcher), which a stop (Ctrl-C,
SIGTERM) leaves running; after ``ray.shutdown()`` their next call into Ray made the core worker end the
process, and a stopped job now and then exited 1 instead of 130 or 143.

:func:`stream_write`: ``Dataset.write_datasink``, streaming each write task's report.

Ray 2.60's ``write_datasink`` materializes the whole write before it hands any write return
back (``on_write_complete`` gets them all at the end), so a driver cannot show progress. This
builds the same plan (Ray Data's ``Write`` operator over the dataset, as ``write_datasink``
does) and iterates it instead. It uses Ray Data internals that ``write_datasink`` itself uses;
the project pins ``ray==2.60.0``, and tests/test_engine_sink.py runs this path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ray
from ray.data import Dataset
from ray.data._internal.compute import TaskPoolStrategy
from ray.data._internal.logical.interfaces import LogicalPlan
from ray.data._internal.logical.operators import Write
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink
from ray.data.datasource.datasink import WriteResult


def report_rows(ds: Dataset) -> Iterator[dict[str, Any]]:
    """Every row of ``ds`` as a dict of Python values, each block read here as it is done. Stopping
    the iteration early (an exception, Ctrl-C) shuts the execution down."""
    for bundle in ds.iter_internal_ref_bundles():
        for block in ray.get(bundle.block_refs):
            yield from BlockAccessor.for_block(block).to_arrow().to_pylist()


def stream_write(
    ds: Dataset, sink: Datasink, *, ray_remote_args: dict[str, Any], concurrency: int | None
) -> Iterator[Any]:
    """Run ``ds.write_datasink(sink, ...)``; yield each write task's return value as it arrives.

    ``sink.on_write_complete`` gets every return at the end (``on_write_failed`` the error),
    as with ``write_datasink``. Stopping the iteration early (an exception, Ctrl-C) shuts the
    execution down.
    """
    write_op = Write(
        sink,
        input_dependencies=[ds._logical_plan.dag],
        ray_remote_args=ray_remote_args,
        compute=TaskPoolStrategy(concurrency),
    )
    write_ds = Dataset._from_parent(ds, LogicalPlan(write_op, ds.context))
    returns, rows, size = [], 0, 0
    try:
        for bundle in write_ds.iter_internal_ref_bundles():
            # Each write task outputs one one-row pandas block: num_rows, size_bytes, write_return.
            for block in ray.get(bundle.block_refs):
                rows += int(block["num_rows"].sum())
                size += int(block["size_bytes"].sum())
                value = block["write_return"].iloc[0]
                returns.append(value)
                yield value
    except BaseException as error:
        sink.on_write_failed(error)
        raise
    sink.on_write_complete(WriteResult(rows, size, returns))
