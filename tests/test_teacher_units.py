"""Teacher job parts without Ray: the generator, the teachers, user models, the stage, the config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.jobs.teacher import JOB, TeacherConfig, WindowPlan
from ray_pipelines.stages.teacher import TeacherStage
from ray_pipelines.synth import FAMILIES, SynthConfig, draw_params, sample_key, stored_f0, synth_sample
from ray_pipelines.teachers import TeacherLoadError, build_teacher, parse_spec

SR = 44100
N = int(1.2 * SR)


# ---- helpers shared with the job tests (same module names, so duplicated small) -----------------
def write_fx_factory(folder) -> str:
    """A user's model file: a fixed FIR 'effect' whose taps are its only weights."""
    path = folder / "fx_model.py"
    path.write_text(
        "import torch\n"
        "class Fir(torch.nn.Module):\n"
        "    def __init__(self, taps: int = 3):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv1d(1, 1, taps, padding=taps // 2, bias=False)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x[:, None])[:, 0], x.abs().amax(dim=-1, keepdim=True)\n"
        "def make(taps: int = 3):\n"
        "    return Fir(taps)\n"
    )
    return str(path)


def fir_checkpoint(folder, taps=(0.25, 0.5, 0.25)) -> str:
    weight = torch.tensor(taps, dtype=torch.float32).reshape(1, 1, -1)
    path = folder / "fx.pt"
    torch.save({"conv.weight": weight}, path)
    return str(path)


class HalfGain(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


class NormalisesInPlace(torch.nn.Module):
    """A user model that changes its input in place (to unit peak) before it returns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.div_(x.abs().amax(-1, keepdim=True).clamp_min(1e-8))
        return x.mean(-1, keepdim=True)


class LogExcessPeak(torch.nn.Module):
    """NaN for clips whose peak is under 0.2: a teacher that breaks on some inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x.abs().amax(dim=-1, keepdim=True) - 0.2)


