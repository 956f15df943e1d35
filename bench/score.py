"""Benchmark of the score job's built-in scorers: ``python -m bench.score [--quick]``.

Inputs: 10 s, 16 kHz mono WAV clips made from the real two-speaker recording in
../shared/audio/speech (windows at different offsets, each with white noise at its own
SNR between 0 and 30 dB: a speech corpus of varied quality), cached under bench-output/score/.

For each scorer (``dnsmos``, ``vad``, ``signal``, ``reconstruction`` with the reference MAE) and
for the default set (``dnsmos, vad, signal``), in one run:

1. baseline: a per-file loop calling the same libraries (after one warm-up call): ``soundfile.read``, then
   ``speechmos.dnsmos.run`` (its ONNX Runtime sessions as it makes them: one thread per core),
   ``silero_vad.get_speech_timestamps`` (Silero's one window per call) and the speech fraction,
   ``signal_statistics``, or the log-mel and one model forward per file, appending the scores;
2. stage loop: the job's decoder and ``ScoreStage`` called in a plain loop on blocks of 16 clips
   (one process, one thread): what the scorer costs per core inside the job, without Ray;
3. the score job on embedded Ray (every core) with only that scorer: listing, decode, scoring,
   Parquet, commit and the reports, at two sizes; the larger run minus the smaller is what further
   clips cost once the actors are up (their start-up, model loading included, cancels out), and
   the steady state is the wall-clock rate while every writer was busy.

Per core is clips per CPU-second actually used: the loop's process (all its threads), and for the
job the whole process tree (actors, write tasks, raylet, driver), which stays true when other work
shares the machine; clips per wall second are shown too. Ratios are the job's (marginal) against
the loop of the same run. The job's scores are compared with the loop's.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import REPO, TreeCPU, table

SPEECH = REPO.parent / "shared" / "audio" / "speech" / "sample.wav"
CACHE = REPO / "bench-output" / "score"
RATE, SECONDS = 16000, 10.0
DEFAULT_SET = ("dnsmos", "vad", "signal")
# Clips for the loop and for the job's two runs, per scorer: the slow model gets fewer.
SIZES = {"dnsmos": (16, 16, 96), "vad": (48, 64, 256), "signal": (96, 128, 512), "reconstruction": (96, 128, 512)}
SIZES["default"] = SIZES["dnsmos"]
QUICK = {name: tuple(max(4, n // 4) for n in sizes) for name, sizes in SIZES.items()}


def stand_in_speech(seconds: float = 60.0) -> np.ndarray:
    """Without ../shared (a bare clone): syllable-long voiced bursts (a 120-220 Hz harmonic series under
    a 4 Hz envelope) with pauses, so that the scorers have speech-like input; the timings are what count."""
    print(f"bench.score: {SPEECH} not found: a generated stand-in for speech", flush=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 170 + 50 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) * (rng.random(len(t) // RATE + 1) > 0.2)[(t).astype(int)]
    return 0.3 * voiced * envelope + 0.003 * rng.standard_normal(len(t))


def make_clips(count: int) -> list[Path]:
    """``count`` distinct 10 s clips of the real speech with noise (generated once, cached)."""
    folder = CACHE / "clips"
    existing = sorted(folder.glob("*.wav"))
    if len(existing) >= count:
        return existing[:count]
    speech, rate = sf.read(str(SPEECH), dtype="float64") if SPEECH.exists() else (stand_in_speech(), RATE)
    assert rate == RATE, rate
    length = int(SECONDS * RATE)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(existing), count):
        rng = np.random.default_rng(i)
        start = int(rng.integers(0, len(speech) - length))
        clip = speech[start : start + length]
        snr = rng.uniform(0.0, 30.0)
        clip = clip + rng.standard_normal(length) * np.sqrt(np.mean(clip**2) / 10 ** (snr / 10))
        sf.write(str(folder / f"clip{i:05d}.wav"), (clip / np.abs(clip).max() * 0.9).astype(np.float32), RATE)
    return sorted(folder.glob("*.wav"))[:count]


# ---- the per-file loop ----------------------------------------------------------------------------
def loop_scorers(names: tuple[str, ...]):
    """Per-file functions ``audio -> {column: value}`` calling the libraries as a user would."""
    functions = []
    if "dnsmos" in names:
        from speechmos import dnsmos

        def dnsmos_scores(audio):
            r = dnsmos.run(audio, RATE)
            return {
                "dnsmos_sig": r["sig_mos"],
                "dnsmos_bak": r["bak_mos"],
                "dnsmos_ovrl": r["ovrl_mos"],
                "dnsmos_p808": float(r["p808_mos"]),
            }

        functions.append(dnsmos_scores)
    if "vad" in names:
        import torch
        from silero_vad import get_speech_timestamps, load_silero_vad

        model = load_silero_vad()

        def speech(audio):
            segments = get_speech_timestamps(torch.from_numpy(audio), model, sampling_rate=RATE)
            return {"speech_fraction": sum(s["end"] - s["start"] for s in segments) / len(audio)}

        functions.append(speech)
    if "signal" in names:
        from ray_pipelines.scoring.signal_stats import signal_statistics

        functions.append(lambda audio: signal_statistics(audio, RATE))
    if "reconstruction" in names:
        from ray_pipelines.scoring.reconstruction import ReconstructionScorer
        from ray_pipelines.scoring.scorers import Clips

        scorer = ReconstructionScorer(**reconstruction_options(), forward_batch=1)  # one file per forward

        def reconstruction(audio):
            out = scorer(Clips(keys=["k"], items=[0], sample_rate=RATE, audio=audio[None]))
            return {name: float(values[0]) for name, values in out.items()}

        functions.append(reconstruction)
    return functions


def reconstruction_options() -> dict:
    """The reconstruction scorer as the job builds it for the benchmark's config."""
    from ray_pipelines.jobs.score import ScoreJob

    return ScoreJob(job_config("unused", "unused", ["reconstruction"])).reconstruction_kwargs()


