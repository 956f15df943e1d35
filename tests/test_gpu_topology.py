"""The GPU-cluster topology, on CPU: every job on a head that advertises one (fake) GPU.

A local ``ray start --head --num-gpus 1`` (its own ports and temp dir, stopped by its own
process ids) makes the engine plan what it plans on a real GPU node: decode in CPU tasks, the
job's stage in a pool of one actor holding the GPU, and Ray write tasks. There is no CUDA here,
so the actor's device still resolves to ``cpu`` and its work is the CPU's: the output of each
job must then be the same bytes as on the CPU topology (embedded Ray, decode fused into CPU
actors that also write), row for row. This keeps the GPU path's plumbing tested on every commit.

One driver process (this module run as ``python -m tests.test_gpu_topology``) connects to the
head and runs all five jobs on tiny inputs; the tests compare its outputs with the same configs
run on the session's embedded Ray.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.audio_helpers import REPO, SHARED_AUDIO, tone, write_audio
from tests.ray_head import local_head

JOBS = ["augment", "teacher", "encode", "features", "score"]
# What each job's stage and decoder are called in Ray Data's execution plan.
STAGES = {
    "augment": "AugmentStage",
    "teacher": "TeacherStage",
    "encode": "EncodeStage",
    "features": "FeaturesStage",
    "score": "ScoreStage",
}
OBJECT_STORE = ("--object-store-memory", str(256 * 2**20))


def job_configs(inputs: Path, outputs: Path) -> dict[str, dict]:
    """Tiny configs of the five jobs (several blocks each, so batches and blocks differ), one actor each:
    the head's one GPU, and on the CPU topology one fused actor rather than one per CPU (two process starts
    fewer per job in the suite's time; the two plans still differ as they do at any size)."""
    configs = {
        "augment": {
            "input": str(inputs / "clips"),
            "output": str(outputs / "augment"),
            "num_versions": 2,
            "duration": 1.0,
            "sample_rate": 16000,
            "n_mels": 32,
            "n_fft": 512,
            "hop_length": 256,
            "batch_size": 3,
            "inputs_per_block": 2,
            "seed": 3,
        },
        "teacher": {
            "input": "synth://",
            "output": str(outputs / "teacher"),
            "synth": {"num_samples": 5, "f0_range": [100.0, 800.0]},
            "teachers": [{"kind": "pesto"}, {"kind": "loudness"}],
            "duration": 0.5,
            "batch_size": 3,
            "inputs_per_block": 2,
            "seed": 3,
        },
        "encode": {
            "input": str(inputs / "clips"),
            "output": str(outputs / "encode"),
            "sample_size": 16384,
            "windows": "all",
            "layout": "both",
            "batch_size": 3,
            "inputs_per_block": 2,
            "seed": 3,
        },
        "features": {
            "input": str(inputs / "library"),
            "output": str(outputs / "features"),
            "min_per_label": 3,
            "snippets_per_song": 2,
            "snippet_seconds": 1.0,
            "max_length": 48,
            "n_mels": 32,
            "batch_size": 3,
            "inputs_per_block": 2,
            "seed": 0,
        },
        "score": {
            "input": str(inputs / "clips"),
            "output": str(outputs / "score"),
            "duration": 0.5,
            "n_mels": 16,
            "n_fft": 512,
            "hop_length": 256,
            "split_pattern": None,
            "class_pattern": None,
            "scorers": ["reconstruction", "signal"],  # the GPU model stage and a CPU scorer in the same pool
            "model": {"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2},
            "mask_ratio": 0.5,
            "mask_patch": [8, 8],
            "batch_size": 3,
            "inputs_per_block": 2,
            "seed": 3,
        },
    }
    return {name: {**config, "actors": 1} for name, config in configs.items()}


def job_class(name: str) -> type:
    import importlib

    return importlib.import_module(f"ray_pipelines.jobs.{name}").JOB


def make_job(name: str, config: dict):
    from ray_pipelines.config import validate_config

    job_cls = job_class(name)
    return job_cls(validate_config(job_cls.config_model, config))


def pool_plan(job, result) -> dict:
    """The actor pool the engine plans for ``job`` on the connected cluster (as ``run_job`` sized it)."""
    from ray_pipelines.engine.runtime import plan_pool

    blocks = math.ceil(result.counts["listed"] / job.config.inputs_per_block)  # fresh outputs: nothing skipped
    stages = job.stages()
    return vars(plan_pool(job.config, uses_gpu=any(s.gpu for s in stages), max_useful=blocks, pools=len(stages)))


# ---- the driver on the GPU head (a subprocess: the test process holds the embedded Ray) ----------


class ExecutionPlans:
    """The plans Ray Data logs when a dataset starts (``Execution plan of Dataset ...``)."""

    def __init__(self):
        import logging

        self.plans: list[str] = []
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: self._keep(record.getMessage())
        logger = logging.getLogger("ray.data")
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))

    def _keep(self, message: str) -> None:
        if message.startswith("Execution plan of Dataset"):
            self.plans.append(message.split(": ", 1)[1])


