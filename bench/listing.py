"""Listing a bucket of many objects: ``python -m bench.listing [--quick] [--objects N] [--prefixes N]``.

What a run's listing costs before anything else can start (issue 19), on moto's S3 server on 127.0.0.1
(its own process, behind a WSGI wrapper that counts requests and can hold each one for a fixed
latency: real S3 answers a page of 1,000 keys in tens of milliseconds, moto on loopback in a few).
The objects sit under ``--prefixes`` subfolders, as datasets usually do (one per class, speaker,
shard or day). Both ways in the same run, alternating, on the same objects:

- **one walk** (the baseline, what ``sources.list_inputs`` did before): ``fs.find(root)``, pages of
  1,000 keys one after another;
- **per subfolder** (``sources.find_files``): one delimited listing of the root, then every subfolder
  walked concurrently on s3fs's event loop.

Both must return the same files; the table gives seconds, requests and the ratio.

A second table does the same for a **list file** of S3 URLs (``input: s3://bucket/inputs.txt``, one
object per line, ``--list-lines`` of them): one ``fs.info`` per line one after another (what
``sources.list_inputs`` did before, the baseline) against the lookups ``LIST_CONCURRENCY`` at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from bench.common import table
from bench.scale import requests, start_moto

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def fill(fs, root: str, objects: int, prefixes: int) -> None:
    names = {f"{root}/p{i % prefixes:03d}/clip{i:07d}.flac": b"" for i in range(objects)}
    items = list(names.items())
    for start in range(0, len(items), 2000):
        fs.pipe(dict(items[start : start + 2000]))


def measure(endpoint: str, root: str, how: str) -> tuple[float, int, int]:
    import s3fs

    from ray_pipelines.sources import find_files

    # A fresh filesystem each time (no listing cache, no warm connections carried over).
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    before = requests(endpoint)
    started = time.perf_counter()
    if how == "one walk":
        found = {p: i for p, i in fs.find(root, detail=True).items() if i.get("type") != "directory"}
    else:
        found = find_files(fs, root)
    seconds = time.perf_counter() - started
    return seconds, requests(endpoint) - before, len(found)


def measure_list_file(endpoint: str, list_url: str, paths: list[str], how: str) -> tuple[float, int, int]:
    import s3fs

    from ray_pipelines.sources import list_inputs

    before = requests(endpoint)
    started = time.perf_counter()
    if how == "one at a time":
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        found = [fs.info(path) for path in fs.cat_file(list_url).decode().split()]
    else:
        found = list_inputs(list_url, ["flac"], storage_options={"endpoint_url": endpoint})
    seconds = time.perf_counter() - started
    assert len(found) == len(paths), (len(found), len(paths))
    return seconds, requests(endpoint) - before, len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=20000)
    parser.add_argument("--prefixes", type=int, default=20)
    parser.add_argument("--latency-ms", default="0,30,100", help="added per request, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--list-lines", type=int, default=500, help="lines of the list file (0: no list file)")
    parser.add_argument("--quick", action="store_true", help="3,000 objects in 6 subfolders, one run each")
    args = parser.parse_args()
    if args.quick:
        args.objects, args.prefixes, args.repeats, args.list_lines = 3000, 6, 1, 200
    import s3fs

    rows, list_rows = [], []
    load_before = os.getloadavg()[0]
    for latency_ms in [float(x) for x in args.latency_ms.split(",")]:
        proc, endpoint = start_moto(latency_ms / 1000)
        try:
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
            fs.mkdir("bench")
            fill(fs, "bench/in", args.objects, args.prefixes)
            if args.list_lines:
                list_rows.extend(list_file_rows(endpoint, fs, latency_ms, args))
            runs: dict[str, list[tuple[float, int, int]]] = {"one walk": [], "per subfolder": []}
            for r in range(args.repeats):
                order = ["one walk", "per subfolder"] if r % 2 == 0 else ["per subfolder", "one walk"]
                for how in order:
                    runs[how].append(measure(endpoint, "bench/in", how))
            counts = {n for results in runs.values() for _, _, n in results}
            assert counts == {args.objects}, counts  # both ways find every object
            base = statistics.median(s for s, _, _ in runs["one walk"])
            for how, results in runs.items():
                seconds = statistics.median(s for s, _, _ in results)
                rows.append(
                    [
                        f"{latency_ms:g}",
                        f"{args.objects:,}",
                        str(args.prefixes),
                        how,
                        " / ".join(f"{s:.2f}" for s, _, _ in results),
                        f"{seconds:.2f}",
                        str(results[0][1]),
                        f"{base / seconds:.2f}x",
                    ]
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"\nlisting: {platform.node()}, {os.cpu_count()} cores, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    header = [
        "added latency ms",
        "objects",
        "subfolders",
        "listing",
        "seconds (each run)",
        "median s",
        "requests",
        "speed-up",
    ]
    print(table(rows, header))
    if list_rows:
        header = ["added latency ms", "lines", "lookups", "seconds (each run)", "median s", "requests", "speed-up"]
        print("\nA list file of S3 URLs (input: s3://bench/inputs.txt)")
        print(table(list_rows, header))


def list_file_rows(endpoint: str, fs, latency_ms: float, args) -> list[list[str]]:
    paths = sorted(fs.find("bench/in"))[: args.list_lines]
    fs.pipe("bench/inputs.txt", "".join(f"s3://{path}\n" for path in paths).encode())
    runs: dict[str, list[tuple[float, int, int]]] = {"one at a time": [], "concurrent": []}
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for how in order:
            runs[how].append(measure_list_file(endpoint, "s3://bench/inputs.txt", paths, how))
    base = statistics.median(s for s, _, _ in runs["one at a time"])
    rows = []
    for how, results in runs.items():
        seconds = statistics.median(s for s, _, _ in results)
        each = " / ".join(f"{s:.2f}" for s, _, _ in results)
        rows.append(
            [
                f"{latency_ms:g}",
                f"{len(paths):,}",
                how,
                each,
                f"{seconds:.2f}",
                str(results[0][1]),
                f"{base / seconds:.2f}x",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