class RefusesLoudClips(torch.nn.Module):
    """Raises on a clip whose peak is over 0.4 (a user model with an input check): a teacher that
    fails on some inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.abs().amax() > 0.4):
            raise ValueError("input too loud for this model")
        return x.abs().amax(dim=-1, keepdim=True)


# ---- the generator -------------------------------------------------------------------------
def test_validation_draws_ignore_the_seed_and_cover_the_ranges():
    cfg = SynthConfig(num_samples=10, validation=True, f0_range=(100.0, 1000.0), db_range=(-30.0, -10.0))
    draws = [draw_params(cfg, 0, sample_key("val", i, 10), i) for i in range(10)]
    assert draws == [draw_params(cfg, 12345, sample_key("val", i, 10), i) for i in range(10)]
    f0s = [d.f0 for d in draws]
    assert f0s == sorted(f0s) and 100 < f0s[0] < 130 and 770 < f0s[-1] < 1000
    assert [d.family for d in draws[:5]] == list(FAMILIES)
    assert all(-30 <= d.db <= -10 for d in draws) and len({round(d.db, 6) for d in draws}) == 10
    a, _ = synth_sample(cfg, 0, sample_key("val", 1, 10), 1, SR, N)
    b, _ = synth_sample(cfg, 99, sample_key("val", 1, 10), 1, SR, N)
    assert np.array_equal(a, b)  # harmonic partials come from the fixed validation seed


def test_training_draws_follow_the_seed_per_sample():
    cfg = SynthConfig(num_samples=8)
    key = sample_key("train", 3, 8)
    assert draw_params(cfg, 1, key, 3) == draw_params(cfg, 1, key, 3)
    assert draw_params(cfg, 1, key, 3) != draw_params(cfg, 2, key, 3)
    assert draw_params(cfg, 1, key, 3) != draw_params(cfg, 1, sample_key("train", 4, 8), 4)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_the_drawn_level_and_pitch(family):
    cfg = SynthConfig(num_samples=4, families=[family], f0_range=(300.0, 300.0), db_range=(-20.0, -20.0))
    audio, params = synth_sample(cfg, 3, sample_key("train", 0, 4), 0, SR, N)
    assert audio.shape == (N,) and audio.dtype == np.float64 and np.isfinite(audio).all()
    sounding = audio[np.abs(audio) > 0] if family == "noise_bursts" else audio
    level = 20 * np.log10(np.sqrt(np.mean(sounding**2)) * np.sqrt(2))
    assert level == pytest.approx(-20.0, abs=0.3)
    if family == "noise_bursts":
        assert stored_f0(params) == 0.0 and (audio == 0).mean() > 0.05  # silent between bursts
    else:
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(N)))
        peak_hz = np.argmax(spectrum) * SR / N
        assert stored_f0(params) == 300.0
        assert abs(peak_hz - 300.0) < 2.0 or family == "harmonic"  # a harmonic's peak may be an overtone
        low = spectrum[: int(250 * N / SR)].max()
        assert low < 0.01 * spectrum.max()  # nothing below the fundamental


# ---- built-in teachers -----------------------------------------------------------------------
def test_the_weighted_argmax_is_crepes_local_average_at_the_ends_of_the_range_too():
    """CREPE's to_local_average_cents (the crepe package) over the 9 bins around the peak, the window cut
    at the range's ends: it was clamped, bin 359 counted three times (8-11 cents off near 2 kHz)."""
    from ray_pipelines.teachers.crepe import CENTS_OFFSET, PITCH_BINS, decode_pitch

    def local_average_cents(salience: np.ndarray) -> float:  # crepe/core.py, as written there
        center = int(np.argmax(salience))
        start, end = max(0, center - 4), min(len(salience), center + 5)
        cents = 20 * np.arange(PITCH_BINS) + CENTS_OFFSET
        return float(np.sum(salience[start:end] * cents[start:end]) / np.sum(salience[start:end]))

    rng = np.random.default_rng(0)
    for peak in (0, 2, 180, 357, 359):
        salience = rng.uniform(0.0, 0.3, PITCH_BINS)
        salience[max(0, peak - 4) : peak + 5] = rng.uniform(0.4, 0.8, len(salience[max(0, peak - 4) : peak + 5]))
        salience[peak] = 0.95
        f0, periodicity = decode_pitch(torch.from_numpy(salience)[None].double(), 31.0, 2006.0)
        expected = 10.0 * 2 ** (local_average_cents(salience) / 1200.0)
        assert f0.item() == pytest.approx(expected, rel=1e-9) and periodicity.item() == pytest.approx(0.95)
    # caches the clamped window decoded are refused once: those whose range takes an end bin, no others
    assert parse_spec({"kind": "torchcrepe"}).identity()["local_average"] == "window cut at the range's ends"
    assert "local_average" not in parse_spec({"kind": "torchcrepe", "fmax": 1999.0}).identity()
    assert "local_average" not in parse_spec({"kind": "torchcrepe", "decoder": "argmax"}).identity()


def test_loudness_matches_torchcrepe_a_weighted():
    import torchcrepe

    t = torch.arange(16000) / 16000
    audio = 0.2 * torch.sin(2 * np.pi * 440 * t) + 0.01 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    audio[:4000] = 0
    ours = build_teacher({"kind": "loudness"})(audio[None])["db"]
    theirs = torchcrepe.loudness.a_weighted(audio[None], 16000)
    assert ours.shape == theirs.shape == (1, 101)
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert ours[0, 10] < ours[0, 60] - 20  # silence is far quieter than the tone


def test_builtin_identities_name_version_and_weights():
    pesto = parse_spec({"kind": "pesto"}).identity()
    crepe = parse_spec({"kind": "torchcrepe", "capacity": "full"}).identity()
    assert (
        pesto["name"] == "pesto" and pesto["version"].startswith("pesto-pitch ") and len(pesto["weights_sha256"]) == 64
    )
    assert crepe["name"] == "crepe_full" and "full" in crepe["version"]
    assert crepe["weights_sha256"] != parse_spec({"kind": "torchcrepe"}).identity()["weights_sha256"]


# ---- user teachers ----------------------------------------------------------------------------
def test_torchscript_teacher_loads_and_runs(tmp_path):
    path = tmp_path / "half.ts"
    torch.jit.script(HalfGain()).save(str(path))
    teacher = build_teacher({"kind": "torchscript", "name": "fx", "path": str(path), "sample_rate": 22050})
    x = torch.randn(2, 100)
    assert torch.allclose(teacher(x)["y"], 0.5 * x)


