"""Driver costs from thousands to ten million committed inputs: ``python -m bench.scale``.

Options: ``--sizes``, ``--new-only`` (local, the new code only), ``--s3-sizes``, ``--s3-new-only``.

Synthetic committed outputs in the manifest format (32 inputs per block, 5 rows per input, one data
file per block), on local disk and on moto's S3 server on 127.0.0.1 (its own process, behind a WSGI
wrapper that counts requests). Two cases per size, each measured in a fresh subprocess (peak RSS: its
``VmHWM``):

- **resume check**: a rerun with nothing to do: read the committed state, pick the pending inputs
  (``OutputState.progress`` + ``runner.pending_inputs`` over the listed keys);
- **commit after 1 % new**: 1 % more inputs were just written (their per-block manifests and data
  files are on the store) and the run commits (``OutputState.commit``).

The baseline is the code at ``--baseline`` (a git ref, default ``main``; exported with ``git archive`` and
put first on the subprocess's ``PYTHONPATH``) on the output as that code leaves it (``--baseline-layout``:
``index``, the folded index ``_manifests/index.parquet``; ``parts``, pretty-printed per-block manifests and
no index, as code before the index wrote it); the new code (the working tree) runs on the output with
the index (built by ``state_index``). Both in the same run, on the same store.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import REPO, same_code_warning, table

# moto accepts any credentials; the real ones come from the environment, never from storage_options.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
PER_BLOCK, ROWS = 32, 5
NEW_FRACTION = 100  # 1 % new inputs for the commit case
TARGETS = (
    "resume 1M on moto < 15 s and < 100 requests; commit of +1 % on 1M < 30 s; peak RSS at 1M < 600 MB; "
    "at 10M under 2 GB"
)


def key(i: int) -> str:
    return f"c{i // 10_000:04d}/clip{i:08d}.flac"


def etag(i: int) -> str:
    return f"{1_764_000_000 + i}.25/{40_000 + i}"


def block_name(b: int) -> str:
    return f"part-{b:012x}"


def part(first: int, count: int) -> dict:
    """A per-block manifest as the sink writes it."""
    return {
        "rank": 0,
        "run_id": "bench",
        "fingerprint": "f" * 64,
        "files": [
            {"path": f"train/{block_name(first)}.parquet", "split": "train", "rows": count * ROWS, "bytes": 1 << 20}
        ],  # fmt: skip
        "inputs": {
            key(i): {"expected": ROWS, "written": list(range(ROWS)), "etag": etag(i)}
            for i in range(first, first + count)
        },
        "errors": [],
        "schema": {"view1": {"type": "tensor", "dtype": "float32", "shape": [1, 128, 130]}},
    }


# ---- building outputs -----------------------------------------------------------------------------
def build(fs, root: str, inputs: int, new: int, layout: str) -> None:
    """``inputs`` committed inputs (``layout``: "parts", main's pretty-printed manifests; "index", the
    folded index) plus ``new`` inputs just written as per-block manifests; one empty data file per block."""
    files: dict[str, bytes] = {}
    if layout == "parts":
        for first in range(0, inputs, PER_BLOCK):
            content = json.dumps(part(first, min(PER_BLOCK, inputs - first)), indent=2, sort_keys=True) + "\n"
            files[f"{root}/_manifests/{block_name(first)}.json"] = content.encode()
    else:
        files[f"{root}/_manifests/index.parquet"] = index_bytes(inputs)
    for first in range(inputs, inputs + new, PER_BLOCK):
        content = json.dumps(part(first, min(PER_BLOCK, inputs + new - first)), indent=2, sort_keys=True) + "\n"
        files[f"{root}/_manifests/{block_name(first)}.json"] = content.encode()
    for first in range(0, inputs + new, PER_BLOCK):
        files[f"{root}/train/{block_name(first)}.parquet"] = b""
    items = list(files.items())
    for start in range(0, len(items), 5000):
        if fs.protocol == "file" or "file" in fs.protocol:
            for path, data in items[start : start + 5000]:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        else:
            fs.pipe(dict(items[start : start + 5000]))


def index_bytes(inputs: int) -> bytes:
    """The index the new code's commit leaves for ``inputs`` committed inputs, built column-wise."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_pipelines.engine.state_index import FILE, HEADER, INPUT, STORED_SCHEMA, WRITE_ROWS, dumps

    blocks = (inputs + PER_BLOCK - 1) // PER_BLOCK
    header = {k: v for k, v in part(0, 1).items() if k not in ("inputs", "errors", "files")}
    names = [f"_manifests/{block_name(b * PER_BLOCK)}.json" for b in range(blocks)]
    in_block = np.arange(inputs) // PER_BLOCK
    n = blocks * 2 + inputs
    part_col = names + names + [names[b] for b in in_block.tolist()]
    kind = np.r_[np.full(blocks, HEADER), np.full(blocks, FILE), np.full(inputs, INPUT)].astype(np.int8)
    records = [dumps(header)] * blocks + [dumps(part(b * PER_BLOCK, min(PER_BLOCK, inputs - b * PER_BLOCK))["files"][0])
                                          for b in range(blocks)]  # fmt: skip
    written = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (inputs + 1) * ROWS, ROWS), pa.int32()),
        pa.array(np.tile(np.arange(ROWS, dtype=np.int32), inputs)),
    )
    nulls = lambda t, k: pa.nulls(k, t)  # noqa: E731
    columns = {
        "part": pa.array(part_col, pa.string()),
        "kind": pa.array(kind),
        "key": pa.concat_arrays([nulls(pa.string(), 2 * blocks), pa.array([key(i) for i in range(inputs)])]),
        "expected": pa.concat_arrays([nulls(pa.int64(), 2 * blocks), pa.array(np.full(inputs, ROWS, np.int64))]),
        "written": pa.concat_arrays([nulls(pa.list_(pa.int32()), 2 * blocks), written]),
        "etag": pa.concat_arrays([nulls(pa.string(), 2 * blocks), pa.array([etag(i) for i in range(inputs)])]),
        "index": nulls(pa.int64(), n),
        "retry": nulls(pa.bool_(), n),
        "run_id": pa.array(["bench"] * n, pa.string()),
        "replaces": nulls(pa.list_(pa.string()), n),
        "record": pa.concat_arrays([pa.array(records, pa.string()), nulls(pa.string(), inputs)]),
    }
    table = pa.table(columns, schema=STORED_SCHEMA).sort_by([("part", "ascending")])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=WRITE_ROWS)  # as write_index does
    return sink.getvalue().to_pybytes()


