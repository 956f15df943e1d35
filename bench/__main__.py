"""``python -m bench [--quick] [job ...]``: run the benchmarks, one table each.

Each benchmark compares the job with the approach it replaces in the same
run and prints ratios; absolute numbers on shared machines are noise.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

BENCHMARKS = [
    "augment",
    "teacher",
    "encode",
    "features",
    "score",
    "score_mae",
    "formats",
    "changes",
    "taking_out",
    "listing",
    "local_listing",
    "readers",
]
# Run by hand with their own options (docs/benchmarks.md): scale and reader_scale write outputs of
# millions of inputs and compare with another git ref's code; gpu runs on a lent GPU machine.


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks, one table each.",
        epilog="A benchmark's own options: python -m bench.<name> --help.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each: a smoke test")
    parser.add_argument(
        "names", nargs="*", metavar="name", help=f"benchmarks to run (default: {', '.join(BENCHMARKS)})"
    )
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # `python -m bench readers --runs 1` passed "--runs" to every benchmark and took "1" for a name
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (a benchmark's own options: python -m bench.<name>)")
    flags = ["--quick"] if args.quick else []
    chosen = args.names or BENCHMARKS
    failed = []
    for name in chosen:
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"bench.{name}: not present, skipped")
            continue
        print(f"\n=== bench.{name} {' '.join(flags)}", flush=True)
        if subprocess.call([sys.executable, "-m", f"bench.{name}", *flags]) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
