"""``ray-pipelines preview OUTPUT [--n 6]``: a grid PNG of a few rows' spectrograms.

Works on any job output with a 2-D or 3-D tensor column, stored either as
the Arrow ``fixed_shape_tensor`` type or as nested fixed-size lists (the
features job's ``input_values [frames, n_mels]``, the augment job's
``view1`` / ``view2 [1, n_mels, frames]``). Frequency goes up, time to the
right: a column whose axes the output names (schema metadata
``ray_pipelines.axes``, e.g. ``{"input_values": ["frame", "mel"]}``) is
oriented by those names; otherwise the last two axes are taken as
``[frequency, time]`` (the torchaudio convention) unless ``--time-major``.
A 3-D tensor shows its first channel (``--channel`` to pick another).

    ray-pipelines preview demo-output/features --n 6 --split train --out preview.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_pipelines.engine.arrow import column_to_numpy
from ray_pipelines.storage import Storage

TIME_AXES = {"frame", "frames", "time", "t"}
TITLE_COLUMNS = ("path", "key")
INDEX_COLUMNS = ("snippet", "version", "window", "index")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-pipelines preview", description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="A job's output root (local path or URL).")
    p.add_argument("--n", type=int, default=6, help="Rows to show (default 6).")
    p.add_argument("--split", help="Only this split (e.g. train).")
    p.add_argument("--column", help="Tensor column to show (default: the first 2-D/3-D one).")
    p.add_argument("--channel", type=int, default=0, help="Channel of a 3-D tensor (default 0).")
    p.add_argument(
        "--time-major",
        action="store_true",
        help="The last two axes are [time, frequency] (when the output does not say).",
    )
    p.add_argument("--random", action="store_true", help="Pick rows at random (--seed) instead of the first ones.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="preview.png", help="PNG to write (default ./preview.png; a URL works too).")
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for the output (e.g. endpoint_url=http://...).",
    )
    return p


def data_files(storage: Storage, split: str | None) -> list[tuple[str, int]]:
    """(path, rows) of an output's Parquet files: from manifest.json when committed, else from
    whatever is there (reading the footers)."""
    if storage.exists("manifest.json"):
        files = [
            (f["path"], int(f["rows"]))
            for f in storage.read_json("manifest.json")["files"]
            if f["path"].endswith(".parquet") and (split is None or f.get("split") == split)
        ]
    else:
        found = sorted(
            p[len(storage.path) :].lstrip("/") for p in storage.fs.find(storage.path) if p.endswith(".parquet")
        )
        files = [
            (p, pq.ParquetFile(storage.fs.open(storage.abspath(p), "rb")).metadata.num_rows)
            for p in found
            if split is None or p.split("/")[0] == split
        ]
    if not files:
        raise SystemExit(f"no Parquet files in {storage.root}" + (f" for split {split!r}" if split else ""))
    return sorted(files)


def tensor_shape(field_type: pa.DataType) -> list[int] | None:
    """The per-row shape of a tensor column, or None for anything else."""
    if isinstance(field_type, pa.FixedShapeTensorType):
        return list(field_type.shape)
    shape = []
    while pa.types.is_fixed_size_list(field_type):
        shape.append(field_type.list_size)
        field_type = field_type.value_type
    return shape if shape and (pa.types.is_floating(field_type) or pa.types.is_integer(field_type)) else None


def pick_column(schema: pa.Schema, wanted: str | None) -> str:
    shapes = {f.name: tensor_shape(f.type) for f in schema}
    images = [name for name, shape in shapes.items() if shape and len(shape) in (2, 3)]
    if wanted:
        if wanted not in images:
            raise SystemExit(f"column {wanted!r} is not a 2-D or 3-D tensor; choose one of {images or 'none'}")
        return wanted
    if not images:
        raise SystemExit(f"no 2-D or 3-D tensor column among {schema.names}")
    return images[0]


def read_rows(
    storage: Storage, files: list[tuple[str, int]], column: str, n: int, shuffle: bool, seed: int
) -> tuple[dict[str, Any], pa.Schema]:
    """``n`` rows (the first ones, or a random sample) of ``column`` plus title columns.

    Only the row groups holding the chosen rows are read.
    """
    everything = [(path, i) for path, rows in files for i in range(rows)]
    if shuffle:
        picks = sorted(everything[i] for i in np.random.default_rng(seed).permutation(len(everything))[:n])
    else:
        picks = everything[:n]
    handles = {path: pq.ParquetFile(storage.fs.open(storage.abspath(path), "rb")) for path, _ in picks}
    schema = handles[picks[0][0]].schema_arrow
    wanted = [column, *(c for c in (*TITLE_COLUMNS, *INDEX_COLUMNS, "label") if c in schema.names)]
    tables = []
    for path in dict.fromkeys(p for p, _ in picks):
        handle = handles[path]
        starts = np.cumsum([0] + [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)])

        def group_of(row: int, starts: np.ndarray = starts) -> int:
            return int(np.searchsorted(starts, row, side="right") - 1)

        rows = [i for p, i in picks if p == path]
        groups = sorted({group_of(i) for i in rows})
        table = handle.read_row_groups(groups, columns=wanted)
        # The groups come back concatenated: where each one begins in ``table``.
        begins = dict(zip(groups, np.cumsum([0] + [starts[g + 1] - starts[g] for g in groups])))
        take = [int(begins[group_of(i)] + i - starts[group_of(i)]) for i in rows]
        tables.append(table.take(take))
    table = pa.concat_tables(tables)
    return {name: column_to_numpy(table.column(name)) for name in wanted}, schema


def label_names(schema: pa.Schema) -> list[str] | None:
    metadata = schema.metadata or {}
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        return list(features["label"]["names"])
    except (KeyError, ValueError, TypeError):
        return None


def column_axes(schema: pa.Schema, column: str) -> list[str] | None:
    metadata = schema.metadata or {}
    try:
        return list(json.loads(metadata[b"ray_pipelines.axes"])[column])
    except (KeyError, ValueError, TypeError):
        return None


def as_image(value: np.ndarray, axes: list[str] | None, time_major: bool, channel: int) -> np.ndarray:
    """One row's tensor -> ``[frequency, time]``."""
    if value.ndim == 3:
        value, axes = value[min(channel, value.shape[0] - 1)], axes[1:] if axes else None
    if axes:
        time_major = axes[0].lower() in TIME_AXES
    return value.T if time_major else value