# ---- one measurement, in its own process ---------------------------------------------------------
def worker(case: str, root: str, options: dict, inputs: int, new: int, code: str) -> dict:
    import pyarrow as pa

    from ray_pipelines.engine import runner

    assert runner.__file__.startswith(code), f"measuring {runner.__file__}, not the code in {code}"
    from ray_pipelines.engine import manifest as manifest_module
    from ray_pipelines.engine.manifest import OutputState
    from ray_pipelines.storage import Storage

    keys = [key(i) for i in range(inputs + new)]
    # The inputs as the code's runner holds them: a key column (since the inputs table), or a row
    # dict per input (before); its commit gets the key column (or the list of keys) likewise.
    columnar = hasattr(runner, "inputs_table")
    selected = pa.table({"key": pa.array(keys, pa.string())}) if columnar else [{"key": k} for k in keys]
    if columnar:
        del keys
        keys = selected["key"]
    if case != "resume":
        selected = None
    # What this run processed: a key column where the code's commit takes one, else a list.
    processed = keys[inputs:] if hasattr(manifest_module, "key_array") or not columnar else keys[inputs:].to_pylist()
    try:  # as the runner does once its inputs table is built (inputs_table): the list's strings go back
        from ray_pipelines.engine.memory import release_unused_memory

        release_unused_memory()
    except ImportError:  # code before engine/memory.py
        pass
    listing_rss = rss_now()
    state = OutputState(Storage(root, options))
    started = time.perf_counter()
    if case == "resume":
        pending = runner.pending_inputs(selected, state.progress())
        assert len(pending) == new, (len(pending), new)
    else:
        manifest = state.commit(
            job="augment",
            fingerprint="f" * 64,
            config={},
            listed=inputs + new,
            skipped=inputs,
            processed_keys=processed,
            selected_keys=keys,
            timings={},
            run_id="bench",
        )
        assert manifest["complete"] and manifest["counts"]["inputs_with_output"] == inputs + new, manifest["counts"]
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss": rss_now("VmHWM:"), "listing_rss": listing_rss}


def rss_now(field: str = "VmRSS:") -> int:
    """This process's resident memory now (``VmHWM:``: its peak). Not ``getrusage``'s ``ru_maxrss``,
    which after a fork and exec keeps the parent's peak (this bench's parent holds a million inputs'
    worth of files while it builds them)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def measure(code: str, case: str, root: str, options: dict, inputs: int, new: int, counter: str | None) -> dict:
    path = [code, str(REPO)] if code != str(REPO) else [str(REPO)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    before = requests(counter)
    args = json.dumps({"case": case, "root": root, "options": options, "inputs": inputs, "new": new, "code": code})
    # Run in the code's own folder: ``python -m`` puts the working directory first on sys.path.
    out = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--worker", args], env=env, cwd=code, capture_output=True, text=True
    )
    lines = out.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"{case} failed:\n{out.stderr[-3000:]}")
    # Measured and printed; a crash at interpreter exit (seen once under heavy load: "terminate called
    # without an active exception") does not change what was measured.
    result = json.loads(lines[-1])
    result["requests"] = requests(counter) - before if counter else None
    return result


# ---- moto behind a request counter ---------------------------------------------------------------
# argv: the port, and the seconds each request is held before moto answers it (a store's latency).
COUNTER_SERVER = """
import sys, threading, time
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server
app = DomainDispatcherApplication(create_backend_app)
count = [0]
lock = threading.Lock()
latency = float(sys.argv[2])
def counting(environ, start_response):
    if environ.get("PATH_INFO") == "/__requests":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(count[0]).encode()]
    with lock:
        count[0] += 1
    if latency:
        time.sleep(latency)
    return app(environ, start_response)
