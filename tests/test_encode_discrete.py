"""A discrete model (argmin against fixed codebooks, built here) that returns its tokens frames
first ([B, N, Q], as stable-audio-tools' RVQ bottlenecks do) writes them [Q, N] in uint8, with N-frame
padding masks, right details.json, and readers (ours, stable-audio-tools' when installed) that crop N."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ray_pipelines.config import validate_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.jobs.encode import EncodeConfig, EncodeJob
from tests.audio_helpers import SHARED_AUDIO
from tests.test_encode_units import tokenizer_checkpoint


def test_discrete_model_writes_integer_tokens(tmp_path, ray_local):
    source = SHARED_AUDIO / "sonic-pi"
    if not source.exists():
        pytest.skip("real recordings not found")
    (tmp_path / "in").mkdir()
    for rel in ("bass/bass_hit_c.flac", "ambient/ambi_choir.flac"):
        shutil.copy(source / rel, tmp_path / "in")
    factory, checkpoint = tokenizer_checkpoint(tmp_path)
    out = tmp_path / "out"
    job = EncodeJob(
        validate_config(
            EncodeConfig,
            {
                "input": str(tmp_path / "in"),
                "output": str(out),
                "sample_size": 32768,
                "actors": 1,
                "is_discrete": True,
                "layout": "both",
                "model": {
                    "kind": "factory",
                    "factory": factory,
                    "checkpoint": str(checkpoint),
                    "factory_kwargs": {"layout": "NQ"},
                },
            },
        )
    )
    assert job.model.is_discrete and job.model.latent_channels == 2 and job.model.frames_axis == 1
    result = run_job(job, progress=False)
    assert result.counts["rows_written"] == 2 and result.manifest["schema"]["latents"]["dtype"] == "uint8"
    details = json.loads((out / "details.json").read_text())["model"]
    assert (details["latent_channels"], details["latent_frames"], details["codebook_size"]) == (2, 128, 32)
    assert details["stored_dtype"] == "uint8" and details["frames_axis"] == 1

    # Tokens computed here from the checkpoint alone: features = strided projection,
    # token = index of the nearest codeword in each codebook.
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    weight, codebooks = state["proj.weight"].numpy().astype(np.float64), state["codebooks"].numpy().astype(np.float64)
    rows = [item.to_row() for item in job.list_inputs()]
    (decoded,) = job.decoder()({name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]})
    for line in (out / "filelist.txt").read_text().splitlines():
        tokens = np.load(out / line)
        md = json.loads((out / line[:-4]).with_suffix(".json").read_text())
        assert tokens.dtype == np.uint8 and tokens.shape == (2, 128)
        assert tokens.min() >= 0 and tokens.max() < 32 and len(np.unique(tokens)) > 2
        audio = decoded["audio"][list(decoded["key"]).index(md["key"])].astype(np.float64)  # [2, T]
        frames = audio.reshape(2, 128, 256)  # [C, N, hop]
        feats = np.einsum("fch,cnh->nf", weight, frames)  # [N, F]
        dist = ((feats[None, :, None, :] - codebooks[:, None, :, :]) ** 2).sum(-1)  # [Q, N, K]
        expected = dist.argmin(-1)
        margin = np.sort(dist, axis=-1)[..., 1] - np.sort(dist, axis=-1)[..., 0]
        clear = margin > 1e-4  # float32 vs float64 may only disagree on near-ties
        assert clear.mean() > 0.95 and np.array_equal(tokens[clear], expected[clear])
        assert md["padding_mask"] == [1] * -(-md["valid_samples"] // 256) + [0] * (128 - -(-md["valid_samples"] // 256))

    # Readers crop the frame axis, masks included (ours on both layouts; stable-audio-tools' own).
    from ray_pipelines.readers.encode import open_encoded

    for layout in ("sat", "parquet"):
        latents, metadata = next(iter(open_encoded(str(out), layout=layout, latent_crop_length=32, random_crop=False)))
        assert latents.shape == (2, 32) and metadata["padding_mask"].shape == (32,), layout
    try:
        from stable_audio_tools.data.dataset import LocalDatasetConfig, PreEncodedDataset
    except ImportError:
        return
    dataset = PreEncodedDataset([LocalDatasetConfig(id="tokens", path=str(out))], latent_crop_length=32)
    latents, info = dataset[0]
    assert latents.shape == (2, 32) and len(info["padding_mask"][0]) == 32