class FreeGpus:
    """The least of the cluster's available GPUs, sampled every 20 ms while a job runs."""

    def __init__(self):
        self.least = math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import ray

        while not self._stop.wait(0.02):
            self.least = min(self.least, ray.available_resources().get("GPU", 0.0))

    def __enter__(self) -> FreeGpus:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def probe_gpu_worker() -> dict:
    """What a worker holding the GPU sees: Ray's assignment and the stages' device choice."""
    import ray

    @ray.remote(num_gpus=1, num_cpus=0)
    def probe() -> dict:
        from ray_pipelines.stages.device import pick_device

        return {
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(pick_device()),
        }

    return ray.get(probe.remote())


def drive(address: str, spec: Path, report: Path) -> None:
    """Run every job of ``spec`` on the cluster at ``address``; write what was planned and seen."""
    import ray

    from ray_pipelines.engine.runner import run_job
    from ray_pipelines.engine.runtime import connect

    plans = ExecutionPlans()
    connect(address, quiet=True)
    found = {"resources": ray.cluster_resources(), "probe": probe_gpu_worker(), "jobs": {}}
    for name, config in json.loads(spec.read_text()).items():
        job = make_job(name, config)
        before = len(plans.plans)
        with FreeGpus() as gpus:
            result = run_job(job, progress=False)
        found["jobs"][name] = {
            "pool": pool_plan(job, result),
            "plans": plans.plans[before:],
            "least_free_gpus": gpus.least,
            "rows": result.run_rows,
        }
    report.write_text(json.dumps(found))


# ---- fixtures ---------------------------------------------------------------------------------


CLIPS = ["bass/bass_hit_c.flac", "loop/loop_amen.flac", "tabla/tabla_ke1.flac", "electronic/elec_flip.flac"]


def real_or_tone(target: Path, recording: Path | None, seconds: float, freq: float, seed: int) -> None:
    """A copy of a real recording where there is one, else a generated tone."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if recording is not None and recording.exists():
        shutil.copy(recording, target)
    else:
        write_audio(target, tone(seconds, freq=freq, seed=seed))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Four clips (real recordings where present) plus one that fails to decode, and a library of
    two labels with three songs each."""
    root = tmp_path_factory.mktemp("gpu-topology-inputs")
    source = SHARED_AUDIO / "sonic-pi"
    for i, name in enumerate(CLIPS):
        real_or_tone(root / "clips" / Path(name).name, source / name, 1.5, 200.0 + 150 * i, i)
    (root / "clips" / "broken.flac").write_bytes(b"fLaC but not really a flac file")
    for octave, label in enumerate(("bass", "loop"), start=1):
        songs = sorted((source / label).glob("*.flac"))[:3]
        for i in range(3):
            song = songs[i] if i < len(songs) else None
            real_or_tone(root / "library" / label / f"song{i}.flac", song, 2.5, 110.0 * (i + 1) * octave, i)
    return root


