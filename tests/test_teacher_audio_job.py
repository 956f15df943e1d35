"""The teacher job on audio files with user teachers, and the cache read back through a DataLoader."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from ray_pipelines.config import validate_config
from ray_pipelines.engine.manifest import OutputConflict
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.teacher import JOB, TeacherConfig
from ray_pipelines.readers.teacher import TeacherCache
from tests.audio_helpers import tone, write_audio
from tests.test_teacher_units import HalfGain, fir_checkpoint, write_fx_factory

SR = 44100


@pytest.fixture(scope="module")
def audio_cache(ray_local, tmp_path_factory):
    """4 real encoded files (one of them junk), 2 clips each where they fit, through 3 teachers."""
    tmp = tmp_path_factory.mktemp("teacher-audio")
    audio = tmp / "audio"
    write_audio(audio / "a.wav", tone(2.5, SR, 220.0, seed=1))
    write_audio(audio / "b.flac", tone(2.5, 48000, 330.0, seed=2), 48000)  # resampled on decode
    write_audio(audio / "sub" / "c.ogg", tone(1.0, SR, 440.0, seed=3))  # one clip, zero-padded
    (audio / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    script = tmp / "half.ts"
    torch.jit.script(HalfGain()).save(str(script))
    config = validate_config(
        TeacherConfig,
        {
            "input": str(audio),
            "output": str(tmp / "out"),
            "duration": 1.2,
            "max_windows": 2,
            "val_fraction": 0.0,
            "dtype": "float64",
            "actors": 1,
            "inputs_per_block": 2,
            "rows_per_file": 2,
            "teachers": [
                {"kind": "loudness"},
                {"kind": "torchscript", "name": "half", "path": str(script), "sample_rate": 22050, "version": "v1"},
                {
                    "kind": "factory",
                    "name": "fir",
                    "factory": f"{write_fx_factory(tmp)}:make",
                    "checkpoint": fir_checkpoint(tmp),
                    "sample_rate": SR,
                    "outputs": {"smooth": "waveform", "peak": "tensor"},
                },
            ],
        },
    )
    return run_job(JOB(config), progress=False)


def test_bad_file_is_an_error_row_and_the_rest_is_written(audio_cache):
    counts = audio_cache.counts
    assert counts["listed"] == 4 and counts["rows_written"] == 5 and counts["error_rows"] == 1
    errors = [json.loads(line) for line in Path(audio_cache.output, "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["broken.wav"] and errors[0]["reason"].startswith("undecodable")
    assert Path(audio_cache.output, "_SUCCESS").exists()
    teachers = {t["name"]: t for t in audio_cache.manifest["fingerprint_extra"]["teachers"]}
    assert teachers["half"]["version"] == "v1" and teachers["fir"]["code_sha256"]
    assert audio_cache.manifest["fingerprint_extra"]["valid_samples"] is True  # caches without the column refused


def test_user_teacher_outputs_are_cached(audio_cache):
    rows = list(TeacherCache(audio_cache.output, "train", as_dict=True))
    by_clip = {(r["key"], int(r["window"])): r for r in rows}
    assert sorted(by_clip) == [("a.wav", 0), ("a.wav", 1), ("b.flac", 0), ("b.flac", 1), ("sub/c.ogg", 0)]
    clip = by_clip[("a.wav", 1)]
    x, y = clip["x"], clip["y"]
    assert x.dtype == y.dtype == torch.float64 and x.shape == y.shape == (52920,)
    assert float(clip["start_seconds"]) == pytest.approx(1.2)
    # TorchScript ran at 22.05 kHz: y is half of x less what lies above 11 kHz (the tone's faint noise)
    inner = slice(2000, -2000)
    residual = torch.linalg.norm(y[inner] - 0.5 * x[inner]) / torch.linalg.norm(0.5 * x[inner])
    assert residual < 0.03
    smooth = clip["fir_smooth"]  # factory FIR [0.25, 0.5, 0.25] from its checkpoint
    assert torch.allclose(smooth[1:-1], 0.25 * x[:-2] + 0.5 * x[1:-1] + 0.25 * x[2:], atol=1e-6)
    assert clip["fir_peak"].shape == (1,) and clip["fir_peak"].item() == pytest.approx(x.abs().max().item(), rel=1e-6)
    padded = by_clip[("sub/c.ogg", 0)]
    assert not padded["x"][int(1.05 * SR) :].any()  # a 1 s file in a 1.2 s clip: zero padded
    # how much of each clip is audio, for a student to mask the padding by (other jobs stored it; this one not)
    assert int(padded["valid_samples"]) == SR and int(clip["valid_samples"]) == 52920
    assert clip["loudness_db"].shape == (121,)


def test_reader_with_two_workers_yields_every_row_once(audio_cache):
    dataset = TeacherCache(
        audio_cache.output,
        "train",
        fields=("x", "y", "loudness_db", "fir_peak"),
        dtype=torch.float32,
        shuffle=True,
        seed=3,
        shuffle_buffer=2,
    )
    assert len(dataset) == 5 and len(dataset.files) >= 3
    seen = []
    for x, _y, loudness, peak in DataLoader(dataset, batch_size=2, num_workers=2):
        assert x.dtype == torch.float32 and x.shape[1:] == (52920,) and loudness.shape[1:] == (121,)
        seen.extend(round(float(p), 6) for p in peak)
    expected = [round(float(r["fir_peak"]), 6) for r in TeacherCache(audio_cache.output, "train", as_dict=True)]
    assert len(seen) == 5 and Counter(seen) == Counter(expected)


def test_reader_names_missing_columns(audio_cache):
    with pytest.raises(
        ValueError, match=r"no column f0, db; columns: key, window, start_seconds, valid_samples, x, y"
    ) as error:
        TeacherCache(audio_cache.output, "train")
    # the defaults are a synthetic cache's: the message says what to pass for this one
    assert 'e.g. fields=("x", "y", ' in str(error.value) and str(error.value).endswith("as_dict=True")
    assert '"key"' not in str(error.value) and '"source"' not in str(error.value)
    with pytest.raises(ValueError, match=r"no column nope; columns: key, .*source$"):
        TeacherCache(audio_cache.output, "train", fields=("x", "nope"))


def test_every_window_of_a_long_file_goes_out_in_pieces_and_commits_as_one_input(ray_local, tmp_path):
    """Every window of a long file (``max_windows: null``) went through the stage and the writer at once:
    a worker held them all, with the stage's copies (a 30-minute file: 1.06 GB at the worker's peak, 0.77
    GB in 16 MiB pieces). In pieces the rows are the same, one file per piece, and the input commits whole."""
    write_audio(tmp_path / "in" / "talk.wav", tone(12.0, 16000, seed=4), 16000)
    config = {
        "input": str(tmp_path / "in"),
        "sample_rate": 16000,
        "duration": 0.25,  # 48 windows of 16,000 bytes
        "max_windows": None,
        "val_fraction": 0.0,
        "actors": 1,
        "teachers": [{"kind": "loudness"}],
    }
    tables = {}
    for name, piece_bytes in (("whole", JOB.piece_bytes), ("pieces", 100_000)):  # 7 windows a piece
        job = JOB(validate_config(TeacherConfig, {**config, "output": str(tmp_path / name)}))
        job.piece_bytes = piece_bytes
        result = run_job(job, progress=False)
        assert result.complete and result.counts["rows_written"] == 48 and result.counts["inputs_with_output"] == 1
        files = sorted((tmp_path / name / "train").glob("part-*.parquet"))
        tables[name] = pa.concat_tables(pq.read_table(f) for f in files).sort_by([("window", "ascending")])
        assert len(files) == {"whole": 1, "pieces": 7}[name]
        assert len(result.writes) == len(files)
        assert sorted(w["inputs"] for w in result.writes) == [0] * (len(files) - 1) + [1]  # the last piece finishes it
    assert tables["pieces"]["window"].to_pylist() == list(range(48))
    assert tables["pieces"].equals(tables["whole"])
    again = JOB(validate_config(TeacherConfig, {**config, "output": str(tmp_path / "pieces")}))
    again.piece_bytes = 100_000
    rerun = run_job(again, progress=False)  # the seven parts made one committed input
    assert rerun.complete and rerun.counts["processed_this_run"] == 0 and rerun.counts["rows_written"] == 48


def test_an_edit_to_the_code_beside_a_factory_refuses_the_output_naming_the_teacher(audio_cache):
    """Only the factory's own file was hashed: a module beside it (the model's layers, a constant) edited
    between two nightly runs let the second add rows of the new code to the first's."""
    config = validate_config(TeacherConfig, audio_cache.manifest["config"])
    beside = Path(config.teachers[2].factory.rpartition(":")[0]).parent / "fx_layers.py"
    beside.write_text("GAIN = 2.0\n")
    try:
        with pytest.raises(OutputConflict, match=r"another config .*changed: models\.teachers\.2\.code_sha256\)"):
            run_job(JOB(config), progress=False)
    finally:
        beside.unlink()
