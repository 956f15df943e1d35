"""Benchmark of the features job: ``python -m bench.features [--quick] [--formats mp3,flac]``.

A music library of 3-minute, 44.1 kHz stereo songs (compressed: MP3 and
FLAC), made from the real recordings in ../shared/audio/sonic-pi (loops over
an ambient bed) where present, else generated tones; a few distinct songs are
encoded once (cached under bench-output/features/) and hard-linked under
several labels. Measured in one run, per format:

1. baseline: the notebook's approach, a per-song loop (decode the whole
   song, resample it to 16 kHz, cut the snippets, call
   ``transformers.ASTFeatureExtractor``, collect into a Hugging Face dataset
   saved every 2,000 snippets), one process with one torch thread;
2. decode + stage loop: the job's WindowDecoder and FeaturesStage called in a
   plain loop (one process, one thread): the ceiling per core;
3. the features job on embedded Ray with every core: listing, decode,
   features, Parquet, commit and the balance report;
4. once, the sink alone: the same real features written as Parquet shards
   through the page cache and past it (``direct_io``), alternating.

Per core is reported two ways: snippets per wall-clock second divided by the
cores given, and snippets per CPU-second actually used (the whole process
tree for the Ray run: actors, write tasks, raylet, driver), which stays true
when other work shares the machine. Ratios are against the baseline of the
same run. Settings are the job's defaults: 6 snippets of 10.24 s per song,
128 mel bins, 1024 frames.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import REPO, SHARED, TreeCPU, table

SAMPLE_RATE = 44100
SONG_SECONDS = 180.0
DISTINCT_SONGS = 3
SNIPPETS, SNIPPET_SECONDS = 6, 10.24
CACHE = REPO / "bench-output" / "features"
FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "flac": ("FLAC", "PCM_16")}


def _stereo(path: Path) -> np.ndarray:
    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == SAMPLE_RATE, path
    return audio if audio.shape[1] == 2 else np.repeat(audio, 2, axis=1)


def compose_song(seed: int, seconds: float = SONG_SECONDS) -> np.ndarray:
    """``[n, 2]`` float32: real loops end to end over a looped ambient bed (or tones without them)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    loops = sorted((SHARED / "loop").glob("*.flac")) if SHARED.exists() else []
    beds = sorted((SHARED / "ambient").glob("*.flac")) if SHARED.exists() else []
    if not loops:
        t = np.arange(n) / SAMPLE_RATE
        f0 = 110.0 * (1 + seed)
        x = sum(0.2 / h * np.sin(2 * np.pi * f0 * h * t) for h in range(1, 6)) + 0.02 * rng.standard_normal(n)
        return np.stack([x, 0.9 * x], axis=1).astype(np.float32)
    parts, length = [], 0
    while length < n:
        part = _stereo(loops[int(rng.integers(len(loops)))]) * float(rng.uniform(0.5, 1.0))
        parts.append(part)
        length += len(part)
    song = np.concatenate(parts)[:n]
    bed = _stereo(beds[seed % len(beds)])
    song += 0.3 * np.resize(bed, (n // len(bed) + 1) * len(bed) * 2).reshape(-1, 2)[:n]
    return (0.9 * song / max(1e-6, float(np.abs(song).max()))).astype(np.float32)


def make_library(fmt: str, songs: int) -> Path:
    """``songs`` songs in folders of 8 (labels), hard links to a few distinct encoded songs."""
    labels = max(1, songs // 8)
    sources = []
    for i in range(DISTINCT_SONGS):
        path = CACHE / "songs" / f"song{i}.{fmt}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fmt_name, subtype = FORMATS[fmt]
            tmp = path.with_suffix(f".tmp.{fmt}")
            sf.write(str(tmp), compose_song(i), SAMPLE_RATE, format=fmt_name, subtype=subtype)
            tmp.rename(path)
        sources.append(path)
    library = CACHE / f"library-{fmt}-{songs}-in-{labels}"
    if library.exists() and len(list(library.rglob(f"*.{fmt}"))) == songs:
        return library
    shutil.rmtree(library, ignore_errors=True)
    for i in range(songs):
        target = library / f"genre{i % labels}" / f"track{i:04d}.{fmt}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(sources[i % len(sources)], target)
        except OSError:
            shutil.copy(sources[i % len(sources)], target)
    return library


def snippet_starts(samples: int) -> list[int]:
    """The notebook's snippets of a song of ``samples`` at 16 kHz: its loop, snippet k at k * (len // 6)."""
    return list(range(0, samples - samples % SNIPPETS, samples // SNIPPETS))


@dataclass
class Measure:
    snippets: int
    wall: float  # seconds
    cpu: float  # CPU seconds used (this process, or the whole process tree for Ray)
    cores: int = 1  # cores the measured thing was given
    breakdown: dict[str, float] | None = None  # CPU seconds by process kind (Ray runs)

    @property
    def per_core(self) -> float:
        """Snippets/s per core by the wall clock (shares the cores with whatever else runs)."""
        return self.snippets / self.wall / self.cores

    @property
    def per_cpu_second(self) -> float:
        """Snippets per CPU-second actually used: per core, whatever else the machine is doing."""
        return self.snippets / self.cpu


def baseline(paths: list[Path], out: Path) -> Measure:
    """The notebook: per song, decode all of it, resample, cut snippets, ASTFeatureExtractor,
    collect into a datasets.Dataset saved every 2,000 snippets. One process, one torch thread."""
    import datasets
    import soxr
    import torch
    from transformers import ASTFeatureExtractor

    torch.set_num_threads(1)
    extractor = ASTFeatureExtractor()
    length = int(SNIPPET_SECONDS * 16000)
    rows: dict[str, list] = {"input_values": [], "label": [], "path": []}
    saved, shards = 0, 0

    def flush() -> None:
        nonlocal shards
        datasets.Dataset.from_dict(rows).save_to_disk(str(out / f"shard{shards:04d}"))
        shards += 1
        for values in rows.values():
            values.clear()

    wall, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
        wave = soxr.resample(audio.mean(axis=1), sr, 16000, quality="HQ").astype(np.float32)
        for first in snippet_starts(len(wave)):
            snippet = wave[first : first + length]
            features = extractor(snippet, sampling_rate=16000, return_tensors="np")["input_values"][0]
            rows["input_values"].append(features)
            rows["label"].append(path.parent.name)
            rows["path"].append(str(path))
            saved += 1
        if len(rows["path"]) >= 2000:
            flush()
    if rows["path"]:
        flush()
    return Measure(saved, time.perf_counter() - wall, time.process_time() - cpu)


def job_parts():
    """The features job on its defaults, its decoder and its features stage, as the actors build them."""
    from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob
    from ray_pipelines.stages.features import FeaturesStage

    job = FeaturesJob(FeaturesConfig(input="-", output="-"))
    return job, job.decoder(), FeaturesStage(**job.stages()[0].kwargs)


def song_row(path: Path) -> dict:
    """One song as the decoder's input row (a listing row of the job)."""
    return {
        "key": path.name,
        "uri": str(path),
        "size": path.stat().st_size,
        "member_offset": -1,
        "label": 0,
        "path": path.name,
        "split": "train",
    }


def stage_loop(paths: list[Path]) -> Measure:
    """WindowDecoder + FeaturesStage in a plain loop, one process and thread (no Parquet)."""
    import torch

    from ray_pipelines.engine.decode import rows_to_batch

    torch.set_num_threads(1)
    _, decoder, stage = job_parts()
    wall, cpu, snippets = time.perf_counter(), time.process_time(), 0
    for path in paths:
        snippets += len(stage(rows_to_batch(decoder.decode_input(song_row(path))))["input_values"])
    return Measure(snippets, time.perf_counter() - wall, time.process_time() - cpu)


def shard_writes(paths: list[Path], out: Path, repeats: int = 20) -> dict[bool, float]:
    """The sink alone: real features written as new Parquet shards with ``direct_io`` off and on,
    alternating (about 0.5 GB each, kept until the end as a job keeps its output); CPU ms per snippet
    of this process, user + system (the page-cache copy is system time)."""
    from ray_pipelines.engine.decode import rows_to_batch
    from ray_pipelines.engine.sink import ShardSink

    job, decoder, stage = job_parts()
    batch = stage(rows_to_batch([row for path in paths for row in decoder.decode_input(song_row(path))]))
    cpu = {False: 0.0, True: 0.0}
    for i in range(repeats):
        for direct in (False, True) if i % 2 == 0 else (True, False):
            sink = ShardSink(
                output=str(out / str(direct)),
                storage_options=None,
                fingerprint="f" * 64,
                index_column=job.index_column,
                output_columns=job.output_columns,
                rows_per_file=256,
                compression="lz4",
                direct_io=direct,
            )
            renamed = {**batch, "key": np.array([f"{i}/{k}" for k in batch["key"]], dtype=object)}
            started = time.process_time()
            sink.write_rows(renamed, rank=0)
            cpu[direct] += time.process_time() - started
    return {direct: 1000 * seconds / (repeats * len(batch["key"])) for direct, seconds in cpu.items()}


def flac_decoders(paths: list[Path], repeats: int = 3) -> dict[str, float]:
    """The job's decoder (six windows per song, mono mix, soxr) on FLAC songs, with FLAC read through
    libsndfile and through libFLAC directly (``RAY_PIPELINES_LIBFLAC=off`` or not), alternating:
    CPU ms per snippet of each."""
    from ray_pipelines.audio import flac

    _, decoder, _ = job_parts()
    cpu, snippets = {"libsndfile": 0.0, "libFLAC": 0.0}, {"libsndfile": 0, "libFLAC": 0}
    saved = os.environ.get(flac.LIBRARY_ENV)
    try:
        for i in range(repeats):
            for name in ("libsndfile", "libFLAC") if i % 2 == 0 else ("libFLAC", "libsndfile"):
                os.environ[flac.LIBRARY_ENV] = "off" if name == "libsndfile" else (saved or "")
                started = time.process_time()
                for path in paths:
                    snippets[name] += len(decoder.decode_input(song_row(path)))
                cpu[name] += time.process_time() - started
    finally:
        if saved is None:
            os.environ.pop(flac.LIBRARY_ENV, None)
        else:
            os.environ[flac.LIBRARY_ENV] = saved
    return {name: 1000 * seconds / snippets[name] for name, seconds in cpu.items()}


def pipeline(library: Path, output: Path, cores: int) -> tuple[Measure, Measure, int, float | None]:
    """The job on the running embedded Ray: (the run, the whole job call), its error count, and its
    steady-state snippets/s (while every writer was busy)."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob

    cfg = validate_config(FeaturesConfig, {"input": str(library), "output": str(output)})
    started = time.perf_counter()
    with TreeCPU() as cpu:
        result = run_job(FeaturesJob(cfg), overwrite=True, progress=False)
    total = time.perf_counter() - started
    run = Measure(result.run_rows, result.manifest["timings"]["run_seconds"], cpu.seconds, cores)
    run.breakdown = cpu.by_kind
    return (
        run,
        Measure(result.run_rows, total, cpu.seconds, cores),
        result.counts["errors"],
        result.steady_rows_per_second,
    )


def marginal(small: Measure, large: Measure) -> Measure:
    """The cost of the snippets the large run did beyond the small one: start-up (actor and
    writer processes importing torch and Ray Data, the driver's planning) cancels out. Where the large
    run did not take longer (``--quick`` sizes on a noisy machine) there is no rate: NaN, shown "n/a"."""

    def more(large_value: float, small_value: float) -> float:
        return large_value - small_value if large_value > small_value else float("nan")

    return Measure(
        large.snippets - small.snippets, more(large.wall, small.wall), more(large.cpu, small.cpu), large.cores
    )


def shown(value: float, suffix: str = "") -> str:
    return f"{value:.{2 if suffix else 1}f}{suffix}" if np.isfinite(value) else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute once songs are cached)")
    parser.add_argument("--formats", default="mp3,flac", help="comma-separated: mp3, flac")
    args = parser.parse_args()
    import ray

    from ray_pipelines.audio.flac import available as flac_available
    from ray_pipelines.engine.runtime import connect

    cores = os.cpu_count() or 1
    base_songs, loop_songs, small_songs, large_songs = (4, 4, 16, 48) if args.quick else (10, 10, 32, 512)
    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    ray_started = time.perf_counter()
    connect(num_cpus=cores, quiet=True)  # embedded Ray exactly as the jobs start it
    ray_seconds = time.perf_counter() - ray_started

    rows, notes = [], []
    try:
        for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
            paths = sorted(make_library(fmt, large_songs).rglob(f"*.{fmt}"))
            base = baseline(paths[:base_songs], work / f"hf-{fmt}")
            loop = stage_loop(paths[:loop_songs])
            if not notes:  # once: the sink does not depend on the source format
                writes = shard_writes(paths[:loop_songs], work / "shards", repeats=4 if args.quick else 20)
                shutil.rmtree(work / "shards", ignore_errors=True)
                notes.append(
                    f"writing shards (the sink alone, lz4): {writes[False]:.2f} CPU ms per snippet through "
                    f"the page cache, {writes[True]:.2f} past it (direct_io, the default): "
                    f"{writes[False] / writes[True]:.2f}x less"
                )
            if fmt == "flac" and flac_available():
                decode = flac_decoders(paths[:loop_songs], repeats=2 if args.quick else 4)
                notes.append(
                    f"flac: the job's decoder (windows, mono, soxr): {decode['libsndfile']:.2f} CPU ms per "
                    f"snippet reading FLAC through libsndfile, {decode['libFLAC']:.2f} through libFLAC "
                    f"directly (the default where installed): "
                    f"{decode['libsndfile'] / decode['libFLAC']:.2f}x less"
                )
            small, _, _, _ = pipeline(make_library(fmt, small_songs), work / f"out-{fmt}-small", cores)
            run, whole, errors, steady_rate = pipeline(make_library(fmt, large_songs), work / f"out-{fmt}", cores)
            whole.wall += ray_seconds
            steady = marginal(small, run)
            for what, m in [
                ("baseline: per-song loop, ASTFeatureExtractor, HF dataset (1 core)", base),
                ("decode + features stage, plain loop (1 thread, no Parquet)", loop),
                (f"features job on Ray, {large_songs} songs, {cores} cores: run", run),
                ("  the same incl. Ray start-up, listing and commit", whole),
                (f"  per added snippet ({large_songs} minus {small_songs} songs)", steady),
            ]:
                rows.append(
                    [
                        fmt,
                        what,
                        m.snippets,
                        shown(m.per_core),
                        shown(m.per_cpu_second),
                        shown(m.per_cpu_second / base.per_cpu_second, "x"),
                    ]
                )
            if steady_rate:
                per_core = steady_rate / cores
                rows.append(
                    [
                        fmt,
                        f"  steady state of the {large_songs}-song run (all writers busy)",
                        "",
                        f"{per_core:.1f}",
                        "",
                        f"{per_core / base.per_cpu_second:.2f}x (wall)",
                    ]
                )
            startup = small.cpu - small.snippets / steady.per_cpu_second
            spent = ", ".join(
                f"{kind} {1000 * seconds / run.snippets:.1f}"
                for kind, seconds in sorted((run.breakdown or {}).items(), key=lambda kv: -kv[1])
            )
            notes.append(
                f"{fmt}: CPU ms per snippet in the {large_songs}-song run: {spent}; plain loop "
                f"{1000 / loop.per_cpu_second:.1f}"
            )
            rate, ratio = steady.per_cpu_second, steady.per_cpu_second / base.per_cpu_second
            notes.append(
                f"{fmt}: {errors} errors; start-up costs about {startup:.0f} CPU-s per run; per added "
                f"snippet {rate:.1f} snippets per CPU-second (target 70: {'met' if rate >= 70 else 'NOT met'}), "
                f"{ratio:.2f}x the baseline (target 3x: {'met' if ratio >= 3 else 'NOT met'})"
            )
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nfeatures benchmark: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
        f"load average {load:.1f} at the end, {time.strftime('%Y-%m-%d')}; songs {SONG_SECONDS:.0f} s 44.1 kHz "
        f"stereo, {SNIPPETS} x {SNIPPET_SECONDS} s snippets, 128 x 1024 features"
    )
    print(
        table(
            rows,
            [
                "format",
                "what",
                "snippets",
                "snippets/s per core (wall)",
                "snippets per CPU-second",
                "vs baseline (CPU)",
            ],
        )
    )
    print("\n".join(notes))
    print(
        "Per CPU-second is the per-core rate that holds whatever else shares the machine; the wall-clock "
        "column divides by all cores and drops when other work runs."
    )


if __name__ == "__main__":
    main()