def run_loop(files: list[Path], names: tuple[str, ...]) -> tuple[float, float, dict[str, dict[str, float]]]:
    """(clips per wall second, clips per CPU-second, scores by file name) of the per-file loop."""
    functions = loop_scorers(names)
    warm, _ = sf.read(str(files[0]), dtype="float32")
    for function in functions:  # one-time costs (speechmos's sessions, the WADA curve) are not per file
        function(warm)
    scores = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for path in files:
        audio, _ = sf.read(str(path), dtype="float32")
        row = {}
        for function in functions:
            row.update(function(audio))
        scores[path.name] = row
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(files) / wall, len(files) / cpu, scores


# ---- the job -----------------------------------------------------------------------------------------
def job_config(clips: str, output: str, scorers: list[str], limit: int | None = None, per_block: int = 64):
    from ray_pipelines.config import validate_config
    from ray_pipelines.jobs.score import ScoreConfig

    return validate_config(
        ScoreConfig,
        {
            "input": clips,
            "output": output,
            "sample_rate": RATE,
            "duration": SECONDS,
            "scorers": scorers,
            "split_pattern": None,
            "class_pattern": None,
            "normalize": {"mean": -40.0, "std": 20.0},
            "limit": limit,
            "inputs_per_block": per_block,
        },
    )


def run_stage_loop(clips: Path, files: list[Path], names: tuple[str, ...], block: int = 16) -> float:
    """Clips per CPU-second of the job's decoder and ScoreStage in a plain loop (one thread)."""
    from ray_pipelines.engine.decode import rows_to_batch
    from ray_pipelines.jobs.score import ScoreJob
    from ray_pipelines.stages.score import ScoreStage

    job = ScoreJob(job_config(str(clips), "unused", list(names)))
    wanted = {path.name for path in files}
    rows = [item.to_row() for item in job.list_inputs() if item.key in wanted]
    decoder, stage = job.decoder(), ScoreStage(**job.stage_kwargs())  # one torch / ONNX Runtime thread
    stage(rows_to_batch(decoder.decode_input(rows[0])))  # warm up, as the loop does
    cpu = time.process_time()
    for start in range(0, len(rows), block):
        batch = rows_to_batch([r for row in rows[start : start + block] for r in decoder.decode_input(row)])
        assert not any(batch["error"]), batch["error"]
        stage(batch)
    return len(rows) / (time.process_time() - cpu)


@dataclass
class Run:
    clips: int
    wall: float
    cpu: float
    steady: float | None


def run_job(clips: Path, output: Path, names: tuple[str, ...], limit: int) -> Run:
    from ray_pipelines.engine.runner import run_job as run
    from ray_pipelines.jobs.score import ScoreJob

    per_block = 16 if "dnsmos" in names else 64  # the packaged score.yaml's 16 where DNSMOS runs: enough blocks
    job = ScoreJob(job_config(str(clips), str(output), list(names), limit, per_block))
    with TreeCPU() as cpu:
        result = run(job, overwrite=True, progress=False)
    assert result.counts["errors"] == 0, result.counts
    return Run(result.run_rows, result.manifest["timings"]["run_seconds"], cpu.seconds, result.steady_rows_per_second)


