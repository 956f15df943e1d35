"""Benchmark the encode job against the bare model, on the same device and batch size, in one run.

    .venv/bin/python -m bench.encode [--quick] [--clips N] [--batch-size B] [--precision fp16]

- bare model: ``encoder.encode`` on random ``[B, C, sample_size]`` batches already on
  the device, in a loop (no decode, no I/O, no Ray), run as each actor runs it: on
  the GPU, or on one CPU thread; on CPU the job's ceiling is that rate times the
  number of actors.
- encode job: ``run_job`` on real recordings (../shared/audio, cycled to N inputs),
  embedded Ray, the ``sat`` layout on local disk. Reported twice: end to end (with
  actor start-up and model loading), and marginal: ``N / (t(2N) - t(N))``, which
  cancels the fixed start-up and is what a long job sees.

The target is marginal job throughput >= 90% of the bare model's. On a shared CPU
machine wall clock moves with the other load, so the CPU time of the whole process
tree (driver, Ray daemons, actors, decode and write tasks) is reported beside it:
bare CPU seconds per clip / job CPU seconds per clip is the share of the job's CPU
that goes into the model.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import TreeCPU

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "audio" / "sonic-pi"


def make_inputs(dest: Path, count: int) -> Path:
    """``count`` real recordings (cycled, renamed) or, without them, generated tones."""
    import soundfile as sf

    dest.mkdir(parents=True, exist_ok=True)
    sources = sorted(SHARED.rglob("*.flac"), key=lambda p: -p.stat().st_size) if SHARED.exists() else []
    for i in range(count):
        target = dest / f"clip_{i:05d}.flac"
        if sources:
            shutil.copy(sources[i % len(sources)], target)
        else:
            t = np.arange(44100 * 4) / 44100
            sf.write(target, (0.3 * np.sin(2 * np.pi * (110 + 10 * i) * t)).astype(np.float32), 44100)
    return dest


def bare_model(
    model: dict,
    sample_size: int,
    batch_size: int,
    precision: str,
    device: torch.device,
    threads: int,
    min_seconds: float,
) -> tuple[int, float, float]:
    """``encoder.encode`` alone, in a loop: (clips, wall seconds, CPU seconds of this process)."""
    from ray_pipelines.encoders import ModelConfig, load_encoder
    from ray_pipelines.stages.encode import PRECISIONS

    if device.type == "cpu":
        torch.set_num_threads(threads)
    dtype = PRECISIONS[precision]
    encoder = load_encoder(ModelConfig.model_validate(model)).encoder.to(device=device, dtype=dtype)
    x = (0.1 * torch.randn(batch_size, encoder.channels, sample_size)).to(device, dtype)

    def step() -> None:
        with torch.inference_mode():
            encoder.encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    iterations, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while iterations < 3 or time.perf_counter() - started < min_seconds:
        step()
        iterations += 1
    return iterations * batch_size, time.perf_counter() - started, time.process_time() - cpu_started


def job_run(inputs: Path, output: Path, clips: int, settings: dict) -> tuple[int, float, float]:
    """One encode job over the first ``clips`` inputs: (clips written, run seconds, CPU seconds)."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob

    cfg = validate_config(EncodeConfig, {"input": str(inputs), "output": str(output), "limit": clips, **settings})
    job = EncodeJob(cfg)
    with TreeCPU(interval=0.1) as cpu:
        result = run_job(job, progress=False)
    return result.run_rows, result.manifest["timings"]["run_seconds"], cpu.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="N: the job runs N and 2N clips (fewer: start-up noise)")
    parser.add_argument(
        "--sample-size", type=int, default=1320960, help="samples per clip (pre_encode's default, 30 s at 44.1 kHz)"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--inputs-per-block", type=int, default=8, help="the engine's unit of work (default 8)")
    parser.add_argument(
        "--precision", choices=["fp32", "fp16", "bf16"], default=None, help="default: fp16 on CUDA, fp32 on CPU"
    )
    parser.add_argument("--actors", type=int, default=None, help="default: one per GPU, else one per CPU")
    parser.add_argument("--hidden", type=int, default=8, help="built-in model width (bigger = heavier model)")
    parser.add_argument(
        "--keep-idle-workers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep idle Ray workers (kill_idle_workers_interval_ms=0), as the engine's embedded "
        "Ray does: write tasks reuse a warm worker instead of starting a process per block",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not a measurement)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.sample_size, args.inputs_per_block = 8, 262144, 4

    import ray

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = args.precision or ("fp16" if cuda else "fp32")
    cpus = os.cpu_count() or 1
    actors = args.actors or (torch.cuda.device_count() if cuda else cpus)
    model = {"kind": "builtin", "builtin": {"hidden": args.hidden}}
    settings = {
        "sample_size": args.sample_size,
        "batch_size": args.batch_size,
        "actors": actors,
        "seed": 0,
        "model": model,
        "model_half": precision == "fp16",
        "bf16": precision == "bf16",
        "inputs_per_block": args.inputs_per_block,
    }

    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    # The bare model as each actor runs it: one thread on CPU (Ray scales by actors), the GPU on CUDA.
    min_seconds = 2.0 if args.quick else 8.0
    bare = bare_model(model, args.sample_size, args.batch_size, precision, device, 1, min_seconds)
    single = bare_model(model, args.sample_size, 1, precision, device, 1, min_seconds) if not cuda else None
    torch.set_num_threads(cpus)
    # The baseline: the faster of the two ways to run the bare model (on CPU the stage encodes one
    # window at a time, which on CPU is often the faster one), and its wall-clock ceiling for the
    # job's pool: every actor running the bare model all the time.
    best = max([bare, single] if single else [bare], key=lambda m: m[0] / m[2])
    parallel = actors if not cuda else 1
    ceiling = (best[0] * parallel, best[1], best[2] * parallel)
    if not cuda and args.clips < actors * args.inputs_per_block:
        print(f"note: {args.clips} clips fill fewer blocks than actors: the marginal run starts more actors")

    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        inputs = make_inputs(work / "inputs", 2 * args.clips)
        system = {"kill_idle_workers_interval_ms": 0} if args.keep_idle_workers else None
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _system_config=system,
        )
        # A first small job starts Ray Data's own session actors, so the two measured runs
        # differ only in their number of clips.
        job_run(inputs, work / "warm-up", 2, {**settings, "sample_size": settings["sample_size"] // 8})
        small = job_run(inputs, work / "out-n", args.clips, settings)
        large = job_run(inputs, work / "out-2n", 2 * args.clips, settings)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    marginal = tuple(b - a for a, b in zip(small, large))

    name = torch.cuda.get_device_name(0) if cuda else f"{platform.processor() or platform.machine()} CPU, {cpus} cores"
    print(
        f"\nencode benchmark: built-in VAE (hidden {args.hidden}), {args.sample_size} samples/clip, "
        f"batch {args.batch_size}, {precision}, device {device} ({name}), {actors} actor(s), "
        f"{args.inputs_per_block} inputs per block"
        f"{', idle workers kept' if args.keep_idle_workers else ''}; load average before: {load_before}\n"
    )
    where = "1 thread" if not cuda else "GPU"
    rows = [
        (f"bare model, batch {args.batch_size} ({where})", bare),
        *([("bare model, batch 1 (1 thread, as the stage)", single)] if single else []),
        *([(f"bare model x {parallel} actors (ceiling)", ceiling)] if parallel > 1 else []),
        (f"encode job, end to end ({large[0]} clips)", large),
        (f"encode job, marginal ({large[0]} - {small[0]} clips)", marginal),
    ]
    print(
        f"| {'measurement':<46} | {'clips':>5} | {'wall s':>7} | {'clips/s':>7} | {'CPU s':>7} | {'clips/CPU-s':>11} |"
    )
    print(f"|{'-' * 48}|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 13}|")
    for label, (clips, wall, cpu) in rows:
        print(
            f"| {label:<46} | {clips:>5} | {wall:>7.2f} | {clips / max(wall, 1e-9):>7.2f} | {cpu:>7.2f} | "
            f"{clips / max(cpu, 1e-9):>11.2f} |"
        )

    def rate(m, i):
        return m[0] / max(m[i], 1e-9)

    if marginal[1] <= 0 or marginal[2] <= 0:
        # The larger run was not measurably slower: too few clips to see past start-up.
        print(
            f"\njob / bare model, marginal: n/a (run too small, use more --clips); "
            f"end to end: {rate(large, 1) / rate(ceiling, 1):.0%} by wall clock"
        )
    else:
        print(
            f"\njob / bare model, marginal: {rate(marginal, 1) / rate(ceiling, 1):.0%} by wall clock, "
            f"{rate(marginal, 2) / rate(best, 2):.0%} by CPU time (target >= 90%); "
            f"end to end: {rate(large, 1) / rate(ceiling, 1):.0%} by wall clock"
        )
    if not cuda:
        print(
            "CPU only: wall-clock figures move with whatever else runs on the machine; CPU time (this process "
            "and every Ray process) does not. The fp16 CUDA comparison needs a GPU machine."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
