"""Summaries, the score table, and the files a filter run writes (no Ray)."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from ray_pipelines.scoring.filters import FilterRule
from ray_pipelines.scoring.plots import histogram_figure, scatter_figure
from ray_pipelines.scoring.report import FilterSettings, filter_warnings, write_filter_outputs, write_summaries
from ray_pipelines.scoring.summary import SUMMARY_COLUMNS, read_summary_csv, score_stats, summary_csv
from ray_pipelines.scoring.table import ScoreTable
from ray_pipelines.storage import Storage


def test_score_stats_by_hand_and_the_summary_csv_round_trip():
    stats = score_stats(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), bins=3)
    assert stats["count"] == 4 and stats["mean"] == 2.5 and stats["std"] == pytest.approx(np.sqrt(1.25))
    assert stats["histogram_bins"] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert stats["histogram_counts"] == [1, 1, 2]
    empty = score_stats(np.zeros(0), bins=2)
    assert empty["count"] == 0 and np.isnan(empty["mean"]) and empty["histogram_counts"] == [0, 0]

    summary = {
        "mean": 2.5,
        "std": 0.5,
        "histogram_bins": [1.0, 2.5, 4.0],
        "histogram_counts": [2, 2],
        "energy_mean": 7.0,
        "energy_std": 1.0,
        "energy_histogram_bins": [6.0, 8.0],
        "energy_histogram_counts": [4],
    }
    text = summary_csv(summary)
    assert text.splitlines()[0] == ",".join(SUMMARY_COLUMNS)
    assert read_summary_csv(text) == summary


def small_table() -> ScoreTable:
    # train: losses 1..8 (median rule: Q1 2.75, Q3 6.25, IQR 3.5 -> [-2.5, 11.5]); val holds an outlier
    keys = [f"train/good/p{i % 2}_{i}.pt" for i in range(8)] + ["val/bad/p9_0.pt", "val/good/p9_1.pt"]
    return ScoreTable.from_columns(
        {
            "key": keys,
            "item": [0] * 10,
            "split": ["train"] * 8 + ["val"] * 2,
            "class": ["good"] * 8 + ["bad", "good"],
            "group": [k.split("/")[2][:2] for k in keys],
            "reconstruction_loss": [1.0, 2, 3, 4, 5, 6, 7, 8, 50.0, 3.0],
            "signal_energy": [2.0] * 9 + [9.0],
        }
    )


def test_filter_outputs_partition_every_key_and_record_the_bounds(tmp_path):
    storage = Storage(str(tmp_path))
    settings = FilterSettings(signal_energy=FilterRule(mode="hardcode"))
    report = write_filter_outputs(storage, small_table(), settings, errors={"train/good/broken.pt": "undecodable"})
    loss = report["bounds"]["reconstruction_loss"]
    assert (loss["low"], loss["high"]) == pytest.approx((-2.5, 11.5))
    assert report["bounds"]["signal_energy"]["high"] == 7.0
    kept = (tmp_path / "kept.txt").read_text().split()
    ignored = (tmp_path / "ignored.txt").read_text().split()
    assert ignored == ["train/good/broken.pt", "val/bad/p9_0.pt", "val/good/p9_1.pt"]  # error, loss, energy
    assert len(kept) == 8 and not set(kept) & set(ignored)
    assert report["counts"] == {
        "train": {"items": 8, "kept": 8, "ignored": 0},
        "val": {"items": 2, "kept": 0, "ignored": 2},
    }
    on_disk = json.loads((tmp_path / "filter.json").read_text())
    assert on_disk["bounds"]["reconstruction_loss"]["high"] == pytest.approx(11.5)
    assert on_disk["settings"]["signal_energy"]["mode"] == "hardcode"

    decisions = list(csv.DictReader(io.StringIO((tmp_path / "decisions.csv").read_text())))
    reasons = {d["filename"]: d["reason"] for d in decisions if d["kept"] == "0"}
    assert reasons == {
        "val/bad/p9_0.pt": "reconstruction_loss 50 above 11.5",
        "val/good/p9_1.pt": "signal_energy 9 above 7",
        "train/good/broken.pt": "error: undecodable",
    }
    groups = list(csv.DictReader(io.StringIO((tmp_path / "groups.csv").read_text())))
    assert [(g["split"], g["group"], g["label"], g["decided_by"]) for g in groups] == [
        ("train", "p0", "good", "majority"),
        ("train", "p1", "good", "majority"),
        ("val", "p9", "good", "all_filtered"),
    ]
    for name in ("reconstruction_loss", "signal_energy"):
        assert (tmp_path / "histograms" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predictions_replace_class_labels_in_the_vote(tmp_path):
    predictions = tmp_path / "predictions.csv"
    predictions.write_text(
        "filename,prediction\n"
        + "".join(f"train/good/p0_{i}.pt,{'bad' if i < 4 else 'good'}\n" for i in range(0, 8, 2))
    )
    storage = Storage(str(tmp_path / "out"))
    settings = FilterSettings(predictions=str(predictions))
    report = write_filter_outputs(storage, small_table(), settings)
    groups = {g["group"]: g for g in csv.DictReader(io.StringIO((tmp_path / "out/groups.csv").read_text()))}
    assert (groups["p0"]["label"], groups["p0"]["votes"]) == ("good", "bad=2;good=2")  # a tie: "good" wins
    assert groups["p1"]["decided_by"] == "no_votes"  # no predictions for p1
    # Items without a prediction are said (they were left out of the vote without a word), and so are
    # rows whose filename is no scored key (a bare file name for the key's split/class/name path).
    assert report["groups"]["predictions"] == {
        "items": 10,
        "items_with_prediction": 4,
        "rows_naming_no_item": 0,
        "first_unmatched": [],
    }
    assert filter_warnings(report) == [
        "filter.predictions: 4 of 10 scored items have a prediction (the others do not vote)"
    ]
    predictions.write_text("filename,prediction,item\n" + "".join(f"p{i % 2}_{i}.pt,bad,0\n" for i in range(8)))
    report = write_filter_outputs(storage, small_table(), settings)
    assert report["groups"]["predictions"]["rows_naming_no_item"] == 8
    assert filter_warnings(report) == [
        "filter.predictions: 0 of 10 scored items have a prediction (the others do not vote); 8 rows name no "
        "scored item (p0_0.pt, p0_2.pt, p0_4.pt, p0_6.pt, p1_1.pt, 3 more): a row's filename must be the "
        "item's key (scores.csv's filename column)"
    ]
    assert filter_warnings(write_filter_outputs(storage, small_table(), FilterSettings())) == []


def test_summaries_per_split_and_the_csv_table_round_trip(tmp_path):
    storage = Storage(str(tmp_path))
    table = small_table()
    summaries = write_summaries(storage, table, bins=4)
    train = read_summary_csv((tmp_path / "summary/train.csv").read_text())
    assert train["mean"] == 4.5 and train["energy_mean"] == 2.0 and sum(train["histogram_counts"]) == 8
    assert summaries["val"]["items"] == 2
    (tmp_path / "scores.csv").write_text(table.to_csv())
    back = ScoreTable.from_csv(str(tmp_path / "scores.csv"))
    for name in table.columns:
        assert back[name].tolist() == table[name].tolist()
    (tmp_path / "old.csv").write_text(
        "filename,split,reconstruction_loss,signal_energy\nb.pt,val,1.5,2\na.pt,train,1,2\n"
    )
    old = ScoreTable.from_csv(str(tmp_path / "old.csv"))
    assert old["key"].tolist() == ["a.pt", "b.pt"] and old["class"].tolist() == ["", ""]
    # Excel's "CSV UTF-8": a byte-order mark before the header (was: "needs the columns filename, split")
    (tmp_path / "excel.csv").write_bytes((tmp_path / "old.csv").read_text().replace("\n", "\r\n").encode("utf-8-sig"))
    assert ScoreTable.from_csv(str(tmp_path / "excel.csv"))["key"].tolist() == ["a.pt", "b.pt"]


def test_histogram_draws_the_cut_lines_that_are_set():
    figure = histogram_figure({"train": np.arange(10.0), "val": np.array([3.0, np.nan])}, "loss", low=1.5, high=None)
    lines = [line.get_xdata()[0] for line in figure.axes[0].lines]
    assert lines == [1.5]
    figure = histogram_figure({"train": np.zeros(0)}, "loss", low=None, high=7.0)
    assert [line.get_xdata()[0] for line in figure.axes[0].lines] == [7.0]


def test_histogram_leaves_cuts_outside_the_data_undrawn_but_named():
    # a median rule's low cut of -0.58 under a loss that is never negative
    figure = histogram_figure({"train": np.linspace(0.1, 2.0, 20)}, "loss", low=-0.58, high=1.5)
    axes = figure.axes[0]
    assert [line.get_xdata()[0] for line in axes.lines] == [1.5]
    assert axes.get_xlim() == pytest.approx((0.1, 2.0))
    labels = [text.get_text() for text in axes.get_legend().get_texts()]
    assert labels == ["train (20)", "low cut -0.58: below every item, rejects none", "high cut 1.5"]


def test_histogram_tells_a_cut_that_rejects_every_item_from_one_that_rejects_none():
    """Both were "(outside the data)": the default ``speech_fraction >= 0.5`` on music, which rejects every
    item, read as a cut that rejects nothing."""
    speech = {"train": np.linspace(0.0, 0.2, 20), "val": np.array([0.05, 0.1])}
    figure = histogram_figure(speech, "speech_fraction", low=0.5, high=None)
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels[-1] == "low cut 0.5: above every item, rejects all"
    figure = histogram_figure(speech, "speech_fraction", low=None, high=-0.1)
    assert figure.axes[0].get_legend().get_texts()[-1].get_text() == "high cut -0.1: below every item, rejects all"
    figure = histogram_figure(speech, "speech_fraction", low=None, high=0.9)
    assert figure.axes[0].get_legend().get_texts()[-1].get_text() == "high cut 0.9: above every item, rejects none"
    assert not figure.axes[0].lines  # outside the data: named, not drawn


def test_scatter_colours_kept_and_ignored_items():
    x, y = np.array([1.0, 2.0, 3.0, np.nan]), np.array([4.0, 5.0, 6.0, 7.0])
    figure = scatter_figure(x, y, np.array([True, False, True, True]), "snr_db", "dnsmos_ovrl")
    axes = figure.axes[0]
    kept, ignored = axes.collections
    assert kept.get_offsets().tolist() == [[1.0, 4.0], [3.0, 6.0]] and ignored.get_offsets().tolist() == [[2.0, 5.0]]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["kept (2)", "ignored (1)"]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("snr_db", "dnsmos_ovrl")


def test_any_score_column_is_summarised_plotted_and_filtered(tmp_path):
    table = ScoreTable.from_columns(
        {
            "key": [f"train/c{i}.wav" for i in range(6)],
            "split": ["train"] * 6,
            "dnsmos_ovrl": [3.5, 3.1, 2.0, 3.9, 3.2, 4.0],
            "clipping_fraction": [0.0, 0.0, 0.0, 0.05, 0.0, 0.0],
            "speech_fraction": [0.9, 0.8, 0.95, 0.9, 0.1, 0.7],
        }
    )
    assert table.scores == ("dnsmos_ovrl", "clipping_fraction", "speech_fraction")
    settings = FilterSettings(
        dnsmos_ovrl=FilterRule(mode="hardcode", bounds=(3.0, None)),
        clipping_fraction=FilterRule(mode="hardcode", bounds=(None, 0.001)),
        speech_fraction=FilterRule(mode="median", k=0.5, side="lower"),
    )
    storage = Storage(str(tmp_path))
    write_summaries(storage, table, bins=3)
    summary = read_summary_csv((tmp_path / "summary/train.csv").read_text())
    assert list(summary)[:4] == [
        "dnsmos_ovrl_mean",
        "dnsmos_ovrl_std",
        "dnsmos_ovrl_histogram_bins",
        "dnsmos_ovrl_histogram_counts",
    ]
    assert summary["speech_fraction_mean"] == pytest.approx(np.mean([0.9, 0.8, 0.95, 0.9, 0.1, 0.7]))
    report = write_filter_outputs(storage, table, settings)
    # speech: Q1 0.725, Q3 0.9, IQR 0.175 -> low 0.6375 (no upper cut); OVRL >= 3; clipping <= 0.1 %
    assert report["bounds"]["speech_fraction"]["low"] == pytest.approx(0.6375)
    assert report["bounds"]["speech_fraction"]["high"] is None
    assert (tmp_path / "kept.txt").read_text().split() == ["train/c0.wav", "train/c1.wav", "train/c5.wav"]
    reasons = {
        r["filename"]: r["reason"] for r in csv.DictReader(io.StringIO((tmp_path / "decisions.csv").read_text()))
    }
    assert reasons["train/c2.wav"] == "dnsmos_ovrl 2 below 3"
    assert reasons["train/c3.wav"] == "clipping_fraction 0.05 above 0.001"
    assert reasons["train/c4.wav"] == "speech_fraction 0.1 below 0.6375"
    assert sorted(p.name for p in (tmp_path / "histograms").iterdir()) == [
        "clipping_fraction.png",
        "dnsmos_ovrl.png",
        "speech_fraction.png",
    ]
    assert (tmp_path / "scatter.png").exists()  # default pair: the first two scores with a rule
    assert settings.scatter_pair(table.scores) == ("dnsmos_ovrl", "clipping_fraction")
    (tmp_path / "scores.csv").write_text(table.to_csv())
    assert (tmp_path / "scores.csv").read_text().splitlines()[0] == (
        "filename,split,class,group,dnsmos_ovrl,clipping_fraction,speech_fraction,item"
    )
    assert ScoreTable.from_csv(str(tmp_path / "scores.csv")).scores == table.scores
    with pytest.raises(ValueError, match="filter names snr_db, which the scores do not have"):
        write_filter_outputs(storage, table, FilterSettings(snr_db=FilterRule()))


def test_stale_errors_from_an_earlier_attempt_do_not_ignore_scored_keys(tmp_path):
    from ray_pipelines.scoring.table import live_errors

    table = small_table()
    errors = [
        ("train/good/p0_0.pt", -1, "unreadable: timeout"),  # retried and scored since
        ("val/bad/p9_0.pt", 0, "lost: ..."),  # same (key, item) scored since
        ("shard/key.wav", 1, "wrong shape"),  # never scored
        ("gone.pt", -1, "missing: file not found"),
    ]
    assert live_errors(table, errors) == {"shard/key.wav": "wrong shape", "gone.pt": "missing: file not found"}
    write_filter_outputs(Storage(str(tmp_path)), table, FilterSettings(signal_energy=FilterRule(mode="none")), errors)
    assert "train/good/p0_0.pt" in (tmp_path / "kept.txt").read_text().split()
    assert (tmp_path / "ignored.txt").read_text().split() == ["gone.pt", "shard/key.wav", "val/bad/p9_0.pt"]


def test_an_output_without_any_score_still_gets_its_reports(tmp_path):
    empty = ScoreTable.from_columns({"key": [], "split": [], "reconstruction_loss": [], "signal_energy": []})
    storage = Storage(str(tmp_path))
    assert write_summaries(storage, empty) == {}
    report = write_filter_outputs(storage, empty, FilterSettings(), [("a.pt", -1, "undecodable")])
    assert report["keys"] == {"kept": 0, "ignored": 1, "errors": 1}
    assert (tmp_path / "ignored.txt").read_text() == "a.pt\n" and (tmp_path / "kept.txt").read_text() == ""
    assert (tmp_path / "histograms/signal_energy.png").exists()


def test_a_null_rule_takes_a_default_rule_out_and_filter_json_records_it(tmp_path):
    """``signal_energy: null`` (docs: null removes a rule) put the seed's median rule back: the energy
    outlier was still ignored while filter.json's settings showed no rule."""
    storage = Storage(str(tmp_path))
    settings = FilterSettings(signal_energy=None, reconstruction_loss=FilterRule(mode="none"))
    assert list(settings.rules(["reconstruction_loss", "signal_energy"])) == ["reconstruction_loss"]
    report = write_filter_outputs(storage, small_table(), settings)
    assert list(report["bounds"]) == ["reconstruction_loss"]
    assert (tmp_path / "ignored.txt").read_text() == ""  # val/good/p9_1.pt's energy 9 no longer judged
    on_disk = json.loads((tmp_path / "filter.json").read_text())
    assert "signal_energy" in on_disk["settings"] and on_disk["settings"]["signal_energy"] is None
    # what filter.json (and the job's manifest) record reads back as the same settings: the rule stays out
    again = FilterSettings.model_validate(on_disk["settings"])
    assert list(again.rules(["reconstruction_loss", "signal_energy"])) == ["reconstruction_loss"]
    # a score without a default rule: null is simply no rule, as before
    assert "snr_db" not in FilterSettings(snr_db=None).model_dump()


def test_the_card_of_an_output_without_tensor_columns_says_nothing_of_tensors():
    """The score output's card read "Tensor columns (none) are nested fixed-size lists" and promised
    "numpy arrays [8, *shape]"."""
    from ray_pipelines.engine.hf import dataset_card

    scores = {"key": {"_type": "Value", "dtype": "string"}, "snr_db": {"_type": "Value", "dtype": "float64"}}
    card = dataset_card("score", scores, {"train": (8, 100), "val": (2, 30)}, "f" * 64)
    assert "Tensor columns" not in card and "shape" not in card
    assert 'rows = ds["train"][:8]                             # the first 8 rows: a list of values per column' in card
    views = {**scores, "view1": {"_type": "Array3D", "shape": [1, 8, 4], "dtype": "float32"}}
    card = dataset_card("augment", views, {"train": (8, 100)}, "f" * 64)
    assert "Tensor columns (`view1`) are nested fixed-size lists: every reader keeps their shape." in card
    assert 'rows = ds["train"].with_format("numpy")[:8]      # numpy arrays [8, *shape]' in card
