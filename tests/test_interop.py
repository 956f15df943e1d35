"""Every job's output opens where people train, without this project's code: plain pyarrow, Ray
Data, Hugging Face ``load_dataset(<output dir>)``, polars and DuckDB; and the same from ``s3://``.

One small real run per job on real recordings (a module-scoped fixture on the session's Ray),
then each reader on each output: shapes, dtypes, split names and row counts.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ray_pipelines.config import validate_config
from ray_pipelines.engine.manifest import OutputConflict
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob
from ray_pipelines.jobs.preview import preview
from ray_pipelines.jobs.score import ScoreConfig, ScoreJob
from ray_pipelines.jobs.teacher import TeacherConfig, TeacherJob
from tests.audio_helpers import copy_shared

datasets = pytest.importorskip("datasets")
polars = pytest.importorskip("polars")
duckdb = pytest.importorskip("duckdb")

LABELS = ["bass", "drum_kit", "electronic"]
COMMON = {"actors": 1, "seed": 1}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Three labels of three real recordings each (sonic-pi)."""
    root = tmp_path_factory.mktemp("library")
    source = copy_shared(root / "all", limit_per_folder=3)
    for label in LABELS:
        shutil.move(source / label, root / label)
    shutil.rmtree(source)
    return root


def run(job_cls, config_cls, out: Path, **config):
    return run_job(job_cls(validate_config(config_cls, {**COMMON, "output": str(out), **config})), progress=False)