def job_scores(output: Path) -> dict[str, dict[str, float]]:
    with open(output / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    skip = {"filename", "split", "class", "group", "item"}
    return {Path(r["filename"]).name: {k: float(v) for k, v in r.items() if k not in skip} for r in rows}


def agreement(loop: dict[str, dict[str, float]], job: dict[str, dict[str, float]]) -> str:
    """The largest difference per column between the job's and the loop's scores of the same files."""
    worst: dict[str, float] = {}
    for name, row in loop.items():
        for column, value in row.items():
            difference = abs(job[name][column] - value)
            worst[column] = max(worst.get(column, 0.0), difference)
    exact = [c for c, d in worst.items() if d == 0.0]
    inexact = [f"{c} {d:.1e}" for c, d in worst.items() if d > 0.0]
    return ", ".join(([f"{len(exact)} of {len(worst)} columns identical"] if exact else []) + inexact)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument("--scorers", default="dnsmos,vad,signal,reconstruction,default", help="comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the job outputs")
    args = parser.parse_args()
    from ray_pipelines.engine.runtime import connect

    cores = os.cpu_count() or 1
    sizes = QUICK if args.quick else SIZES
    chosen = [s.strip() for s in args.scorers.split(",") if s.strip()]
    clips_dir = CACHE / "clips"
    files = make_clips(max(max(sizes[name]) for name in chosen))
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    started = time.perf_counter()
    connect(num_cpus=cores, quiet=True)  # embedded Ray exactly as the jobs start it
    ray_seconds = time.perf_counter() - started

    rows, notes = [], []
    try:
        for name in chosen:
            names = DEFAULT_SET if name == "default" else (name,)
            label = f"default set ({', '.join(DEFAULT_SET)})" if name == "default" else name
            loop_n, small_n, large_n = sizes[name]
            loop_wall, loop_cpu, loop_scores = run_loop(files[:loop_n], names)
            stage_cpu = run_stage_loop(clips_dir, files[:loop_n], names)
            small = run_job(clips_dir, work / f"{name}-small", names, small_n)
            large = run_job(clips_dir, work / f"{name}-large", names, large_n)
            extra_clips = large.clips - small.clips
            extra_cpu, extra_wall = large.cpu - small.cpu, large.wall - small.wall
            marginal_cpu = extra_clips / extra_cpu if extra_cpu > 0 else float("nan")
            marginal_wall = extra_clips / extra_wall if extra_wall > 0 else float("nan")
            rows.append([label, f"per-file loop ({loop_n} clips)", f"{loop_wall:.2f}", f"{loop_cpu:.2f}", "1.00x"])
            rows.append(
                [label, "stage loop, blocks of 16 (1 thread)", "", f"{stage_cpu:.2f}", f"{stage_cpu / loop_cpu:.2f}x"]
            )
            rows.append(
                [
                    label,
                    f"job, {large.clips} clips incl. start-up",
                    f"{large.clips / large.wall:.2f}",
                    f"{large.clips / large.cpu:.2f}",
                    f"{large.clips / large.cpu / loop_cpu:.2f}x",
                ]
            )
            rows.append(
                [
                    label,
                    f"job once running ({large.clips} minus {small.clips} clips)",
                    f"{marginal_wall:.2f}",
                    f"{marginal_cpu:.2f}",
                    f"{marginal_cpu / loop_cpu:.2f}x",
                ]
            )
            steady = f"{large.steady:.2f}" if large.steady else "n/a"
            rows.append([label, f"job steady state ({large.clips} clips, all writers busy)", steady, "", ""])
            same = agreement(loop_scores, job_scores(work / f"{name}-large"))
            notes.append(f"{label}: job against loop on {loop_n} clips: {same}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nscore benchmark (built-in scorers): {platform.node()} {platform.processor() or platform.machine()}, "
        f"{cores} cores, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"clips: 10 s, 16 kHz mono WAV (real speech plus noise at 0-30 dB SNR); Ray start-up {ray_seconds:.1f} s")
    print(table(rows, ["scorer", "what", "clips/s (wall)", "clips per CPU-second", "per core vs loop"]))
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
