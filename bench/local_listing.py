"""Listing a local folder: ``python -m bench.local_listing [--quick] [--files N] [--folders N]``.

What ``sources.find_files`` costs on local disk, where it walks the tree itself (``sources.walk_local``:
symlinked folders followed, each file's identity as ``fs.find`` gives it) instead of calling fsspec's
``fs.find`` (the baseline, what it did before, following no folder link). Both in the same run,
alternating, on the same files in a temporary folder; both must give every file the same identity.
The last row is ``sources.is_hidden``'s cost per key, the check every listed key now goes through.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import fsspec

from bench.common import table
from ray_pipelines.sources import is_hidden, walk_local


def make_tree(root: str, files: int, folders: int) -> None:
    for i in range(files):
        folder = os.path.join(root, f"speaker{i % folders:04d}")
        os.makedirs(folder, exist_ok=True)
        open(os.path.join(folder, f"utt{i:08d}.flac"), "wb").close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 files, 2 rounds")
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--folders", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    files, rounds = (2_000, 2) if args.quick else (args.files, args.rounds)
    local = fsspec.filesystem("file")
    with tempfile.TemporaryDirectory() as root:
        make_tree(root, files, args.folders)
        found, walked = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            by_find = {p: i for p, i in local.find(root, detail=True).items() if i["type"] != "directory"}
            found.append(time.perf_counter() - started)
            started = time.perf_counter()
            by_walk = walk_local(root)
            walked.append(time.perf_counter() - started)
            identity = {p: f"{i['mtime']}/{i['size']}" for p, i in by_find.items()}
            assert identity == {p: f"{i['mtime']}/{i['size']}" for p, i in by_walk.items()}, "identities differ"
        keys = [os.path.relpath(p, root) for p in by_walk]
        started = time.perf_counter()
        hidden = sum(map(is_hidden, keys))
        per_key = (time.perf_counter() - started) / len(keys)
    assert hidden == 0
    base = statistics.median(found)
    rows = [
        ["fs.find (before)", f"{min(found):.3f}-{max(found):.3f}", "1.00x"],
        [
            "sources.walk_local (now)",
            f"{min(walked):.3f}-{max(walked):.3f}",
            f"{base / statistics.median(walked):.2f}x",
        ],
        ["sources.is_hidden, per key", f"{per_key * 1e6:.2f} us", ""],
    ]
    print(f"{files:,} files in {args.folders} folders, {rounds} rounds, every identity equal both ways")
    print(table(rows, ["listing, local disk", "seconds", "speed vs fs.find (median)"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
