"""Benchmark of the augment job: ``python -m bench.augment [--quick]``.

Measures, on the same machine in one run:
1. baseline: the seed notebook's approach, a per-file loop of CPU
   augmentations as audiomentations does them (librosa pitch shift and time
   stretch, torchaudio biquad filters, gain, noise, shift, polarity), then
   MelSpectrogram and masking, writing one ``.pt`` per sample;
2. stage loop: the job's decoder, then ``AugmentStage`` called per clip in a
   plain loop (one thread), timed with and without the decode: once alone
   on an otherwise idle machine, and as one loop per core all at once (the
   plain loop "on the same cores": the reference for the pipeline, since the
   cores then share caches and memory bandwidth as the actors do);
3. pipeline: the whole augment job on embedded Ray (decode, augment, write
   Parquet, commit) using every core, its rate once running measured two
   ways: marginal (large run minus small run) and steady state (between the
   large run's writes while every writer was busy);
and peak memory (whole process tree) of the pipeline at two dataset sizes.
Views/s are per CPU core, ratios are against the numbers of the same run.

``--small-end`` (issue 19) instead measures wall time from the command to the end, both as
subprocesses (imports count), alternating, at 200 and 1,000 clips: the ``multiprocessing.Pool``
loop a user writes (the baseline above, one worker per core) against ``python -m jobs.augment``
on embedded Ray; and the job's start-up timeline (``RAY_PIPELINES_TIMELINE``) at 200 clips.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import REPO, make_clips, run_measured, table

VIEWS_PER_CLIP = 5 * 2  # num_versions x two views, the defaults


def baseline(clips: list[Path], out: Path, seed: int = 0, prefix: str = "") -> float:
    """The notebook: decode, then per version and view random torchaudio augmentations, save .pt."""
    import random

    import librosa
    import soundfile as sf
    import torchaudio.functional as AF
    import torchaudio.transforms as T

    sr, n = 22050, 66150
    mel = T.MelSpectrogram(sr, n_fft=2048, hop_length=512, n_mels=128)
    to_db = T.AmplitudeToDB(top_db=80)
    fmask, tmask = T.FrequencyMasking(24), T.TimeMasking(26)
    rng = random.Random(seed)

    def wave_aug(name, x):
        if name == "gain":
            return x * 10 ** (rng.uniform(-6, 6) / 20)
        if name == "noise":
            snr = rng.uniform(10, 40)
            noise = torch.randn_like(x)
            return x + noise * torch.sqrt(x.pow(2).mean() / (noise.pow(2).mean() * 10 ** (snr / 10)))
        if name == "shift":
            return torch.roll(x, int(rng.uniform(-0.25, 0.25) * n), -1)
        if name == "pitch":  # audiomentations.PitchShift: librosa (soxr resampling)
            y = librosa.effects.pitch_shift(x.numpy(), sr=sr, n_steps=rng.uniform(-2, 2))
            return torch.from_numpy(y)
        if name == "stretch":  # audiomentations.TimeStretch(leave_length_unchanged=True)
            y = torch.from_numpy(librosa.effects.time_stretch(x.numpy(), rate=rng.uniform(0.8, 1.25)))
            return torch.nn.functional.pad(y, (0, max(0, n - y.shape[-1])))[..., :n]
        if name == "lowpass":
            return AF.lowpass_biquad(x, sr, rng.uniform(2000, 8000))
        if name == "highpass":
            return AF.highpass_biquad(x, sr, rng.uniform(50, 500))
        if name == "bandpass":
            return AF.bandpass_biquad(x, sr, rng.uniform(500, 4000))
        return -x

    names = ["gain", "noise", "shift", "pitch", "stretch", "lowpass", "highpass", "bandpass", "polarity"]
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, path in enumerate(clips):
        audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
        x = AF.resample(torch.from_numpy(audio.mean(axis=1)), file_sr, sr)
        for version in range(5):
            offset = rng.randint(0, max(0, x.shape[-1] - n))
            crop = torch.nn.functional.pad(x[offset : offset + n], (0, max(0, n - x[offset : offset + n].shape[-1])))
            views = []
            for _ in range(2):
                y = crop[None]
                for name in rng.sample(names, 3):
                    y = wave_aug(name, y)
                views.append(tmask(fmask(to_db(mel(y)))))
            torch.save({"view1": views[0], "view2": views[1]}, out / f"{prefix}{i}_{version}.pt")
    return len(clips) * VIEWS_PER_CLIP / (time.perf_counter() - start)


def stage_loop(clips: list[Path]) -> tuple[float, float]:
    """The job's work in a plain loop, one thread: views/s of (decode + stage, stage alone)."""
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
    from ray_pipelines.stages.augment import AugmentStage

    job = AugmentJob(AugmentConfig(input="-", output="-"))
    decoder, stage = job.decoder(), AugmentStage(**job.stage_kwargs())
    started = time.perf_counter()
    batches = [
        decoder(
            {
                "key": np.array([str(p)], dtype=object),
                "uri": np.array([str(p)], dtype=object),
                "size": np.array([p.stat().st_size]),
                "member_offset": np.array([-1]),
                "etag": np.array([""], dtype=object),
                "error": np.array([""], dtype=object),
                "skip": np.array([None], dtype=object),
                "source": np.array([str(p)], dtype=object),
            }
        )
        for p in clips
    ]
    decode_seconds = time.perf_counter() - started
    start = time.perf_counter()
    views = 0
    for batch in batches:
        views += 2 * len(stage(dict(batch))["view1"])
    stage_seconds = time.perf_counter() - start
    return views / (decode_seconds + stage_seconds), views / stage_seconds


