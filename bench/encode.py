"""Benchmark the encode job against the bare model, on the same device and batch size, in one run.

    .venv/bin/python -m bench.encode [--quick] [--clips N] [--batch-size B] [--precision fp16]

- bare model: ``encoder.encode`` on random ``[B, C, sample_size]`` batches already on
  the device, in a loop (no decode, no I/O, no Ray): the ceiling. On CPU it gets as
  many threads as the job has actors, so both use the same cores.
- encode job: ``run_job`` on real recordings (../shared/audio, cycled to N inputs),
  embedded Ray, the ``sat`` layout on local disk. Reported twice: end to end (with
  actor start-up and model loading), and marginal: ``N / (t(2N) - t(N))``, which
  cancels the fixed start-up and is what a long job sees.

The target is marginal job throughput >= 90% of the bare model's.
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


def bare_model(model: dict, sample_size: int, batch_size: int, precision: str, device: torch.device,
               threads: int, min_seconds: float) -> tuple[float, int, float]:
    """Clips/s of ``encoder.encode`` alone: (clips/s, clips, seconds)."""
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
    iterations, started = 0, time.perf_counter()
    while iterations < 3 or time.perf_counter() - started < min_seconds:
        step()
        iterations += 1
    seconds = time.perf_counter() - started
    return iterations * batch_size / seconds, iterations * batch_size, seconds


def job_run(inputs: Path, output: Path, clips: int, settings: dict) -> tuple[float, int]:
    """(run seconds, clips written) of one encode job over the first ``clips`` inputs."""
    from jobs.encode import EncodeConfig, EncodeJob
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job

    cfg = validate_config(EncodeConfig, {"input": str(inputs), "output": str(output), "limit": clips, **settings})
    result = run_job(EncodeJob(cfg), progress=False)
    return result.manifest["timings"]["run_seconds"], result.run_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=96, help="N: the job runs N and 2N clips")
    parser.add_argument("--sample-size", type=int, default=262144, help="samples per clip (~5.9 s at 44.1 kHz)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                        help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--actors", type=int, default=None, help="default: one per GPU, else one per CPU")
    parser.add_argument("--hidden", type=int, default=8, help="built-in model width (bigger = heavier model)")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not a measurement)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.sample_size = 16, 65536

    import ray

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    precision = args.precision or ("fp16" if cuda else "fp32")
    cpus = os.cpu_count() or 1
    actors = args.actors or (torch.cuda.device_count() if cuda else cpus)
    model = {"kind": "builtin", "builtin": {"hidden": args.hidden}}
    settings = {"sample_size": args.sample_size, "batch_size": args.batch_size, "actors": actors, "seed": 0,
                "model": model, "model_half": precision == "fp16", "bf16": precision == "bf16",
                "inputs_per_block": max(1, args.batch_size * 2)}

    threads = min(actors, cpus)
    min_seconds = 1.0 if args.quick else 5.0
    bare_rate, bare_clips, bare_seconds = bare_model(model, args.sample_size, args.batch_size, precision, device,
                                                     threads, min_seconds)
    # The stage's CPU path encodes one window at a time (see EncodeStage); show what that costs alone.
    single = bare_model(model, args.sample_size, 1, precision, device, threads, min_seconds) if not cuda else None
    torch.set_num_threads(cpus)

    work = Path(tempfile.mkdtemp(prefix="bench-encode-"))
    try:
        inputs = make_inputs(work / "inputs", 2 * args.clips)
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        small_seconds, small_rows = job_run(inputs, work / "out-n", args.clips, settings)
        large_seconds, large_rows = job_run(inputs, work / "out-2n", 2 * args.clips, settings)
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end_to_end = large_rows / large_seconds
    marginal = (large_rows - small_rows) / max(large_seconds - small_seconds, 1e-9)

    name = torch.cuda.get_device_name(0) if cuda else f"{platform.processor() or platform.machine()} CPU, {cpus} cores"
    print(f"\nencode benchmark: built-in VAE (hidden {args.hidden}), {args.sample_size} samples/clip, "
          f"batch {args.batch_size}, {precision}, device {device} ({name}), {actors} actor(s)\n")
    rows = [
        (f"bare model, batch {args.batch_size}" + (f" ({threads} threads)" if not cuda else ""), bare_clips,
         bare_seconds, bare_rate),
        *([(f"bare model, batch 1 ({threads} threads)", single[1], single[2], single[0])] if single else []),
        (f"encode job, end to end ({large_rows} clips)", large_rows, large_seconds, end_to_end),
        (f"encode job, marginal ({large_rows}-{small_rows} clips)", large_rows - small_rows,
         large_seconds - small_seconds, marginal),
    ]
    print(f"| {'measurement':<44} | {'clips':>6} | {'seconds':>8} | {'clips/s':>8} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    for label, clips, seconds, rate in rows:
        print(f"| {label:<44} | {clips:>6} | {seconds:>8.2f} | {rate:>8.2f} |")
    print(f"\njob / bare model: marginal {marginal / bare_rate:.0%}, end to end {end_to_end / bare_rate:.0%} "
          f"(target: marginal >= 90%)")
    if not cuda:
        print("no GPU here: these are CPU numbers; the fp16 CUDA comparison needs a GPU machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
