"""The selected inputs as columns (engine.runner.inputs_table) and the pending ones as Ray blocks
(engine.runner.input_dataset): every input once, blocks of the configured size, skip lists and job
columns as they were; job columns Arrow cannot type still go through."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from ray_pipelines.engine.committed import Progress
from ray_pipelines.engine.runner import input_dataset, inputs_table, pending_inputs
from ray_pipelines.sources import InputItem


def listed_items(n: int) -> list[InputItem]:
    return [
        InputItem(
            key=f"c{i % 3}/clip{i:03d}.flac",
            uri=f"/data/c{i % 3}/clip{i:03d}.flac",
            size=1000 + i,
            etag=f"{i}/1000",
            source="" if i % 2 else f"s3://bucket/c{i % 3}/clip{i:03d}.flac",
            extra={"label": f"c{i % 3}"},
        )
        for i in range(n)
    ]


def partly_done(items: list[InputItem]) -> Progress:
    """Input i has samples 0..(i % 4)-1 written of 4 (so every fourth input has none)."""
    progress = Progress()
    inputs = {
        item.key: {"expected": 4, "written": list(range(i % 4)), "etag": item.etag} for i, item in enumerate(items)
    }
    progress.add_part({"run_id": "r", "inputs": inputs, "errors": [], "files": []})
    return progress


def test_the_inputs_table_holds_what_each_items_row_holds():
    items = listed_items(7)
    assert inputs_table(items).to_pylist() == [item.to_row() for item in items]
    assert inputs_table([]).num_rows == 0


def test_a_consumed_listing_becomes_the_same_table_slice_by_slice(monkeypatch):
    """The runner hands its listing over to be consumed: the items leave the list a slice at a time as
    they become rows (here 3 slices of 64), and the table is the one a kept list gives, in one chunk.
    Items without job columns share one read-only empty mapping."""
    from ray_pipelines.engine import runner

    monkeypatch.setattr(runner, "INPUTS_SLICE", 64)
    items = listed_items(150)
    want = inputs_table(items)
    listing = list(items)
    got = inputs_table(listing, consume=True)
    assert listing == [] and got.equals(want) and got["key"].num_chunks == 1
    assert got.to_pylist() == [item.to_row() for item in items]
    plain = [InputItem(key="a", uri="/a", size=1), InputItem(key="b", uri="/b", size=2)]
    assert plain[0].extra is plain[1].extra and dict(plain[0].extra) == {}
    with pytest.raises(TypeError):
        plain[0].extra["label"] = 1  # type: ignore[index]
    assert "label" not in inputs_table(plain).column_names


def test_blocks_of_the_configured_size_hold_every_pending_input_with_its_skip_list(ray_local):
    items = listed_items(70)
    pending = pending_inputs(inputs_table(items), partly_done(items))
    assert pending.num_rows == 70  # none has all 4 samples
    ds = input_dataset(pending, per_block=32)
    assert ds.num_blocks() == 3
    assert sorted(bundle.num_rows() for bundle in ds.iter_internal_ref_bundles()) == [6, 32, 32]
    want = [{**item.to_row(), "skip": list(range(i % 4))} for i, item in enumerate(items)]
    assert sorted(ds.take_all(), key=lambda row: row["key"]) == sorted(want, key=lambda row: row["key"])


def test_job_columns_arrow_cannot_type_still_reach_ray(ray_local):
    items = listed_items(5)
    items[2].extra["label"] = 7  # one job column mixing strings and numbers: no Arrow column type
    table = inputs_table(items)
    assert table["label"].to_pylist() == ["c0", "c1", 7, "c0", "c1"]
    rows = input_dataset(pending_inputs(table, Progress()), per_block=2).take_all()
    assert sorted((row["key"], row["label"]) for row in rows) == sorted((i.key, i.extra["label"]) for i in items)
    assert all(list(row["skip"]) == [] for row in rows)


def test_a_lost_input_runs_again_with_what_it_wrote_since():
    """The retry round's pending table is the last one's, filtered, with its skip lists recomputed."""
    items = listed_items(3)
    pending = pending_inputs(inputs_table(items), Progress())
    progress = partly_done(items)
    again = pending_inputs(pending.filter(pc.is_in(pending["key"], value_set=pa.array([items[1].key]))), progress)
    assert again.column_names == pending.column_names
    assert again.to_pylist() == [{**items[1].to_row(), "skip": [0]}]
