"""Benchmark of the readers: ``python -m bench.readers [--quick] [--tables local,s3,writer,phases]``.

For each job's output at a realistic size, a shuffled DataLoader with 2
workers (persistent, as stable-audio-tools' loader), two epochs, items/s and
CPU per item (this process and its workers: steadier than wall time on a
shared machine) of:

1. the seed-style baseline on the same data, in the same run: one
   ``torch.load`` per ``.pt`` sample for augment (the seed's
   ``PreGeneratedSpectrogramDataset``: a version per clip and epoch), one big
   ``.pt`` loaded whole for the teacher cache (then a ``TensorDataset``), one
   ``np.load`` (+ its ``.json``) per ``.npy`` for encode, as
   stable-audio-tools' ``PreEncodedDataset`` does;
2. the project's reader (``ContrastiveViews``, ``TeacherCache``,
   ``EncodedShardRows`` / ``EncodedLatents``, ``FeatureSnippets``), shuffled,
   in item mode (the DataLoader batches with ``default_collate``) and in
   batched mode (``batch_size=`` on the reader, the DataLoader's ``None``: the
   worker writes each batch straight into shared memory), the same batch size,
   and batched with ``reuse_batches=3`` ("reused": each worker writes into the
   memory of 3 batches in turn, no fresh pages per batch), the last also with
   every tensor column decoded by pyarrow ("reused, pyarrow pages": what the
   readers' page decoder, readers/pages.py, saves). The baseline and the reused
   reader also run a third epoch, measured apart ("3rd epoch": the same
   workers, no set-up: the rate a long training run sees); the page decoder's
   kernels load once per training process (numba, measured in a fresh process)
   and a column adds that load to the reused reader's two epochs;
3. the read limit: pyarrow reading every file sequentially in one thread
   (without pre-buffering: its faster way on these files), decompression and
   conversion to NumPy included, the columns the reader
   yields (rows/s; a row is one item's data), and the raw file bytes per
   second; plus the reader in this process (``num_workers=0``: its own
   background threads decode, no DataLoader worker copies batches into shared
   memory).

Then the same readers from S3 (a moto server in this process, on the same two
cores). ``--tables writer`` adds the table the writer's defaults were chosen from:
each output rewritten with other codecs and row-group sizes, its size, the
sequential pyarrow rate and the reader's shuffled epoch. ``--tables phases``
takes three epochs of each reader with a baseline apart: making it, the wait
for each epoch's first batch (the first epoch's holds the workers' start) and
each epoch, in milliseconds, against its baseline.

Outputs: augment and features are written by the jobs themselves, from the
real recordings (cycled) and from 3-minute songs of real loops (bench.features'
library); the teacher cache (synthetic signals of
``ray_pipelines.synth`` and a filtered copy as ``y``) and the encode output
(``[64, 645]`` float32 latents, the shape of stable-audio-tools' VAE on 30 s at
44.1 kHz, Gaussian like posterior samples, padding masks of real clip lengths)
are written through the project's own sinks. Everything is kept under
``--work`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from bench.common import SHARED, TreeCPU, make_clips, moto_s3, table
from bench.features import make_library

WORKERS = 2
EPOCHS = 2
# Batched mode with reused memory: the DataLoader's default prefetch_factor (2) + 1, the least that is safe.
REUSE = 3


# ---- writing committed outputs through the project's sinks ---------------------------------------------


def write_output(
    output: Path | str,
    job: str,
    rows: dict[str, np.ndarray],
    *,
    index_column: str,
    output_columns: list[str],
    rows_per_block: int = 128,
    sink_class=None,
    config: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    **sink_kwargs,
) -> dict[str, Any]:
    """Commit ``rows`` (with ``key``, ``index_column`` and optionally ``split``) as a job's output.

    Written block by block by the project's ``ShardSink`` (or ``sink_class``), then
    committed by ``OutputState``, exactly as a job would (manifest.json, _SUCCESS).
    """
    from ray_pipelines.engine.manifest import OutputState
    from ray_pipelines.engine.sink import ShardSink
    from ray_pipelines.storage import Storage

    storage = Storage(str(output), storage_options)
    if storage.exists(""):  # written afresh: prepare's overwrite resumes an output of the same fingerprint
        storage.fs.rm(storage.abspath(""), recursive=True)
    state = OutputState(storage)
    state.prepare(job, "bench", config or {}, {}, overwrite=True)
    sink = (sink_class or ShardSink)(
        output=str(output),
        storage_options=storage_options,
        fingerprint="bench",
        index_column=index_column,
        output_columns=output_columns,
        schema_metadata={"ray_pipelines.job": job},
        **sink_kwargs,
    )
    n = len(rows["key"])
    for rank, start in enumerate(range(0, n, rows_per_block)):
        block = {name: values[start : start + rows_per_block] for name, values in rows.items()}
        count = len(block["key"])
        block.setdefault("split", np.full(count, "", dtype=object))
        block["error"] = np.full(count, "", dtype=object)
        block["samples_per_input"] = np.full(count, 1, dtype=np.int64)
        sink.write_block(block, rank=rank)
    return state.commit(
        job=job,
        fingerprint="bench",
        config=config or {},
        listed=n,
        skipped=0,
        processed_keys=sorted(set(rows["key"].tolist())),
        timings={},
    )


def teacher_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic teacher cache: 1.2 s clips at 44.1 kHz from the project's generator, ``y`` a
    one-pole low-pass of ``x`` (an effect teacher), the drawn ``f0``/``db``/``family``."""
    import scipy.signal

    from ray_pipelines.synth import SynthConfig, stored_f0, synth_sample

    cfg, samples = SynthConfig(num_samples=n), 52920
    x = np.empty((n, samples), dtype=np.float32)
    f0, db, family = np.empty(n), np.empty(n), np.empty(n, dtype=object)
    for i in range(n):
        audio, params = synth_sample(cfg, seed, f"synth/train/{i:06d}", i, 44100, samples)
        x[i], f0[i], db[i], family[i] = audio, stored_f0(params), params.db, params.family
    y = scipy.signal.lfilter([0.2], [1.0, -0.8], x, axis=1).astype(np.float32)
    return {
        "key": np.array([f"synth/train/{i:06d}" for i in range(n)], dtype=object),
        "window": np.zeros(n, dtype=np.int64),
        "x": x,
        "y": y,
        "f0": f0,
        "db": db,
        "family": family,
        "split": np.full(n, "train", dtype=object),
        "source": np.array([f"synth://train/{i}" for i in range(n)], dtype=object),
    }


