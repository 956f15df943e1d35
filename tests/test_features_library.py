"""Library scan (labels, skip_dirs, extensions, min_per_label), the output's memory of labels
and splits, the snippet plan, the balance report and the Parquet typing (no Ray)."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_pipelines.config import ConfigError, validate_config
from ray_pipelines.features.catalog import LABELS_FILE, SPLITS_FILE, plan_library, save_plan
from ray_pipelines.features.library import extend_label_names, in_skipped_dir, label_of, scan_library
from ray_pipelines.features.report import balance_chart, balance_report
from ray_pipelines.features.split import assign_splits
from ray_pipelines.jobs.features import FeaturesConfig, FeaturesJob, SeedSnippets, SpreadSnippets
from ray_pipelines.sources import SourceError, list_inputs
from ray_pipelines.storage import Storage
from tests.audio_helpers import encoded_bytes, tone, write_audio, write_tar

SPLITS = {"train": 0.7, "validate": 0.1, "test": 0.2}


def touch_library(root, layout: dict[str, int], ext: str = "wav") -> None:
    """Tiny real WAVs: ``{"rock/Album": 3}`` -> rock/Album/song0.wav ... song2.wav."""
    for folder, count in layout.items():
        for i in range(count):
            write_audio(root / folder / f"song{i}.{ext}", tone(0.05, 8000, seed=i), 8000)


def scan(root, **kwargs):
    extensions = kwargs.pop("extensions", ["mp3", "flac", "ogg", "wav", "m4a"])
    items = list_inputs(str(root), extensions, include_hidden=kwargs.pop("include_hidden", False))
    return scan_library(
        items,
        skip_dirs=kwargs.pop("skip_dirs", ["__MACOSX", ".*"]),
        min_per_label=kwargs.pop("min_per_label", 6),
        **kwargs,
    )


def test_label_is_the_first_folder_and_skip_dirs_apply_at_any_depth(tmp_path):
    touch_library(
        tmp_path,
        {
            "rock/Album A": 4,
            "rock/CD2/bonus": 3,
            "rock/CD2/.cache": 2,
            "jazz": 6,
            "jazz/__MACOSX": 2,
            ".hidden": 7,
            "thin": 5,
        },
    )
    write_audio(tmp_path / "loose.wav", tone(0.05, 8000), 8000)
    (tmp_path / "jazz" / "cover.jpg").write_bytes(b"not audio")
    (tmp_path / "rock" / "Album A" / "._song0.wav").write_bytes(b"\x00\x05\x16\x07 macOS metadata")
    result = scan(tmp_path, include_hidden=True)  # what skip_dirs sees when hidden files are listed
    assert result.songs_per_label == {"jazz": 6, "rock": 8}  # (the ._ twin a "song": an error row later)
    assert result.dropped == {"thin": 5}
    assert result.unlabelled == ["loose.wav"]
    assert result.skipped == 2 + 2 + 7
    assert {result.labels[i.key] for i in result.items} == {"jazz", "rock"}
    assert all(result.labels[i.key] == i.key.split("/")[0] for i in result.items)
    default = scan(tmp_path)  # hidden names are never listed (sources.is_hidden), the ._ twin with them
    assert (default.songs_per_label, default.skipped) == ({"jazz": 6, "rock": 7}, 0)


def test_extensions_and_min_per_label_options(tmp_path):
    touch_library(tmp_path, {"a": 3, "b": 2})
    touch_library(tmp_path, {"a": 2}, ext="flac")
    assert scan(tmp_path, min_per_label=3).songs_per_label == {"a": 5}
    assert scan(tmp_path, extensions=["flac"], min_per_label=2).songs_per_label == {"a": 2}
    assert scan(tmp_path, min_per_label=2, skip_dirs=[]).dropped == {}
    assert scan(tmp_path, min_per_label=9, always_keep={"b"}).songs_per_label == {"b": 2}


def test_a_library_whose_every_file_is_left_out_says_why_not_that_nothing_matched(tmp_path):
    """Three songs in two thin labels and one loose file: before, 'no inputs matched <folder>'."""
    touch_library(tmp_path / "lib", {"bass": 2, "tabla": 1, "drums/.cache": 1})
    write_audio(tmp_path / "lib" / "loose.wav", tone(0.05, 8000), 8000)
    config = {"input": str(tmp_path / "lib"), "output": str(tmp_path / "out"), "skip_dirs": [".cache"]}
    job = FeaturesJob(FeaturesConfig.model_validate({**config, "include_hidden": True}))
    with pytest.raises(SourceError) as error:
        job.list_inputs()
    assert str(error.value) == (
        "none of the 5 listed files is kept: labels with fewer than min_per_label (6) songs: bass (2), tabla (1); "
        "1 directly under the input folder, in no label folder (e.g. loose.wav; the label is the file's folder); "
        "1 in skip_dirs ['.cache']; set allow_empty: true if an empty output is expected"
    )
    assert not (tmp_path / "out" / LABELS_FILE).exists()  # refused before the plan is recorded
    empty = FeaturesJob(FeaturesConfig.model_validate({**config, "allow_empty": True}))
    assert empty.list_inputs() == [] and Storage(str(tmp_path / "out")).read_json(LABELS_FILE) == []


def test_tar_members_are_labelled_by_their_own_folders(tmp_path):
    members = {
        f"{label}/s{i}.flac": encoded_bytes(tone(0.05, seed=i), "flac")
        for label in ("house", "techno")
        for i in range(3)
    }
    write_tar(tmp_path / "shard-000.tar", members)
    result = scan(tmp_path / "shard-000.tar", min_per_label=3)
    assert result.songs_per_label == {"house": 3, "techno": 3}
    assert all(i.key.startswith("shard-000.tar/") for i in result.items)


def test_a_damaged_shard_is_an_input_to_account_for_not_an_unlabelled_song(tmp_path):
    members = {f"house/s{i}.flac": encoded_bytes(tone(0.05, seed=i), "flac") for i in range(3)}
    write_tar(tmp_path / "shard-000.tar", members)
    (tmp_path / "shard-001.tar").write_bytes(b"not a tar")
    write_audio(tmp_path / "loose.wav", tone(0.05, 8000), 8000)
    items = list_inputs(str(tmp_path), ["flac", "wav"])
    result = scan_library(items, skip_dirs=[], min_per_label=3)
    assert result.songs_per_label == {"house": 3} and result.unlabelled == ["loose.wav"]
    assert [(i.key, i.error) for i in result.unreadable] == [
        ("shard-001.tar", "unreadable tar shard: truncated header")
    ]
    storage = Storage(str(tmp_path / "out"))
    plan = plan_library(items, storage=storage, seed=0, fractions=SPLITS, skip_dirs=[], min_per_label=3)
    planned = {i.key: i for i in plan.items()}  # what the engine decodes or records as an error row
    assert sorted(planned) == [f"shard-000.tar/house/s{i}.flac" for i in range(3)] + ["shard-001.tar"]
    assert planned["shard-001.tar"].error and planned["shard-001.tar"].extra["label"] == -1  # an int, as the others


def test_path_helpers():
    assert label_of("rock/a/b.mp3") == "rock" and label_of("b.mp3") is None and label_of("./rock/b.mp3") == "rock"
    assert in_skipped_dir("rock/.git/x.mp3", [".*"]) and not in_skipped_dir("rock/.x.mp3", [".*"])
    assert extend_label_names([], ["b", "a"]) == ["a", "b"]
    assert extend_label_names(["b", "d"], ["a", "b", "c", "d"]) == ["b", "d", "a", "c"]


def test_plan_is_recorded_and_honoured_by_the_next_run(tmp_path):
    library, out = tmp_path / "lib", Storage(str(tmp_path / "out"))
    touch_library(library, {"rock": 6, "jazz": 6, "pop": 4})
    first = plan_library(
        list_inputs(str(library), ["wav"]), storage=out, seed=1, fractions=SPLITS, skip_dirs=[], min_per_label=6
    )
    save_plan(out, first, 1, SPLITS)
    assert out.read_json(LABELS_FILE) == ["jazz", "rock"]
    recorded = out.read_json(SPLITS_FILE)["songs"]
    assert set(recorded) == {i.key for i in first.scan.items} and first.scan.dropped == {"pop": 4}
    items = first.items()
    assert {i.extra["label"] for i in items if i.key.startswith("rock/")} == {1}
    assert all(i.extra["split"] == recorded[i.key]["split"] and i.extra["path"] == i.key for i in items)

    # Hand-edit the memory: the next run must keep a recorded split even where the hash disagrees.
    key = "rock/song0.wav"
    other = next(s for s in SPLITS if s != recorded[key]["split"])
    recorded[key]["split"] = other
    out.write_json(SPLITS_FILE, {"seed": 1, "fractions": SPLITS, "songs": recorded})
    touch_library(library, {"pop": 6, "rock": 9})  # pop reaches 6, rock grows
    second = plan_library(
        list_inputs(str(library), ["wav"]), storage=out, seed=1, fractions=SPLITS, skip_dirs=[], min_per_label=6
    )
    assert second.names == ["jazz", "rock", "pop"]  # a new label is appended, old indices kept
    assert second.songs[key]["split"] == other
    assert all(second.songs[k] == v for k, v in recorded.items())
    # Memory from another seed is ignored.
    third = plan_library(
        list_inputs(str(library), ["wav"]), storage=out, seed=2, fractions=SPLITS, skip_dirs=[], min_per_label=6
    )
    fresh = assign_splits(third.scan.labels, SPLITS, 2).splits
    assert {k: third.songs[k]["split"] for k in fresh} == fresh


def test_spread_rule_spreads_windows_evenly():
    plan = SpreadSnippets(6, 10.24)
    windows = plan("k", 61.2)
    assert [w.index for w in windows] == list(range(6))
    starts = [w.start for w in windows]
    assert starts[0] == 0 and starts[-1] + 10.24 == pytest.approx(61.2)
    assert np.allclose(np.diff(starts), (61.2 - 10.24) / 5)
    assert [(w.index, w.start) for w in plan("k", 10.0)] == [(0, 0.0)]  # shorter: one padded snippet
    assert [(w.index, w.start) for w in plan("k", 10.24)] == [(0, 0.0)]
    assert SpreadSnippets(1, 2.0)("k", 10.0)[0].start == pytest.approx(4.0)  # one snippet: centred


def test_seed_rule_is_the_notebooks_loop():
    """range(0, len - len % S, len // S) over the 16 kHz song, for every song length."""
    plan = SeedSnippets(6, 10.24, 16000)
    for frames, rate in [(44100 * 61 + 17, 44100), (5 * 22050, 22050), (470_400, 44100), (16000 * 3 + 5, 16000)]:
        length = -(-frames * 16000 // rate)  # librosa.load(sr=16000)'s length
        expected = list(range(0, length - length % 6, length // 6))
        windows = plan("k", frames / rate)
        assert [w.index for w in windows] == list(range(6))
        assert [round(w.start * 16000) for w in windows] == expected


def test_config_validation():
    base = {"input": "lib", "output": "out"}
    config = validate_config(FeaturesConfig, base)
    assert {"mp3", "flac", "ogg", "oga", "opus", "wav", "m4a", "aiff"} <= set(config.extensions)
    assert config.snippet_rule == "seed"
    for bad, words in [
        ({"splits": {"train": 0.7, "test": 0.2}}, "sum to 1"),
        ({"splits": {"tr/ain": 1.0}}, "folder names"),
        ({"min_per_label": 2}, "min_per_label"),
        ({"snippet_seconds": 0.01}, "shorter than one"),
        ({"n_mels": 3}, "n_mels"),
        ({"snippet_rule": "even"}, "snippet_rule"),
    ]:
        with pytest.raises(ConfigError, match=words):
            validate_config(FeaturesConfig, {**base, **bad})


def test_balance_report_percentiles_and_chart():
    names = ["a", "b", "c", "d", "e"]
    sizes = {"a": 2, "b": 10, "c": 10, "d": 10, "e": 30}
    songs, snippets = {}, {}
    for label, n in sizes.items():
        for i in range(n):
            key = f"{label}/{i}"
            songs[key] = {"label": label, "split": ["train", "validate", "test"][i % 3]}
            snippets[key] = 6
    songs["a/broken"] = {"label": "a", "split": "train"}
    report = balance_report(names, songs, snippets, {"a/broken"}, ["train", "validate", "test"])
    assert report["songs_per_label_p25"] == 10 and report["songs_per_label_p75"] == 10
    assert report["under_represented"] == ["a"] and report["over_represented"] == ["e"]
    e = report["labels"][4]
    assert e["songs"] == {"train": 10, "validate": 10, "test": 10} and e["snippets_total"] == 180
    assert report["labels"][0]["failed_songs"] == 1 and report["labels"][0]["songs_total"] == 2
    assert report["totals"]["songs"]["train"] == 1 + 4 * 3 + 10 + 1 - 1
    assert report["without_rows"] == {"a": ["test"]}  # its two songs: one in train, one in validate
    # A label whose only song in a split failed has no rows there, whatever the split plan said; a split
    # of fraction 0 is not expected to hold any.
    snippets["a/1"] = 0
    failed = {"a/broken", "a/1"}
    report = balance_report(names, songs, snippets, failed, ["train", "validate", "test"], ["train", "validate"])
    assert report["without_rows"] == {"a": ["validate"]} and report["labels"][0]["failed_songs"] == 2
    png = balance_chart(report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_sink_types_and_readback(tmp_path):
    from ray_pipelines.engine.arrow import table_to_numpy

    cfg = validate_config(FeaturesConfig, {"input": "lib", "output": str(tmp_path), "max_length": 8, "n_mels": 4})
    job = FeaturesJob(cfg)
    job.plan = None
    Storage(str(tmp_path)).write_json(LABELS_FILE, ["jazz", "rock"])
    sink = job.make_sink("f" * 64)
    values = np.random.default_rng(0).standard_normal((3, 8, 4)).astype(np.float32)
    rows = {
        "key": np.array(["rock/b", "jazz/a", "rock/b"], dtype=object),
        "snippet": np.array([1, 0, 0]),
        "error": np.array(["", "", ""], dtype=object),
        "split": np.array(["train"] * 3, dtype=object),
        "samples_per_input": np.array([2, 1, 2]),
        "etag": np.array(["", "", ""], dtype=object),
        "input_values": values,
        "label": np.array([1, 0, 1]),
        "path": np.array(["rock/b", "jazz/a", "rock/b"], dtype=object),
        "start_seconds": np.array([1.5, 0.0, 0.0]),
    }
    sink.write_rows(rows, rank=0)
    (path,) = list((tmp_path / "train").glob("part-*.parquet"))
    table = pq.read_table(path)
    back = table_to_numpy(table)
    order = [1, 2, 0]  # the sink sorts by (key, snippet)
    assert np.array_equal(back["input_values"], values[order])
    assert back["label"].tolist() == [0, 1, 1] and back["snippet"].tolist() == [0, 0, 1]
    assert str(table.schema.field("label").type) == "int64"
    metadata = table.schema.metadata
    assert json.loads(metadata[b"ray_pipelines.axes"]) == {"input_values": ["frame", "mel"]}
    features = json.loads(metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"_type": "ClassLabel", "names": ["jazz", "rock"]}
    assert features["input_values"] == {"_type": "Array2D", "shape": [8, 4], "dtype": "float32"}
    outer = table.schema.field("input_values").type
    assert pa.types.is_fixed_size_list(outer) and outer.list_size == 8
    assert pa.types.is_fixed_size_list(outer.value_type) and outer.value_type.list_size == 4


def test_example_configs_load():
    from pathlib import Path

    from ray_pipelines.config import load_config

    files = sorted((Path(__file__).resolve().parents[1] / "ray_pipelines" / "configs").glob("features*.yaml"))
    assert len(files) >= 3
    for path in files:
        cfg = load_config(FeaturesConfig, path)
        assert abs(sum(cfg.splits.values()) - 1) < 1e-9 and cfg.min_per_label >= 2


def test_library_on_s3_is_scanned_planned_and_recorded(s3_bucket):
    bucket, options, fs = s3_bucket
    for label, count in (("rock", 3), ("jazz", 3), ("solo", 1)):
        for i in range(count):
            fs.pipe(f"{bucket}/music/{label}/cd{i % 2}/s{i}.flac", encoded_bytes(tone(0.05, seed=i), "flac"))
    fs.pipe(f"{bucket}/music/readme.txt", b"not audio")
    out = Storage(f"s3://{bucket}/out", options)
    items = list_inputs(f"s3://{bucket}/music", ["flac"], options)
    plan = plan_library(items, storage=out, seed=0, fractions=SPLITS, skip_dirs=[], min_per_label=3)
    save_plan(out, plan, 0, SPLITS)
    assert plan.names == ["jazz", "rock"] and plan.scan.dropped == {"solo": 1}
    recorded = Storage(f"s3://{bucket}/out", options).read_json(SPLITS_FILE)["songs"]
    assert set(recorded) == {f"{label}/cd{i % 2}/s{i}.flac" for label in ("rock", "jazz") for i in range(3)}
    for label in ("rock", "jazz"):
        assert {v["split"] for k, v in recorded.items() if v["label"] == label} == set(SPLITS)


def test_a_library_of_one_label_is_warned_of(tmp_path):
    """An input one folder too high (``library/`` holding ``music/<labels>/``) made a one-label dataset, exit 0."""
    import logging

    from tests.conftest import Lines

    for label in ("jazz", "rock"):
        for i in range(3):
            write_audio(tmp_path / "library" / "music" / label / f"s{i}.wav", tone(0.05, 8000, seed=i), 8000)
    logger, said = logging.getLogger("ray_pipelines.jobs.features"), Lines()
    logger.addHandler(said)
    try:
        for input_folder in ("library", "library/music"):
            config = {"input": str(tmp_path / input_folder), "output": str(tmp_path / "out" / input_folder)}
            FeaturesJob(validate_config(FeaturesConfig, {**config, "min_per_label": 3, "splits": SPLITS})).list_inputs()
    finally:
        logger.removeHandler(said)
    assert [line for line in said.lines if "one label" in line] == [
        "features: one label only (music): a file's label is its first folder under the input; give the folder "
        "that holds the label folders"
    ]


def test_labels_without_rows_are_said_in_one_line_of_the_first_few():
    from ray_pipelines.jobs.features import labels_without_rows

    assert labels_without_rows({}) == ""
    assert labels_without_rows({"a": ["train"], "b": ["validate", "test"]}) == "a (train); b (validate, test)"
    many = {f"l{i}": ["test"] for i in range(500)}  # a smoke run's limit over a large library
    assert labels_without_rows(many) == "l0 (test); l1 (test); l2 (test); l3 (test); l4 (test); and 495 more"


def test_shards_in_folders_are_labelled_skipped_and_accounted_for_by_their_own_path(tmp_path):
    """A '#' in a shard's folder gave every member the label after it ("music #2/x.tar#rock/a" -> "2");
    skip_dirs did not see a shard's folders; a damaged shard in a folder, a link member, were songs of a
    label ("2024", "x.tar") that counted towards min_per_label, with no error row of their own."""
    good = {
        f"{label}/s{i}.flac": encoded_bytes(tone(0.05, seed=i), "flac")
        for label in ("house", "techno")
        for i in range(3)
    }
    write_tar(tmp_path / "music #2" / "x.tar", good)
    write_tar(
        tmp_path / "old" / "y.tar", {f"house/o{i}.flac": encoded_bytes(tone(0.05, seed=i), "flac") for i in range(2)}
    )
    (tmp_path / "2024").mkdir()
    for i in range(3):  # three damaged shards in one folder: were a label "2024" of 3 songs
        (tmp_path / "2024" / f"bad{i}.tar").write_bytes(b"not a tar")
    with tarfile.open(tmp_path / "links.tar", "w") as tar:
        for i in range(3):  # link members in a label folder: were songs of "house"
            link = tarfile.TarInfo(f"house/l{i}.flac")
            link.type, link.linkname = tarfile.SYMTYPE, "elsewhere.flac"
            tar.addfile(link)
    items = list_inputs(str(tmp_path), ["flac"])
    result = scan_library(items, skip_dirs=["old"], min_per_label=3)
    assert result.songs_per_label == {"house": 3, "techno": 3} and result.dropped == {}
    assert {result.labels[i.key] for i in result.items if i.key.startswith("music #2/x.tar/house/")} == {"house"}
    assert result.skipped == 2  # old/y.tar's members
    assert sorted(i.key for i in result.unreadable) == [f"2024/bad{i}.tar" for i in range(3)] + [
        f"links.tar/house/l{i}.flac" for i in range(3)
    ]
    assert all(i.error for i in result.unreadable)
    plan = plan_library(
        items, storage=Storage(str(tmp_path / "out")), seed=0, fractions=SPLITS, skip_dirs=["old"], min_per_label=3
    )
    planned = {i.key: i.extra["label"] for i in plan.items()}
    assert [planned[f"2024/bad{i}.tar"] for i in range(3)] == [-1, -1, -1] and plan.names == ["house", "techno"]
    assert all(key in plan.songs for key in result.labels) and not any(i.key in plan.songs for i in result.unreadable)


def test_an_output_whose_songs_the_new_labelling_puts_under_another_label_is_refused(tmp_path):
    """Its committed rows carry the old label; resumed, new members of the same shard got the new one and
    splits.json was rewritten under it: one song's rows under two labels, without a word."""
    members = {f"house/s{i}.flac": encoded_bytes(tone(0.05, seed=i), "flac") for i in range(3)}
    write_tar(tmp_path / "in" / "music #2" / "x.tar", members)
    out = tmp_path / "out"
    out.mkdir()
    old = {f"music #2/x.tar/house/s{i}.flac": {"label": "2", "split": "train"} for i in range(3)}
    (out / LABELS_FILE).write_text(json.dumps(["2"]))
    (out / SPLITS_FILE).write_text(json.dumps({"seed": 0, "fractions": SPLITS, "songs": old}))
    items = list_inputs(str(tmp_path / "in"), ["flac"])
    with pytest.raises(ConfigError, match=r"3 songs this output recorded under one label now fall under another"):
        plan_library(items, storage=Storage(str(out)), seed=0, fractions=SPLITS, skip_dirs=[], min_per_label=3)
    fresh = plan_library(
        items, storage=Storage(str(tmp_path / "new")), seed=0, fractions=SPLITS, skip_dirs=[], min_per_label=3
    )
    assert fresh.names == ["house"]


def test_recordings_copied_from_a_read_only_collection_are_writable(tmp_path, monkeypatch):
    """copytree kept ../shared's modes: read-only folders and files in demo-audio/ and the tests' copies,
    which `make clean` and the tests that change a copied library could not change without root."""
    import stat

    from ray_pipelines.jobs.demo import make_sample_audio

    source = tmp_path / "shared" / "rock"
    write_audio(source / "a.wav", tone(0.05, 8000), 8000)
    (source.parent / "SOURCES.md").write_text("credits")
    for path in (source / "a.wav", source.parent / "SOURCES.md", source, source.parent):
        path.chmod(0o555 if path.is_dir() else 0o444)
    monkeypatch.setenv("RAY_PIPELINES_DEMO_AUDIO", str(source.parent))
    dest = make_sample_audio(tmp_path / "demo-audio")
    copied = [dest, dest / "rock", dest / "rock" / "a.wav"]
    assert [p.relative_to(dest).as_posix() for p in sorted(dest.rglob("*"))] == ["rock", "rock/a.wav"]
    assert all(p.stat().st_mode & stat.S_IWUSR for p in copied)


def test_labels_that_are_one_name_in_two_unicode_forms_are_found():
    from ray_pipelines.features.library import lookalike_labels

    composed, decomposed = "\u00c9lectro", "E\u0301lectro"  # as Linux writes it, as a macOS copy may
    assert composed != decomposed
    assert lookalike_labels([composed, "rock", decomposed, "jazz"]) == [sorted([composed, decomposed])]
    assert lookalike_labels(["rock", "Rock", "jazz"]) == []  # case is a name's own


def test_appending_a_label_warns_how_to_load_the_files_written_before(tmp_path):
    """Files written before name fewer labels in their own metadata: `load_dataset("parquet", data_files=...)`
    without features= failed on them ("Class label 4 greater than configured num_classes 4"), unsaid."""
    import logging

    from tests.conftest import Lines

    touch_library(tmp_path / "lib", {"jazz": 3, "rock": 3})
    config = {"input": str(tmp_path / "lib"), "output": str(tmp_path / "out"), "min_per_label": 3, "splits": SPLITS}
    FeaturesJob(validate_config(FeaturesConfig, config)).list_inputs()
    touch_library(tmp_path / "lib", {"pop": 3})
    logger, said = logging.getLogger("ray_pipelines.jobs.features"), Lines()
    logger.addHandler(said)
    try:
        FeaturesJob(validate_config(FeaturesConfig, config)).list_inputs()
    finally:
        logger.removeHandler(said)
    out = str(tmp_path / "out")
    assert [line for line in said.lines if "appended" in line] == [
        "features: new labels ['pop'] are appended after the ones already written; files written earlier name "
        'fewer labels in their own datasets metadata, so load_dataset("parquet", data_files=...) without '
        'features= can fail on them ("Class label ... greater than configured num_classes"): load with '
        f"load_dataset({out!r}) (its dataset card) or pass features=datasets.DatasetInfo.from_directory({out!r})"
        ".features (see docs/features.md)"
    ]


def test_how_to_load_an_output_on_object_storage_leaves_out_the_card():
    """load_dataset takes a dataset card only from a local folder; the sentence read "load with pass
    features=..." for a URL output, and named storage options for a local one given as file://."""
    from ray_pipelines.jobs.features import how_to_load

    assert how_to_load("s3://bucket/genre") == (
        "pass features=datasets.DatasetInfo.from_directory('s3://bucket/genre', storage_options=...).features"
    )
    assert how_to_load("file:///data/genre") == (
        "load with load_dataset('/data/genre') (its dataset card) or pass "
        "features=datasets.DatasetInfo.from_directory('/data/genre').features"
    )
