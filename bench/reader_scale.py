"""Making a reader over many files: ``python -m bench.reader_scale [--clips 20000,200000] [--baseline REF]``.

A training process makes its reader before the first batch, in every rank: it reads every file's
footer and builds the index of row groups (and ``ContrastiveViews`` each view's clip and version).
This measures that start on outputs in the augment job's layout (a view pair per row group, 120 rows
a file, the sink's encodings; columns ``key``, ``version``, ``view1``, ``view2``, ``source``), of N
clips in 5 versions each, with small views (``[1, 4, 4]``: a footer weighs the same whatever the view's
size; the files stay small; they are decoded from their pages as real views are). Written once under
``--work`` and kept.

Two readers, each made in a fresh subprocess (peak memory: its ``VmHWM``, less what it held before
making the reader, after its imports):

- ``ContrastiveViews``: tensor columns only, keys and versions from the row groups' statistics;
- ``ShardRows`` of every column: the small columns (``key``, ``version``, ``source``) read and kept
  while it is made, pyarrow parsing each file's footer for that.

The baseline is the code at ``--baseline`` (a git ref, default ``main``, exported as ``bench.scale``
does), the new code the working tree, alternating, ``--runs`` each, after one run not counted (the
files in the page cache for all of them: a cold first run would be the disk's figure, not the code's).
A third row is the new code reading its index from an index cache (``index_cache=``, a local folder
the run not counted wrote it to; its size is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, moto_s3, same_code_warning, table
from bench.scale import export_baseline

VERSIONS = 5
ROWS_PER_FILE = 120
VIEW_SHAPE = (1, 4, 4)


def write_output(dest: Path, clips: int) -> Path:
    """An augment-like committed output of ``clips`` clips x ``VERSIONS`` (kept when already written)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_pipelines.engine.arrow import tensor_array
    from ray_pipelines.engine.sink import encoding_options

    if (dest / "manifest.json").exists():
        return dest
    (dest / "train").mkdir(parents=True, exist_ok=True)
    clip = np.repeat(np.arange(clips), VERSIONS)
    version = np.tile(np.arange(VERSIONS), clips)
    views = np.random.default_rng(0).standard_normal((ROWS_PER_FILE, *VIEW_SHAPE)).astype(np.float32)
    files = []
    for number, lo in enumerate(range(0, len(clip), ROWS_PER_FILE)):
        rows = slice(lo, lo + ROWS_PER_FILE)
        n = len(clip[rows])
        keys = [f"library/speaker{c % 977:04d}/clip-{c:09d}.flac" for c in clip[rows]]
        data = pa.table(
            {
                "key": keys,
                "version": version[rows].astype(np.int64),
                "view1": tensor_array(views[:n]),
                "view2": tensor_array(-views[:n]),
                "source": [f"s3://bucket/{key}" for key in keys],
            }
        )
        path = f"train/part-{number:07d}.parquet"
        pq.write_table(data, dest / path, row_group_size=1, **encoding_options(data.schema, "lz4", None))
        files.append({"path": path, "split": "train", "rows": n, "bytes": (dest / path).stat().st_size})
    (dest / "manifest.json").write_text(json.dumps({"complete": True, "files": files}))
    return dest