make_server("127.0.0.1", int(sys.argv[1]), counting, threaded=True).serve_forever()
"""


def start_moto(latency_s: float = 0.0) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-c", COUNTER_SERVER, str(port), str(latency_s)]
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            requests(endpoint)
            return proc, endpoint
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto did not start")


def requests(endpoint: str | None) -> int:
    if not endpoint:
        return 0
    with urllib.request.urlopen(f"{endpoint}/__requests", timeout=10) as r:
        return int(r.read())


# ---- the run -------------------------------------------------------------------------------------
def export_baseline(dest: Path, ref: str) -> str:
    """The baseline: the ray_pipelines package at ``ref``, exported (the worktree's bench module stays)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", ref, "ray_pipelines"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return str(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", default="main", help="the git ref whose code is the baseline")
    parser.add_argument("--baseline-layout", choices=("index", "parts"), default="index", help="its output format")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="committed inputs on local disk")
    parser.add_argument("--new-only", default="10000000", help="sizes on local disk measured for the new code only")
    parser.add_argument("--s3-sizes", default="10000,100000", help="committed inputs on moto (both codes)")
    parser.add_argument("--s3-new-only", default="1000000", help="sizes on moto measured for the new code only")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return

    import fsspec

    parse = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    rows = []
    if warning := same_code_warning(args.baseline):
        print(warning, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = export_baseline(Path(tmp) / "baseline", args.baseline)
        moto, endpoint = start_moto() if args.s3_sizes or args.s3_new_only else (None, None)
        try:
            plans = [("local", n, True) for n in parse(args.sizes)]
            plans += [("local", n, False) for n in parse(args.new_only)]
            plans += [("moto", n, True) for n in parse(args.s3_sizes)]
            plans += [("moto", n, False) for n in parse(args.s3_new_only)]
            for store, inputs, with_base in plans:
                rows.extend(run_size(store, inputs, with_base, base, args.baseline_layout, tmp, endpoint, fsspec))
                print(f"done: {store} {inputs:,}", file=sys.stderr, flush=True)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait()
    print(
        f"\n32 inputs per block, 5 rows per input; commit after 1 % new inputs; {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}. Targets: {TARGETS}\n"
    )
    print(table(rows, HEADER))


HEADER = [
    "store",
    "inputs",
    "case",
    "code",
    "seconds",
    "requests",
    "peak RSS MB",
    "listing MB",
    "vs baseline",
    "per 10x",
]


def run_size(store, inputs, with_base, base, base_layout, tmp, endpoint, fsspec) -> list[list[str]]:
    new = inputs // NEW_FRACTION
    if store == "local":
        fs, options, prefix = fsspec.filesystem("file"), {}, f"{tmp}/out"
        counter = None
    else:
        import s3fs

        options = {"endpoint_url": endpoint}
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        bucket = f"scale-{inputs}"
        fs.mkdir(bucket)
        prefix, counter = f"{bucket}/out", endpoint
    out = []
    codes = (
        [("baseline", base, base_layout), ("new", str(REPO), "index")] if with_base else [("new", str(REPO), "index")]
    )
    for case in ("resume", "commit"):
        results = {}
        for name, code, layout in codes:
            root = f"{prefix}-{name}-{case}"
            build(fs, root, inputs, 0 if case == "resume" else new, layout)
            url = root if store == "local" else f"s3://{root}"
            results[name] = measure(code, case, url, options, inputs, 0 if case == "resume" else new, counter)
            fs.rm(root, recursive=True)
        for name, r in results.items():
            ratio = f"{r['seconds'] / results['baseline']['seconds']:.3f}" if "baseline" in results else ""
            growth = growth_of(store, case, name, inputs, r["seconds"])
            out.append(
                [
                    store,
                    f"{inputs:,}",
                    "resume check" if case == "resume" else "commit +1 %",
                    name,
                    f"{r['seconds']:.2f}",
                    "" if r["requests"] is None else f"{r['requests']:,}",
                    f"{r['peak_rss'] / 2**20:.0f}",
                    f"{r['listing_rss'] / 2**20:.0f}",
                    ratio,
                    growth,
                ]
            )
    return out


_seen: dict[tuple, tuple[int, float]] = {}


def growth_of(store, case, code, inputs, seconds) -> str:
    """Time growth per 10x inputs against the previous size measured for the same store, case and code."""
    previous = _seen.get((store, case, code))
    _seen[(store, case, code)] = (inputs, seconds)
    if previous is None or previous[1] <= 0:
        return ""
    import math

    factor = math.log10(inputs / previous[0])
    return f"{(seconds / previous[1]) ** (1 / factor):.1f}x" if factor > 0 else ""


if __name__ == "__main__":
    main()
