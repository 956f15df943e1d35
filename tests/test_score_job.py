"""The score job end to end on a {split}/{class}/*.pt folder, then the filter tool on its scores.

One Ray job run (plus a resume that finds nothing to do).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import ray_pipelines.jobs.score as score_job
from ray_pipelines.config import load_config
from ray_pipelines.engine.runner import run_job
from ray_pipelines.engine.summary import format_summary
from ray_pipelines.scoring.filters import FilterRule, compute_bounds
from ray_pipelines.scoring.summary import read_summary_csv
from ray_pipelines.stages.score import ScoreStage

N_MELS, FRAMES = 16, 22
MODEL = {"kind": "reference", "patch": [8, 8], "dim": 16, "depth": 1, "heads": 2, "seed": 5}


def write_pt_folder(root: Path) -> dict[str, np.ndarray]:
    """{split}/{class}/patient<p>_<i>.pt plus three broken files; returns the good tensors by key."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for split, patients in (("train", (1, 2, 3)), ("val", (4,))):
        for cls, scale in (("good", 1.0), ("bad", 3.0)):
            for patient in patients:
                for i in range(2):
                    key = f"{split}/{cls}/patient{patient}_{i}.pt"
                    mel = torch.randn(1, N_MELS, FRAMES, generator=generator) * scale
                    if key == "train/bad/patient3_1.pt":
                        mel = mel * 10  # an outlier the median rule catches
                    (root / key).parent.mkdir(parents=True, exist_ok=True)
                    torch.save(mel if i == 0 else mel[0], root / key)  # both layouts
                    tensors[key] = mel.numpy()
    (root / "train/good/garbage.pt").write_bytes(b"this is not a torch file")
    torch.save(torch.zeros(N_MELS, FRAMES + 1), root / "val/good/wrong_shape.pt")
    torch.save({"mel": torch.zeros(N_MELS, FRAMES)}, root / "val/bad/a_dict.pt")
    return tensors