def worker(reader: str, output: str, index_cache: str | None = None, storage_options: dict | None = None) -> dict:
    """Make the reader once, in this process: seconds, memory added at its peak and held after (and, from
    an object store, the files whose bytes it fetched)."""
    import ray_pipelines
    import ray_pipelines.readers.pages as pages
    import ray_pipelines.readers.rowgroups as rowgroups

    fetched = []
    if storage_options:  # count the files whose ranges (their footers) are fetched
        cat_ranges = rowgroups._cat_ranges
        rowgroups._cat_ranges = lambda fs, paths, *ranges: fetched.extend(paths) or cat_ranges(fs, paths, *ranges)

    # The small views are decoded from their pages, as real views (66 KB) are: the footers' tables then
    # give the index and the keys, as they do for a real output (the path being measured).
    pages.MIN_ROW_BYTES = 0
    pages.load_kernels().warm()  # once per training process, whichever reader: not what is measured
    from ray_pipelines.readers import ContrastiveViews, ShardRows, list_shards

    files = list_shards(output, "train", storage_options)
    before = _status_kb("VmRSS")
    started = time.perf_counter()
    options = {"index_cache": index_cache} if index_cache else {}  # (a baseline may not have it)
    if storage_options:
        options["storage_options"] = storage_options
    if reader == "ContrastiveViews":
        dataset = ContrastiveViews(output, "train", batch_size=256, reuse_batches=3, **options)
        items = dataset.clips()
    else:
        dataset = ShardRows(files, shuffle=True, batch_size=256, reuse_batches=3, **options)
        items = dataset.index.num_rows
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mb": (_status_kb("VmHWM") - before) / 1024,
        "held_mb": (_status_kb("VmRSS") - before) / 1024,
        "items": int(items),
        "row_groups": len(dataset.index),
        "files": len(files),
        "footers_fetched": len(fetched),
        "code": str(Path(ray_pipelines.__file__).parent.parent),
    }


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def run_worker(
    code: str, reader: str, output: Path | str, index_cache: Path | str | None = None, storage_options=None
) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([code, str(REPO)])}
    task = {"reader": reader, "output": str(output), "storage_options": storage_options}
    if index_cache:
        task["index_cache"] = str(index_cache)
    # Run in the code's own folder: ``python -m`` puts the working directory first on sys.path.
    done = subprocess.run(
        [sys.executable, "-m", "bench.reader_scale", "--worker", json.dumps(task)],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{reader} on {output} ({code}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(result["code"]).resolve() != Path(code).resolve():
        raise RuntimeError(f"the worker ran the code in {result['code']}, not {code}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--clips", default="20000,200000", help="output sizes, in clips (x 5 versions)")
    parser.add_argument("--baseline", default="main", help="the git ref whose code is the baseline")
    parser.add_argument("--runs", type=int, default=2, help="alternating runs of each code")
    parser.add_argument("--work", default="/tmp/bench-reader-scale", help="outputs are written (once) and kept here")
    parser.add_argument("--s3", action="store_true", help="then ContrastiveViews of the first size from moto S3")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return

    started = time.time()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}", flush=True)
    rows = []
    if warning := same_code_warning(args.baseline):
        print(warning, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = export_baseline(Path(tmp) / "baseline", args.baseline)
        for clips in [int(c) for c in args.clips.split(",")]:
            output = write_output(Path(args.work) / f"views-{clips}", clips)
            for reader in ("ContrastiveViews", "ShardRows"):
                cache = Path(tmp) / f"index-cache-{clips}-{reader}"
                codes = {
                    "baseline": (base, None),
                    "new": (str(REPO), None),
                    "new, from the index cache": (str(REPO), cache),
                }
                results: dict[str, list[dict]] = {name: [] for name in codes}
                # Not counted: every measured run finds the files cached; this one writes the index cache.
                run_worker(str(REPO), reader, output, cache)
                cache_mb = sum(f.stat().st_size for f in cache.iterdir()) / 1e6
                for _ in range(args.runs):
                    for name, (code, index_cache) in codes.items():
                        results[name].append(run_worker(code, reader, output, index_cache))
                first = results["new"][0]
                assert all(r["items"] == first["items"] for rs in results.values() for r in rs), results
                for name in codes:
                    runs = results[name]
                    seconds = statistics.median(r["seconds"] for r in runs)
                    base_seconds = statistics.median(r["seconds"] for r in results["baseline"])
                    peak = statistics.median(r["peak_mb"] for r in runs)
                    base_peak = statistics.median(r["peak_mb"] for r in results["baseline"])
                    rows.append(
                        [
                            reader,
                            f"{first['row_groups']:,}",
                            f"{first['files']:,}",
                            name,
                            f"{seconds:.2f}",
                            " / ".join(f"{r['seconds']:.2f}" for r in runs),
                            f"{seconds / base_seconds:.2f}",
                            f"{peak:,.0f}",
                            f"{peak / max(1e-9, base_peak):.2f}",
                            f"{statistics.median(r['held_mb'] for r in runs):,.0f}",
                            f"{peak * 1024 * 1024 / first['row_groups']:,.0f}",
                        ]
                    )
                print(f"  {reader}, {clips:,} clips: done (its index cache: {cache_mb:,.1f} MB)", flush=True)
    header = [
        "reader",
        "row groups (views)",
        "files",
        "code",
        "seconds to make",
        "each run",
        "vs baseline",
        "peak MB added",
        "vs baseline",
        "MB held after",
        "peak bytes per row group",
    ]
    print(f"\nbaseline: {args.baseline}; median of {args.runs} alternating runs, each in a fresh process\n")
    print(table(rows, header))
    if args.s3:
        clips = int(args.clips.split(",")[0])
        print(f"\nFrom S3 (a moto server in the benchmark's process), ContrastiveViews, {clips:,} clips:\n")
        print(s3_table(write_output(Path(args.work) / f"views-{clips}", clips), args.runs))
    print(f"\nload average at the end: {os.getloadavg()}; {time.time() - started:.0f} s")


def s3_table(output: Path, runs: int) -> str:
    """``ContrastiveViews`` of ``output`` uploaded to a moto server, made from the footers and from an index
    cache on the same store: seconds and the files whose footers were fetched (the working tree's code)."""
    with moto_s3("bench") as (options, fs):
        fs.put(str(output) + "/", "bench/views", recursive=True)  # the files and manifest.json
        variants = {"from the footers": None, "from the index cache": "s3://bench/index-cache"}
        run_worker(str(REPO), "ContrastiveViews", "s3://bench/views", variants["from the index cache"], options)
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, cache in variants.items():
                results[name].append(run_worker(str(REPO), "ContrastiveViews", "s3://bench/views", cache, options))
        seconds = {name: statistics.median(r["seconds"] for r in result) for name, result in results.items()}
        rows = [
            [
                name,
                f"{result[0]['files']:,}",
                f"{seconds[name]:.2f}",
                " / ".join(f"{r['seconds']:.2f}" for r in result),
                f"{seconds[name] / seconds['from the footers']:.2f}",
                f"{result[0]['footers_fetched']:,}",
                f"{statistics.median(r['peak_mb'] for r in result):,.0f}",
            ]
            for name, result in results.items()
        ]
        return table(
            rows,
            ["made", "files", "seconds to make", "each run", "vs footers", "files fetched from", "peak MB added"],
        )


if __name__ == "__main__":
    main()
