"""The encode job end to end on a real local Ray and real recordings (local files)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch

from ray_pipelines.config import validate_config
from ray_pipelines.encoders.sat_sink import sample_id
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.runner import run_job
from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.readers import OutputRows
from ray_pipelines.readers.encode import EncodedShardRows, collate_encoded, open_encoded
from ray_pipelines.stages.encode import EncodeStage
from tests.audio_helpers import SHARED_AUDIO
from tests.test_encode_units import IDENTITY_MODEL, write_model

SAMPLE_SIZE = 32768  # 0.74 s at 44.1 kHz; 128 latent frames at the built-in model's ratio 256
CLIPS = {  # real recordings: (file, frames at 44.1 kHz)
    "bass_hit_c.flac": ("bass/bass_hit_c.flac", 26868),  # shorter than sample_size: padded
    "loop_amen.flac": ("loop/loop_amen.flac", 77321),  # three windows with windows: all
    "tabla_ke1.flac": ("tabla/tabla_ke1.flac", 1915),  # mono, very short
    "elec_flip.flac": ("electronic/elec_flip.flac", 3297),
}


def config(input_dir, output, **overrides) -> EncodeConfig:
    return validate_config(
        EncodeConfig,
        {
            "input": str(input_dir),
            "output": str(output),
            "sample_size": SAMPLE_SIZE,
            "seed": 3,
            "actors": 1,
            **overrides,
        },
    )


def samples(out: Path) -> dict[tuple[str, int], tuple[np.ndarray, dict]]:
    """(key, window) -> (latents, metadata) read from the sat layout with numpy and json only."""
    found = {}
    for line in (out / "filelist.txt").read_text().splitlines():
        latents = np.load(out / line)
        metadata = json.loads((out / line).with_suffix(".json").read_text())
        assert (metadata["key"], metadata["window"]) not in found
        found[(metadata["key"], metadata["window"])] = (latents, metadata)
    return found


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("encode-clips")
    source = SHARED_AUDIO / "sonic-pi"
    if not source.exists():
        pytest.skip(f"real recordings not found at {source}")
    for name, (rel, _) in CLIPS.items():
        shutil.copy(source / rel, root / name)
    (root / "broken.flac").write_bytes(b"fLaC but not really a flac file")
    return root


@pytest.fixture(scope="module")
def encoded(clips, tmp_path_factory, ray_local) -> tuple[Path, dict, EncodeJob]:
    """fp16, every window of every file, both layouts."""
    out = tmp_path_factory.mktemp("encode-out") / "out"
    job = EncodeJob(config(clips, out, windows="all", model_half=True, layout="both"))
    result = run_job(job, progress=False)
    return out, result.manifest, job


def test_sat_layout_filelist_ids_and_manifest(encoded):
    out, manifest, _ = encoded
    windows = {"bass_hit_c.flac": 1, "loop_amen.flac": 3, "tabla_ke1.flac": 1, "elec_flip.flac": 1}
    assert manifest["counts"]["rows_written"] == sum(windows.values()) == 6
    assert manifest["counts"]["errors"] == 1 and manifest["counts"]["duplicates"] == 0
    assert (out / "_SUCCESS").exists()

    listed = (out / "filelist.txt").read_text().splitlines()
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("[0-9]*/*.npy"))
    assert listed == on_disk and len(listed) == 6
    assert sorted(str(p.relative_to(out)) for p in out.glob("[0-9]*/*.json")) == [p[:-4] + ".json" for p in listed]
    for line in listed:
        rank, name = line.split("/")
        assert rank.isdigit() and len(name) == 17 and name[:13].isdigit()
    found = samples(out)
    assert {k: sum(1 for key, _ in found if key == k) for k in windows} == windows
    for (key, window), _ in found.items():
        assert any(line.endswith(f"/{sample_id(key, window)}.npy") for line in listed)

    details = json.loads((out / "details.json").read_text())
    assert details["sample_size"] == SAMPLE_SIZE and details["samples"] == 6 and details["id_collisions"] == []
    assert details["model"]["downsampling_ratio"] == 256 and details["args"]["model_half"] is True
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["key"] for e in errors] == ["broken.flac"] and errors[0]["reason"].startswith("undecodable")


def test_latents_are_fp16_and_equal_to_the_stage_on_the_same_audio(encoded, clips):
    out, _, job = encoded
    found = samples(out)
    for latents, _ in found.values():
        assert latents.dtype == np.float16 and latents.shape == (16, 128) and np.isfinite(latents).all()
    # The same windows decoded and encoded here, outside Ray, give the same bytes.
    rows = [item.to_row() for item in job.list_inputs() if item.key in ("bass_hit_c.flac", "loop_amen.flac")]
    (decoded,) = job.decoder()({name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]})
    expected = EncodeStage(**job.stage_kwargs())(decoded)
    for key, window, latents in zip(expected["key"], expected["window"], expected["latents"]):
        assert latents.tobytes() == found[(key, int(window))][0].tobytes()
    # Parquet holds the same latents and masks, uncompressed by default (latents barely compress).
    shard = next(out.glob("part-*.parquet"))
    metadata = pq.read_metadata(shard)
    assert {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)} == {"UNCOMPRESSED"}
    table = pq.read_table(shard)
    # PLAIN floats (the readers take them where they lie), a row group of several latents (all are read
    # each epoch): as many as fit in the encode job's 2 MiB
    assert not any(
        "BYTE_STREAM_SPLIT" in metadata.row_group(0).column(i).encodings for i in range(metadata.num_columns)
    )
    fit = WHOLE_READ_ROW_GROUP_BYTES // (table.nbytes // table.num_rows)
    assert fit > 1 and metadata.row_group(0).num_rows == min(fit, table.num_rows)
    parquet = column_to_numpy(table.column("latents"))
    masks = column_to_numpy(table.column("padding_mask"))
    for i, (key, window) in enumerate(zip(table.column("key").to_pylist(), table.column("window").to_pylist())):
        assert parquet[i].tobytes() == found[(key, window)][0].tobytes()
        assert masks[i].tolist() == found[(key, window)][1]["padding_mask"]


def test_padding_mask_is_zero_exactly_where_the_window_is_padding(encoded):
    out, _, _ = encoded
    found = samples(out)
    _, md = found[("bass_hit_c.flac", 0)]
    real = -(-26868 // 256)  # 105 frames hold real audio, the last one partly
    assert md["padding_mask"] == [1] * real + [0] * (128 - real)
    assert md["valid_samples"] == 26868 and md["sample_rate"] == 44100
    assert (md["seconds_start"], md["seconds_total"], md["timestamps"]) == (0, 1, [0.0, 1.0])
    assert md["relpath"] == "bass_hit_c.flac" and md["path"].endswith("/bass_hit_c.flac")
    assert found[("tabla_ke1.flac", 0)][1]["padding_mask"] == [1] * 8 + [0] * 120  # 1915 samples


def test_windows_all_covers_every_sample_once(encoded):
    out, _, _ = encoded
    found = samples(out)
    amen = [found[("loop_amen.flac", w)][1] for w in range(3)]
    assert [md["start_seconds"] for md in amen] == pytest.approx([0.0, SAMPLE_SIZE / 44100, 2 * SAMPLE_SIZE / 44100])
    assert [md["valid_samples"] for md in amen] == [SAMPLE_SIZE, SAMPLE_SIZE, 77321 - 2 * SAMPLE_SIZE]
    assert [sum(md["padding_mask"]) for md in amen] == [128, 128, -(-(77321 - 2 * SAMPLE_SIZE) // 256)]
    assert amen[2]["timestamps"] == pytest.approx([2 * SAMPLE_SIZE / 77321, 1.0])


def test_windows_all_tiles_a_long_file_exactly(tmp_path, ray_local):
    """An identity encoder (ratio 1) writes each window's samples: together they are the file, once."""
    speech = SHARED_AUDIO / "speech" / "sample.wav"
    if not speech.exists():
        pytest.skip("speech recording not found")
    (tmp_path / "in").mkdir()
    shutil.copy(speech, tmp_path / "in" / "speech.wav")
    factory = f"{write_model(tmp_path, 'identity', IDENTITY_MODEL)}:make_identity"
    out = tmp_path / "out"
    run_job(
        EncodeJob(
            config(
                tmp_path / "in", out, sample_size=65536, windows="all", model={"kind": "factory", "factory": factory}
            )
        ),
        progress=False,
    )
    reference, rate = sf.read(speech, dtype="float32")
    found = samples(out)
    count = -(-len(reference) // 65536)
    assert rate == 16000 and sorted(found) == [("speech.wav", w) for w in range(count)]
    pieces = [found[("speech.wav", w)] for w in range(count)]
    joined = np.concatenate([latents[0, : md["valid_samples"]] for latents, md in pieces])
    assert np.array_equal(joined, reference)
    last, md = pieces[-1]
    assert md["valid_samples"] == len(reference) - (count - 1) * 65536 and not last[0, md["valid_samples"] :].any()
    assert sum(md["padding_mask"]) == md["valid_samples"]
    # The Parquet readers given this SAT-only output say so (they read an empty dataset without a word)
    for parquet_reader in (lambda: EncodedShardRows(str(out)), lambda: OutputRows(out)):
        with pytest.raises(ValueError, match=r"holds no Parquet files: it is in stable-audio-tools' layout"):
            parquet_reader()


def test_one_call_opens_either_layout_with_an_index_cache(encoded, tmp_path):
    out, manifest, _ = encoded
    cache = tmp_path / "index-cache"
    sat = open_encoded(str(out), "sat", latent_crop_length=64, seed=1, index_cache=str(cache))
    assert len(sat) == manifest["counts"]["rows_written"] and not cache.exists()  # nothing to keep
    made = open_encoded(str(out), "parquet", latent_crop_length=64, seed=1, index_cache=str(cache))
    assert [p.suffix for p in cache.iterdir()] == [".npz"]
    cached = open_encoded(str(out), "parquet", latent_crop_length=64, seed=1, index_cache=str(cache))
    assert cached.index.num_rows == made.index.num_rows == manifest["counts"]["rows_written"]
    assert [md["key"] for _, md in cached] == [md["key"] for _, md in made]


def test_reader_yields_latents_and_metadata_from_both_layouts(encoded):
    out, manifest, _ = encoded
    sat = open_encoded(str(out), latent_crop_length=64, seed=1)
    assert len(sat) == manifest["counts"]["rows_written"]
    latents, md = sat[0]
    assert latents.shape == (16, 64) and latents.dtype == torch.float16
    assert md["padding_mask"].dtype == torch.bool and md["padding_mask"].shape == (64,) and md["padding_mask"].any()
    batch, metadata = collate_encoded([sat[i] for i in range(len(sat))])
    assert batch.shape == (6, 16, 64) and all(m["padding_mask"].any() for m in metadata)

    items = {
        (md["key"], md["window"]): (z, md) for z, md in open_encoded(str(out), "parquet", latent_crop_length=64, seed=1)
    }
    for i in range(len(sat)):
        z, md = sat[i]
        other, other_md = items[(md["key"], md["window"])]
        assert torch.equal(z, other) and md["latent_crop_start"] == other_md["latent_crop_start"]
