"""Benchmark of the teacher job: ``python -m bench.teacher [--quick] [--teachers pesto,loudness]``.

Measures, on the same machine in one run, over the same synthetic clips
(1.2 s at 44.1 kHz) and the same teachers:

1. baseline: the existing approach, the teacher called per sample inside the
   training loop's DataLoader workers on the CPU (``workers`` processes, one
   thread each, models loaded once per worker, batches of 16 clips);
2. the teacher job on embedded Ray (generate, resample on the device, batched
   teachers, Parquet shards, commit) with as many CPU actors as workers;
3. reading the cache back with ``TeacherCache`` in the same DataLoader
   setting: what every epoch after the first costs.

With a CUDA device, also PESTO and CREPE full on the GPU, batched, with the
GPU's busy share sampled by nvidia-smi during the job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.common import run_measured, table

TEACHERS = {
    "pesto": {"kind": "pesto"},
    "crepe_tiny": {"kind": "torchcrepe", "capacity": "tiny"},
    "crepe_full": {"kind": "torchcrepe", "capacity": "full"},
    "loudness": {"kind": "loudness"},
}
SAMPLE_RATE, DURATION = 44100, 1.2
BATCH = 16


def synth_block(num_samples: int) -> dict:
    return {"num_samples": num_samples, "f0_range": [60.0, 1500.0], "db_range": [-40.0, -12.0]}


class PerSampleTeacher(Dataset):
    """The existing approach: a data worker makes a clip and runs every teacher on it alone."""

    def __init__(self, num_samples: int, teachers: list[dict], seed: int = 0):
        from ray_pipelines.synth import SynthConfig

        self.synth = SynthConfig(**synth_block(num_samples))
        self.specs, self.seed = teachers, seed
        self.length = int(round(SAMPLE_RATE * DURATION))
        self.teachers = None

    def _setup(self) -> None:  # once per worker process, like a model held by the dataset
        import torchaudio

        from ray_pipelines.teachers import build_teacher

        self.teachers = [build_teacher(spec) for spec in self.specs]
        self.resamplers = {
            t.sample_rate: torchaudio.transforms.Resample(SAMPLE_RATE, t.sample_rate)
            for t in self.teachers
            if t.sample_rate != SAMPLE_RATE
        }

    def __len__(self) -> int:
        return self.synth.num_samples

    def __getitem__(self, index: int):
        from ray_pipelines.synth import sample_key, stored_f0, synth_sample

        if self.teachers is None:
            self._setup()
        key = sample_key("train", index, len(self))
        audio, params = synth_sample(self.synth, self.seed, key, index, SAMPLE_RATE, self.length)
        x = torch.from_numpy(audio.astype(np.float32))
        outputs = {}
        with torch.inference_mode():
            for teacher in self.teachers:
                resample = self.resamplers.get(teacher.sample_rate)
                inputs = resample(x[None]) if resample is not None else x[None]
                for name, value in teacher(inputs).items():
                    outputs[f"{teacher.name}_{name}"] = value[0]
        return x, stored_f0(params), params.db, outputs


def time_loader(dataset: Dataset, workers: int) -> tuple[int, float]:
    start = time.perf_counter()
    seen = 0
    for batch in DataLoader(dataset, batch_size=BATCH, num_workers=workers):
        seen += len(batch[0])
    return seen, time.perf_counter() - start


def stage_loop(num_samples: int, teachers: list[dict], batch: int) -> tuple[int, float]:
    """``TeacherStage`` in a plain loop, one thread, on clips generated beforehand (not timed)."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.jobs.teacher import JOB, TeacherConfig
    from ray_pipelines.stages.teacher import TeacherStage

    torch.set_num_threads(1)
    job = JOB(
        validate_config(
            TeacherConfig,
            {
                "input": "synth://",
                "output": "-",
                "synth": synth_block(num_samples),
                "teachers": teachers,
                "batch_size": batch,
            },
        )
    )
    decoder, stage = job.decoder(), TeacherStage(**job.stage_kwargs())
    rows = [item.to_row() for item in job.list_inputs()]
    batches = [
        decoder({name: np.array([r[name] for r in rows[i : i + batch]], dtype=object) for name in rows[0]})
        for i in range(0, len(rows), batch)
    ]
    start = time.perf_counter()
    done = sum(len(stage(dict(b))["x"]) for b in batches)
    return done, time.perf_counter() - start