TEACHER_COLUMNS = ["key", "window", "x", "y", "f0", "db", "family", "source"]


def write_teacher(output: Path | str, rows: dict[str, np.ndarray]) -> None:
    """A teacher cache in the teacher job's codec and row groups."""
    from ray_pipelines.jobs.teacher import TeacherConfig, TeacherJob

    write_output(
        output,
        "teacher",
        rows,
        index_column="window",
        output_columns=TEACHER_COLUMNS,
        compression=TeacherConfig.model_fields["compression"].default,
        row_group_bytes=TeacherJob.row_group_bytes,
    )


def encode_rows(n: int, channels: int = 64, frames: int = 645, ratio: int = 2048, seed: int = 0) -> dict:
    """Latents as stable-audio-tools' VAE makes them for 30 s windows, with the job's metadata."""
    from ray_pipelines.padding import latent_padding_mask

    rng = np.random.default_rng(seed)
    sample_size, rate = frames * ratio, 44100
    valid = np.minimum(sample_size, (rng.uniform(0.1, 40.0, n) * rate).astype(np.int64))
    total = np.maximum(valid, 1) / rate
    return {
        "key": np.array([f"clips/c{i // 100:03d}/clip{i:06d}.flac" for i in range(n)], dtype=object),
        "window": np.zeros(n, dtype=np.int64),
        "latents": rng.standard_normal((n, channels, frames), dtype=np.float32),
        "padding_mask": latent_padding_mask(valid, ratio, frames),
        "seconds_start": np.zeros(n),
        "seconds_total": total,
        "timestamps": np.stack([np.zeros(n), np.minimum(1.0, sample_size / rate / total)], axis=1),
        "sample_rate": np.full(n, rate, dtype=np.int64),
        "path": np.array([f"/data/clips/clip{i:06d}.flac" for i in range(n)], dtype=object),
        "relpath": np.array([f"clip{i:06d}.flac" for i in range(n)], dtype=object),
        "start_seconds": np.zeros(n),
        "valid_samples": valid,
    }


def write_encode(
    output: Path | str, n: int, storage_options: dict[str, Any] | None = None, rows: dict | None = None
) -> None:
    """Both layouts (``layout: both``): the SAT .npy/.json files with filelist.txt, and Parquet in the
    encode job's default codec."""
    from ray_pipelines.encoders.sat_sink import SatSink, write_filelist
    from ray_pipelines.jobs.encode import OUTPUT_COLUMNS, EncodeConfig, EncodeJob
    from ray_pipelines.storage import Storage

    manifest = write_output(
        output,
        "encode",
        rows if rows is not None else encode_rows(n),
        index_column="window",
        output_columns=list(OUTPUT_COLUMNS),
        sink_class=SatSink,
        write_parquet=True,
        config={"layout": "both"},
        storage_options=storage_options,
        compression=EncodeConfig.model_fields["compression"].default,
        row_group_bytes=EncodeJob.row_group_bytes,
    )
    write_filelist(Storage(str(output), storage_options), manifest["files"])