def test_factory_teacher_loads_its_checkpoint(tmp_path):
    spec = {
        "kind": "factory",
        "name": "fir",
        "factory": f"{write_fx_factory(tmp_path)}:make",
        "checkpoint": fir_checkpoint(tmp_path),
        "sample_rate": SR,
        "outputs": {"y": "waveform", "peak": "tensor"},
    }
    teacher = build_teacher(spec)
    x = torch.zeros(1, 9)
    x[0, 4] = 1.0
    out = teacher(x)
    assert torch.allclose(out["y"][0, 3:6], torch.tensor([0.25, 0.5, 0.25]))
    assert out["peak"].shape == (1, 1) and out["peak"].item() == 1.0
    identity = parse_spec(spec).identity()
    assert identity["weights_sha256"] and identity["code_sha256"] and identity["factory"].endswith(":make")


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    whole_model = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole_model)  # pickles the class, not just tensors
    spec = {
        "kind": "factory",
        "name": "fx",
        "factory": "torch.nn:Identity",
        "checkpoint": str(whole_model),
        "sample_rate": SR,
    }
    with pytest.raises(
        TeacherLoadError,
        match=r"needs pickled code.*torch\.nn\.modules\.linear\.Linear"
        r".*weights_only=True.*state_dict",
    ):
        build_teacher(spec)
    config = validate_config(TeacherConfig, {"input": "synth://", "output": str(tmp_path / "out"), "teachers": [spec]})
    with pytest.raises(ConfigError, match=r"teachers\[0\] \(fx\): checkpoint .* needs pickled code"):
        JOB(config)  # refused on the driver, before Ray starts


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    spec = {
        "kind": "factory",
        "name": "fir",
        "factory": f"{write_fx_factory(tmp_path)}:make",
        "checkpoint": fir_checkpoint(tmp_path, taps=(1.0, 0.0, 0.0, 0.0, 0.0)),
        "sample_rate": SR,
    }
    with pytest.raises(TeacherLoadError, match="does not fit"):
        build_teacher(spec)


# ---- the stage -----------------------------------------------------------------------------
def test_stage_resamples_per_teacher_and_keeps_error_rows(tmp_path):
    path = tmp_path / "half.ts"
    torch.jit.script(HalfGain()).save(str(path))
    stage = TeacherStage(
        teachers=[{"kind": "loudness"}, {"kind": "torchscript", "name": "fx", "path": str(path), "sample_rate": 22050}],
        sample_rate=SR,
        num_samples=N,
        dtype="float64",
        input_column="audio",
    )
    assert stage.shapes == {"loudness_db": (121,), "y": (N,)}
    t = np.arange(N) / SR
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), np.zeros(N)]).astype(np.float32)
    batch = {
        "key": np.array(["a", "b"], dtype=object),
        "window": np.array([0, 0]),
        "error": np.array(["", "undecodable: junk"], dtype=object),
        "audio": audio,
    }
    out = stage(batch)
    assert out["x"].dtype == out["y"].dtype == out["loudness_db"].dtype == np.float64
    # y went 44.1 kHz -> 22.05 kHz -> model -> 44.1 kHz: half the input, up to the resampler's edges
    core = slice(2000, N - 2000)
    assert np.abs(out["y"][0, core] - 0.5 * audio[0, core]).max() < 1e-3
    assert list(out["error"]) == ["", "undecodable: junk"] and not out["y"][1].any()


def test_a_teacher_that_changes_its_input_in_place_changes_neither_x_nor_the_next_teachers(tmp_path):
    path = tmp_path / "norm.ts"
    torch.jit.script(NormalisesInPlace()).save(str(path))
    fx = {"kind": "torchscript", "name": "norm", "path": str(path), "sample_rate": SR, "outputs": {"m": "tensor"}}
    alone = TeacherStage(teachers=[{"kind": "loudness"}], sample_rate=SR, num_samples=N)
    stage = TeacherStage(teachers=[fx, {"kind": "loudness"}], sample_rate=SR, num_samples=N)
    audio = (0.1 * np.sin(2 * np.pi * 440 * np.arange(N) / SR))[None].astype(np.float32)
    batch = {"key": np.array(["a"], dtype=object), "error": np.array([""], dtype=object)}
    out = stage({**batch, "audio": audio.copy()})
    assert np.abs(out["x"]).max() == pytest.approx(0.1, rel=1e-4)  # was 1.0: the model's normalised copy
    assert np.array_equal(out["loudness_db"], alone({**batch, "audio": audio.copy()})["loudness_db"])