@pytest.fixture(scope="module")
def outputs(ray_local, library, tmp_path_factory) -> dict[str, tuple[Path, dict, dict]]:
    """Each job's output, its manifest and the tensors it must hold: {column: (shape, dtype)}."""
    root = tmp_path_factory.mktemp("outputs")
    src = str(library)
    jobs = {
        "augment": (
            AugmentJob,
            AugmentConfig,
            dict(input=src, num_versions=2, duration=1.0, sample_rate=16000, n_mels=32, n_fft=512, hop_length=256),
            {"view1": ((1, 32, 63), np.float32), "view2": ((1, 32, 63), np.float32)},
        ),
        "teacher": (
            TeacherJob,
            TeacherConfig,
            dict(input=src, duration=0.5, sample_rate=16000, val_fraction=0.5, teachers=[{"kind": "loudness"}]),
            {"x": ((8000,), np.float32), "loudness_db": ((51,), np.float32)},
        ),
        "encode": (
            EncodeJob,
            EncodeConfig,
            dict(
                input=src,
                sample_size=4096,
                layout="both",
                model={"kind": "builtin", "builtin": {"hidden": 4, "latent_dim": 4, "strides": [4, 4]}},
            ),
            {"latents": ((4, 256), np.float32), "padding_mask": ((256,), np.uint8), "timestamps": ((2,), np.float64)},
        ),
        "features": (
            FeaturesJob,
            FeaturesConfig,
            dict(input=src, min_per_label=3, snippets_per_song=2, snippet_seconds=1.0, max_length=48, n_mels=32),
            {"input_values": ((48, 32), np.float32)},
        ),
        "score": (
            ScoreJob,
            ScoreConfig,
            dict(
                input=src,
                split_pattern=None,
                val_fraction=0.5,
                class_pattern=r"^([^/]+)/",
                duration=0.5,
                n_mels=16,
                n_fft=512,
                hop_length=256,
                scorers=["reconstruction"],
                model={"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2},
            ),
            {},
        ),
    }
    built = {}
    for name, (job_cls, config_cls, config, tensors) in jobs.items():
        result = run(job_cls, config_cls, root / name, **config)
        assert result.counts["rows_written"] > 0, name
        built[name] = (root / name, result.manifest, tensors)
    return built


def parquet_splits(manifest: dict) -> dict[str, int]:
    """Rows per split folder ("" for files at the root), from the manifest."""
    rows: dict[str, int] = {}
    for record in manifest["files"]:
        if record["path"].endswith(".parquet"):
            rows[record["split"]] = rows.get(record["split"], 0) + record["rows"]
    return rows


def files_of(out: Path, folder: str) -> str:
    return str(out / folder / "part-*.parquet") if folder else str(out / "part-*.parquet")


JOBS = ["augment", "teacher", "encode", "features", "score"]


@pytest.mark.parametrize("job", JOBS)
def test_pyarrow_one_liner(outputs, job):
    out, manifest, tensors = outputs[job]
    for folder, rows in parquet_splits(manifest).items():
        table = pq.read_table(sorted(str(p) for p in Path(out, folder).glob("part-*.parquet")))
        assert table.num_rows == rows
        for column, (shape, dtype) in tensors.items():
            # the documented one-liner: the values in one buffer, reshaped by the list sizes
            values = table[column].combine_chunks().flatten(recursive=True).to_numpy().reshape(len(table), *shape)
            assert values.dtype == dtype, column


@pytest.mark.parametrize("job", JOBS)
def test_ray_data(outputs, job, monkeypatch):
    import ray

    # Ray 2.60 reads Parquet footers with 32 actors per read by default, a process each where they start:
    # the few files here need one (the README says so for small machines).
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")

    out, manifest, tensors = outputs[job]
    splits = parquet_splits(manifest)
    # a split folder, or (every split at once, one Ray Data run per job) the output root: only *.parquet is read
    ds = ray.data.read_parquet(str(out / next(iter(splits))) if len(splits) == 1 else str(out), include_paths=True)
    batch = ds.take_batch(sum(splits.values()) + 1, batch_format="pyarrow")  # as iter_batches(batch_format=...)
    folders = [Path(p).parent.name if Path(p).parent != out else "" for p in batch["path"].to_pylist()]
    assert {f: folders.count(f) for f in set(folders)} == splits
    for column, (shape, dtype) in tensors.items():
        values = batch[column].combine_chunks().flatten(recursive=True).to_numpy().reshape(len(batch), *shape)
        assert values.dtype == dtype, column


@pytest.mark.parametrize("job", JOBS)
def test_hugging_face_load_dataset_of_the_output_dir(outputs, job, tmp_path):
    out, manifest, tensors = outputs[job]
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))
    expected = {folder or "train": rows for folder, rows in parquet_splits(manifest).items()}
    assert {name: len(split) for name, split in loaded.items()} == expected  # seed names (val, validate) kept
    for name, split in loaded.items():
        features = split.features
        first = split.with_format("numpy")[:2]
        for column, (shape, dtype) in tensors.items():
            assert first[column].shape == (2, *shape), (name, column)
            if len(shape) > 1:  # ArrayND: fast numpy batches, dtype kept
                assert type(features[column]).__name__ == f"Array{len(shape)}D" and first[column].dtype == dtype
            else:  # a fixed-length List (datasets has no Array1D; its numpy format widens small ints)
                assert features[column].length == shape[0] and features[column].feature.dtype == np.dtype(dtype).name
    if job == "features":
        names = json.loads((out / "labels.json").read_text())
        assert sorted(names) == LABELS
        assert all(split.features["label"].names == names for split in loaded.values())
    # dataset_info.json: the same features for readers that cannot use the card (object storage)
    info = datasets.DatasetInfo.from_directory(str(out))
    assert info.features == next(iter(loaded.values())).features
    assert {name: s.num_examples for name, s in info.splits.items()} == expected
    # The card's lines for object storage, run on the folder (they named {split}/*.parquet: none in encode's)
    files = ast.literal_eval(re.search(r"^files = (.*)$", (out / "README.md").read_text(), re.M).group(1))
    from_card = datasets.load_dataset(
        "parquet",
        data_files={s: f"{out}/{f}" for s, f in files.items()},
        features=info.features,
        cache_dir=str(tmp_path / "hf-card"),
    )
    assert {name: len(split) for name, split in from_card.items()} == expected