# ---- preparing the outputs and the seed-style copies ------------------------------------------------


def committed(output: Path) -> bool:
    return (output / "_SUCCESS").exists()


def run_quiet_job(job) -> None:
    from ray_pipelines.engine.runner import run_job

    run_job(job, progress=False)


def prepare(work: Path, clips: int, teacher: int, encode: int, audio_source: Path = SHARED) -> dict[str, Path]:
    from ray_pipelines.config import validate_config
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
    from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob

    outputs = {name: work / name for name in ("augment", "teacher", "encode", "features")}
    audio = make_clips(work / "clips", clips, source=audio_source)
    if not committed(outputs["augment"]):
        print(f"writing the augment output ({clips} real clips x 5 versions)...", flush=True)
        run_quiet_job(
            AugmentJob(validate_config(AugmentConfig, {"input": str(audio), "output": str(outputs["augment"])}))
        )
    if not committed(outputs["features"]):
        songs = max(48, clips // 6)
        print(f"writing the features output ({songs} 3-minute songs of real loops x 6 snippets)...", flush=True)
        cfg = {"input": str(make_library("flac", songs)), "output": str(outputs["features"])}
        run_quiet_job(FeaturesJob(validate_config(FeaturesConfig, cfg)))
    if not committed(outputs["teacher"]):
        print(f"writing the teacher cache ({teacher} synthetic clips)...", flush=True)
        write_teacher(outputs["teacher"], teacher_rows(teacher))
    if not committed(outputs["encode"]):
        print(f"writing the encode output ({encode} latents, both layouts)...", flush=True)
        write_encode(outputs["encode"], encode)
    # The jobs above ran on an embedded Ray in this process; the DataLoaders below fork their workers,
    # which a process connected to Ray must not do (readers/epoch.py, warn_if_forked_from_ray).
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    return outputs


def seed_copies(work: Path, outputs: dict[str, Path]) -> dict[str, Path]:
    """What the seeds trained from: a .pt per augment sample, one .pt of the whole teacher cache."""
    from ray_pipelines.engine.arrow import column_to_numpy
    from ray_pipelines.readers.parquet import list_shards

    pt_dir, big = work / "seed-augment-pt", work / "seed-teacher.pt"
    if not (pt_dir / "index.json").exists():
        pt_dir.mkdir(parents=True, exist_ok=True)
        index: dict[str, dict[str, str]] = {}
        for path in list_shards(str(outputs["augment"]), "train"):
            t = pq.read_table(path)
            v1, v2 = column_to_numpy(t.column("view1")), column_to_numpy(t.column("view2"))
            for i, (key, version) in enumerate(zip(t.column("key").to_pylist(), t.column("version").to_pylist())):
                clip = index.setdefault(key, {"number": f"{len(index):06d}"})
                name = clip[str(version)] = f"{clip['number']}_{version}.pt"
                views = {"view1": torch.from_numpy(v1[i].copy()), "view2": torch.from_numpy(v2[i].copy())}
                torch.save(views, pt_dir / name)
        (pt_dir / "index.json").write_text(json.dumps(index))
    if not big.exists():
        t = pq.read_table(str(outputs["teacher"] / "train"))
        torch.save(
            {
                name: torch.from_numpy(np.ascontiguousarray(column_to_numpy(t.column(name))))
                for name in ("x", "y", "f0", "db")
            },
            big,
        )
    return {"augment": pt_dir, "teacher": big}


# ---- seed-style datasets ----------------------------------------------------------------------------


class SeedViews(Dataset):
    """The seed's PreGeneratedSpectrogramDataset: one .pt per (clip, version), a version per epoch."""

    def __init__(self, folder: Path):
        self.folder = folder
        index = json.loads((folder / "index.json").read_text())
        self.clips = [
            [name for version, name in sorted(index[key].items()) if version != "number"] for key in sorted(index)
        ]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        versions = self.clips[i]
        sample = torch.load(self.folder / versions[(self.epoch + i) % len(versions)])
        return sample["view1"], sample["view2"]


class SeedPreEncoded(Dataset):
    """stable-audio-tools' PreEncodedDataset, reduced to its work: np.load of the .npy, json of the
    .json, a random crop of ``crop`` latent frames (as its ``latent_crop_length``)."""

    def __init__(self, root: Path, crop: int = 256):
        self.root, self.crop = root, crop
        self.files = (root / "filelist.txt").read_text().split()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.root / self.files[i]
        latents = torch.from_numpy(np.load(path))
        mask = torch.tensor(json.loads(path.with_suffix(".json").read_text())["padding_mask"], dtype=torch.bool)
        start = int(torch.randint(0, max(1, latents.shape[-1] - self.crop + 1), ()))
        return latents[..., start : start + self.crop].clone(), mask[start : start + self.crop]


def seed_teacher(path: Path) -> TensorDataset:
    data = torch.load(path)
    return TensorDataset(data["x"], data["y"], data["f0"], data["db"])


def collate_latents(items):
    """Stack latents; metadata as a list (the project's collate_encoded without importing it here)."""
    return torch.stack([z for z, _ in items]), [m for _, m in items]


# ---- measuring -----------------------------------------------------------------------------------------


class Rate(NamedTuple):
    """What :func:`epochs_rate` measured; ``steady_*`` only when asked (else None)."""

    rate: float  # items/s over the measured epochs, set-up and worker start-up included
    cpu: float  # CPU microseconds per item of this process and its DataLoader workers, the same span
    items: int
    steady_rate: float | None = None  # one more epoch, after those: the rate a long training run sees
    steady_cpu: float | None = None


def set_epoch(dataset, epoch: int) -> None:
    """The project's readers' ``set_epoch``; the seed-style datasets' ``epoch`` attribute."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    elif hasattr(dataset, "epoch"):
        dataset.epoch = epoch


def run_epoch(dataset, loader: DataLoader, epoch: int) -> int:
    set_epoch(dataset, epoch)
    items = 0
    for batch in loader:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
        items += len(first)
    return items


def epochs_rate(make: Callable[[], tuple[Any, dict[str, Any]]], epochs: int = EPOCHS, steady: bool = False) -> Rate:
    """``epochs`` shuffled epochs through a DataLoader, worker start-up and set-up included; with
    ``steady``, one more epoch measured apart (the same workers: no set-up in it)."""
    with TreeCPU() as cpu:
        started = time.perf_counter()
        dataset, loader_kwargs = make()
        loader = DataLoader(dataset, **loader_kwargs)
        items = sum(run_epoch(dataset, loader, epoch) for epoch in range(epochs))
        seconds = time.perf_counter() - started
    measured = Rate(items / seconds, cpu.seconds / max(1, items) * 1e6, items)
    if steady:
        with TreeCPU() as later:
            started = time.perf_counter()
            more = run_epoch(dataset, loader, epochs)
            seconds = time.perf_counter() - started
        measured = measured._replace(steady_rate=more / seconds, steady_cpu=later.seconds / max(1, more) * 1e6)
    del loader
    return measured


def pyarrow_pages(make: Callable[[], Any]) -> Any:
    """``make()`` with every tensor column decoded by pyarrow (the readers' page decoder off): what it saves."""
    import ray_pipelines.readers.parquet as parquet

    parquet.DECODE_PAGES = False
    try:
        return make()
    finally:
        parquet.DECODE_PAGES = True


def kernels_load_seconds() -> float:
    """Wall seconds a fresh training process spends loading the page decoder's compiled kernels (numba's
    start-up; once per process, inherited by forked DataLoader workers): the benchmark's process pays it
    once for all its readers, so it is measured apart and added to the reader's time where it says so."""
    code = (
        "import time, ray_pipelines.readers.page_kernels as k; t = time.perf_counter(); k.warm(); "
        "print(time.perf_counter() - t)"
    )
    runs = [float(subprocess.check_output([sys.executable, "-c", code], text=True)) for _ in range(3)]
    return statistics.median(runs)


def loader_kwargs(batch_size: int | None, workers: int = WORKERS, **extra) -> dict[str, Any]:
    """The DataLoader's arguments (``batch_size=None`` for a reader in batched mode)."""
    kwargs = {"batch_size": batch_size, "num_workers": workers, **extra}
    if workers:
        kwargs["persistent_workers"] = True
    return kwargs


def read_columns(path_or_file, columns: list[str] | None) -> int:
    """pyarrow reads a whole file in one thread (``columns``: the ones a reader yields) to NumPy; its rows.
    Without pre-buffering, pyarrow's faster way here (the readers' too: arrow.open_parquet)."""
    from ray_pipelines.engine.arrow import column_to_numpy

    t = pq.read_table(path_or_file, columns=columns, use_threads=False, pre_buffer=False)
    for column in t.columns:
        column_to_numpy(column)
    return t.num_rows


def sequential_limit(files: list[str], columns: list[str] | None, open_file=None) -> tuple[float, float]:
    """(rows/s of pyarrow reading every file in turn, one thread, to NumPy; raw bytes/s of the files)."""
    open_file = open_file or (lambda p: open(p, "rb"))
    started, rows = time.perf_counter(), 0
    for path in files:
        with open_file(path) as f:
            rows += read_columns(f, columns)
    rows_rate = rows / (time.perf_counter() - started)
    started, size = time.perf_counter(), 0
    for path in files:
        with open_file(path) as f:
            size += len(f.read())
    return rows_rate, size / (time.perf_counter() - started)


def job_cases(outputs: dict[str, Path], seeds: dict[str, Path], storage_options=None, url=None) -> list[dict]:
    """What each table row runs: (name, baseline factory or None, reader factory, files, tensor columns, batch)."""
    from ray_pipelines.readers import ContrastiveViews, FeatureSnippets, TeacherCache
    from ray_pipelines.readers.encode import EncodedLatents, EncodedShardRows
    from ray_pipelines.readers.parquet import list_shards

    where = {name: (url(name) if url else str(path)) for name, path in outputs.items()}
    so = {"storage_options": storage_options} if storage_options else {}
    cases = [
        {
            "job": "augment (ContrastiveViews)",
            "items": "clips (a view pair)",
            "batch": 256,
            "reader": lambda w=WORKERS: (
                ContrastiveViews(where["augment"], "train", seed=0, **so),
                loader_kwargs(256, w),
            ),
            "batched": lambda w=WORKERS, reuse=0: (
                ContrastiveViews(where["augment"], "train", seed=0, batch_size=256, reuse_batches=reuse, **so),
                loader_kwargs(None, w),
            ),
            "baseline": (lambda: (SeedViews(seeds["augment"]), loader_kwargs(256, shuffle=True))) if seeds else None,
            "baseline_name": "one torch.load per .pt sample",
            "files": list_shards(where["augment"], "train", storage_options),
            "pages": True,  # tensor columns decoded from their pages
            "columns": ["view1", "view2"],
        },
        {
            "job": "teacher (TeacherCache)",
            "items": "clips (x, y, f0, db)",
            "batch": 64,
            "reader": lambda w=WORKERS: (
                TeacherCache(where["teacher"], "train", shuffle=True, **so),
                loader_kwargs(64, w),
            ),
            "batched": lambda w=WORKERS, reuse=0: (
                TeacherCache(where["teacher"], "train", shuffle=True, batch_size=64, reuse_batches=reuse, **so),
                loader_kwargs(None, w),
            ),
            "baseline": (lambda: (seed_teacher(seeds["teacher"]), loader_kwargs(64, shuffle=True))) if seeds else None,
            "baseline_name": "one big .pt loaded whole",
            "files": list_shards(where["teacher"], "train", storage_options),
            "pages": True,  # tensor columns decoded from their pages
            "columns": ["x", "y", "f0", "db"],
        },
        encode_case(
            "encode, Parquet (EncodedShardRows)",
            EncodedShardRows,
            where["encode"],
            outputs["encode"] if seeds else None,
            so,
            files=list_shards(where["encode"], None, storage_options),
            pages=True,  # tensor columns decoded from their pages
        ),
        encode_case(
            "encode, SAT .npy/.json (EncodedLatents)",
            EncodedLatents,
            where["encode"],
            outputs["encode"] if seeds else None,
            so,
            files=[],
            pages=False,  # .npy files: no Parquet pages
        ),
        {
            "job": "features (FeatureSnippets)",
            "items": "snippets [1024, 128]",
            "batch": 32,
            "reader": lambda w=WORKERS: (
                FeatureSnippets(where["features"], "train", shuffle=True, **so),
                loader_kwargs(32, w),
            ),
            "batched": lambda w=WORKERS, reuse=0: (
                FeatureSnippets(where["features"], "train", shuffle=True, batch_size=32, reuse_batches=reuse, **so),
                loader_kwargs(None, w),
            ),
            "baseline": None,
            "baseline_name": "",
            "files": list_shards(where["features"], "train", storage_options),
            "pages": True,  # tensor columns decoded from their pages
            "columns": ["input_values", "label"],
        },
    ]
    return cases


def encode_case(
    name: str, reader_cls, where: str, seed_output: Path | None, so: dict, files: list, pages: bool
) -> dict:
    """A table row of the encode output read by ``reader_cls`` (one layout), against the seed-style
    ``PreEncodedDataset`` of the SAT files in ``seed_output`` (None: no baseline)."""
    return {
        "job": name,
        "items": "latents [64, 645]",
        "batch": 64,
        "reader": lambda w=WORKERS: (
            reader_cls(where, shuffle=True, latent_crop_length=256, **so),
            loader_kwargs(64, w, collate_fn=collate_latents),
        ),
        "batched": lambda w=WORKERS, reuse=0: (
            reader_cls(where, shuffle=True, latent_crop_length=256, batch_size=64, reuse_batches=reuse, **so),
            loader_kwargs(None, w),
        ),
        "baseline": (
            (lambda: (SeedPreEncoded(seed_output), loader_kwargs(64, shuffle=True, collate_fn=collate_latents)))
            if seed_output is not None
            else None
        ),
        "baseline_name": "one np.load per .npy (+ .json), cropped, as PreEncodedDataset",
        "files": files,
        "pages": pages,
        "columns": None,  # the reader yields every column (metadata)
    }


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def local_table(outputs, seeds, runs: int) -> str:
    rows = []
    modes = ("item", "batched", "reused, pyarrow pages", "reused")
    load = kernels_load_seconds()
    print(f"  the page kernels load in {load:.2f} s in a fresh process", flush=True)
    for case in job_cases(outputs, seeds):
        print(f"  {case['job']}...", flush=True)
        factories = {
            "item": case["reader"],
            "batched": case["batched"],
            "reused, pyarrow pages": lambda w=WORKERS, case=case: pyarrow_pages(lambda: case["batched"](w, REUSE)),
            "reused": lambda w=WORKERS, case=case: case["batched"](w, REUSE),
        }
        baseline: list[Rate] = []
        measured: dict[str, list[Rate]] = {mode: [] for mode in modes}
        for _ in range(runs):  # alternate, so all see the same machine
            if case["baseline"]:
                baseline.append(epochs_rate(case["baseline"], steady=True))
            for mode in modes:
                measured[mode].append(epochs_rate(factories[mode], steady=mode == "reused"))
        in_process = {mode: epochs_rate(lambda f=factories[mode]: f(0)).rate for mode in modes}
        limit, raw = sequential_limit(case["files"], case["columns"]) if case["files"] else (None, None)

        def median(rates: list[Rate], field: str) -> float | None:
            return statistics.median(getattr(r, field) for r in rates) if rates else None

        b, b_cpu, b_steady, b_steady_cpu = (median(baseline, f) for f in ("rate", "cpu", "steady_rate", "steady_cpu"))
        rate = {mode: median(measured[mode], "rate") for mode in modes}
        cpu = {mode: median(measured[mode], "cpu") for mode in modes}
        steady, steady_cpu = median(measured["reused"], "steady_rate"), median(measured["reused"], "steady_cpu")
        items = measured["reused"][0].items
        # the reused reader's rate had its process loaded the kernels itself (page-decoded outputs only)
        with_load = items / (items / rate["reused"] + load) if case["pages"] else rate["reused"]
        rows.append(
            [
                case["job"],
                str(case["batch"]),
                fmt(b),
                *(fmt(rate[mode]) for mode in modes),
                *(ratio(rate[mode], b) for mode in modes),
                ratio(with_load, b),
                fmt(b_steady),
                fmt(steady),
                ratio(steady, b_steady),
                fmt(b_cpu),
                *(fmt(cpu[mode]) for mode in modes),
                fmt(b_steady_cpu),
                fmt(steady_cpu),
                fmt(limit),
                *((ratio(rate[mode], limit) if limit else "-") for mode in modes),
                fmt(raw / 1e6 if raw else None),
                *(fmt(in_process[mode]) for mode in modes),
            ]
        )
    header = [
        "output (reader)",
        "batch",
        "baseline items/s",
        *(f"{mode} items/s" for mode in modes),
        *(f"{mode} / baseline" for mode in modes),
        "reused / baseline, the kernels' load included",
        "3rd epoch: baseline items/s",
        "3rd epoch: reused items/s",
        "3rd epoch: reused / baseline",
        "baseline CPU us/item",
        *(f"{mode} CPU us/item" for mode in modes),
        "3rd epoch: baseline CPU us/item",
        "3rd epoch: reused CPU us/item",
        "pyarrow sequential rows/s (the reader's columns)",
        *(f"{mode} / sequential" for mode in modes),
        "raw file MB/s",
        *(f"{mode} in-process (num_workers=0) items/s" for mode in modes),
    ]
    return table(rows, header)


def epoch_phases(make: Callable[[], tuple[Any, dict[str, Any]]], epochs: int = EPOCHS + 1) -> list[float]:
    """Milliseconds of each step of ``epochs`` epochs through a DataLoader: making the reader, then per epoch
    the wait for its first batch and the whole epoch (the first epoch's first batch holds the workers' start)."""
    started = time.perf_counter()
    dataset, kwargs = make()
    steps = [time.perf_counter() - started]
    loader = DataLoader(dataset, **kwargs)
    for epoch in range(epochs):
        set_epoch(dataset, epoch)
        started, first = time.perf_counter(), None
        for _ in loader:
            first = first if first is not None else time.perf_counter() - started
        steps += [first or 0.0, time.perf_counter() - started]
    del loader
    return [step * 1e3 for step in steps]


def phases_table(outputs, seeds, runs: int) -> str:
    """Where each reader's epochs go, against its seed-style baseline: medians of ``runs`` alternating rounds."""
    steps = ["make"] + [f"epoch {e + 1}{part}" for e in range(EPOCHS + 1) for part in (": first batch", "")]
    rows = []
    for case in job_cases(outputs, seeds):
        if not case["baseline"]:
            continue
        print(f"  {case['job']}...", flush=True)
        readers = {
            case["baseline_name"]: case["baseline"],
            "reused batched reader": lambda c=case: c["batched"](WORKERS, REUSE),
        }
        rounds: dict[str, list[list[float]]] = {name: [] for name in readers}
        for _ in range(runs):
            for name, make in readers.items():
                rounds[name].append(epoch_phases(make))
        for name, measured in rounds.items():
            rows.append([case["job"], name, *(fmt(statistics.median(ms)) for ms in zip(*measured))])
    return table(rows, ["output (reader)", "reader", *(f"{step}, ms" for step in steps)])


S3_FRACTION = 0.2  # of each output's files uploaded to moto (it keeps them in this process's memory)


def upload_part(fs, local: Path, remote: str, fraction: float) -> None:
    """The first ``fraction`` of an output's files (per split; SAT items by filelist.txt), with a
    manifest.json (and filelist.txt) naming just those."""
    manifest = json.loads((local / "manifest.json").read_text())
    keep = []
    for split in sorted({f.get("split", "") for f in manifest["files"]}):
        parquet = [f for f in manifest["files"] if f.get("split", "") == split and f["path"].endswith(".parquet")]
        keep += parquet[: max(1, int(len(parquet) * fraction))]
    if (local / "filelist.txt").exists():
        items = (local / "filelist.txt").read_text().split()
        items = items[: max(1, int(len(items) * fraction))]
        fs.pipe(f"{remote}/filelist.txt", "".join(i + "\n" for i in items).encode())
        for item in items:
            for path in (item, item[: -len(".npy")] + ".json"):
                fs.put(str(local / path), f"{remote}/{path}")
    for record in keep:
        fs.put(str(local / record["path"]), f"{remote}/{record['path']}")
    fs.pipe(f"{remote}/manifest.json", json.dumps({**manifest, "files": keep}).encode())
    fs.put(str(local / "_job.json"), f"{remote}/_job.json")


def s3_table(outputs) -> str:
    """The readers from a moto S3 server (in this process) with storage_options, 2 workers."""
    with moto_s3("bench") as (options, fs):
        for name, path in outputs.items():
            upload_part(fs, path, f"bench/{name}", S3_FRACTION)
        rows = []
        for case in job_cases(outputs, {}, options, url=lambda name: f"s3://bench/{name}"):
            print(f"  S3: {case['job']}...", flush=True)
            rate = epochs_rate(case["reader"]).rate
            batched = epochs_rate(case["batched"]).rate
            limit, raw = (
                sequential_limit([f.split("://", 1)[1] for f in case["files"]], case["columns"], fs.open)
                if case["files"]
                else (None, None)
            )
            rows.append(
                [
                    case["job"],
                    fmt(rate),
                    fmt(batched),
                    fmt(limit),
                    ratio(rate, limit),
                    ratio(batched, limit),
                    fmt(raw / 1e6 if raw else None),
                ]
            )
        return table(
            rows,
            [
                "output (reader), s3:// on moto",
                "item mode items/s",
                "batched items/s",
                "pyarrow sequential rows/s (s3fs)",
                "item / sequential",
                "batched / sequential",
                "raw MB/s (s3fs)",
            ],
        )


# ---- the writer's defaults ------------------------------------------------------------------------------

WRITER_VARIANTS = [  # (codec, level, row-group target bytes)
    ("zstd", 1, 32 * 1024 * 1024),
    ("zstd", 1, 128 * 1024),
    ("lz4", None, 32 * 1024 * 1024),
    ("lz4", None, 128 * 1024),
    ("zstd", 3, 128 * 1024),
    ("none", None, 128 * 1024),
    ("lz4", None, 2 * 1024 * 1024),  # the teacher, encode and features jobs' row groups (sink.WHOLE_READ_...)
    ("none", None, 2 * 1024 * 1024),  # ... and their codec
]


def rewrite(source: Path, dest: Path, codec: str, level: int | None, target: int) -> float:
    """A copy of a committed output with its Parquet files rewritten as the sink would with these
    settings; returns the CPU microseconds per row the writes took."""
    from ray_pipelines.engine.sink import encoding_options, rows_per_group

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("*.npy", "*.json", "filelist.txt"))
    manifest = json.loads((source / "manifest.json").read_text())
    write_seconds, written_rows = 0.0, 0
    for record in manifest["files"]:
        if not record["path"].endswith(".parquet"):
            continue
        table_ = pq.read_table(source / record["path"])
        group_rows = rows_per_group(table_, target)
        started = time.process_time()
        pq.write_table(
            table_,
            dest / record["path"],
            row_group_size=group_rows,
            **encoding_options(table_.schema, None if codec == "none" else codec, level),
        )
        write_seconds += time.process_time() - started
        written_rows += table_.num_rows
        record["bytes"] = (dest / record["path"]).stat().st_size
    manifest["files"] = [f for f in manifest["files"] if f["path"].endswith(".parquet")]
    (dest / "manifest.json").write_text(json.dumps(manifest))
    if (source / "_job.json").exists():
        shutil.copy(source / "_job.json", dest / "_job.json")
    return write_seconds / max(1, written_rows) * 1e6


def cpu_per_item(fn: Callable[[], int], runs: int = 3) -> float:
    """Least CPU microseconds per item over ``runs`` calls of ``fn`` (which returns its item count),
    counting every thread of this process: steadier than wall time on a shared machine."""
    best = float("inf")
    for _ in range(runs):
        started = time.process_time()
        items = fn()
        best = min(best, (time.process_time() - started) / max(1, items) * 1e6)
    return best


def writer_table(work: Path, outputs: dict[str, Path]) -> str:
    """Each output rewritten with each variant: size, pyarrow's sequential read and the reader's
    shuffled epoch (in this process), in CPU microseconds per row / item."""
    from ray_pipelines.readers.parquet import list_shards

    rows = []
    for job in ("augment", "teacher", "encode", "features"):
        raw_bytes = None
        for codec, level, target in WRITER_VARIANTS:
            dest = work / "writer" / f"{job}-{codec}{level or ''}-{target // 1024}k"
            write_cpu = rewrite(outputs[job], dest, codec, level, target)
            case = next(c for c in job_cases({**outputs, job: dest}, {}) if c["job"].startswith(job))
            files = list_shards(str(dest), None)
            if raw_bytes is None:
                raw_bytes = sum(pq.read_table(f).nbytes for f in files)

            def sequential(case=case) -> int:
                return sum(read_columns(path, case["columns"]) for path in case["files"])

            def epoch(case=case) -> int:
                dataset, kwargs = case["reader"](0)
                return sum(len(b[0]) for b in DataLoader(dataset, **kwargs))

            groups = sum(pq.ParquetFile(f).num_row_groups for f in files)
            table_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
            rows.append(
                [
                    job,
                    codec,
                    str(level or "-"),
                    f"{target // 1024:,} KiB",
                    f"{table_rows / groups:.1f}",
                    f"{sum(os.path.getsize(f) for f in files) / raw_bytes:.3f}",
                    fmt(write_cpu),
                    fmt(cpu_per_item(sequential)),
                    fmt(cpu_per_item(epoch)),
                ]
            )
            shutil.rmtree(dest)
    header = [
        "output",
        "codec",
        "level",
        "row-group target",
        "rows per group",
        "size / raw",
        "write, CPU us per row",
        "pyarrow sequential, CPU us per row",
        "reader's shuffled epoch, CPU us per item",
    ]
    return table(rows, header)


# ---- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small outputs, one run each: a smoke test")
    parser.add_argument("--runs", type=int, help="alternating runs per reader (default 3, 1 with --quick)")
    parser.add_argument("--work", default="/tmp/bench-readers", help="outputs are written (once) and kept here")
    parser.add_argument(
        "--audio",
        type=Path,
        default=SHARED,
        help="real recordings the augment output's clips cycle through (bench/gpu.sh readers: the carried ones)",
    )
    parser.add_argument(
        "--tables",
        default="local,s3",
        help="comma-separated: local (readers vs baselines), s3, writer (defaults), phases (where epochs go)",
    )
    args = parser.parse_args()

    clips, teacher, encode, runs = (200, 300, 300, 1) if args.quick else (1500, 2000, 3000, 3)
    runs = args.runs or runs
    work = Path(args.work) / ("quick" if args.quick else "full")
    torch.set_num_threads(1)
    started = time.time()
    outputs = prepare(work, clips, teacher, encode, args.audio)
    seeds = seed_copies(work, outputs)
    tables = args.tables.split(",")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, load {os.getloadavg()}")
    print(f"DataLoader: {WORKERS} persistent workers, shuffled, {EPOCHS} epochs; median of {runs} alternating runs\n")
    if "local" in tables:
        print(local_table(outputs, seeds, runs) + "\n", flush=True)
    if "s3" in tables:
        print(s3_table(outputs) + "\n", flush=True)
    if "phases" in tables:
        print(phases_table(outputs, seeds, runs) + "\n", flush=True)
    if "writer" in tables:
        print(writer_table(work, outputs) + "\n", flush=True)
    print(f"\nload average at the end: {os.getloadavg()}; {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