@pytest.fixture(scope="module")
def gpu_runs(inputs, tmp_path_factory, short_tmp) -> tuple[dict, Path]:
    """Start a head with 2 CPUs and one fake GPU, run the five jobs from one driver, stop the head."""
    root = tmp_path_factory.mktemp("gpu-topology")
    temp_dir = short_tmp("rayhead-gpu")
    # Workers (of the head and of the driver) import this checkout's ray_pipelines and tests.
    # Ray 2.60 clusters require a token (~/.ray/auth_token, made by the first `ray start`).
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "RAY_AUTH_MODE": "token",
    }
    env.pop("RAY_ADDRESS", None)
    with local_head(temp_dir, env, num_gpus=1, dashboard=False, extra_args=OBJECT_STORE) as head:
        spec, report = root / "jobs.json", root / "report.json"
        spec.write_text(json.dumps(job_configs(inputs, root / "out")))
        driver = subprocess.run(
            [sys.executable, "-m", "tests.test_gpu_topology", head.address, str(spec), str(report)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-5000:]
    return json.loads(report.read_text()), root / "out"


@pytest.fixture(scope="module")
def cpu_runs(inputs, tmp_path_factory, ray_local) -> tuple[dict, Path]:
    """The same configs on the CPU topology: the session's embedded Ray (2 CPUs, no GPU)."""
    from ray_pipelines.engine.runner import run_job

    root = tmp_path_factory.mktemp("cpu-topology") / "out"
    pools = {}
    for name, config in job_configs(inputs, root).items():
        job = make_job(name, config)
        pools[name] = pool_plan(job, run_job(job, progress=False))
    return pools, root


# ---- what an output holds, topology aside -------------------------------------------------------

# Written per run, not per row: run ids, timings, hosts and process ids, rank-numbered file lists.
RUN_FILES = {"_SUCCESS", "_job.json", "manifest.json"}


def parquet_rows(out: Path, index: str) -> dict[tuple[str, int], dict[str, bytes]]:
    """Every data row's values as bytes, by (key, index), with the split it was filed under."""
    rows = {}
    for path in sorted(out.rglob("part-*.parquet")):
        table = pq.read_table(path)
        columns = {}
        for name in table.column_names:
            column = table.column(name).combine_chunks()
            columns[name] = column.to_numpy_ndarray() if hasattr(column, "to_numpy_ndarray") else column.to_pylist()
        keys = table.column("key" if "key" in table.column_names else "path").to_pylist()  # features: the song's path
        for i, (key, position) in enumerate(zip(keys, table.column(index).to_pylist())):
            assert (key, position) not in rows, f"{path}: duplicate row {key} #{position}"
            row = {name: values[i] for name, values in columns.items()}
            rows[(key, position)] = {
                "split": str(path.relative_to(out).parent),
                **{name: np.asarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v) for name, v in row.items()},
            }
    return rows


def schemas(out: Path) -> set[str]:
    return {str(pq.read_schema(path)) + repr(pq.read_schema(path).metadata) for path in out.rglob("part-*.parquet")}


def sat_samples(out: Path) -> dict[tuple[str, int], tuple[bytes, str]]:
    """The encode job's stable-audio-tools layout by (key, window): the .npy bytes and the .json
    text. The ``{rank}/`` folder a sample lands in is the write task's index (pre_encode's layout)."""
    found = {}
    for npy in out.glob("*/*.npy"):
        metadata = json.loads(npy.with_suffix(".json").read_text())
        found[(metadata["relpath"], metadata.get("window", 0))] = (npy.read_bytes(), npy.with_suffix(".json").name)
    return found


def side_files(out: Path) -> dict[str, bytes]:
    """Everything else the job writes beside its data (reports, lists, plots), by path; the
    output's own path, which some reports name, as ``<output>``."""
    data = {".parquet", ".npy", ".json"}
    files = {}
    for path in out.rglob("*"):
        relpath = path.relative_to(out)
        if path.is_file() and path.name not in RUN_FILES and relpath.parts[0] != "_manifests":
            if path.suffix not in data or len(relpath.parts) == 1:
                files[str(relpath)] = path.read_bytes().replace(str(out).encode(), b"<output>")
    for card in ("README.md", "dataset_info.json"):  # the HF card's split sizes count file bytes: layout
        if card in files:
            files[card] = re.sub(rb'(num_bytes"?: )\d+', rb"\1<layout>", files[card])
    if "filelist.txt" in files:  # the encode job's {rank}/{id}.npy list: ids, without the rank
        files["filelist.txt"] = sorted(line.split(b"/")[-1] for line in files["filelist.txt"].splitlines())
    return files


