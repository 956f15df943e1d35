"""Score inputs, models and filter outputs on object storage (a real moto S3 server; no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from ray_pipelines.jobs.filter import main as filter_main
from ray_pipelines.scoring.inputs import PathLabels, TensorFileDecoder, list_tensor_files
from ray_pipelines.scoring.models import ModelSpec, build_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")


def saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_pt_inputs_and_a_model_from_s3(s3_bucket):
    bucket, options, fs = s3_bucket
    mel = torch.arange(16 * 22, dtype=torch.float32).reshape(16, 22)
    fs.pipe(f"{bucket}/mels/train/good/a.pt", saved(mel))
    fs.pipe(f"{bucket}/mels/val/bad/b.pt", b"garbage")
    fs.pipe(f"{bucket}/mels/val/bad/notes.txt", b"not listed")
    items = PathLabels(r"^([^/]+)/", r"^[^/]+/([^/]+)/", None).label(
        list_tensor_files([f"s3://{bucket}/mels"], options)
    )
    assert [(i.key, i.extra["split"], i.extra["class"]) for i in items] == [
        ("train/good/a.pt", "train", "good"),
        ("val/bad/b.pt", "val", "bad"),
    ]
    rows = [i.to_row() for i in items]
    batch = {name: np.array([r[name] for r in rows], dtype=object) for name in rows[0]}
    out = TensorFileDecoder(n_mels=16, frames=22, storage_options=options)(batch)
    assert out["error"][0] == "" and np.array_equal(out["mel"][0, 0], mel.numpy())
    assert out["error"][1].startswith("undecodable: not a torch.save file")

    fs.pipe(f"{bucket}/models/identity.pt", _scripted_identity())
    model = build_model(
        ModelSpec(kind="torchscript", path=f"s3://{bucket}/models/identity.pt"), storage_options=options
    )
    assert torch.equal(model.reconstruct(mel[None, None]), mel[None, None])


def _scripted_identity() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Identity()), buffer)
    return buffer.getvalue()


def test_filter_tool_reads_and_writes_s3(s3_bucket):
    bucket, options, fs = s3_bucket
    lines = ["filename,split,class,group,reconstruction_loss,signal_energy"]
    lines += [f"train/good/p{i}.pt,train,good,p{i % 2},{i},2.0" for i in range(1, 11)]
    lines += ["val/bad/x.pt,val,bad,p9,99.0,2.0"]
    fs.pipe(f"{bucket}/eval/scores.csv", ("\n".join(lines) + "\n").encode())
    endpoint = f"endpoint_url={options['endpoint_url']}"
    assert (
        filter_main(
            [
                f"s3://{bucket}/eval/scores.csv",
                "--storage-option",
                endpoint,
                "--set",
                "signal_energy.mode=none",
                "--output",
                f"s3://{bucket}/filtered",
            ]
        )
        == 0
    )
    assert fs.cat(f"{bucket}/filtered/ignored.txt") == b"val/bad/x.pt\n"
    assert len(fs.cat(f"{bucket}/filtered/kept.txt").split()) == 10
    assert fs.exists(f"{bucket}/filtered/histograms/reconstruction_loss.png")
    assert fs.exists(f"{bucket}/filtered/summary/val.csv")