def job_child(args: argparse.Namespace) -> None:
    """In a child process: the teacher job on embedded Ray; prints JSON."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.engine.runtime import connect
    from ray_pipelines.jobs.teacher import JOB, TeacherConfig

    started = time.perf_counter()
    connect(num_cpus=args.workers, quiet=True)  # embedded Ray exactly as the jobs start it
    ray_seconds = time.perf_counter() - started
    teachers = [TEACHERS[name] for name in args.teachers.split(",")]
    config = {
        "input": "synth://",
        "output": args.output,
        "synth": synth_block(args.samples),
        "teachers": teachers,
        "inputs_per_block": args.block,
        "batch_size": args.block,
    }
    if args.gpu:
        config.update(num_gpus=1, autocast=args.autocast or None)
    else:
        config.update(num_gpus=0, actors=args.workers)
    result = run_job(JOB(validate_config(TeacherConfig, config)), overwrite=True, progress=False)
    print(
        json.dumps(
            {
                "rows": result.run_rows,
                "seconds": result.seconds,
                "ray_seconds": ray_seconds,
                "errors": result.counts["error_rows"],
                "bytes": sum(f["bytes"] for f in result.manifest["files"]),
            }
        )
    )


def run_job_child(args: argparse.Namespace, output: Path, gpu: bool = False) -> tuple[dict, int]:
    command = [
        "-m",
        "bench.teacher",
        "--child",
        "--output",
        str(output),
        "--samples",
        str(args.samples),
        "--teachers",
        args.teachers,
        "--workers",
        str(args.workers),
        "--block",
        str(args.block),
    ]
    if gpu:
        command += ["--gpu", "--autocast", args.autocast or ""]
    out, peak = run_measured(command)
    return json.loads(out.strip().splitlines()[-1]), peak


class GpuBusy:
    """nvidia-smi utilization.gpu sampled every 100 ms while a job runs."""

    def __init__(self):
        self.samples: list[int] = []
        self._proc = None
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append(int(line.strip()))

    def __enter__(self) -> GpuBusy:
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.wait()
        self._thread.join(timeout=2)

    def steady_state(self) -> float:
        """Mean busy % between the first and the last busy sample (start-up and commit left out)."""
        busy = [i for i, s in enumerate(self.samples) if s > 0]
        if not busy:
            return 0.0
        window = self.samples[busy[0] : busy[-1] + 1]
        return float(np.mean(window))


def gpu_section(args: argparse.Namespace, work: Path) -> str:
    if not torch.cuda.is_available():
        return "GPU: not measured (no CUDA device on this machine)"
    gpu_args = argparse.Namespace(**{**vars(args), "teachers": "pesto,crepe_full", "block": 256})
    with GpuBusy() as busy:
        run, _ = run_job_child(gpu_args, work / "out-gpu", gpu=True)
    return (
        f"GPU ({torch.cuda.get_device_name(0)}): pesto + crepe_full, {run['rows']} clips, "
        f"{run['rows'] / run['seconds']:.1f} samples/s (whole job), GPU busy {busy.steady_state():.0f}% "
        "in steady state (target >= 80%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--samples", type=int, help="clips per measurement (default 64, quick 24)")
    parser.add_argument("--teachers", default="pesto,loudness", help=f"comma-separated: {', '.join(TEACHERS)}")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader workers = CPU actors")
    parser.add_argument("--block", type=int, default=16, help="clips per block and per teacher call")
    parser.add_argument("--autocast", default="", help="bf16 or fp16 for the GPU run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.samples = args.samples or (24 if args.quick else 64)
    if args.child:
        return job_child(args)

    from ray_pipelines.readers.teacher import TeacherCache

    teachers = [TEACHERS[name] for name in args.teachers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-teacher-"))
    load_before = os.getloadavg()[0]
    try:
        base_rows, base_seconds = time_loader(PerSampleTeacher(args.samples, teachers), args.workers)
        loop_rows, loop_seconds = stage_loop(max(args.block, args.samples // 3), teachers, args.block)
        run, job_peak = run_job_child(args, work / "out")
        cache = TeacherCache(str(work / "out"), "train", fields=("x", first_teacher_column(teachers), "f0", "db"))
        read_rows, read_seconds = time_loader(cache, args.workers)
        gpu_line = gpu_section(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = base_rows / base_seconds
    loop = loop_rows / loop_seconds
    job = run["rows"] / run["seconds"]
    read = read_rows / read_seconds
    n = args.workers
    rows = [
        [
            f"baseline: per-sample teacher in {n} DataLoader workers (CPU)",
            base_rows,
            f"{base_seconds:.1f}",
            f"{base:.2f}",
            f"{base / n:.2f}",
            "1.00x",
        ],
        [
            f"teacher stage, plain loop, 1 thread, batches of {args.block}",
            loop_rows,
            f"{loop_seconds:.1f}",
            f"{loop:.2f}",
            f"{loop:.2f}",
            f"{loop / (base / n):.2f}x per core",
        ],
        [
            f"teacher job: {n} CPU actors, batches of {args.block} (whole job)",
            run["rows"],
            f"{run['seconds']:.1f}",
            f"{job:.2f}",
            f"{job / n:.2f}",
            f"{job / base:.2f}x",
        ],
        [
            f"reading the cache: TeacherCache, {n} DataLoader workers",
            read_rows,
            f"{read_seconds:.1f}",
            f"{read:.1f}",
            f"{read / n:.1f}",
            f"{read / base:.1f}x",
        ],
    ]
    print(
        f"\nteacher benchmark: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}; "
        f"teachers {args.teachers}; load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
    )
    print(table(rows, ["what", "clips", "seconds", "samples/s", "per core", "vs baseline"]))
    print(
        f"\njob / baseline: {job / base:.2f}x (target >= 20x); the job's time includes actor start-up and "
        f"commit, not Ray start-up ({run['ray_seconds']:.1f} s); {run['bytes'] / run['rows'] / 1024:.0f} KiB "
        f"per clip on disk; peak memory of the job's process tree (Ray included) {job_peak / 2**20:.0f} MiB"
    )
    print(gpu_line)


def first_teacher_column(teachers: list[dict]) -> str:
    from ray_pipelines.teachers import column_name, parse_spec

    spec = parse_spec(teachers[0])
    return column_name(spec.teacher_name, spec.declared_outputs()[0].name)


if __name__ == "__main__":
    main()