def errors(out: Path) -> list[str]:
    path = out / "errors.jsonl"
    return sorted(path.read_text().splitlines()) if path.exists() else []


def counts(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())["counts"]


# ---- tests ----------------------------------------------------------------------------------------


def test_the_head_offers_one_gpu_and_a_gpu_worker_still_computes_on_the_cpu(gpu_runs):
    report, _ = gpu_runs
    assert report["resources"]["GPU"] == 1 and report["resources"]["CPU"] == 2
    # Ray hands the worker GPU 0; with no CUDA driver the stages fall back to the CPU.
    assert report["probe"] == {"gpu_ids": ["0"], "cuda_visible_devices": "0", "device": "cpu"}


@pytest.mark.parametrize("name", JOBS)
def test_the_engine_plans_decode_tasks_a_gpu_actor_pool_and_write_tasks(name, gpu_runs, cpu_runs):
    report, _ = gpu_runs
    found = report["jobs"][name]
    assert found["pool"] == {"min_size": 1, "max_size": 1, "num_gpus": 1.0, "num_cpus": 1.0, "decode_cpus": 1.0}
    (plan,) = found["plans"]
    operators = plan.split(" -> ")
    assert operators[0] == "InputDataBuffer[Input]"
    assert operators[1].startswith("TaskPoolMapOperator[") and "MapBatches(" in operators[1]  # decode
    assert operators[2] == f"ActorPoolMapOperator[MapBatches({STAGES[name]})]"
    assert operators[3] == "TaskPoolMapOperator[Write]" and len(operators) == 4
    assert found["least_free_gpus"] == 0  # the pool's actor held the GPU while the job ran
    # The CPU topology of the same config: CPU actors only (their plan fuses decode, stage and write).
    assert cpu_runs[0][name]["num_gpus"] == 0.0


@pytest.mark.parametrize("name", JOBS)
def test_output_is_the_same_bytes_as_on_the_cpu_topology(name, gpu_runs, cpu_runs):
    gpu_out, cpu_out = gpu_runs[1] / name, cpu_runs[1] / name
    index = job_class(name).index_column
    rows = parquet_rows(gpu_out, index)
    assert rows and rows == parquet_rows(cpu_out, index)
    assert schemas(gpu_out) == schemas(cpu_out)
    assert errors(gpu_out) == errors(cpu_out) and counts(gpu_out) == counts(cpu_out)
    assert side_files(gpu_out) == side_files(cpu_out)
    if name == "encode":
        samples = sat_samples(gpu_out)
        assert len(samples) == len(rows) and samples == sat_samples(cpu_out)


def test_the_gpu_run_fits_its_eight_minutes_and_finds_the_bench_code_it_reuses():
    """bench/gpu.py gets one run on a lent GPU machine: its worst case (every part stopped at its
    budget, plus the install) must fit the 8 minutes planned, and the functions it borrows from
    the other benchmarks (which change under other issues) must still be there."""
    import inspect

    from bench import encode, score_mae, teacher
    from bench.gpu import PARTS, RUNNERS, TOTAL_LIMIT, planned_seconds

    assert planned_seconds() <= TOTAL_LIMIT == 480 and [p.name for p in PARTS] == list(RUNNERS)
    borrowed = {
        teacher: ["PerSampleTeacher", "TEACHERS", "GpuBusy", "run_job_child", "stage_loop"],
        encode: ["bare_model", "job_run"],
        score_mae: ["FRAMES", "N_MELS", "baseline", "make_pt_folder"],
    }
    assert [f"{m.__name__}.{n}" for m, names in borrowed.items() for n in names if not hasattr(m, n)] == []
    assert list(inspect.signature(encode.bare_model).parameters) == [
        "model",
        "sample_size",
        "batch_size",
        "precision",
        "device",
        "threads",
        "min_seconds",
    ]
    assert list(inspect.signature(encode.job_run).parameters) == ["inputs", "output", "clips", "settings"]


if __name__ == "__main__":
    drive(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
