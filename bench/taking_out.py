"""Taking committed inputs out of an output: ``python -m bench.taking_out [--quick] [--inputs N] [--manifests M]``.

An input uploaded again (``on_change: reprocess``) or deleted (``on_delete: prune``) leaves the output
through ``engine.rewrite.drop_inputs``: every per-rank manifest naming it is written again without it.
Measured on an index of ``--inputs`` committed inputs folded into ``_manifests/index.parquet`` (32 inputs
a manifest, no data files: the bookkeeping alone), one key taken out of each of ``--manifests`` manifests,
local disk. The baseline, in the same run on a copy of the same output, is the loop ``drop_inputs`` had
before 2026-12-07: each manifest's rows filtered from the whole state, and the state built again per
manifest (``is_folded`` asked ``state_table()``, a ``_manifests/`` listing each time).
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench.common import table
from ray_pipelines.engine.manifest import OutputState
from ray_pipelines.engine.rewrite import drop_inputs, keys_in, rewrite_part
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.engine.state_index import part_of, parts_table, write_index
from ray_pipelines.storage import Storage

PER_MANIFEST = 32


def build_output(root: Path, inputs: int) -> None:
    storage = Storage(str(root))
    storage.makedirs("_manifests")
    parts = []
    for m in range(inputs // PER_MANIFEST):
        keys = (f"k{m * PER_MANIFEST + i:08d}" for i in range(PER_MANIFEST))
        manifest = {key: {"expected": 5, "written": [0, 1, 2, 3, 4], "etag": "e"} for key in keys}
        parts.append((f"_manifests/part-{m:012x}.json", {"run_id": "r", "inputs": manifest, "errors": [], "files": []}))
    write_index(storage, parts_table(parts))


def drop_inputs_before(state: OutputState, sink: ShardSink, keys: set[str]) -> int:
    """``drop_inputs`` as it was at 1b120b7 (the baseline)."""
    table = state.state_table()
    named = table.filter(pc.is_in(table["key"], value_set=pa.array(sorted(keys), pa.string())))
    rewritten = 0
    for name in sorted(set(named["part"].to_pylist())):
        part = part_of(table, name)
        inputs = keys_in(part, keys)
        if not inputs:
            continue
        state.state_table()  # what is_folded(name) did, per manifest
        rewrite_part(state.storage, sink, name, part, inputs, folded=name in state.folded_parts())
        rewritten += 1
    return rewritten


def timed(root: Path, keys: set[str], drop) -> tuple[float, int]:
    state = OutputState(Storage(str(root)))
    sink = ShardSink(output=str(root), storage_options=None, fingerprint="fp", index_column="index", output_columns=[])
    started = time.perf_counter()
    rewritten = drop(state, sink, keys)
    return time.perf_counter() - started, rewritten


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 inputs, 20 manifests")
    parser.add_argument("--inputs", type=int, default=200_000)
    parser.add_argument("--manifests", type=int, default=200)
    args = parser.parse_args()
    inputs, manifests = (20_000, 20) if args.quick else (args.inputs, args.manifests)
    keys = {f"k{m * PER_MANIFEST:08d}" for m in random.Random(0).sample(range(inputs // PER_MANIFEST), manifests)}
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        build_output(built, inputs)
        rows, base = [], None
        for name, drop in (("before (1b120b7)", drop_inputs_before), ("drop_inputs", drop_inputs)):
            copy = Path(tmp) / name.split()[0]
            shutil.copytree(built, copy)
            seconds, rewritten = timed(copy, keys, drop)
            base = base or seconds
            rows.append(
                [name, f"{inputs:,}", str(rewritten), f"{seconds:.2f}", f"{1000 * seconds / rewritten:.1f}"]
                + [f"{seconds / base:.3f}"]
            )
    print(table(rows, ["code", "committed inputs", "manifests rewritten", "seconds", "ms per manifest", "vs before"]))


if __name__ == "__main__":
    main()
