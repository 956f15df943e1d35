"""Object storage end to end: read from s3:// and write to s3:// on a real S3 endpoint (moto)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.augment import AugmentConfig, AugmentJob
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.readers import ContrastiveViews
from tests.audio_helpers import encoded_bytes, tone, write_tar


def test_augment_from_s3_to_s3(s3_bucket, ray_local, tmp_path):
    bucket, options, fs = s3_bucket
    for i in range(3):
        fs.pipe(f"{bucket}/raw/set{i % 2}/clip{i}.flac", encoded_bytes(tone(1.0 + i * 0.3, freq=200.0 * (i + 1))))
    fs.pipe(f"{bucket}/raw/set0/broken.flac", b"fLaC-but-not-really")
    shard = write_tar(tmp_path / "shard-0.tar", {"a.wav": encoded_bytes(tone(1.0), "wav")})
    fs.put(str(shard), f"{bucket}/raw/shards/shard-0.tar")

    cfg = validate_config(
        AugmentConfig,
        {
            "input": [f"s3://{bucket}/raw/**/*.flac", f"s3://{bucket}/raw/shards/*.tar"],
            "output": f"s3://{bucket}/views",
            "storage_options": options,
            "num_versions": 2,
            "duration": 1.0,
            "sample_rate": 16000,
            "n_mels": 32,
            "n_fft": 512,
            "hop_length": 256,
        },
    )
    result = run_job(AugmentJob(cfg), progress=False)

    assert result.counts["listed"] == 5 and result.counts["errors"] == 1
    assert result.counts["rows_written"] == 8
    assert fs.exists(f"{bucket}/views/_SUCCESS")
    info = json.loads(fs.cat(f"{bucket}/views/dataset_info.json"))  # the dataset card, written to S3 too
    assert info["features"]["view1"] == {"_type": "Array3D", "shape": [1, 32, 63], "dtype": "float32"}
    assert fs.cat(f"{bucket}/views/README.md").startswith(b"---\nconfigs:")
    manifest = json.loads(fs.cat(f"{bucket}/views/manifest.json"))
    keys = set()
    for f in manifest["files"]:
        table = pq.read_table(f"{bucket}/views/{f['path']}", filesystem=fs)
        assert column_to_numpy(table.column("view1")).shape[1:] == (1, 32, 63)
        keys |= set(table.column("key").to_pylist())
    assert keys == {"set0/clip0.flac", "set1/clip1.flac", "set0/clip2.flac", "shard-0.tar/a.wav"}
    errors = [json.loads(line) for line in fs.cat(f"{bucket}/views/errors.jsonl").decode().splitlines()]
    assert errors[0]["key"] == "set0/broken.flac" and errors[0]["reason"].startswith("undecodable")
    # The manifest never holds credentials.
    assert "testing" not in fs.cat(f"{bucket}/views/manifest.json").decode()

    # Resume on S3: a rerun finds everything committed.
    again = run_job(AugmentJob(cfg), progress=False)
    assert again.counts["processed_this_run"] == 0 and again.counts["rows_written"] == 8

    # Read back for training straight from the bucket.
    train_or_val = sorted(manifest["splits"])[0]
    dataset = ContrastiveViews(f"s3://{bucket}/views", train_or_val, storage_options=options)
    assert dataset[0][0].shape == (1, 32, 63)


def test_presigned_inputs_run_and_no_signature_is_recorded(s3_bucket, ray_local, tmp_path):
    """A presigned list file of presigned clips: the signatures (credentials while they last) went into
    _job.json's and manifest.json's config, which travel with the dataset."""
    bucket, _options, fs = s3_bucket
    for i in range(2):
        fs.pipe(f"{bucket}/raw/clip{i}.flac", encoded_bytes(tone(1.0, freq=300.0 * (i + 1))))
    lines = "".join(fs.sign(f"{bucket}/raw/clip{i}.flac", expiration=600) + "\n" for i in range(2))
    fs.pipe(f"{bucket}/lists/clips.txt", lines.encode())
    signed_list = fs.sign(f"{bucket}/lists/clips.txt", expiration=600)
    assert "Signature=" in signed_list and "Signature=" in lines
    out = tmp_path / "views"
    settings = {"num_versions": 1, "duration": 1.0, "sample_rate": 16000, "n_mels": 16, "n_fft": 256}
    cfg = validate_config(AugmentConfig, {"input": signed_list, "output": str(out), "hop_length": 128, **settings})
    result = run_job(AugmentJob(cfg), progress=False)
    assert result.counts["rows_written"] == 2 and (out / "_SUCCESS").exists()
    for recorded in ("_job.json", "manifest.json"):
        text = (out / recorded).read_text()
        assert "Signature" not in text and "Credential" not in text, recorded
        assert json.loads(text)["config"]["input"] == signed_list.split("?")[0]
    # the encode job's details.json (pre_encode's keys: args, dataset_config) records the config too
    model = {"kind": "builtin", "builtin": {"hidden": 4, "latent_dim": 4, "strides": [4, 4]}}
    encoded = tmp_path / "latents"
    cfg = validate_config(
        EncodeConfig, {"input": signed_list, "output": str(encoded), "sample_size": 4096, "model": model}
    )
    assert run_job(EncodeJob(cfg), progress=False).complete
    details = (encoded / "details.json").read_text()
    assert "Signature" not in details and "Credential" not in details
    assert json.loads(details)["dataset_config"]["input"] == signed_list.split("?")[0]