def test_non_finite_teacher_output_becomes_an_error_row(tmp_path):
    path = tmp_path / "peak.ts"
    torch.jit.script(LogExcessPeak()).save(str(path))
    stage = TeacherStage(
        teachers=[
            {"kind": "torchscript", "name": "peak", "path": str(path), "sample_rate": SR, "outputs": {"log": "tensor"}}
        ],
        sample_rate=SR,
        num_samples=100,
    )
    audio = np.stack([np.full(100, 0.5), np.full(100, 0.1)]).astype(np.float32)
    out = stage(
        {"key": np.array(["loud", "quiet"], dtype=object), "error": np.array(["", ""], dtype=object), "audio": audio}
    )
    assert list(out["error"]) == ["", "non-finite teacher output: peak_log"]
    assert out["peak_log"][0, 0] == pytest.approx(np.log(0.3), rel=1e-5)


def test_a_teacher_that_cannot_take_the_clip_length_is_named_when_the_stage_starts():
    """pesto's frames need more than 2,048 samples: a 1 ms clip failed the actor's start with torch's
    "Padding size should be less than the corresponding input dimension" and nothing more."""
    with pytest.raises(ValueError) as said:
        TeacherStage(teachers=[{"kind": "loudness"}, {"kind": "pesto"}], sample_rate=SR, num_samples=44)
    assert str(said.value).startswith(
        "teacher pesto fails on a test clip of the job's duration (quiet noise, 44 samples at 44100 Hz, "
        "0.000997732 s): "
        "RuntimeError: "
    )
    assert TeacherStage(teachers=[{"kind": "loudness"}], sample_rate=SR, num_samples=44).shapes == {"loudness_db": (1,)}


@pytest.mark.parametrize("sample_rate", [8000, 16000, 44100, 48000])
def test_the_config_refuses_exactly_the_durations_pesto_cannot_take(sample_rate):
    """At the job's rate, the shortest clip PESTO runs on is the shortest the config accepts."""
    shortest = 2048 * sample_rate // 16000 + 1  # 2,049 samples at 16 kHz after the resampler (which rounds up)
    for num_samples, accepted in ((shortest - 1, False), (shortest, True)):
        refusal = parse_spec({"kind": "pesto"}).clip_too_short(num_samples, sample_rate)
        assert (refusal is None) == accepted, (num_samples, refusal)
        try:
            TeacherStage(teachers=[{"kind": "pesto"}], sample_rate=sample_rate, num_samples=num_samples)
            runs = True
        except ValueError as e:
            assert "Padding size should be less than" in str(e.__cause__)
            runs = False
        assert runs == accepted, num_samples


def test_pestos_shipped_mir_1k_is_refused_on_the_driver_saying_why():
    """pesto-pitch 2.0.1 ships PESTO 1's mir-1k.ckpt: accepted by the config, then every actor failed after Ray
    was up ("checkpoint does not fit")."""
    with pytest.raises(
        TeacherLoadError, match=r"model 'mir-1k' is PESTO 1's mir-1k .* no confidence head.*use mir-1k_g7"
    ):
        parse_spec({"kind": "pesto", "model": "mir-1k"}).identity()
    assert len(parse_spec({"kind": "pesto", "model": "mir-1k_g7"}).identity()["weights_sha256"]) == 64


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_a_teacher_that_raises_on_a_clip_makes_that_clip_an_error_row_and_keeps_the_others(tmp_path, chunk_size):
    """A user model that raised on one clip failed its block: every clip of it was `lost`, retried every
    run for ever (exit 3), and the console printed each attempt's traceback."""
    path = tmp_path / "picky.ts"
    torch.jit.script(RefusesLoudClips()).save(str(path))
    stage = TeacherStage(
        teachers=[
            {"kind": "loudness"},
            {
                "kind": "torchscript",
                "name": "picky",
                "path": str(path),
                "sample_rate": SR,
                "outputs": {"peak": "tensor"},
            },
        ],
        sample_rate=SR,
        num_samples=1000,
    )
    stage.chunk_size = chunk_size  # as on CUDA: a chunk that raises is run again clip by clip
    levels = [0.1, 0.9, 0.2, 0.3]
    audio = np.stack([np.full(1000, level) for level in levels]).astype(np.float32)
    keys = np.array(["a", "loud", "b", "c"], dtype=object)
    out = stage({"key": keys, "error": np.array([""] * 4, dtype=object), "audio": audio})
    assert list(out["error"][[0, 2, 3]]) == ["", "", ""]
    assert out["error"][1].startswith("teacher failed: picky: Error: The following operation failed in the TorchScript")
    assert out["error"][1].endswith("ValueError: input too loud for this model")  # the scripted code's error
    assert out["picky_peak"][[0, 2, 3], 0] == pytest.approx([0.1, 0.2, 0.3]) and not out["picky_peak"][1].any()
    assert not out["loudness_db"][1].any() and out["loudness_db"][0].any()


