"""The encode job from s3:// to s3:// on a real S3 endpoint (moto's server), read back over S3."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from ray_pipelines.readers.encode import EncodedLatents
from ray_pipelines.stages.encode import EncodeStage
from tests.audio_helpers import SHARED_AUDIO

CLIPS = ["bass/bass_hit_c.flac", "loop/loop_amen.flac", "tabla/tabla_na.flac"]


def test_encode_from_and_to_s3(s3_bucket, ray_local):
    bucket, options, fs = s3_bucket
    if not (SHARED_AUDIO / "sonic-pi").exists():
        pytest.skip("real recordings not found")
    for rel in CLIPS:
        fs.put(str(SHARED_AUDIO / "sonic-pi" / rel), f"{bucket}/raw/{rel}")
    output = f"s3://{bucket}/latents/v1"
    job = EncodeJob(
        validate_config(
            EncodeConfig,
            {
                "input": f"s3://{bucket}/raw/**/*.flac",
                "output": output,
                "storage_options": options,
                "sample_size": 32768,
                "actors": 1,
                "seed": 1,
            },
        )
    )
    result = run_job(job, progress=False)
    assert result.counts["rows_written"] == 3 and result.counts["errors"] == 0

    root = f"{bucket}/latents/v1"
    fs.invalidate_cache()
    listed = fs.cat(f"{root}/filelist.txt").decode().splitlines()
    assert len(listed) == 3 and sorted(fs.glob(f"{root}/[0-9]*/*.npy")) == sorted(f"{root}/{p}" for p in listed)
    assert fs.exists(f"{root}/details.json") and fs.exists(f"{root}/_SUCCESS")

    metadata = {}
    for line in listed:
        md = json.loads(fs.cat(f"{root}/{line[:-4]}.json"))
        metadata[md["key"]] = md
    assert sorted(metadata) == sorted(CLIPS)  # keys: paths under the glob's root
    assert metadata["bass/bass_hit_c.flac"]["path"] == f"s3://{bucket}/raw/bass/bass_hit_c.flac"
    assert sum(metadata["bass/bass_hit_c.flac"]["padding_mask"]) == -(-26868 // 256)
    assert sum(metadata["loop/loop_amen.flac"]["padding_mask"]) == 128  # windows: first, longer than a window

    # The reader streams the same layout over S3; latents equal the stage's on the same audio.
    dataset = EncodedLatents(output, storage_options=options)
    rows = [item.to_row() for item in job.list_inputs()]
    (decoded,) = job.decoder()({name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]})
    expected = EncodeStage(**job.stage_kwargs())(decoded)
    by_key = {md["key"]: (latents, md) for latents, md in (dataset[i] for i in range(len(dataset)))}
    for key, latents in zip(expected["key"], expected["latents"]):
        got, md = by_key[key]
        assert got.dtype == torch.float32 and got.shape == (16, 128)
        assert np.array_equal(got.numpy(), latents) and md["latent_filename"].startswith("s3://")