def loop_child(args: argparse.Namespace) -> None:
    """Run in a child process: warm up, wait for the common start, best of three stage loops; prints JSON."""
    torch.set_num_threads(1)
    clips = sorted(Path(args.input).rglob("*.flac"))[args.offset : args.offset + args.limit]
    stage_loop(clips[:10])
    time.sleep(max(0.0, args.start_at - time.time()))
    loops = [stage_loop(clips) for _ in range(3)]
    print(json.dumps({"loop": max(lp for lp, _ in loops), "stage": max(s for _, s in loops)}))


def parallel_loops(clips_dir: Path, cores: int, clips: int) -> tuple[float, float]:
    """One plain loop per core, all at once (each on its own clips): per-core views/s of
    (decode + stage, stage alone) when the loops share the machine as the pipeline's actors do."""
    start_at = time.time() + 30.0  # after every child has imported torch and warmed up
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.augment",
                "--loop-child",
                "--input",
                str(clips_dir),
                "--offset",
                str(i * clips),
                "--limit",
                str(clips),
                "--start-at",
                str(start_at),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(cores)
    ]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return (sum(r["loop"] for r in results) / cores, sum(r["stage"] for r in results) / cores)


def pipeline_child(args: argparse.Namespace) -> None:
    """Run in a child process: the augment job on embedded Ray; prints JSON."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob

    cfg = validate_config(AugmentConfig, {"input": args.input, "output": args.output, "limit": args.limit})
    result = run_job(AugmentJob(cfg), overwrite=True, progress=False)
    steady = result.steady_rows_per_second
    print(
        json.dumps(
            {
                "views": 2 * result.run_rows,
                "seconds": result.manifest["timings"]["run_seconds"],
                "total_seconds": result.seconds,
                "errors": result.counts["errors"],
                "steady_views_per_second": 2 * steady if steady else None,
            }
        )
    )


def pipeline(input_dir: Path, output: Path, limit: int) -> tuple[dict, int]:
    out, peak = run_measured(
        ["-m", "bench.augment", "--child", "--input", str(input_dir), "--output", str(output), "--limit", str(limit)]
    )
    return json.loads(out.strip().splitlines()[-1]), peak


def _pool_chunk(task: tuple[list[str], str, int, str]) -> int:
    paths, out, seed, prefix = task
    torch.set_num_threads(1)  # one process per core, as a user's Pool(2) on 2 cores
    baseline([Path(p) for p in paths], Path(out), seed=seed, prefix=prefix)
    return len(paths)


def pool_child(args: argparse.Namespace) -> None:
    """The plain loop a user writes: ``multiprocessing.Pool`` over the clips, one worker per core,
    each decoding, augmenting and saving one .pt per sample (the baseline above)."""
    import multiprocessing

    clips = sorted(Path(args.input).rglob("*.flac"))[: args.limit]
    cores = os.cpu_count() or 1
    per_task = max(1, len(clips) // (cores * 8))  # small tasks: the workers finish together
    tasks = [
        ([str(p) for p in clips[i : i + per_task]], args.output, i, f"{i}_") for i in range(0, len(clips), per_task)
    ]
    with multiprocessing.Pool(cores) as pool:
        done = sum(pool.imap_unordered(_pool_chunk, tasks))
    print(json.dumps({"clips": done}))


def _timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.time()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return seconds


def job_command(clips_dir: Path, output: Path, limit: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "jobs.augment",
        "--config",
        str(REPO / "jobs" / "configs" / "augment.yaml"),
        "--set",
        f"input={clips_dir}",
        "--set",
        f"output={output}",
        "--set",
        f"limit={limit}",
        "--overwrite",
        "--no-progress",
    ]


def timeline_rows(path: Path, started: float) -> list[list[str]]:
    """The first time each milestone was reached, seconds after the command started."""
    first: dict[str, float] = {}
    for line in path.read_text().splitlines():
        at, _pid, name = line.split(" ", 2)
        first.setdefault(name, float(at))
    return [[name, f"{at - started:.2f}"] for name, at in sorted(first.items(), key=lambda kv: kv[1])]


def small_end(repeats: int, sizes: list[int]) -> None:
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="bench-augment-small-"))
    clips_dir = make_clips(work / "clips", max(sizes))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    load_before = os.getloadavg()
    times: dict[tuple[str, int], list[float]] = {}
    for size in sizes:
        for rep in range(repeats):
            # Alternate which goes first: the machine is shared, its load drifts.
            order = ["loop", "job"] if rep % 2 == 0 else ["job", "loop"]
            for what in order:
                out = work / f"{what}-{size}-{rep}"
                if what == "loop":
                    cmd = [sys.executable, "-m", "bench.augment", "--pool-child", "--input", str(clips_dir)]
                    cmd += ["--output", str(out), "--limit", str(size)]
                else:
                    cmd = job_command(clips_dir, out, size)
                seconds = _timed(cmd, env)
                times.setdefault((what, size), []).append(seconds)
                print(f"  {what} {size} clips, repetition {rep + 1}: {seconds:.1f} s", file=sys.stderr, flush=True)
    # The job's start-up timeline at the smallest size, in a run of its own.
    timeline = work / "timeline.txt"
    started = time.time()
    _timed(job_command(clips_dir, work / "job-timeline", min(sizes)), {**env, "RAY_PIPELINES_TIMELINE": str(timeline)})
    ended = time.time()
    load_after = os.getloadavg()

    rows = []
    for size in sizes:
        loop, job = times[("loop", size)], times[("job", size)]
        views = size * VIEWS_PER_CLIP
        rows.append(
            [
                f"{size:,}",
                f"{views:,}",
                " / ".join(f"{t:.1f}" for t in loop),
                " / ".join(f"{t:.1f}" for t in job),
                f"{min(loop) / min(job):.2f}x",
                f"{float(np.median(loop)) / float(np.median(job)):.2f}x",
                f"{views / min(job):.0f}",
            ]
        )
    print(
        f"\naugment, the small end: {platform.node()}, {cores} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average before {load_before[0]:.2f} / after {load_after[0]:.2f}"
    )
    print(
        table(
            rows,
            [
                "clips",
                "views",
                f"Pool({cores}) loop, s (each run)",
                "job from the command, s (each run)",
                "job speed-up, best vs best",
                "median vs median",
                "job views/s (best)",
            ],
        )
    )
    print(f"\njob start-up timeline at {min(sizes)} clips (seconds after the command):")
    print(table([*timeline_rows(timeline, started), ["process exit", f"{ended - started:.2f}"]], ["milestone", "s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--loop-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pool-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--small-end", action="store_true", help="wall time from the command: Pool loop vs the job (issue 19)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="--small-end: alternating repetitions per size")
    parser.add_argument("--sizes", default="200,1000", help="--small-end: clip counts")
    parser.add_argument("--input"), parser.add_argument("--output"), parser.add_argument("--limit", type=int)
    parser.add_argument("--offset", type=int, default=0), parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    if args.child:
        return pipeline_child(args)
    if args.loop_child:
        return loop_child(args)
    if args.pool_child:
        return pool_child(args)
    if args.small_end:
        return small_end(args.repeats, [int(n) for n in args.sizes.split(",")])

    cores = os.cpu_count() or 1
    small, large = (40, 200) if args.quick else (200, 2000)
    work = Path(tempfile.mkdtemp(prefix="bench-augment-"))
    clips_dir = make_clips(work / "clips", large)
    clips = sorted(clips_dir.rglob("*.flac"))

    torch.set_num_threads(cores)
    baseline(clips[:1], work / "warmup")  # librosa / torch first-call costs, untimed
    base = baseline(clips[: 10 if args.quick else 30], work / "pt")
    torch.set_num_threads(1)
    # One untimed pass (first calls are slower: allocator, kernels), then the best of three:
    # short loops are noisy on shared machines, and the fastest loop is the strictest reference.
    loop_clips = clips[: 20 if args.quick else 100]
    stage_loop(loop_clips[:10])
    loops = [stage_loop(loop_clips) for _ in range(3)]
    loop, stage_only = max(lp for lp, _ in loops), max(s for _, s in loops)
    loop_shared, stage_shared = parallel_loops(clips_dir, cores, len(loop_clips))
    small_run, small_peak = pipeline(clips_dir, work / "out-small", small)
    large_run, large_peak = pipeline(clips_dir, work / "out-large", large)
    pipe = large_run["views"] / large_run["seconds"]
    # Marginal rate (large run minus small run): cancels actor start-up (torch imports).
    marginal = (large_run["views"] - small_run["views"]) / max(1e-9, large_run["seconds"] - small_run["seconds"])
    # Steady state of the large run: while every writer was busy (no start-up, no tail).
    steady = large_run["steady_views_per_second"] or marginal

    per_core_base = base / cores
    rows = [
        ["notebook baseline (per-file loop, .pt per sample)", f"{per_core_base:.1f}", "1.00x"],
        ["decode + augment stage, plain loop (1 thread)", f"{loop:.1f}", f"{loop / per_core_base:.2f}x"],
        ["augment stage alone, plain loop (1 thread)", f"{stage_only:.1f}", f"{stage_only / per_core_base:.2f}x"],
        [
            f"decode + augment stage, {cores} plain loops at once (one per core)",
            f"{loop_shared:.1f}",
            f"{loop_shared / per_core_base:.2f}x",
        ],
        [
            f"augment stage alone, {cores} plain loops at once",
            f"{stage_shared:.1f}",
            f"{stage_shared / per_core_base:.2f}x",
        ],
        [f"augment job on Ray, {large} clips, {cores} cores, run", f"{pipe / cores:.1f}", f"{pipe / base:.2f}x"],
        [
            f"augment job on Ray, marginal ({large} minus {small} clips)",
            f"{marginal / cores:.1f}",
            f"{marginal / base:.2f}x",
        ],
        [
            f"augment job on Ray, steady state ({large} clips, all writers busy)",
            f"{steady / cores:.1f}",
            f"{steady / base:.2f}x",
        ],
    ]
    print(
        f"\naugment benchmark: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(table(rows, ["what", "views/s per core", "vs baseline"]))
    print(
        f"\npipeline per core / decode + stage loops on the same {cores} cores (target >= 0.80): marginal "
        f"{marginal / cores / loop_shared:.2f}, steady state {steady / cores / loop_shared:.2f}"
    )
    print(
        f"  against one loop alone on an otherwise idle machine: marginal {marginal / cores / loop:.2f}, "
        f"steady state {steady / cores / loop:.2f}; against the stage alone (no decode), loops at once: "
        f"marginal {marginal / cores / stage_shared:.2f}, steady state {steady / cores / stage_shared:.2f}"
    )
    print(
        f"peak memory (process tree): {small} clips {small_peak / 2**20:.0f} MiB, {large} clips "
        f"{large_peak / 2**20:.0f} MiB, ratio {large_peak / small_peak:.2f} (target <= 1.25)"
    )
    print(
        f"end-to-end incl. Ray start-up and commit: {large_run['views'] / large_run['total_seconds'] / cores:.1f} "
        "views/s per core"
    )


if __name__ == "__main__":
    main()