def test_an_output_without_rows_has_a_card_that_loads_no_files(ray_local, library, tmp_path):
    """Without a card, load_dataset(out) of an output whose every row had gone (or that never had one) loaded
    errors.jsonl as the dataset; an earlier run's dataset_info.json still counted the rows that left."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(next(library.glob("bass/*")), folder / "clip.wav")
    out = tmp_path / "out"
    config = dict(
        input=str(folder), num_versions=1, duration=0.5, sample_rate=16000, n_mels=16, n_fft=256, hop_length=128
    )
    assert run(AugmentJob, AugmentConfig, out, **config).counts["rows_written"] == 1
    assert (out / "dataset_info.json").exists()
    (folder / "clip.wav").unlink()  # the only clip gone, pruned; a broken file in its place
    (folder / "broken.wav").write_bytes(b"RIFF not audio")
    done = run(AugmentJob, AugmentConfig, out, on_delete="prune", **config)
    assert done.counts["rows_written"] == 0 and not list(out.rglob("part-*.parquet"))
    assert "No rows yet" in (out / "README.md").read_text()
    assert not (out / "dataset_info.json").exists()
    with pytest.raises(datasets.exceptions.DataFilesNotFoundError):
        datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))


@pytest.mark.parametrize("job", JOBS)
def test_polars(outputs, job):
    out, manifest, tensors = outputs[job]
    for folder, rows in parquet_splits(manifest).items():
        frame = polars.read_parquet(files_of(out, folder))
        assert frame.height == rows
        for column, (shape, dtype) in tensors.items():
            assert frame.schema[column] == polars.Array(polars.from_numpy(np.zeros(1, dtype)).dtypes[0], shape)
            assert frame[column].to_numpy().shape == (rows, *shape)


@pytest.mark.parametrize("job", JOBS)
def test_duckdb(outputs, job):
    out, manifest, tensors = outputs[job]
    for folder, rows in parquet_splits(manifest).items():
        relation = duckdb.sql(f"select * from '{files_of(out, folder)}'")
        assert duckdb.sql(f"select count(*) from '{files_of(out, folder)}'").fetchall() == [(rows,)]
        types = dict(zip(relation.columns, map(str, relation.types)))
        for column, (shape, _) in tensors.items():
            assert types[column].count("[]") == len(shape), (column, types[column])  # nested, e.g. FLOAT[][]
            # the nesting keeps the shape: the length at every level
            lengths = ", ".join(f"len({column}{'[1]' * depth})" for depth in range(len(shape)))
            assert duckdb.sql(f"select {lengths} from '{files_of(out, folder)}' limit 1").fetchall() == [shape]


@pytest.mark.parametrize("job", JOBS)
def test_preview_of_every_output(outputs, job):
    out, _, _ = outputs[job]
    png, shown = preview(str(out), n=4)
    assert png[:4] == b"\x89PNG" and shown >= 1


def test_encode_sat_layout_previews_too(outputs, tmp_path):
    out, _, _ = outputs["encode"]
    sat_only = tmp_path / "sat"
    shutil.copytree(out, sat_only, ignore=shutil.ignore_patterns("*.parquet", "manifest.json"))
    png, shown = preview(str(sat_only), n=3)
    assert png[:4] == b"\x89PNG" and shown == 3


def test_an_output_of_the_earlier_format_is_refused_by_name(outputs, library):
    """Output format 1 (fixed_shape_tensor, no cards, windows resampled alone): its fingerprint
    lacks ``output_format``; a rerun is refused naming it, never mixed with new files."""
    out, _, _ = outputs["features"]
    job_file = out / "_job.json"
    saved = job_file.read_text()
    claim = json.loads(saved)
    claim["fingerprinted"].pop("output_format")
    claim["fingerprint"] = "0" * 64
    job_file.write_text(json.dumps(claim))
    try:
        config = dict(min_per_label=3, snippets_per_song=2, snippet_seconds=1.0, max_length=48, n_mels=32)
        with pytest.raises(OutputConflict, match="changed: output_format"):
            run(FeaturesJob, FeaturesConfig, out, input=str(library), **config)
    finally:
        job_file.write_text(saved)


def test_the_same_readers_from_s3(outputs, s3_bucket, tmp_path):
    """The features output copied to a real S3 endpoint: each reader with its storage options."""
    import pyarrow.fs as pafs
    import ray

    bucket, options, fs = s3_bucket
    out, manifest, _ = outputs["features"]
    fs.put(str(out), f"{bucket}/features", recursive=True)
    url = f"s3://{bucket}/features"
    splits = parquet_splits(manifest)
    endpoint = options["endpoint_url"]
    host = endpoint.split("://", 1)[1]

    arrow_fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", region="us-east-1")
    assert pq.read_table(f"{bucket}/features/train", filesystem=arrow_fs).num_rows == splits["train"]
    assert ray.data.read_parquet(f"{url}/validate", filesystem=arrow_fs).count() == splits["validate"]

    so = {"client_kwargs": {"endpoint_url": endpoint}}
    info = datasets.DatasetInfo.from_directory(url, storage_options=so)
    loaded = datasets.load_dataset(
        "parquet",
        data_files={s: f"{url}/{s}/*.parquet" for s in info.splits},
        features=info.features,
        storage_options=so,
        cache_dir=str(tmp_path / "hf"),
    )
    assert {name: len(split) for name, split in loaded.items()} == splits
    assert loaded["test"].with_format("numpy")[:1]["input_values"].shape == (1, 48, 32)

    polars_options = {"aws_endpoint_url": endpoint, "aws_allow_http": "true", "aws_region": "us-east-1"}
    assert polars.read_parquet(f"{url}/train/*.parquet", storage_options=polars_options).height == splits["train"]

    connection = duckdb.connect()
    connection.register_filesystem(fs)  # s3fs: DuckDB reads s3:// through it, no extension needed
    assert connection.sql(f"select count(*) from '{url}/test/*.parquet'").fetchall() == [(splits["test"],)]


def test_every_default_extension_is_listed_and_decoded(tmp_path):
    """One default list for every job: each extension in it is a format the decoders read
    (libsndfile, or FFmpeg through PyAV), tested by writing and decoding a real file of each. AMR-NB's
    is shipped (tests/data/tone.amr, this tone made with PyAV 18.1.0): FFmpeg decodes it itself but
    encodes it only through libopencore, which PyAV 18.1.1's wheels no longer carry."""
    import av
    import soundfile as sf

    from ray_pipelines.audio.decode import AudioFile, InputAudio, load_window
    from ray_pipelines.config import AUDIO_EXTENSIONS, CommonConfig
    from ray_pipelines.sources import list_inputs

    rate = 48000
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 5) / rate)).astype(np.float32)
    libsndfile = {"wav": "WAV", "wave": "WAV", "flac": "FLAC", "ogg": "OGG", "oga": "OGG", "opus": "OGG"}
    libsndfile |= {"mp3": "MP3", "aiff": "AIFF", "aif": "AIFF", "aifc": "AIFF", "au": "AU", "snd": "AU"}
    libsndfile |= {"caf": "CAF", "w64": "W64", "rf64": "RF64"}
    subtypes = {"OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}
    ffmpeg = {"m4a": ("ipod", "aac"), "m4b": ("ipod", "aac"), "aac": ("adts", "aac"), "ac3": ("ac3", "ac3")}
    ffmpeg |= {"webm": ("webm", "libopus"), "mka": ("matroska", "libopus"), "wv": ("wv", "wavpack")}
    ffmpeg |= {
        "wma": ("asf", "wmav2"),
        "mp2": ("mp2", "mp2"),
        "tta": ("tta", "tta"),
        "amr": ("amr", "libopencore_amrnb"),
    }
    assert sorted(AUDIO_EXTENSIONS) == sorted([*libsndfile, *ffmpeg])
    for ext, fmt in libsndfile.items():
        subtype = "OPUS" if ext == "opus" else subtypes.get(fmt, "PCM_16")
        sf.write(str(tmp_path / f"tone.{ext}"), wave, rate, format=fmt, subtype=subtype)
    shutil.copy(Path(__file__).parent / "data" / "tone.amr", tmp_path / "tone.amr")
    for ext, (container, codec) in ffmpeg.items():
        if ext == "amr":
            continue  # the shipped file
        with av.open(str(tmp_path / f"tone.{ext}"), "w", format=container) as out:
            stream = out.add_stream(codec, rate=rate)
            stream.layout = "mono"
            if ext == "wma":
                stream.bit_rate = 64000  # WMA's encoder has no default
            frame = av.AudioFrame.from_ndarray(wave[None], format="fltp" if ext == "wma" else "flt", layout="mono")
            frame.sample_rate = rate
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    (tmp_path / "notes.txt").write_text("not audio")
    listed = list_inputs(str(tmp_path), CommonConfig(input="-", output="-").extensions)
    assert sorted(item.key for item in listed) == sorted(f"tone.{ext}" for ext in AUDIO_EXTENSIONS)
    for item in listed:
        with AudioFile(InputAudio(item.uri)) as audio_file:
            audio, valid = load_window(audio_file, 0.0, 0.1, 16000)
        assert valid == 1600 and np.abs(audio).max() > 0.1, item.key


def test_column_to_numpy_reads_both_representations():
    """The readers' conversion: nested lists (also sliced and chunked) and format 1's fixed_shape_tensor."""
    import pyarrow as pa

    from ray_pipelines.engine.arrow import column_to_numpy, tensor_array

    x = np.arange(4 * 15, dtype=np.float32).reshape(4, 1, 3, 5)
    nested = tensor_array(x)
    assert np.array_equal(column_to_numpy(nested), x)
    assert np.array_equal(column_to_numpy(pa.chunked_array([nested[:1], nested[1:]])), x)
    assert np.array_equal(column_to_numpy(nested.slice(2, 2)), x[2:])
    assert np.array_equal(column_to_numpy(pa.FixedShapeTensorArray.from_numpy_ndarray(x)), x)
    masks = np.array([[1, 0], [0, 1]], dtype=bool)
    assert np.array_equal(column_to_numpy(tensor_array(masks)), masks)
