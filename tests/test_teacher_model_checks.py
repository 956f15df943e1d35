"""The teacher job's checks of what a teacher builds and returns, without Ray: a factory's weights without a
checkpoint, complex outputs, a model that fails only when batched, loudness frames at 22.05 kHz."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.jobs.teacher import JOB, TeacherConfig
from ray_pipelines.models import weights_sha256
from ray_pipelines.stages.teacher import TeacherStage
from ray_pipelines.teachers import TeacherLoadError, build_teacher, parse_spec
from ray_pipelines.teachers.loudness import a_weighted_loudness
from tests.conftest import Lines

SR = 44100


def batch(audio: np.ndarray) -> dict[str, np.ndarray]:
    n = len(audio)
    return {
        "key": np.array([str(i) for i in range(n)], dtype=object),
        "error": np.array([""] * n, dtype=object),
        "audio": audio.astype(np.float32),
    }


# ---- a factory without a checkpoint ------------------------------------------------------------------
def write_downloading_factory(folder) -> str:
    """A factory that gets its weights itself (here from a file standing for a download), no checkpoint."""
    path = folder / "fetched_fx.py"
    path.write_text(
        "import numpy as np\n"
        "import torch\n"
        "def make(weights: str):\n"
        "    conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)\n"
        "    conv.weight.data = torch.from_numpy(np.load(weights)).reshape(1, 1, 3)\n"
        "    return conv\n"
    )
    return str(path)


def test_a_factory_without_checkpoint_is_known_by_the_weights_it_builds_and_each_actor_checks_them(tmp_path):
    """Its weights were recorded as "": actors that built other weights (an unseeded initialisation, a
    download that changed) each ran another model, and a resume after the weights changed was not refused."""
    weights = tmp_path / "taps.npy"
    np.save(weights, np.array([0.25, 0.5, 0.25], dtype=np.float32))
    spec = {
        "kind": "factory",
        "name": "fx",
        "factory": f"{write_downloading_factory(tmp_path)}:make",
        "kwargs": {"weights": str(weights)},
        "sample_rate": SR,
        "input_layout": "batch_channel_time",
    }
    built = weights_sha256(build_teacher(spec).module)
    assert parse_spec(spec).identity()["weights_sha256"] == built
    config = validate_config(
        TeacherConfig,
        {"input": "synth://", "output": str(tmp_path / "out"), "duration": 0.1, "teachers": [spec]},
    )
    job = JOB(config)
    kwargs = job.stage_kwargs()
    assert kwargs["built_weights"] == {"fx": built}
    assert TeacherStage(**kwargs).shapes == {"y": (4410,)}
    np.save(weights, np.array([0.0, 1.0, 0.0], dtype=np.float32))  # the download changed after the driver's check
    with pytest.raises(TeacherLoadError, match=r"teacher fx: the model built here has other weights than the one"):
        TeacherStage(**kwargs)
    assert JOB(config).identities[0]["weights_sha256"] != built  # a resume with them is refused


def test_a_factory_that_builds_other_weights_each_time_is_refused_on_the_driver(tmp_path):
    factory = tmp_path / "init_fx.py"
    factory.write_text(
        "import torch\n"
        "def unseeded():\n"
        "    return torch.nn.Conv1d(1, 1, 9, padding=4)\n"
        "def seeded():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Conv1d(1, 1, 9, padding=4)\n"
    )
    spec = {"kind": "factory", "name": "fx", "sample_rate": SR, "input_layout": "batch_channel_time"}
    config = {"input": "synth://", "output": str(tmp_path / "out"), "duration": 0.1}
    with pytest.raises(ConfigError, match=r"teachers\[0\] \(fx\): factory \S+:unseeded builds other weights each"):
        JOB(validate_config(TeacherConfig, {**config, "teachers": [{**spec, "factory": f"{factory}:unseeded"}]}))
    seeded = {**spec, "factory": f"{factory}:seeded"}
    job = JOB(validate_config(TeacherConfig, {**config, "teachers": [seeded]}))
    assert job.identities[0]["weights_sha256"] == parse_spec(seeded).identity()["weights_sha256"] != ""
    TeacherStage(**job.stage_kwargs())  # an actor builds the same weights


# ---- what a user model returns -----------------------------------------------------------------------
class WithSpectrum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.fft.rfft(x)


class CountsPositive(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (x > 0).sum(-1, keepdim=True), (x > 0.5).any(-1, keepdim=True)


def test_a_complex_output_is_refused_when_the_stage_starts_and_integers_are_cast_to_the_dtype(tmp_path):
    """A complex output was cast to float: its imaginary part went without a word (torch's warning hidden)."""
    path = tmp_path / "spectrum.ts"
    torch.jit.script(WithSpectrum()).save(str(path))
    spec = {"kind": "torchscript", "name": "fx", "path": str(path), "sample_rate": SR}
    with pytest.raises(ValueError) as said:
        TeacherStage(
            teachers=[{**spec, "outputs": {"y": "waveform", "spec": "tensor"}}], sample_rate=SR, num_samples=64
        )
    assert str(said.value).startswith("teacher fx fails on a test clip of the job's duration (quiet noise, 64 samples")
    assert str(said.value).endswith(
        "RuntimeError: teacher 'fx' output 'spec' is complex (complex64): outputs are stored as real numbers; "
        "return its real and imaginary parts as two outputs (x.real, x.imag), or its magnitude (x.abs())"
    )
    path = tmp_path / "counts.ts"
    torch.jit.script(CountsPositive()).save(str(path))
    counts = {**spec, "path": str(path), "outputs": {"n": "tensor", "loud": "tensor"}}
    stage = TeacherStage(teachers=[counts], sample_rate=SR, num_samples=64, dtype="float64")
    out = stage(batch(np.stack([np.full(64, 0.7), np.linspace(-1, 0.25, 64)])))
    assert out["fx_n"].dtype == out["fx_loud"].dtype == np.float64
    assert out["fx_n"][:, 0].tolist() == [64.0, 13.0] and out["fx_loud"][:, 0].tolist() == [1.0, 0.0]


# ---- a model that fails only when batched ---------------------------------------------------------------
@contextlib.contextmanager
def warnings_of_rows() -> Iterator[list[str]]:
    """What ``ray_pipelines.stages.rows`` logs meanwhile."""
    logger, said = logging.getLogger("ray_pipelines.stages.rows"), Lines()
    logger.addHandler(said)
    try:
        yield said.lines
    finally:
        logger.removeHandler(said)


class OneClipConv(torch.nn.Module):
    """A Conv1d(1, 1, ...) given [B, T] (input_layout batch_time): one clip [1, T] runs as an unbatched clip of
    one channel, a batch [B, T] of B > 1 as one clip of B channels, which raises."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.conv.weight.data = torch.tensor([[[0.25, 0.5, 0.25]]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_a_model_that_fails_only_when_batched_is_warned_of_once_and_its_rows_are_right(tmp_path):
    """Each chunk silently cost one failed call plus one call per clip on a GPU actor."""
    path = tmp_path / "conv.ts"
    torch.jit.script(OneClipConv()).save(str(path))
    fx = {"kind": "torchscript", "name": "fx", "path": str(path), "sample_rate": SR}
    stage = TeacherStage(teachers=[fx], sample_rate=SR, num_samples=500)
    stage.chunk_size = 4  # as on CUDA (batch_size); 1 on CPU
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (4, 500))
    expected = 0.25 * np.roll(audio, 1, 1) + 0.5 * audio + 0.25 * np.roll(audio, -1, 1)
    expected[:, 0], expected[:, -1] = 0.5 * audio[:, 0] + 0.25 * audio[:, 1], 0.5 * audio[:, -1] + 0.25 * audio[:, -2]
    with warnings_of_rows() as warnings:
        outputs = [stage(batch(audio)) for _ in range(2)]
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "a teacher raised on a chunk of 4 rows, then ran on each of them alone: every such chunk costs a failed call "
        "plus one call per row (said once). The chunk's error: fx: RuntimeError: "
    )
    assert "expected input[1, 4, 500] to have 1 channels" in warnings[0]
    assert warnings[0].endswith("give it input_layout: batch_channel_time ([B, 1, T])")
    for out in outputs:
        assert list(out["error"]) == [""] * 4
        np.testing.assert_allclose(out["y"], expected, atol=1e-6)


def test_no_warning_where_a_clip_still_fails_alone(tmp_path):
    from tests.test_teacher_units import RefusesLoudClips

    path = tmp_path / "picky.ts"
    torch.jit.script(RefusesLoudClips()).save(str(path))
    picky = {"kind": "torchscript", "name": "picky", "path": str(path), "sample_rate": SR, "outputs": {"p": "tensor"}}
    stage = TeacherStage(teachers=[picky], sample_rate=SR, num_samples=100)
    stage.chunk_size = 3
    with warnings_of_rows() as warnings:
        out = stage(batch(np.stack([np.full(100, level) for level in (0.1, 0.9, 0.2)])))
    assert out["error"][1].startswith("teacher failed: picky:") and warnings == []


# ---- loudness frames at rates where 10 ms is not a whole number of samples ------------------------------
def test_loudness_frame_i_is_at_i_times_the_hop_at_22050_and_11025_hz():
    """10 ms at 22.05 kHz is 220.5 samples: rounded to 220 (banker's rounding), a 10 s clip gave 1003 frames
    where the 16 kHz teachers give 1001, frame i at 9.977 i ms: a click at 7.5 s peaked in frame 752."""
    n = 10 * SR
    click = np.zeros((1, n))
    click[0, int(7.5 * SR)] = 0.5
    teachers = [
        {"kind": "loudness"},
        {"kind": "loudness", "name": "loud22", "sample_rate": 22050},
        {"kind": "loudness", "name": "loud11", "sample_rate": 11025},
    ]
    stage = TeacherStage(teachers=teachers, sample_rate=SR, num_samples=n)
    assert stage.shapes == {"loudness_db": (1001,), "loud22_db": (1001,), "loud11_db": (1001,)}
    out = stage(batch(click))
    assert [int(np.argmax(out[name][0])) for name in stage.columns] == [750, 750, 750]
    # the frames are the STFT's at i * 220.5 samples rounded: the hop-1 STFT's values there
    audio = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 22050)).astype(np.float32) * 0.1)
    every_sample = a_weighted_loudness(audio, 22050, hop_length=1, top_db=None)
    at_fraction = a_weighted_loudness(audio, 22050, hop_length=220.5, top_db=None)
    starts = np.floor(np.arange(101) * 220.5 + 0.5).astype(int)  # 0, 221, 441, 662, ...
    assert at_fraction.shape == (1, 101)
    torch.testing.assert_close(at_fraction[0], every_sample[0, starts], rtol=0, atol=1e-4)
    # caches of such a hop written before are refused once; the default's identity is unchanged
    assert parse_spec(teachers[1]).identity()["hop_samples"] == 220.5
    assert "hop_samples" not in parse_spec(teachers[0]).identity()