def test_stage_bytes_do_not_depend_on_the_batch_on_cpu():
    n = int(0.3 * SR)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((3, n))).astype(np.float32)
    stage = TeacherStage(
        teachers=[{"kind": "torchcrepe", "capacity": "tiny"}, {"kind": "loudness"}],
        sample_rate=SR,
        num_samples=n,
        input_column="audio",
        chunk_size=32,
    )

    def batch(rows):
        return {
            "key": np.array(["k"] * len(rows), dtype=object),
            "error": np.array([""] * len(rows), dtype=object),
            "audio": audio[rows].copy(),
        }

    together = stage(batch([0, 1, 2]))
    for i in range(3):
        alone = stage(batch([i]))
        for name in ("crepe_tiny_f0", "crepe_tiny_periodicity", "loudness_db"):
            assert np.array_equal(alone[name][0], together[name][i])


def test_stage_autocast_bf16_stays_close_to_float32():
    n = int(0.3 * SR)
    audio = (0.3 * np.sin(2 * np.pi * 330 * np.arange(n) / SR)).astype(np.float32)[None]
    results = {}
    for autocast in (None, "bf16"):
        stage = TeacherStage(
            teachers=[{"kind": "torchcrepe", "capacity": "tiny"}],
            sample_rate=SR,
            num_samples=n,
            autocast=autocast,
            input_column="audio",
        )
        batch = {"key": np.array(["a"], dtype=object), "error": np.array([""], dtype=object), "audio": audio.copy()}
        results[autocast] = stage(batch)["crepe_tiny_f0"][0, 3:-3]
    assert np.abs(results["bf16"] / results[None] - 1).max() < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stage_on_cuda_batches_and_matches_cpu():
    n = int(0.5 * SR)
    t = np.arange(n) / SR
    audio = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (220.0, 330.0, 440.0, 660.0)]).astype(np.float32)
    teachers = [{"kind": "pesto"}, {"kind": "torchcrepe", "capacity": "full"}, {"kind": "loudness"}]
    out = {}
    for device in ("cpu", "cuda"):
        stage = TeacherStage(teachers=teachers, sample_rate=SR, num_samples=n, input_column="audio", device=device)
        assert stage.chunk_size == (32 if device == "cuda" else 1)
        out[device] = stage(
            {
                "key": np.array(list("abcd"), dtype=object),
                "error": np.array([""] * 4, dtype=object),
                "audio": audio.copy(),
            }
        )
    for name in ("pesto_f0", "crepe_full_f0"):
        assert np.abs(out["cuda"][name][:, 3:-3] / out["cpu"][name][:, 3:-3] - 1).max() < 1e-3
    assert np.abs(out["cuda"]["loudness_db"] - out["cpu"]["loudness_db"]).max() < 0.01


