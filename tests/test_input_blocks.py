"""The pending inputs as Ray blocks (engine.runner.input_dataset): every row once, blocks of the
configured size, skip lists and job columns as they were; rows Arrow cannot type still go through."""

from __future__ import annotations

from ray_pipelines.engine.runner import input_dataset


def pending_rows(n: int) -> list[dict]:
    return [
        {
            "key": f"c{i % 3}/clip{i:03d}.flac",
            "uri": f"/data/c{i % 3}/clip{i:03d}.flac",
            "size": 1000 + i,
            "etag": f"{i}/1000",
            "label": f"c{i % 3}",
            "skip": list(range(i % 4)),  # partly finished inputs carry the samples to skip
        }
        for i in range(n)
    ]


def as_python(rows: list[dict]) -> list[dict]:
    out = [{k: (list(v) if k == "skip" else v) for k, v in row.items()} for row in rows]
    return sorted(out, key=lambda row: row["key"])


def test_blocks_of_the_configured_size_hold_every_pending_row_as_it_was(ray_local):
    pending = pending_rows(70)
    ds = input_dataset(pending, per_block=32, num_blocks=3)
    assert ds.num_blocks() == 3
    assert sorted(bundle.num_rows() for bundle in ds.iter_internal_ref_bundles()) == [6, 32, 32]
    assert as_python(ds.take_all()) == as_python(pending)


def test_rows_arrow_cannot_type_as_columns_still_reach_ray(ray_local):
    pending = pending_rows(5)
    pending[2]["label"] = 7  # one job column mixing strings and numbers: no Arrow column type
    ds = input_dataset(pending, per_block=2, num_blocks=3)
    rows = ds.take_all()
    assert len(rows) == 5
    assert sorted(row["key"] for row in rows) == sorted(row["key"] for row in pending)
