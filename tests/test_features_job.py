"""The features job end to end on real recordings (../shared/audio/sonic-pi, folders = labels)
on embedded Ray: splits, labels, error rows, parity, Hugging Face datasets, and a rerun
after songs were added. Two job runs for the whole file (small snippets and features)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from ray_pipelines.audio.decode import AudioFile, InputAudio, load_window
from ray_pipelines.config import validate_config
from ray_pipelines.engine.arrow import table_to_numpy
from ray_pipelines.engine.runner import run_job
from ray_pipelines.engine.sink import WHOLE_READ_ROW_GROUP_BYTES
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob, SeedSnippets
from tests.audio_helpers import copy_shared

SPLITS = ["test", "train", "validate"]
OPTIONS = {
    "snippets_per_song": 2,
    "snippet_seconds": 1.0,
    "max_length": 48,
    "n_mels": 32,
    "seed": 0,
    "batch_size": 8,
    "actors": 1,
}
HELD_BACK = ["bass/bass_woodsy_c.flac", "bass/bass_voxy_hit_c.flac", "loop/loop_amen.flac", "loop/loop_safari.flac"]


def read_rows(output: Path) -> dict[str, np.ndarray]:
    """Every row of an output, with the split taken from the folder it sits in."""
    columns: dict[str, list] = {}
    for path in sorted(output.glob("*/part-*.parquet")):
        table = table_to_numpy(pq.read_table(path))
        table["split"] = np.array([path.parent.name] * len(table["path"]), dtype=object)
        for name, values in table.items():
            columns.setdefault(name, []).append(values)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Run 1 on the library minus a few songs (and a corrupt file); snapshot the output;
    add the held-back songs and a sixth percussion song; run 2 through the CLI."""
    root = tmp_path_factory.mktemp("features")
    library, later = root / "library", root / "later"
    copy_shared(library)
    for relpath in HELD_BACK:
        (later / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(library / relpath, later / relpath)
    (library / "tabla" / "broken.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    (library / "loop.flac").symlink_to("loop.flac")  # at the root: no label, and the listing cannot read it
    output = root / "out"
    config = validate_config(FeaturesConfig, {"input": str(library), "output": str(output), **OPTIONS})
    first = run_job(FeaturesJob(config), progress=False)
    snapshot = root / "out-run1"
    shutil.copytree(output, snapshot)

    for relpath in HELD_BACK:
        shutil.move(later / relpath, library / relpath)
    shutil.copy(library / "percussion" / "perc_bell.flac", library / "percussion" / "perc_bell_copy.flac")
    config_file = root / "features.yaml"
    config_file.write_text(yaml.safe_dump({"input": str(library), "output": str(output), **OPTIONS}))
    from ray_pipelines.jobs.features import main

    assert main(["--config", str(config_file), "--no-progress", "--quiet"]) == 0
    second = json.loads((output / "manifest.json").read_text())
    return {"library": library, "first": first, "run1": snapshot, "output": output, "second": second}


def test_labels_are_sorted_folders_and_small_labels_are_dropped_and_reported(runs):
    run1 = runs["run1"]
    labels = json.loads((run1 / "labels.json").read_text())
    assert labels == ["ambient", "bass", "bass_drum", "drum_kit", "electronic", "loop", "tabla"]
    balance = json.loads((run1 / "balance.json").read_text())
    assert balance["library"]["dropped_labels"] == {"percussion": 5}
    assert runs["first"].extra["dropped labels"] == {"percussion": 5}
    # every label has rows in every split (tests/test_features_library.py: a label without)
    assert balance["without_rows"] == {} and runs["first"].extra["labels without rows"] == "none"
    rows = read_rows(run1)
    assert not any(p.startswith("percussion/") for p in rows["path"])
    assert (run1 / "balance.png").read_bytes()[:4] == b"\x89PNG"
    totals = {e["name"]: e["songs_total"] for e in balance["labels"]}
    assert balance["under_represented"] == [n for n, t in totals.items() if t < balance["songs_per_label_p25"]]
    assert balance["over_represented"] == [n for n, t in totals.items() if t > balance["songs_per_label_p75"]]
    assert sum(balance["totals"]["snippets"].values()) == len(rows["path"])


def test_every_kept_label_is_in_every_split_and_songs_never_straddle(runs):
    run1 = runs["run1"]
    rows = read_rows(run1)
    labels = json.loads((run1 / "labels.json").read_text())
    recorded = json.loads((run1 / "splits.json").read_text())["songs"]
    for index in range(len(labels)):
        assert set(rows["split"][rows["label"] == index]) == set(SPLITS), labels[index]
    split_of_path: dict[str, set[str]] = {}
    for path, split, label in zip(rows["path"], rows["split"], rows["label"]):
        split_of_path.setdefault(path, set()).add(split)
        assert labels[label] == path.split("/")[0] == recorded[path]["label"]
    assert all(len(splits) == 1 for splits in split_of_path.values())
    assert all(recorded[path]["split"] in splits for path, splits in split_of_path.items())


def test_rows_are_snippets_with_ast_features(runs):
    transformers = pytest.importorskip("transformers")
    rows = read_rows(runs["run1"])
    assert rows["input_values"].shape[1:] == (48, 32) and rows["input_values"].dtype == np.float32
    manifest = json.loads((runs["run1"] / "manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == len(rows["path"])
    plan = SeedSnippets(2, 1.0, 16000)  # the default rule: the seed notebook's positions
    library = runs["library"]
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=48)
    checked = 0
    for i in np.linspace(0, len(rows["path"]) - 1, 6).astype(int):
        path, snippet = rows["path"][i], int(rows["snippet"][i])
        with AudioFile(InputAudio(str(library / path))) as audio_file:
            window = plan(path, audio_file.duration)[snippet]
            assert rows["start_seconds"][i] == pytest.approx(window.start)
            audio, valid = load_window(audio_file, window.start, 1.0, 16000)
        expected = extractor(audio[:valid], sampling_rate=16000, return_tensors="np")["input_values"][0]
        assert np.abs(rows["input_values"][i] - expected).max() < 1e-5
        checked += 1
    assert checked == 6
    # Every song gives two snippets, as in the notebook: a short song's second one is its tail.
    per_song = {p: int((rows["path"] == p).sum()) for p in set(rows["path"])}
    assert per_song["loop/loop_amen_full.flac"] == 2 and per_song["bass_drum/bd_808.flac"] == 2
    # Features are noisy floats: uncompressed by default (they barely compress), values PLAIN (what the
    # readers take without a copy), row groups of a few snippets (every one is read each epoch).
    shard = max((runs["run1"] / "train").glob("part-*.parquet"), key=lambda p: pq.read_metadata(p).num_rows)
    metadata = pq.read_metadata(shard)
    column = metadata.row_group(0).column(0)
    assert column.path_in_schema == "input_values.list.element.list.element"
    assert column.compression == "UNCOMPRESSED" and "BYTE_STREAM_SPLIT" not in column.encodings
    table = pq.read_table(shard)
    fit = WHOLE_READ_ROW_GROUP_BYTES // (table.nbytes // table.num_rows)  # 3 of the default 512 KiB snippets
    assert metadata.row_group(0).num_rows == min(fit, table.num_rows) > 1


def test_corrupt_and_too_short_files_become_error_rows(runs):
    errors = [json.loads(line) for line in (runs["run1"] / "errors.jsonl").read_text().splitlines()]
    by_key = {e["key"]: e for e in errors}
    assert by_key["tabla/broken.flac"]["reason"].startswith("undecodable")
    assert by_key["electronic/elec_tick.flac"]["reason"].startswith("too short")
    assert not by_key["tabla/broken.flac"]["retry"]
    # an unreadable input outside any label folder is an error row too, not a silently left-out file
    assert by_key["loop.flac"]["reason"].startswith("symlink loop") and not by_key["loop.flac"]["retry"]
    assert json.loads((runs["run1"] / "balance.json").read_text())["library"]["unlabelled_files"] == 0
    rows = read_rows(runs["run1"])
    assert "tabla/broken.flac" not in set(rows["path"])
    balance = json.loads((runs["run1"] / "balance.json").read_text())
    tabla = next(e for e in balance["labels"] if e["name"] == "tabla")
    assert tabla["failed_songs"] == 1


def test_hugging_face_datasets_loads_it_with_label_names(runs, tmp_path):
    datasets = pytest.importorskip("datasets")
    run1 = runs["run1"]
    labels = json.loads((run1 / "labels.json").read_text())
    files = {split: sorted(str(p) for p in (run1 / split).glob("*.parquet")) for split in SPLITS}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "hf"))
    manifest = json.loads((run1 / "manifest.json").read_text())
    for split in SPLITS:
        ds = loaded[split]
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == labels
        assert len(ds) == manifest["splits"][split]
        first = ds.with_format("numpy")[0]
        assert first["input_values"].shape == (48, 32) and first["input_values"].dtype == np.float32
        assert ds.features["label"].int2str(int(first["label"])) == first["path"].split("/")[0]


def test_rerun_after_adding_songs_keeps_splits_and_only_processes_new_songs(runs):
    run1, output, second = runs["run1"], runs["output"], runs["second"]
    before = json.loads((run1 / "splits.json").read_text())["songs"]
    after = json.loads((output / "splits.json").read_text())["songs"]
    assert all(after[key] == value for key, value in before.items())
    new = sorted(set(after) - set(before))
    assert new == sorted(HELD_BACK + [f"percussion/{p.name}" for p in (runs["library"] / "percussion").iterdir()])
    first_counts = runs["first"].counts
    assert second["counts"]["processed_this_run"] == len(new) == 10
    assert second["counts"]["skipped_already_committed"] == first_counts["listed"]
    # Percussion reached min_per_label: appended after the labels already written.
    labels = json.loads((output / "labels.json").read_text())
    assert labels == ["ambient", "bass", "bass_drum", "drum_kit", "electronic", "loop", "tabla", "percussion"]
    old_rows, rows = read_rows(run1), read_rows(output)
    old = {
        (p, int(s)): (split, int(label))
        for p, s, split, label in zip(old_rows["path"], old_rows["snippet"], old_rows["split"], old_rows["label"])
    }
    now = {
        (p, int(s)): (split, int(label))
        for p, s, split, label in zip(rows["path"], rows["snippet"], rows["split"], rows["label"])
    }
    assert len(now) == len(rows["path"])  # no duplicates
    assert {k: now[k] for k in old} == old  # earlier rows untouched
    assert {p for p, _ in set(now) - set(old)} == set(new)  # only new songs were processed
    assert {now[k][1] for k in now if k[0].startswith("percussion/")} == {7}
    perc = {now[k][0] for k in now if k[0].startswith("percussion/")}
    assert perc == set(SPLITS)


def test_load_dataset_of_the_output_dir_gives_every_split_with_the_full_label_list(runs, tmp_path):
    """After the rerun appended a label, shards written before name fewer labels in their own
    metadata; the dataset card names them all, so every split loads with one ClassLabel."""
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(runs["output"]), cache_dir=str(tmp_path / "hf"))
    labels = json.loads((runs["output"] / "labels.json").read_text())
    assert sorted(loaded) == SPLITS  # validate included, under its own name
    assert all(loaded[s].features["label"].names == labels for s in SPLITS)
    assert sum(len(loaded[s]) for s in SPLITS) == runs["second"]["counts"]["rows_written"]
    first = loaded["validate"].with_format("numpy")[:3]
    assert first["input_values"].shape == (3, 48, 32) and first["input_values"].dtype == np.float32
