"""Cost of change detection against the resume check: ``python -m bench.changes [--quick] [--inputs N]``.

Every run compares each listed input's identity with the committed one (``engine.changes``). The
target (issue 15): under 5 % of the resume check, per 100,000 committed inputs. Measured in one run,
on one output built here on local disk the way the sinks lay it out (one per-rank manifest per block of
8 inputs, 2 samples each; the listing has 1 % of inputs changed, 1 % deleted, 1 % new):

1. the resume check as ``run_job`` does it: read every per-rank manifest into ``Progress``
   (``OutputState.progress``) and pick the pending inputs (``runner.pending_inputs``): the baseline;
2. the pending-input pass alone (the resume check without reading the manifests);
3. change detection (``changes.detect_changes``) on the same listing and ``Progress``.

Each is timed ``--repeats`` times, the three taking turns in every round (median). Ratios are 3
over 1 (the target) and 3 over 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import table
from ray_pipelines.engine.changes import detect_changes
from ray_pipelines.engine.manifest import MANIFEST_DIR, OutputState
from ray_pipelines.engine.runner import inputs_table, pending_inputs
from ray_pipelines.sources import InputItem
from ray_pipelines.storage import Storage

INPUTS_PER_BLOCK = 8
SAMPLES = 2


def identity(i: int) -> str:
    return f"{1_764_000_000 + i}.25/{40_000 + i}"


def key(i: int) -> str:
    return f"c{i // 1000:04d}/clip{i:07d}.flac"


def build_output(root: Path, inputs: int) -> None:
    """Per-rank manifests as the sink writes them (files, inputs with written indices and identity)."""
    parts = root / MANIFEST_DIR
    parts.mkdir(parents=True)
    for block in range(0, inputs, INPUTS_PER_BLOCK):
        keys = range(block, min(block + INPUTS_PER_BLOCK, inputs))
        part = {
            "rank": 0,
            "run_id": "bench",
            "fingerprint": "f" * 64,
            "files": [{"path": f"train/part-{block:012x}.parquet", "split": "train", "rows": 16, "bytes": 1 << 20}],
            "inputs": {
                key(i): {"expected": SAMPLES, "written": list(range(SAMPLES)), "etag": identity(i)} for i in keys
            },
            "errors": [],
            "schema": {},
        }
        (parts / f"part-{block:012x}.json").write_text(json.dumps(part, indent=2, sort_keys=True))


def listing(inputs: int) -> list[InputItem]:
    """The source as a run lists it: 1 % changed, 1 % deleted (left out), 1 % new (appended)."""
    items = []
    for i in range(inputs):
        if i % 100 == 7:
            continue  # deleted
        etag = identity(i) if i % 100 != 3 else identity(i) + "9"  # changed: another size
        items.append(InputItem(key=key(i), uri=f"/data/{key(i)}", size=40_000 + i, etag=etag))
    items += [InputItem(key=key(inputs + i), uri="/data/new", size=1, etag="1/1") for i in range(inputs // 100)]
    return items


def interleaved_medians(steps: dict[str, object], repeats: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each step, the steps taking turns in every round (a shared machine's load
    then weighs on all of them alike); and each step's last result."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    results: dict[str, object] = {}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            results[name] = step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) for name, t in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 inputs, 3 repeats")
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    inputs, repeats = (20_000, 3) if args.quick else (args.inputs, args.repeats)

    with tempfile.TemporaryDirectory(prefix="bench-changes-") as tmp:
        build_output(Path(tmp), inputs)
        state = OutputState(Storage(tmp))
        listed = listing(inputs)
        selected = inputs_table(listed)

        progress = state.progress()
        seconds, results = interleaved_medians(
            {
                # A fresh state each round: an OutputState reads what is committed once per run.
                "resume": lambda: pending_inputs(selected, OutputState(Storage(tmp)).progress()),
                "pass": lambda: pending_inputs(selected, progress),
                "detection": lambda: detect_changes(listed, progress),
            },
            repeats,
        )
    resume, pending_pass, detection = seconds["resume"], seconds["pass"], seconds["detection"]
    pending, changes = results["resume"], results["detection"]

    assert len(changes.changed) == inputs // 100 and len(changes.deleted) == inputs // 100
    assert changes.new == inputs // 100 and len(pending) == changes.new  # changed ones are still committed here
    per = 100_000 / inputs
    print(
        f"\n{inputs:,} committed inputs in {inputs // INPUTS_PER_BLOCK:,} per-rank manifests; listing: "
        f"{len(changes.changed):,} changed, {len(changes.deleted):,} deleted, {changes.new:,} new; "
        f"median of {repeats}; {platform.processor() or platform.machine()}, Python {platform.python_version()}\n"
    )
    print(
        table(
            [
                ["resume check (read manifests + pending inputs): baseline", f"{resume * per * 1000:.1f}", "1.000"],
                ["pending-input pass alone", f"{pending_pass * per * 1000:.1f}", f"{pending_pass / resume:.3f}"],
                [
                    "change detection (identities, new / deleted keys)",
                    f"{detection * per * 1000:.1f}",
                    f"{detection / resume:.3f} ({detection / pending_pass:.2f} of the pass alone)",
                ],
            ],
            ["step", "ms per 100,000 inputs", "vs resume check"],
        )
    )


if __name__ == "__main__":
    main()