# ---- config and planning ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"teachers": [{"kind": "pesto"}, {"kind": "pesto"}]}, "teacher names repeat: pesto"),
        ({"input": "audio/"}, "synth is set but input is 'audio/'"),
        (
            {
                "teachers": [
                    {
                        "kind": "torchscript",
                        "name": "start",
                        "path": "a.ts",
                        "sample_rate": 1,
                        "outputs": {"seconds": "tensor"},
                    }
                ]
            },
            "clash with the job's own columns: start_seconds",
        ),
        (
            {
                "teachers": [
                    {"kind": "torchscript", "name": "a", "path": "a.ts", "sample_rate": 1},
                    {"kind": "torchscript", "name": "b", "path": "b.ts", "sample_rate": 1},
                ]
            },
            "only one teacher may output y",
        ),
        (  # one column kept the other's values
            {
                "teachers": [
                    {
                        "kind": "torchscript",
                        "name": "fx",
                        "path": "a.ts",
                        "sample_rate": 1,
                        "outputs": {"a_b": "tensor"},
                    },
                    {
                        "kind": "torchscript",
                        "name": "fx_a",
                        "path": "b.ts",
                        "sample_rate": 1,
                        "outputs": {"b": "tensor"},
                    },
                ]
            },
            r"teacher outputs share a column name \(fx_a_b: fx's a_b and fx_a's b\): rename a teacher or an output",
        ),
        ({"synth": {"f0_range": [500, 100]}}, "f0_range"),
        # a hop or a clip of no samples failed every actor's start, as a clip "the teacher fails on"
        ({"teachers": [{"kind": "torchcrepe", "hop_ms": 0.01}]}, r"hop_ms 0.01 is under one sample at 16000 Hz"),
        ({"teachers": [{"kind": "loudness", "hop_ms": 0.01}]}, r"hop_ms 0.01 is under one sample at 16000 Hz"),
        # accepted, then every actor failed with "non-positive stride is not supported" after Ray was up
        (
            {"teachers": [{"kind": "pesto", "step_ms": 0.03}]},
            r"step_ms 0.03 is under one sample at 16000 Hz \(give 0.0625 or more\)",
        ),
        ({"duration": 1e-6}, r"duration 1e-06 s is under one sample at sample_rate 44100"),
        # accepted, then every actor failed on PESTO's padding after Ray was up (exit 1, not 2)
        (
            {"duration": 0.1, "teachers": [{"kind": "loudness"}, {"kind": "pesto", "name": "p"}]},
            r"duration 0.1 s is too short for teacher p: PESTO's CQT needs clips of 2049 samples or more at 16000 Hz "
            r"\(0.128062 s\), the duration gives 1600",
        ),
        # ignored by the generator, yet fingerprinted: changing them refused a resume
        ({"val_fraction": 0.3, "max_windows": 4}, r"max_windows, val_fraction: for audio-file inputs; input synth://"),
        # a fundamental above Nyquist was generated at its alias, and stored as the clip's f0
        (
            {"sample_rate": 16000, "synth": {"f0_range": [50, 9000]}},
            r"synth.f0_range: its top \(9000 Hz\) must be below Nyquist \(8000 Hz at sample_rate 16000\)",
        ),
    ],
)
def test_bad_configs_are_refused_with_the_reason(change, message):
    data = {"input": "synth://", "output": "out", "synth": {}, "teachers": [{"kind": "loudness"}], **change}
    with pytest.raises(ConfigError, match=message):
        validate_config(TeacherConfig, data)


def test_validation_fingerprint_ignores_the_seed_training_does_not():
    base = {"input": "synth://", "output": "out", "teachers": [{"kind": "loudness"}]}
    val = [validate_config(TeacherConfig, {**base, "seed": s, "synth": {"validation": True}}) for s in (0, 1)]
    train = [validate_config(TeacherConfig, {**base, "seed": s}) for s in (0, 1)]
    assert val[0].fingerprint() == val[1].fingerprint()
    assert train[0].fingerprint() != train[1].fingerprint()


def test_window_plan():
    plan = WindowPlan(1.2, None, None)
    assert [w.start for w in plan("k", 3.7)] == pytest.approx([0.0, 1.2, 2.4])
    assert [w.start for w in WindowPlan(1.2, 0.6, 2)("k", 3.7)] == pytest.approx([0.0, 0.6])
    assert len(plan("k", 0.5)) == 1  # a short file still gives one (padded) clip


class Shaped(torch.nn.Module):
    """A user 'effect' whose waveform comes out in the shape given (``b`` the batch, ``t`` the samples)."""

    def __init__(self, shape: str):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape
        shaped = {"b1t": x[:, None], "b2t": torch.stack([x, x], 1), "b": x.mean(-1), "1t": x[:1]}
        shaped.update({"short": x[:, :-100], "long": torch.cat([x, x], 1)})
        return shaped[self.shape]