def title_of(rows: dict[str, Any], i: int, names: list[str] | None) -> str:
    parts = []
    for name in TITLE_COLUMNS:
        if name in rows:
            text = str(rows[name][i])
            parts.append(text if len(text) <= 38 else "…" + text[-37:])
            break
    for name in INDEX_COLUMNS:
        if name in rows:
            parts.append(f"{name} {int(rows[name][i])}")
            break
    if "label" in rows:
        label = int(rows["label"][i])
        parts.append(f"label {names[label] if names and 0 <= label < len(names) else label}")
    return "\n".join(parts)


def render(images: list[np.ndarray], titles: list[str], column: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(images))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(images) :]:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        shown = ax.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("time (frames)", fontsize=7)
        ax.set_ylabel("frequency bin", fontsize=7)
        ax.tick_params(labelsize=6)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.suptitle(column, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def preview(
    output: str,
    *,
    n: int = 6,
    split: str | None = None,
    column: str | None = None,
    channel: int = 0,
    time_major: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> tuple[bytes, int]:
    """The PNG bytes of the preview grid and how many rows it shows."""
    if n < 1:
        raise SystemExit("--n must be at least 1")
    storage = Storage(output, storage_options)
    files = data_files(storage, split)
    with storage.fs.open(storage.abspath(files[0][0]), "rb") as f:
        column = pick_column(pq.read_schema(f), column)
    rows, schema = read_rows(storage, files, column, n, shuffle, seed)
    axes, names = column_axes(schema, column), label_names(schema)
    images = [as_image(np.asarray(v, dtype=np.float32), axes, time_major, channel) for v in rows[column]]
    titles = [title_of(rows, i, names) for i in range(len(images))]
    return render(images, titles, column), len(images)


def main(argv: Sequence[str] | None = None) -> int:
    from ray_pipelines.config import parse_overrides

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options = parse_overrides(args.storage_option)
    png, shown = preview(
        args.output,
        n=args.n,
        split=args.split,
        column=args.column,
        channel=args.channel,
        time_major=args.time_major,
        shuffle=args.random,
        seed=args.seed,
        storage_options=options,
    )
    if "://" in args.out:
        from ray_pipelines.storage import get_fs

        fs, path = get_fs(args.out, options)
        with fs.open(path, "wb") as f:
            f.write(png)
    else:
        with open(args.out, "wb") as f:
            f.write(png)
    print(f"preview of {shown} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
