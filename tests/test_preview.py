"""``ray-pipelines preview``: a PNG of any job's output and layout (no Ray): images of 2-D/3-D
tensors (augment views in pairs), lines of 1-D tensors, score histograms, the encode job's
stable-audio-tools layout, and outputs written before the tensor format changed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_pipelines.encoders.sat_sink import SatSink, write_filelist
from ray_pipelines.engine.sink import ShardSink
from ray_pipelines.jobs import preview
from ray_pipelines.storage import Storage
from tests.conftest import free_port

PNG = b"\x89PNG\r\n\x1a\n"


def bookkeeping(keys: list[str], index_column: str, split: str) -> dict[str, np.ndarray]:
    n = len(keys)
    return {
        "key": np.array(keys, dtype=object),
        index_column: np.arange(n) % 2,
        "error": np.array([""] * n, dtype=object),
        "split": np.array([split] * n, dtype=object),
        "samples_per_input": np.full(n, 2),
        "etag": np.array([""] * n, dtype=object),
    }


def write(tmp_path, columns: list[str], index_column: str, data: dict[str, np.ndarray], split: str = "train", **kw):
    sink = ShardSink(
        output=str(tmp_path),
        storage_options={},
        fingerprint="f" * 64,
        index_column=index_column,
        output_columns=columns,
        **kw,
    )
    keys = list(data.pop("key"))
    sink.write_rows({**bookkeeping(keys, index_column, split), **data}, rank=0)
    return tmp_path


@pytest.fixture
def features_output(tmp_path):
    """A features-shaped output: input_values [frames=40, mels=16], labels named."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        keys = [f"{split}/song{i // 2}.mp3" for i in range(6)]
        values = rng.standard_normal((6, 40, 16)).astype(np.float32)
        values[:, :, :4] += 5.0  # a bright band in the lowest mel bins
        write(
            tmp_path,
            ["input_values", "label", "path", "snippet", "start_seconds"],
            "snippet",
            {
                "key": keys,
                "input_values": values,
                "label": np.arange(6) % 2,
                "path": np.array(keys, dtype=object),
                "start_seconds": np.zeros(6),
            },
            split=split,
            schema_metadata={"ray_pipelines.axes": json.dumps({"input_values": ["frame", "mel"]})},
            class_labels={"label": ["jazz", "rock"]},
        )
    return tmp_path


def test_preview_of_a_features_output(features_output, tmp_path):
    out = tmp_path / "grid.png"
    assert preview.main([str(features_output), "--n", "4", "--split", "train", "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == PNG and len(data) > 20_000


def test_rows_titles_and_orientation(features_output):
    storage = Storage(str(features_output))
    files = preview.data_files(storage, "train")
    picked = preview.read_rows(storage, files, ["input_values"], 5, shuffle=False, seed=0)
    rows, schema = picked.values, picked.schemas[0]
    assert rows["input_values"].shape == (5, 40, 16) and picked.splits == ["train"] * 5
    assert preview.label_names(storage, picked.schemas) == ["jazz", "rock"]
    assert preview.title_of(rows, 1, ["jazz", "rock"]) == "train/song0.mp3\nsnippet 1\nlabel rock"
    image = preview.as_image(rows["input_values"][0], preview.column_axes(schema, "input_values"), False, 0)
    assert image.shape == (16, 40)  # frequency up, time across
    assert image[:4].mean() > image[4:].mean() + 3
    sample = preview.read_rows(storage, files, ["input_values"], 3, shuffle=True, seed=1)
    assert len(sample.values["path"]) == 3


def test_augment_views_come_in_pairs(tmp_path):
    rng = np.random.default_rng(1)
    views = {name: rng.standard_normal((3, 1, 24, 50)).astype(np.float32) for name in ("view1", "view2")}
    write(tmp_path, ["key", "version", "view1", "view2"], "version", {"key": [f"c{i}.flac" for i in range(3)], **views})
    files = preview.data_files(Storage(str(tmp_path)), None)  # no manifest.json: found on disk
    assert [file.rows for file in files] == [3]
    rows = preview.read_rows(Storage(str(tmp_path)), files, ["view1", "view2"], 3, False, 0)
    panels = preview.tensor_panels(rows, ["view1", "view2"], False, None)
    assert [p.title.splitlines()[-1] for p in panels] == ["view1", "view2"] * 3
    assert np.array_equal(panels[1].data, views["view2"][0, 0]) and panels[0].kind == "image"
    png, shown = preview.preview(str(tmp_path), n=6)
    assert png[:8] == PNG and shown == 3
    _, shown = preview.preview(str(tmp_path), column="view2", n=2)  # one column asked for: no pairs
    assert shown == 2
    with pytest.raises(SystemExit, match="not a 1-D, 2-D or 3-D tensor"):
        preview.preview(str(tmp_path), column="key")
    with pytest.raises(
        SystemExit, match=r"^--channel 1: the tensor has 1 channel \(0\)$"
    ):  # not channel 0 drawn instead
        preview.preview(str(tmp_path), channel=1)


def test_one_dimensional_tensors_are_lines_and_scores_are_histograms(tmp_path):
    rng = np.random.default_rng(2)
    teacher = write(
        tmp_path / "teacher",
        ["key", "window", "x", "pesto_f0"],
        "window",
        {"key": ["a", "b"], "x": rng.standard_normal((2, 800)).astype(np.float32), "pesto_f0": np.ones((2, 9))},
    )
    storage = Storage(str(teacher))
    rows = preview.read_rows(storage, preview.data_files(storage, None), ["x"], 2, False, 0)
    panels = preview.tensor_panels(rows, ["x"], False, None)
    assert [p.kind for p in panels] == ["line", "line"] and panels[0].data.shape == (800,)
    assert preview.preview(str(teacher), n=2)[1] == 2
    scores = write(
        tmp_path / "score",
        ["key", "item", "reconstruction_loss", "signal_energy", "source"],
        "item",
        {
            "key": [f"k{i}" for i in range(40)],
            "reconstruction_loss": rng.random(40),
            "signal_energy": rng.random(40),
            "source": np.array(["s"] * 40, dtype=object),
        },
    )
    png, shown = preview.preview(str(scores))
    assert png[:8] == PNG and shown == 40
    with pytest.raises(SystemExit, match=r"^column 'signal_energy': this output holds no tensor columns; leave out"):
        preview.preview(str(scores), column="signal_energy")


def test_stable_audio_tools_layout(tmp_path):
    rng = np.random.default_rng(3)
    sink = SatSink(
        output=str(tmp_path),
        storage_options={},
        fingerprint="e" * 64,
        index_column="window",
        output_columns=["key", "window", "latents", "padding_mask"],
    )
    data = {
        **bookkeeping(["a.wav", "b.wav"], "window", ""),
        "latents": rng.standard_normal((2, 4, 30)).astype(np.float32),
        "padding_mask": np.ones((2, 30), dtype=np.uint8),
    }
    record = sink.write_rows(data, rank=0)
    assert record["rows"] == 2 and not list(tmp_path.rglob("*.parquet"))
    parts = [json.loads(p.read_text()) for p in (tmp_path / "_manifests").glob("*.json")]
    write_filelist(Storage(str(tmp_path)), [f for part in parts for f in part["files"]])
    png, shown = preview.preview(str(tmp_path), n=4)
    assert png[:8] == PNG and shown == 2
    rows = preview.read_sat_samples(Storage(str(tmp_path)), 2, False, 0)
    assert rows["latents"][0].shape == (4, 30) and sorted(rows["key"]) == ["a.wav", "b.wav"]
    # a column it does not have is the argument's fault (exit 2; it was "no Parquet files", exit 1)
    with pytest.raises(preview.Refused, match=r"^column 'x': a stable-audio-tools layout output holds latents only$"):
        preview.preview(str(tmp_path), column="x")


def test_outputs_written_before_the_format_change_still_preview(tmp_path):
    """Output format 1 stored tensors as arrow.fixed_shape_tensor: still read as [n, *shape]."""
    views = np.random.default_rng(4).standard_normal((2, 1, 8, 12)).astype(np.float32)
    (tmp_path / "train").mkdir()
    table = pa.table(
        {"key": ["a", "b"], "version": [0, 1], "view1": pa.FixedShapeTensorArray.from_numpy_ndarray(views)}
    )
    pq.write_table(table, tmp_path / "train" / "part-0.parquet")
    storage = Storage(str(tmp_path))
    rows = preview.read_rows(storage, preview.data_files(storage, None), ["view1"], 2, False, 0)
    assert np.array_equal(rows.values["view1"], views)
    assert preview.preview(str(tmp_path))[1] == 2


def test_a_missing_output_and_a_folder_without_parquet_are_told_apart(tmp_path):
    with pytest.raises(SystemExit, match=r"nope does not exist$"):
        preview.preview(str(tmp_path / "nope"))
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.flac").write_bytes(b"fLaC")
    with pytest.raises(SystemExit, match=r"^no Parquet files in .*audio$"):
        preview.preview(str(tmp_path / "audio"))
    with pytest.raises(SystemExit, match=r"^no Parquet files in .*audio for split 'val'$"):
        preview.preview(str(tmp_path / "audio"), split="val")


def test_a_split_the_output_does_not_have_is_named_with_the_splits_it_has(tmp_path):
    from bench.readers import write_output  # commits as a job does: manifest.json names the splits

    rows = {
        "key": np.array([f"k{i}" for i in range(4)], dtype=object),
        "index": np.zeros(4, dtype=np.int64),
        "x": np.ones((4, 8), dtype=np.float32),
        "split": np.array(["train", "train", "val", "val"], dtype=object),
    }
    write_output(tmp_path / "out", "rows", rows, index_column="index", output_columns=["key", "index", "x"])
    with pytest.raises(SystemExit, match=r"^no split 'test' in .*out \(splits: train, val\)$"):
        preview.preview(str(tmp_path / "out"), split="test")
    assert preview.preview(str(tmp_path / "out"), split="val")[1] == 2


def test_a_committed_output_without_rows_says_its_inputs_were_error_rows(tmp_path):
    manifest = {"job": "augment", "files": [], "counts": {"listed": 14, "errors": 14}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as said:
        preview.preview(str(tmp_path))
    assert (
        str(said.value)
        == f"no rows in {tmp_path}: of its 14 inputs, 14 are error rows (errors.jsonl) and none gave rows"
    )


def test_a_folder_of_outputs_is_told_to_pick_one_and_an_output_being_written_shows_its_data(tmp_path):
    """``preview demo-output`` read every job's Parquet files as one table (pyarrow: "Schema at index 1 was
    different"); an output being written (no manifest.json yet) showed the engine's index among its rows."""
    from bench.readers import write_output

    rows = {
        "key": np.array(["k0", "k1"], dtype=object),
        "index": np.zeros(2, dtype=np.int64),
        "x": np.ones((2, 8), dtype=np.float32),
        "split": np.array(["train", "train"], dtype=object),
    }
    for name in ("augment", "score"):
        write_output(tmp_path / "outputs" / name, "rows", dict(rows), index_column="index", output_columns=["key", "x"])
    with pytest.raises(SystemExit) as said:
        preview.preview(str(tmp_path / "outputs"))
    assert (
        str(said.value)
        == f"{tmp_path / 'outputs'} is not a job's output but holds 2: augment, score: preview one of them"
    )

    being_written = write(
        tmp_path / "running", ["x"], "index", {"key": ["a", "b", "c"], "x": np.ones((3, 4), np.float32)}
    )
    (being_written / "_job.json").write_text("{}")  # claimed by a run that has not committed
    (being_written / "_manifests").mkdir(exist_ok=True)
    pq.write_table(pa.table({"key": ["a"], "etag": [""]}), being_written / "_manifests" / "index.parquet")
    assert preview.preview(str(being_written), n=6)[1] == 3


def test_the_tools_exit_codes_tell_a_bad_argument_from_nothing_to_show(features_output, tmp_path, capsys):
    """2 for an argument the output does not fit (a scheduler's config to mend), 1 for an output with
    nothing to show; one line each (both exited 1, the line without the tool's name)."""
    assert preview.main([str(features_output), "--n", "0", "--out", str(tmp_path / "a.png")]) == 2
    assert capsys.readouterr().err == "ray-pipelines preview: --n must be at least 1\n"
    assert preview.main([str(features_output), "--split", "val", "--out", str(tmp_path / "a.png")]) == 2
    assert (
        capsys.readouterr().err == f"ray-pipelines preview: no split 'val' in {features_output} (splits: train, test)\n"
    )
    assert preview.main([str(tmp_path / "nope"), "--out", str(tmp_path / "a.png")]) == 1
    assert capsys.readouterr().err == f"ray-pipelines preview: {tmp_path / 'nope'} does not exist\n"
    assert not (tmp_path / "a.png").exists()


def test_a_store_that_does_not_answer_and_an_unwritable_out_are_one_line_each(features_output, tmp_path, capsys):
    unreachable = [f"endpoint_url=http://127.0.0.1:{free_port()}", "config_kwargs.retries.max_attempts=1"]
    options = [arg for option in unreachable for arg in ("--storage-option", option)]
    assert preview.main(["s3://bucket/out", *options]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ray-pipelines preview: cannot read s3://bucket/out: EndpointConnectionError: ")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    missing = tmp_path / "no-such-folder" / "grid.png"
    assert preview.main([str(features_output), "--out", str(missing)]) == 1
    err = capsys.readouterr().err
    reason = f"FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
    assert err == f"ray-pipelines preview: cannot write {missing}: {reason}\n"
    # a URL no installed filesystem serves, or one that cannot be written: refused first (were tracebacks)
    assert preview.main(["gs://bucket/out"]) == 2
    assert capsys.readouterr().err == (
        "ray-pipelines preview: gs://bucket/out: gs:// needs a package that is not installed: "
        "Please install gcsfs to access Google Storage\n"
    )
    assert preview.main([str(features_output), "--out", "https://host/grid.png"]) == 2
    assert "https:// is read-only here" in capsys.readouterr().err
    # a password in the URL: refused as the jobs refuse it, and not shown (it was echoed in every error line),
    # an "@" in it too (the part after it was shown)
    for url in ("https://user:secret@host/out", "https://user:se@cret@host/out"):
        assert preview.main([url]) == 2
        err = capsys.readouterr().err
        assert err == (
            "ray-pipelines preview: https://user:***@host/out holds credentials (user:password@); "
            "set them in the environment\n"
        )


def test_an_out_named_for_another_image_format_is_refused(features_output, tmp_path, capsys):
    """``--out grid.jpg`` wrote PNG bytes under a .jpg name without a word."""
    for name in ("grid.jpg", "grid.svg", "grid"):  # (a PNG named grid is one nobody opens as one)
        assert preview.main([str(features_output), "--out", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err == (
            f"ray-pipelines preview: --out {tmp_path / name}: the preview is a PNG; give a .png name\n"
        )
        assert not (tmp_path / name).exists()
    assert preview.main([str(features_output), "--n", "1", "--out", str(tmp_path / "grid.PNG")]) == 0
    assert (tmp_path / "grid.PNG").read_bytes()[:8] == PNG


def labelled_rows(split: str, labels: list[int], names: list[str], tmp_path, seed: int) -> None:
    """One file of a features-shaped output whose schema knows ``names`` (those known when it was written)."""
    keys = [f"{names[label]}/song{seed}_{i}.mp3" for i, label in enumerate(labels)]
    write(
        tmp_path,
        ["input_values", "label", "path", "snippet"],
        "snippet",
        {
            "key": keys,
            "input_values": np.random.default_rng(seed).standard_normal((len(keys), 8, 4)).astype(np.float32),
            "label": np.array(labels),
            "path": np.array(keys, dtype=object),
        },
        split=split,
        class_labels={"label": names},
    )


def test_a_label_a_rerun_appended_is_named_in_every_row(tmp_path):
    """A features rerun that finds a new label appends its name (labels.json grows); the files written
    before it name fewer. The names came from the first file read: a row of the new label read "label 2"."""
    labelled_rows("test", [0, 1], ["jazz", "rock"], tmp_path, seed=0)  # written before the rerun
    labelled_rows("test", [2, 2], ["jazz", "rock", "blues"], tmp_path, seed=5)  # (a file that sorts after it)
    (tmp_path / "labels.json").write_text(json.dumps(["jazz", "rock", "blues"]))
    files = preview.data_files(Storage(str(tmp_path)), "test")
    assert preview.schema_label_names(pq.read_schema(tmp_path / files[0].path)) == ["jazz", "rock"]  # read first
    shown = preview.grid(str(tmp_path), split="test", n=4)
    assert [p.title.splitlines()[-1] for p in shown.panels] == [
        "label jazz",
        "label rock",
        "label blues",
        "label blues",
    ]
    (tmp_path / "labels.json").unlink()  # without it (another job's labels): the longest list among the files'
    assert preview.grid(str(tmp_path), split="test", n=4).panels[-1].title.endswith("label blues")


def test_rows_come_from_train_first_and_name_their_split(features_output):
    """The features job's preview showed test rows only (test/ sorts before train/) and named no split."""
    shown = preview.grid(str(features_output), n=3)
    assert shown.title == "input_values, split train"  # one split: the figure's title names it
    assert [p.title.splitlines()[0] for p in shown.panels] == ["train/song0.mp3", "train/song0.mp3", "train/song1.mp3"]
    shown = preview.grid(str(features_output), n=8)
    assert shown.title == "input_values, splits train, test"
    assert [p.title.split("]")[0] for p in shown.panels] == ["[train"] * 6 + ["[test"] * 2
    assert shown.panels[6].title.startswith("[test] test/song0.mp3\nsnippet 0")
    sample = preview.grid(str(features_output), n=8, shuffle=True, seed=3)  # a random sample: train's rows first
    splits = [p.title[1 : p.title.index("]")] for p in sample.panels]
    assert splits == sorted(splits, key=lambda s: s != "train") and set(splits) == {"train", "test"}
    histograms = preview.grid(str(write_scores(features_output.parent / "scores")))
    assert histograms.title == "scores, splits train, val"


def write_scores(output) -> str:
    from bench.readers import write_output

    rows = {
        "key": np.array([f"k{i}" for i in range(6)], dtype=object),
        "item": np.zeros(6, dtype=np.int64),
        "snr_db": np.arange(6.0),
        "split": np.array(["val", "val", "train", "train", "train", "train"], dtype=object),
    }
    write_output(output, "score", rows, index_column="item", output_columns=["key", "item", "snr_db"])
    return output


def encode_output(output, layout: str, commit: bool = True):
    """An encode output of ``layout`` (files at the root: parquet, sat, or both) of two windows."""
    from bench.readers import write_output
    from ray_pipelines.encoders.sat_sink import SatSink

    rows = {
        "key": np.array(["a.wav", "b.wav"], dtype=object),
        "window": np.zeros(2, dtype=np.int64),
        "latents": np.random.default_rng(5).standard_normal((2, 4, 30)).astype(np.float32),
        "padding_mask": np.ones((2, 30), dtype=np.uint8),
        "path": np.array(["/data/audio/a.wav", "/data/audio/b.wav"], dtype=object),
    }
    columns = ["key", "window", "latents", "padding_mask", "path"]
    sink = {"sink_class": SatSink, "write_parquet": layout == "both"} if layout != "parquet" else {}
    manifest = write_output(
        output, "encode", rows, index_column="window", output_columns=columns, config={"layout": layout}, **sink
    )
    if layout != "parquet":
        write_filelist(Storage(str(output)), manifest["files"])
    if not commit:  # as a run that has not committed yet: no manifest.json, no filelist.txt, no _SUCCESS
        for name in ("manifest.json", "filelist.txt", "_SUCCESS"):
            (output / name).unlink(missing_ok=True)
    return output


def test_encode_files_at_the_root_are_split_train_and_a_split_it_lacks_is_refused(tmp_path):
    """The card and the readers call the encode job's root files split train: ``--split train`` was refused on
    the Parquet layout ("splits: " and nothing); on layout both any --split drew the .npy files instead."""
    parquet = encode_output(tmp_path / "parquet", "parquet")
    shown = preview.grid(str(parquet), split="train")
    assert shown.title == "latents, split train" and shown.shown == 2
    both = encode_output(tmp_path / "both", "both")
    assert preview.grid(str(both), split="train").title == "latents, split train"  # its Parquet files
    assert preview.grid(str(both), split="train", column="padding_mask").title == "padding_mask, split train"
    sat = encode_output(tmp_path / "sat", "sat")
    assert preview.grid(str(sat), split="train").title == "latents (stable-audio-tools layout), split train"
    for output in (parquet, both, sat):
        for split in ("val", "bogus"):
            with pytest.raises(preview.Refused) as said:
                preview.grid(str(output), split=split)
            assert (str(said.value), said.value.status) == (f"no split {split!r} in {output} (splits: train)", 2)


def test_an_output_being_written_is_previewed_with_a_warning_or_refused_for_its_layout(tmp_path, capsys):
    """Uncommitted Parquet files were drawn without a word; the stable-audio-tools layout mid-run said
    "no Parquet files in ...", which it never has."""
    running = encode_output(tmp_path / "parquet", "parquet", commit=False)
    assert preview.grid(str(running)).shown == 2
    assert capsys.readouterr().err == (
        f"ray-pipelines preview: warning: {running} has no commit yet (no manifest.json: a run is writing it, "
        "or stopped before its commit): the rows shown come from the files written so far and may be partial\n"
    )
    sat = encode_output(tmp_path / "sat", "sat", commit=False)
    with pytest.raises(preview.Refused) as said:
        preview.grid(str(sat))
    assert said.value.status == 1 and str(said.value) == (
        f"{sat} is the encode job's stable-audio-tools layout (no Parquet files by design), whose filelist.txt "
        "its run writes at the commit: no run has committed yet (one is writing it, or stopped before its "
        "commit); preview it once one has"
    )
    preview.grid(str(encode_output(tmp_path / "done", "parquet")))  # committed: no warning
    assert capsys.readouterr().err == ""


def test_channel_is_refused_where_there_is_none_to_pick(tmp_path):
    """``--channel 1`` on the encode job's 2-D latents [C, N] drew them whole, as if it were taken."""
    output = encode_output(tmp_path / "encode", "both")
    for layout in (output, encode_output(tmp_path / "sat", "sat")):
        with pytest.raises(preview.Refused) as said:
            preview.grid(str(layout), channel=1)
        assert said.value.status == 2 and str(said.value) == (
            "--channel 1: latents is a 2-D tensor [4, 30], without channels: only a 3-D tensor's channel can be picked"
        )
    with pytest.raises(preview.Refused, match=r"^--channel 0: this output holds no tensor columns"):
        preview.grid(str(write_scores(tmp_path / "scores")), channel=0)


def test_titles_name_the_key_a_column_that_is_not_there_and_views_share_a_colour_range(tmp_path):
    output = encode_output(tmp_path / "encode", "parquet")
    assert [p.title for p in preview.grid(str(output)).panels] == ["a.wav\nwindow 0", "b.wav\nwindow 0"]  # not path
    with pytest.raises(preview.Refused) as said:
        preview.grid(str(output), column="nope")
    assert str(said.value) == "column 'nope' is not a column of this output; choose one of ['latents', 'padding_mask']"
    views = {"view1": np.zeros((2, 1, 6, 5), np.float32), "view2": np.zeros((2, 1, 6, 5), np.float32)}
    views["view1"][:, 0, 0, 0], views["view2"][:, 0, 0, 0] = -80.0, 12.0  # a quiet view and a loud one
    augment = write(tmp_path / "augment", ["key", "version", "view1", "view2"], "version", {"key": ["a", "b"], **views})
    shown = preview.grid(str(augment))
    assert [p.color_range for p in shown.panels] == [(-80.0, 12.0)] * 4
    figure = preview.draw(shown.panels, shown.title, shown.cols)
    assert [ax.images[0].get_clim() for ax in figure.axes if ax.images] == [(-80.0, 12.0)] * 4