@pytest.mark.parametrize(
    "shape, said",
    [
        ("b2t", r"output 'y' has shape \[3, 2, 800\]: a waveform is \[B, T\] or \[B, 1, T\]"),  # stored as it came
        ("b", r"output 'y' has shape \[3\]: a waveform is \[B, T\] or \[B, 1, T\]"),  # lost every block
        ("1t", r"output 'y' has shape \[1, 800\]: its first axis must be the clips' \(3\)"),
        # zero-padded or cut to the clip's length, out of step with x
        ("short", r"output 'y' has 700 samples for clips of 800: a waveform output keeps the clip's length"),
        ("long", r"output 'y' has 1600 samples for clips of 800"),
    ],
)
def test_a_user_teachers_waveform_of_another_shape_is_refused_by_name(shape, said, tmp_path):
    path = tmp_path / f"{shape}.ts"
    torch.jit.script(Shaped(shape)).save(str(path))
    spec = {"kind": "torchscript", "name": "fx", "path": str(path), "sample_rate": 800, "outputs": {"y": "waveform"}}
    with pytest.raises(RuntimeError, match=said):
        build_teacher(spec)(torch.zeros(3, 800))
    path = tmp_path / "b1t.ts"
    torch.jit.script(Shaped("b1t")).save(str(path))
    assert build_teacher({**spec, "path": str(path)})(torch.ones(3, 800))["y"].shape == (3, 800)


def test_a_teacher_file_that_is_not_torchscript_is_refused_on_the_driver_saying_what_it_is(tmp_path):
    """It failed every actor's start (exit 1, "ActorDiedError"); a state dict given as TorchScript was called
    a corrupted file ("constants.pkl ... your checkpoint file is corrupted")."""
    state = tmp_path / "fx_state.pt"
    torch.save({"conv.weight": torch.zeros(1, 1, 3)}, state)
    spec = parse_spec({"kind": "torchscript", "name": "fx", "path": str(state), "sample_rate": 16000})
    with pytest.raises(TeacherLoadError, match=r"fx_state.pt: it is a torch.save file .* \(kind: factory\)"):
        spec.identity()
    junk = tmp_path / "junk.ts"
    junk.write_bytes(b"not a model")
    with pytest.raises(TeacherLoadError, match=r"^cannot load TorchScript model \S+junk.ts: RuntimeError: "):
        parse_spec({"kind": "torchscript", "name": "fx", "path": str(junk), "sample_rate": 16000}).identity()


def test_a_teacher_factory_that_needs_a_gpu_is_left_to_the_actors_on_a_driver_without_one(tmp_path):
    """The driver builds a factory teacher to check it; one that puts its model on a GPU itself fails on a
    CPU-only head: it is left to the actors there, as before the check, its code still hashed."""
    if torch.cuda.is_available():
        pytest.skip("this driver has a GPU: the factory builds here")
    factory = tmp_path / "gpu_fx.py"
    factory.write_text("import torch\ndef make():\n    return torch.nn.Conv1d(1, 1, 3).cuda()\n")
    spec = {"kind": "factory", "name": "fx", "factory": f"{factory}:make", "sample_rate": 16000}
    identity = parse_spec(spec).identity()
    assert len(identity["code_sha256"]) == 64 and identity["weights_sha256"] == ""
    boom = tmp_path / "boom_fx.py"
    boom.write_text("def make():\n    raise ValueError('bad channels')\n")
    with pytest.raises(TeacherLoadError, match=r"failed: ValueError: bad channels"):  # not a GPU's absence
        parse_spec({**spec, "factory": f"{boom}:make"}).identity()


class PeakNormalised(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        peak = x.abs().amax(-1, keepdim=True)
        if bool((peak == 0).any()):
            raise RuntimeError("cannot normalise a silent clip")
        return x / peak


def test_a_teacher_that_cannot_take_silence_starts_and_a_silent_clip_is_its_error_row(tmp_path):
    """The actor's probe was an all-zero clip: a model dividing by the peak, fine on every real clip (silence_db
    keeps silent ones away by default), failed the whole job when its actors started, exit 1."""
    path = tmp_path / "norm.ts"
    torch.jit.script(PeakNormalised()).save(str(path))
    fx = {"kind": "torchscript", "name": "norm", "path": str(path), "sample_rate": SR, "outputs": {"y": "waveform"}}
    stage = TeacherStage(teachers=[fx], sample_rate=SR, num_samples=100)
    audio = np.stack([np.zeros(100), np.full(100, 0.25)]).astype(np.float32)
    out = stage(
        {"key": np.array(["silent", "dc"], dtype=object), "error": np.array(["", ""], dtype=object), "audio": audio}
    )
    assert out["error"][0].startswith("teacher failed: norm: ") and "cannot normalise a silent clip" in out["error"][0]
    assert out["error"][1] == "" and np.allclose(out["y"][1], 1.0)