@pytest.fixture(scope="module")
def scored(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("score_pt")
    tensors = write_pt_folder(root / "mels")
    config_path = root / "score.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "input": str(root / "mels"),
                "output": str(root / "out"),
                "source": "pt",
                "n_mels": N_MELS,
                "frames": FRAMES,
                "group_pattern": r"/(patient\d+)_",
                "model": MODEL,
                "batch_size": 4,
                "actors": 1,
                "filter": {"reconstruction_loss": {"mode": "median"}, "signal_energy": {"mode": "median"}},
            }
        )
    )
    config = load_config(score_job.ScoreConfig, config_path)
    result = run_job(score_job.JOB(config), progress=False)
    return root, tensors, result, config


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_scores_of_a_pt_folder(scored):
    root, tensors, result, config = scored
    out = root / "out"
    assert result.counts["listed"] == len(tensors) + 3
    assert result.counts["rows_written"] == len(tensors) and result.counts["errors"] == 3
    errors = {e["key"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert errors["train/good/garbage.pt"].startswith("undecodable: not a torch.save file")
    assert errors["val/good/wrong_shape.pt"].startswith("wrong shape: expected [1, 16, 22]")
    assert errors["val/bad/a_dict.pt"] == "not a tensor: the file holds a dict"

    rows = read_csv(out / "scores.csv")
    assert list(rows[0]) == ["filename", "split", "class", "group", "reconstruction_loss", "signal_energy", "item"]
    assert sorted(r["filename"] for r in rows) == sorted(tensors)
    first = next(r for r in rows if r["filename"] == "val/bad/patient4_1.pt")
    assert (first["split"], first["class"], first["group"], first["item"]) == ("val", "bad", "patient4", "0")
    # energies are mean(mel^2) of the saved tensors; losses match the stage run here on the same model
    keys = sorted(tensors)
    energy = {r["filename"]: float(r["signal_energy"]) for r in rows}
    loss = {r["filename"]: float(r["reconstruction_loss"]) for r in rows}
    for key in keys:
        assert energy[key] == pytest.approx(float(np.square(tensors[key].astype(np.float64)).mean()), rel=1e-12)
    local = ScoreStage(**score_job.JOB(config).stage_kwargs())(
        {
            "key": np.array(keys, dtype=object),
            "item": np.zeros(len(keys), np.int64),
            "error": np.array([""] * len(keys), dtype=object),
            "mel": np.stack([tensors[k] for k in keys]),
        }
    )
    assert [loss[k] for k in keys] == local["reconstruction_loss"].tolist()  # same bytes as in the job

    # the Parquet scores hold the same numbers, one folder per split
    table = pq.read_table(sorted((out / "train").glob("part-*.parquet"))[0])
    assert table.column_names == [
        "key",
        "item",
        "split",
        "class",
        "group",
        "reconstruction_loss",
        "signal_energy",
        "source",
    ]
    assert all(
        loss[k] == v for k, v in zip(table.column("key").to_pylist(), table.column("reconstruction_loss").to_pylist())
    )


def test_summaries_filters_and_groups_of_the_job(scored):
    root, tensors, result, _ = scored
    out = root / "out"
    rows = read_csv(out / "scores.csv")
    train_loss = np.array([float(r["reconstruction_loss"]) for r in rows if r["split"] == "train"])
    summary = read_summary_csv((out / "summary/train.csv").read_text())
    assert summary["mean"] == pytest.approx(train_loss.mean(), rel=1e-12)
    assert sum(summary["histogram_counts"]) == len(train_loss) == 12

    report = json.loads((out / "filter.json").read_text())
    expected = compute_bounds(FilterRule(mode="median"), train_loss)
    assert report["bounds"]["reconstruction_loss"]["high"] == pytest.approx(expected.high, rel=1e-12)
    kept = (out / "kept.txt").read_text().split()
    ignored = (out / "ignored.txt").read_text().split()
    assert "train/bad/patient3_1.pt" in ignored  # the x10 outlier
    assert {"train/good/garbage.pt", "val/good/wrong_shape.pt", "val/bad/a_dict.pt"} <= set(ignored)
    assert sorted(kept + ignored) == sorted(
        [*tensors, "train/good/garbage.pt", "val/good/wrong_shape.pt", "val/bad/a_dict.pt"]
    )
    # the job's summary line says the same
    shown = f"{len(kept)} inputs ({len(ignored)} ignored, 3 of them errors): kept.txt"
    assert result.extra["kept"] == shown
    assert ["kept", *shown.split()] in [line.split() for line in format_summary("score", result, "items").splitlines()]
    groups = {(g["split"], g["group"]): g for g in read_csv(out / "groups.csv")}
    assert len(groups) == 4
    assert groups["train", "patient3"]["kept_items"] == str(
        4 - sum(k.startswith("train/") and "patient3" in k for k in ignored)
    )
    assert (out / "histograms/signal_energy.png").read_bytes()[:4] == b"\x89PNG"


def test_filter_tool_reruns_filters_from_stored_scores(scored, tmp_path):
    root, tensors, _, _ = scored
    from ray_pipelines.jobs.filter import main as filter_main

    out = root / "out"
    parquet_before = {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")}
    assert (
        filter_main(
            [
                str(out),
                "--config",
                str(root / "score.yaml"),
                "--set",
                "reconstruction_loss.mode=hardcode",
                "--set",
                "reconstruction_loss.bounds=[0.0, 2.0]",
                "--set",
                "signal_energy.mode=none",
                "--output",
                str(tmp_path / "refiltered"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "refiltered/filter.json").read_text())
    assert (
        report["bounds"]["reconstruction_loss"]["high"] == 2.0 and report["bounds"]["signal_energy"]["mode"] == "none"
    )
    losses = {r["filename"]: float(r["reconstruction_loss"]) for r in read_csv(out / "scores.csv")}
    kept = (tmp_path / "refiltered/kept.txt").read_text().split()
    assert kept == sorted(k for k, v in losses.items() if 0.0 <= v <= 2.0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("part-*.parquet")} == parquet_before

    # the same from the scores CSV alone (as an evaluation script wrote it); written beside the CSV
    csv_copy = tmp_path / "csv" / "scores.csv"
    csv_copy.parent.mkdir()
    csv_copy.write_text((out / "scores.csv").read_text())
    assert (
        filter_main(
            [
                str(csv_copy),
                "--set",
                "reconstruction_loss.mode=hardcode",
                "--set",
                "reconstruction_loss.bounds=[0.0, 2.0]",
                "--set",
                "signal_energy.mode=none",
            ]
        )
        == 0
    )
    assert (tmp_path / "csv/kept.txt").read_text().split() == kept
    assert filter_main([str(tmp_path / "nowhere")]) == 1
    assert filter_main([str(out), "--set", "reconstruction_loss.mode=bogus"]) == 2


def test_filter_tool_takes_a_packaged_config_by_name_and_refuses_another_jobs_output(scored, tmp_path, capsys):
    root, _, _, _ = scored
    from ray_pipelines.jobs.filter import main as filter_main

    out = root / "out"
    assert filter_main([str(out), "--config", "score-filter", "--output", str(tmp_path / "packaged")]) == 0
    report = json.loads((tmp_path / "packaged/filter.json").read_text())
    assert report["bounds"]["reconstruction_loss"]["mode"] == "mean"  # score-filter.yaml's rule, not the default
    assert report["bounds"]["reconstruction_loss"]["high"] <= 7.0  # its hard_high
    other = tmp_path / "teacher-output"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"job": "teacher", "files": []}))
    capsys.readouterr()
    assert filter_main([str(other)]) == 1
    assert f"{other} is the teacher job's output, not a score job's" in capsys.readouterr().err
    assert not (other / "filter.json").exists()


def test_rerun_with_another_filter_recomputes_nothing(scored):
    root, _, _, config = scored
    changed = config.model_copy(
        update={
            "filter": config.filter.model_copy(update={"signal_energy": FilterRule(mode="hardcode", bounds=(0.0, 0.5))})
        }
    )
    result = run_job(score_job.JOB(changed), progress=False)
    assert result.run_rows == 0 and result.counts["skipped_already_committed"] == result.counts["listed"]
    report = json.loads((root / "out/filter.json").read_text())
    assert report["bounds"]["signal_energy"]["high"] == 0.5
    energies = [float(r["signal_energy"]) for r in read_csv(root / "out/scores.csv")]
    assert report["counts"]["train"]["kept"] + report["counts"]["val"]["kept"] == sum(e <= 0.5 for e in energies)


def test_score_job_on_audio_files_through_the_cli(tmp_path, ray_local, capsys):
    """Audio inputs: decoded by the engine, log-mel in the stage; config file plus --set, via main()."""
    from ray_pipelines.engine.decode import WindowDecoder
    from tests.audio_helpers import tone, write_audio

    audio = tmp_path / "audio"
    write_audio(audio / "train/good/patient1_a.flac", tone(0.7, freq=440.0, seed=1))
    write_audio(audio / "train/bad/patient1_b.wav", tone(0.7, freq=880.0, amplitude=0.05, seed=2))
    write_audio(audio / "train/good/patient2_silent.wav", np.zeros(30000, dtype=np.float32))
    write_audio(audio / "val/good/patient3_short.wav", tone(0.01, seed=3))  # below min_duration
    write_audio(audio / "loose.wav", tone(0.7, seed=4))  # no {split}/ folder
    config = {
        "input": str(audio),
        "output": str(tmp_path / "out"),
        "duration": 0.5,
        "n_mels": 16,
        "n_fft": 512,
        "hop_length": 256,
        "min_duration": 0.1,
        "group_pattern": r"/(patient\d+)_",
        "normalize": {"mean": -40.0, "std": 20.0},
        "actors": 1,
        "batch_size": 4,
        "scorers": ["reconstruction"],
        "model": {"patch": [8, 8], "dim": 16, "depth": 1, "heads": 2},
    }
    (tmp_path / "score.yaml").write_text(yaml.safe_dump(config))
    assert (
        score_job.main(
            [
                "--config",
                str(tmp_path / "score.yaml"),
                "--no-progress",
                "--quiet",
                "--set",
                "filter.signal_energy.mode=hardcode",
                "--set",
                "filter.signal_energy.bounds=[0.0, 5.0]",
            ]
        )
        == 0
    )
    assert "items in output" in capsys.readouterr().out

    out = tmp_path / "out"
    errors = {e["key"]: e["reason"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}
    assert errors["val/good/patient3_short.wav"].startswith("too short")
    assert errors["loose.wav"].startswith("no split: key does not match split_pattern")
    rows = {r["filename"]: r for r in read_csv(out / "scores.csv")}
    assert sorted(rows) == ["train/bad/patient1_b.wav", "train/good/patient1_a.flac", "train/good/patient2_silent.wav"]
    assert (rows["train/good/patient1_a.flac"]["class"], rows["train/good/patient1_a.flac"]["group"]) == (
        "good",
        "patient1",
    )
    # the silent clip sits at the -100 dB floor: normalised to -3 everywhere, energy 9 -> above the cut
    assert float(rows["train/good/patient2_silent.wav"]["signal_energy"]) == pytest.approx(9.0)
    assert (out / "ignored.txt").read_text().split() == [
        "loose.wav",
        "train/good/patient2_silent.wav",
        "val/good/patient3_short.wav",
    ]

    # the scores equal the stage run here on the engine's own decoding of the same files
    job = score_job.JOB(load_config(score_job.ScoreConfig, tmp_path / "score.yaml"))
    decoder: WindowDecoder = job.decoder()
    inputs = {i.key: i.to_row() for i in job.list_inputs()}
    keys = sorted(rows)
    decoded = [decoder.decode_input(inputs[k])[0] for k in keys]
    local = ScoreStage(**job.stage_kwargs())(
        {
            "key": np.array(keys, dtype=object),
            "item": np.zeros(len(keys), np.int64),
            "error": np.array([""] * len(keys), dtype=object),
            "audio": np.stack([d["audio"] for d in decoded]),
        }
    )
    assert [float(rows[k]["reconstruction_loss"]) for k in keys] == local["reconstruction_loss"].tolist()
    assert [float(rows[k]["signal_energy"]) for k in keys] == local["signal_energy"].tolist()
