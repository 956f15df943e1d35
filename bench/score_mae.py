"""Benchmark of the score job's reconstruction scorer on ``.pt`` spectrograms.

``python -m bench.score_mae [--quick] [--items N]`` (the built-in audio scorers: ``bench.score``).

Measures, on the same machine in one run, over one folder of ``.pt`` mel
spectrograms (``{split}/{class}/*.pt``, ``[1, 128, 130]`` float32, the augment
job's default shape) and the built-in reference model at its default size:

1. baseline: the evaluation script's per-file loop: ``torch.load``, model
   forward on one item, append the scores to a list; run with torch's
   default threads (one per core) and with one thread, the faster of the
   two is the reference (1.00x);
2. stage loop: ``torch.load`` per file plus ``ScoreStage`` on blocks of 64
   files (model forwards of ``--forward-batch`` rows), in one process on one
   thread: what batching alone gives, per core;
3. the score job on embedded Ray (list, decode, score, write Parquet,
   commit, reports), using every core, at two sizes (a fifth, then all
   files): the run phase and end-to-end rates of the larger, and both run
   times (their difference is what further items cost once the actors are
   up). Ray is started before the clock starts; its start-up is reported
   on its own line.

It also checks that the job and the baseline computed the same scores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import run_measured, table

N_MELS, FRAMES = 128, 130


def make_pt_folder(dest: Path, count: int) -> list[Path]:
    """``count`` mel tensors under ``{train,val}/{good,bad}/`` (generated once, reused)."""
    existing = sorted(dest.rglob("*.pt"))
    if len(existing) >= count:
        return existing[:count]
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        split = "val" if i % 5 == 0 else "train"
        cls = "bad" if i % 7 == 0 else "good"
        path = dest / split / cls / f"patient{i % 97:03d}_{i:06d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.randn(1, N_MELS, FRAMES, generator=generator) * 20 - 40, path)
    return sorted(dest.rglob("*.pt"))


def normalise(mel: torch.Tensor) -> torch.Tensor:
    return (mel + 40.0) / 20.0


def baseline(files: list[Path], budget_seconds: float = 30.0) -> tuple[float, dict[str, float]]:
    """The per-file loop (stops early after ``budget_seconds``); returns items/s and the losses by key."""
    from ray_pipelines.scoring.functional import reconstruction_mse, signal_energy
    from ray_pipelines.scoring.models import ReferenceMAE

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # as the job's stage picks it
    model = ReferenceMAE().eval().to(device)
    root = files[0].parents[2]
    losses: dict[str, float] = {}
    scores = []
    start = time.perf_counter()
    with torch.inference_mode():
        for path in files:
            mel = normalise(torch.load(path, weights_only=True).to(device))[None]
            reconstruction = model.reconstruct(mel)
            scores.append((str(path), float(reconstruction_mse(mel, reconstruction)), float(signal_energy(mel))))
            if time.perf_counter() - start > budget_seconds:
                break
    seconds = time.perf_counter() - start
    for path, loss, _ in scores:
        losses[Path(path).relative_to(root).as_posix()] = loss
    return len(scores) / seconds, losses


def stage_loop(files: list[Path], forward_batch: int, block: int = 64) -> float:
    """torch.load per file and ScoreStage per block of files, one thread."""
    from ray_pipelines.stages.score import ScoreStage

    reconstruction = {
        "model": {"kind": "reference"},
        "n_mels": N_MELS,
        "frames": FRAMES,
        "normalize": {"mean": -40.0, "std": 20.0},
    }
    stage = ScoreStage(scorers={"reconstruction": reconstruction}, forward_batch=forward_batch)  # one CPU thread
    start = time.perf_counter()
    for begin in range(0, len(files), block):
        chunk = files[begin : begin + block]
        mels = np.stack([torch.load(p, weights_only=True).numpy() for p in chunk])
        stage(
            {
                "key": np.array([str(p) for p in chunk], dtype=object),
                "item": np.zeros(len(chunk), np.int64),
                "error": np.array([""] * len(chunk), dtype=object),
                "mel": mels,
            }
        )
    return len(files) / (time.perf_counter() - start)


def job_child(args: argparse.Namespace) -> None:
    """In a child process: start Ray, then time the score job; prints JSON."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.engine.runtime import connect
    from ray_pipelines.jobs.score import ScoreConfig, ScoreJob

    started = time.perf_counter()
    connect(num_cpus=os.cpu_count(), quiet=True)  # embedded Ray exactly as the jobs start it
    ray_seconds = time.perf_counter() - started
    cfg = validate_config(
        ScoreConfig,
        {
            "input": args.input,
            "output": args.output,
            "source": "pt",
            "n_mels": N_MELS,
            "frames": FRAMES,
            "normalize": {"mean": -40.0, "std": 20.0},
            "forward_batch": args.forward_batch,
            "group_pattern": r"/(patient\d+)_",
            "limit": args.limit,
        },
    )
    result = run_job(ScoreJob(cfg), overwrite=True, progress=False)
    print(
        json.dumps(
            {
                "items": result.run_rows,
                "run_seconds": result.manifest["timings"]["run_seconds"],
                "steady": result.steady_rows_per_second,
                "total_seconds": result.seconds,
                "ray_seconds": ray_seconds,
                "errors": result.counts["errors"],
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (well under a minute of work)")
    parser.add_argument("--items", type=int, help="items for the job (default 6000, quick 1500)")
    parser.add_argument("--forward-batch", type=int, default=16, help="rows per model forward (the CPU default)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files and outputs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input"), parser.add_argument("--output"), parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    if args.child:
        return job_child(args)

    cores = os.cpu_count() or 1
    items = args.items or (1500 if args.quick else 6000)
    work = Path(tempfile.mkdtemp(prefix="bench-score-"))
    files = make_pt_folder(work / "mels", items)
    loop_files = files[:: max(1, items // (300 if args.quick else 1000))]

    # The baseline as people run it (torch's default: a thread per core) and on one thread;
    # the faster of the two is the reference.
    torch.set_num_threads(cores)
    base_all, base_losses = baseline(loop_files)
    torch.set_num_threads(1)
    base_one, one_losses = baseline(loop_files)
    base_one_before = base_one
    loop = stage_loop(loop_files, args.forward_batch)
    runs = []
    for limit in (items // 5, items):
        out, peak = run_measured(
            [
                "-m",
                "bench.score_mae",
                "--child",
                "--input",
                str(work / "mels"),
                "--output",
                str(work / f"scores-{limit}"),
                "--forward-batch",
                str(args.forward_batch),
                "--limit",
                str(limit),
            ]
        )
        runs.append(json.loads(out.strip().splitlines()[-1]))
    small, run = runs
    job = run["items"] / run["run_seconds"]
    # Once the actors are up: the larger run minus the smaller, and while every writer was busy.
    extra_seconds = run["run_seconds"] - small["run_seconds"]
    # At small sizes start-up noise can exceed the extra files' time: then there is no marginal rate.
    marginal = (run["items"] - small["items"]) / extra_seconds if extra_seconds > 0.5 else float("nan")
    steady = run["steady"] or marginal
    end_to_end = run["items"] / run["total_seconds"]
    # The machine may be shared: measure the 1-thread baseline again after the jobs and use the mean.
    torch.set_num_threads(1)
    base_one_after, _ = baseline(loop_files)
    base_one = (base_one + base_one_after) / 2
    base = max(base_all, base_one)

    with open(work / f"scores-{items}" / "scores.csv") as f:
        job_losses = {r["filename"]: float(r["reconstruction_loss"]) for r in csv.DictReader(f)}
    diffs = [abs(job_losses[k] - v) / abs(v) for losses in (base_losses, one_losses) for k, v in losses.items()]

    rows = [
        [
            f"per-file loop: torch.load, forward, append ({len(base_losses)} files, {cores} threads)",
            f"{base_all:.0f}",
            f"{base_all / base:.2f}x",
        ],
        [
            f"per-file loop: torch.load, forward, append ({len(one_losses)} files, 1 thread; mean of before and "
            f"after the jobs: {base_one_before:.0f}, {base_one_after:.0f})",
            f"{base_one:.0f}",
            f"{base_one / base:.2f}x",
        ],
        [
            f"ScoreStage loop, forwards of {args.forward_batch} (1 process, 1 thread)",
            f"{loop:.0f}",
            f"{loop / base:.2f}x",
        ],
        [f"score job on Ray, run phase ({run['items']} files, {cores} cores)", f"{job:.0f}", f"{job / base:.2f}x"],
        [
            "score job end to end (+ listing, commit, CSV, summaries, filters, plots)",
            f"{end_to_end:.0f}",
            f"{end_to_end / base:.2f}x",
        ],
        [
            f"score job once running: marginal ({run['items']} minus {small['items']} files)",
            f"{marginal:.0f}",
            f"{marginal / base:.2f}x",
        ],
        [
            f"score job once running: steady state ({run['items']} files, all writers busy)",
            f"{steady:.0f}",
            f"{steady / base:.2f}x",
        ],
    ]
    print(
        f"\nscore benchmark: {platform.node()} {platform.processor() or platform.machine()}, {cores} cores, "
        f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"items: [1, {N_MELS}, {FRAMES}] float32 .pt files; model: reference MAE (dim 64, depth 2, patch 16x16)")
    print(table(rows, ["what", "items/s", "vs baseline"]))
    print(
        f"\njob / faster baseline: run phase {job / base:.2f}x, once running {marginal / base:.2f}x (marginal) and "
        f"{steady / base:.2f}x (steady state) (target >= 5x on CPU); ceiling here: {cores} cores x "
        f"{loop / base:.2f} (batching gain per core) = {cores * loop / base:.2f}x"
    )
    print(
        f"job run phase: {small['items']} files in {small['run_seconds']:.1f} s, {run['items']} files in "
        f"{run['run_seconds']:.1f} s (the difference is what the extra files cost once the actors are up)"
    )
    print(
        f"Ray start-up (not in the job's time): {run['ray_seconds']:.1f} s; peak memory of the larger job's process "
        f"tree: {peak / 2**20:.0f} MiB; errors: {run['errors']}"
    )
    print(f"scores agree with the baseline: max relative difference {max(diffs):.2e} over {len(diffs)} files")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
