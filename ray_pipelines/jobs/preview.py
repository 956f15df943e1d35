"""``ray-pipelines preview OUTPUT [--n 6]``: a PNG of a few rows of any job's output.

Works on every job's output and layout: Parquet shards (augment, teacher,
encode ``parquet``/``both``, features, score) and the encode job's
stable-audio-tools layout (``{rank}/{id}.npy`` + ``.json`` through
``filelist.txt``). What it draws depends on the column:

- a 2-D or 3-D tensor (log-mels, AST features, latents, tokens) as an
  image, frequency (or channel) up, time across: a column whose axes the
  output names (schema metadata ``ray_pipelines.axes``, e.g.
  ``{"input_values": ["frame", "mel"]}``) is oriented by those names;
  otherwise the last two axes are taken as ``[frequency, time]`` (the
  torchaudio convention) unless ``--time-major``. A 3-D tensor shows its
  first channel (``--channel`` to pick another). The augment job's views
  come in pairs: each row shows its ``view1`` and ``view2`` side by side,
  on one colour scale (the views' gains differ).
- a 1-D tensor (the teacher job's clips and pitch curves) as a line;
- an output without tensors (the score job's scores) as a histogram of
  each numeric column over all rows.

Rows come from train first, then the other splits in path order (``--split``
for one); each panel names its split, or the figure's title does when all
rows share one. Files at the output's root (the encode job's) are split
``train``, as the readers and the dataset card say. Labels are shown by
name, from ``labels.json`` (the features job's: every label its rows use)
or the files' own schemas, whichever lists more. An output whose run has
not committed yet (no ``manifest.json``) is drawn from the files written so
far, with a warning on stderr.

    ray-pipelines preview demo-output/features --n 6 --split train --out preview.png
"""

from __future__ import annotations

import argparse
import io
import json
import math
import posixpath
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ray_pipelines.encoders.sat_layout import FILELIST
from ray_pipelines.engine.arrow import column_to_numpy, open_parquet, tensor_shape
from ray_pipelines.engine.hf import split_name
from ray_pipelines.engine.manifest import JOB_FILE
from ray_pipelines.storage import Storage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TIME_AXES = {"frame", "frames", "time", "t"}
TITLE_COLUMNS = ("key", "path")  # the key first: the encode job's path is the input's absolute one
INDEX_COLUMNS = ("snippet", "version", "window", "item", "index")
PAIRS = {"view1": "view2"}  # columns drawn side by side with their partner


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ray-pipelines preview",
        description=__doc__.split("\n\n")[0],
        epilog="exit codes: 0 written; 2 an argument the output does not fit (--n, --column, --channel,\n"
        "--split), a folder of outputs, an --out not named .png, or a URL refused; 1 nothing to show\n"
        "(no such output, no rows), the output unreadable or the PNG unwritable",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", help="A job's output root (local path or URL).")
    p.add_argument(
        "--n",
        type=int,
        default=6,
        help="Rows to show (default 6); an output without tensors (scores) is drawn as histograms of every row.",
    )
    p.add_argument(
        "--split",
        help="Only this split (e.g. train; files at the output's root are train). Default: train's rows first.",
    )
    p.add_argument("--column", help="Column to show (default: the first 2-D/3-D tensor, else 1-D, else scores).")
    p.add_argument("--channel", type=int, help="Channel of a 3-D tensor (default 0); refused for other columns.")
    p.add_argument(
        "--time-major",
        action="store_true",
        help="The last two axes are [time, frequency] (when the output does not say).",
    )
    p.add_argument("--random", action="store_true", help="Pick rows at random (--seed) instead of the first ones.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default="preview.png", help="PNG to write, a .png name (default ./preview.png; a URL works too)."
    )
    p.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for the output (e.g. endpoint_url=http://...).",
    )
    return p


class Refused(SystemExit):
    """Why there is no preview; ``status``: 2 for an argument that does not fit the output (--n,
    --column, --channel, --split), 1 for an output with nothing to show."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass
class Panel:
    """One plot of the grid: an image ``[frequency, time]``, a line, or a histogram."""

    kind: str  # "image", "line" or "hist"
    data: np.ndarray
    title: str
    color_range: tuple[float, float] | None = None  # an image's, shared by a pair (else its own min and max)


class DataFile(NamedTuple):
    """One Parquet file of an output: its path below the root, its rows, and the split folder it is in."""

    path: str
    rows: int
    folder: str  # "" for a file at the output's root

    @property
    def split(self) -> str:
        """The split's name as the readers and the dataset card give it (files at the root: ``train``)."""
        return split_name(self.folder)


@dataclass
class Rows:
    """Rows read for the panels: each column's values, each row's split, and the schemas of the files
    they come from (the first file's first; none for the stable-audio-tools layout)."""

    values: dict[str, Any]
    splits: list[str]
    schemas: list[pa.Schema]


def warn(message: str) -> None:
    print(f"ray-pipelines preview: warning: {message}", file=sys.stderr)


# ---- finding the data ---------------------------------------------------------------------------


def data_files(storage: Storage, split: str | None = None) -> list[DataFile]:
    """An output's Parquet files, train's first, then the other splits' in path order: from manifest.json
    when committed, else from whatever is there (reading the footers; a job's output then gets a warning).
    ``split`` (a split folder's name, or the split's: ``train`` for files at the root) keeps that split's
    files; a split the output lacks is refused, naming those it has. Empty when it has no Parquet files."""
    committed = storage.exists("manifest.json")
    if committed:
        files = [
            DataFile(f["path"], int(f["rows"]), str(f.get("split") or ""))
            for f in storage.read_json("manifest.json")["files"]
            if f["path"].endswith(".parquet")
        ]
    else:
        everything = [p[len(storage.path) :].lstrip("/") for p in storage.fs.find(storage.path)]
        claimed = storage.exists(JOB_FILE)
        if not claimed:
            refuse_outputs_inside(storage, everything)
        # an output being written: its data files, not the engine's own (_manifests/index.parquet)
        found = [p for p in everything if p.endswith(".parquet") and not p.startswith("_")]
        files = [DataFile(p, -1, p.split("/")[0] if "/" in p else "") for p in found]  # rows: from the footers
    if split is not None and files:
        files_of_split = [f for f in files if split in (f.folder, f.split)]
        if not files_of_split:
            splits = ", ".join(dict.fromkeys(f.split for f in sorted(files, key=split_order)))
            raise Refused(f"no split {split!r} in {storage.root} (splits: {splits})", 2)
        files = files_of_split
    if not committed:
        files = [
            f._replace(rows=open_parquet(storage.fs.open(storage.abspath(f.path), "rb")).metadata.num_rows)
            for f in files
        ]
        if files and claimed:
            warn(
                f"{storage.root} has no commit yet (no manifest.json: a run is writing it, or stopped before its "
                "commit): the rows shown come from the files written so far and may be partial"
            )
    return sorted(files, key=split_order)


def split_order(file: DataFile) -> tuple[bool, str]:
    """Train's files first (a preview shows the rows a training reads), then the others in path order."""
    return file.split != "train", file.path


def refuse_outputs_inside(storage: Storage, relpaths: list[str]) -> None:
    """A folder that holds outputs (``demo-output``) is not one: its Parquet files are several jobs'."""
    outputs = sorted({posixpath.dirname(p) for p in relpaths if posixpath.basename(p) in ("manifest.json", JOB_FILE)})
    if outputs:
        shown = ", ".join(outputs[:8]) + (", ..." if len(outputs) > 8 else "")
        raise Refused(f"{storage.root} is not a job's output but holds {len(outputs)}: {shown}: preview one of them", 2)


def tensor_columns(schema: pa.Schema, dims: tuple[int, ...]) -> list[str]:
    return [f.name for f in schema if (d := tensor_shape(f.type)) is not None and len(d[0]) in dims]


def numeric_columns(schema: pa.Schema) -> list[str]:
    skip = {*INDEX_COLUMNS, "label", "sample_rate"}
    return [
        f.name for f in schema if (pa.types.is_floating(f.type) or pa.types.is_integer(f.type)) and f.name not in skip
    ]


def pick_column(schema: pa.Schema, wanted: str | None) -> str | None:
    """The tensor column to show: ``wanted``, else the first 2-D/3-D one, else the first 1-D one;
    None when there is no tensor (scores: histograms)."""
    tensors = tensor_columns(schema, (1, 2, 3))
    if wanted:
        if wanted not in tensors:
            if not tensors:  # a score output: its preview is the scores' histograms
                raise Refused(
                    f"column {wanted!r}: this output holds no tensor columns; leave out --column for a histogram "
                    "of each score column",
                    2,
                )
            if wanted not in schema.names:
                raise Refused(f"column {wanted!r} is not a column of this output; choose one of {tensors}", 2)
            raise Refused(f"column {wanted!r} is not a 1-D, 2-D or 3-D tensor; choose one of {tensors}", 2)
        return wanted
    images = tensor_columns(schema, (2, 3))
    return (images or tensors or [None])[0]


def read_columns(storage: Storage, files: list[DataFile], columns: list[str]) -> dict[str, np.ndarray]:
    """Every row of ``columns`` (scalars: a few bytes a row)."""
    tables = []
    for file in files:
        with storage.fs.open(storage.abspath(file.path), "rb") as f:
            tables.append(open_parquet(f).read(columns=columns))
    table = pa.concat_tables(tables)
    return {name: column_to_numpy(table.column(name)) for name in columns}


def read_rows(storage: Storage, files: list[DataFile], columns: list[str], n: int, shuffle: bool, seed: int) -> Rows:
    """``n`` rows (the first ones in the files' order, or a random sample kept in that order) of ``columns``
    plus title columns. Only the row groups holding the chosen rows are read."""
    everything = [(file, i) for file in files for i in range(file.rows)]
    if shuffle:
        picks = [everything[i] for i in sorted(np.random.default_rng(seed).permutation(len(everything))[:n])]
    else:
        picks = everything[:n]
    handles = {file.path: open_parquet(storage.fs.open(storage.abspath(file.path), "rb")) for file, _ in picks}
    schema = handles[picks[0][0].path].schema_arrow
    extra = [c for c in (*TITLE_COLUMNS, *INDEX_COLUMNS, "label") if c in schema.names and c not in columns]
    wanted = [*columns, *extra]
    tables = []
    for path in dict.fromkeys(file.path for file, _ in picks):
        handle = handles[path]
        starts = np.cumsum([0] + [handle.metadata.row_group(g).num_rows for g in range(handle.num_row_groups)])

        def group_of(row: int, starts: np.ndarray = starts) -> int:
            return int(np.searchsorted(starts, row, side="right") - 1)

        rows = [i for file, i in picks if file.path == path]
        groups = sorted({group_of(i) for i in rows})
        table = handle.read_row_groups(groups, columns=wanted)
        # The groups come back concatenated: where each one begins in ``table``.
        begins = dict(zip(groups, np.cumsum([0] + [starts[g + 1] - starts[g] for g in groups])))
        take = [int(begins[group_of(i)] + i - starts[group_of(i)]) for i in rows]
        tables.append(table.take(take))
    table = pa.concat_tables(tables)
    return Rows(
        {name: column_to_numpy(table.column(name)) for name in wanted},
        [file.split for file, _ in picks],  # the tables follow the picks' order: file by file, rows ascending
        [handle.schema_arrow for handle in handles.values()],
    )


def read_sat_samples(storage: Storage, n: int, shuffle: bool, seed: int) -> dict[str, Any]:
    """``n`` samples of the stable-audio-tools layout: ``latents`` [C, N] from each ``.npy``, and
    ``key``/``window`` from its ``.json``."""
    with storage.fs.open(storage.abspath(FILELIST), "rb") as f:
        paths = [line.strip() for line in f.read().decode().splitlines() if line.strip()]
    if shuffle:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).permutation(len(paths))[:n])]
    rows: dict[str, list] = {"latents": [], "key": [], "window": []}
    for relpath in paths[:n]:
        with storage.fs.open(storage.abspath(relpath), "rb") as f:
            rows["latents"].append(np.load(f, allow_pickle=False))
        metadata = storage.read_json(posixpath.splitext(relpath)[0] + ".json")
        rows["key"].append(metadata.get("key", relpath))
        rows["window"].append(metadata.get("window", 0))
    return {name: np.array(values) if name != "latents" else values for name, values in rows.items()}


# ---- drawing ------------------------------------------------------------------------------------


def schema_label_names(schema: pa.Schema) -> list[str] | None:
    """The label names a file's schema holds: those known when the file was written."""
    metadata = schema.metadata or {}
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        return list(features["label"]["names"])
    except (KeyError, ValueError, TypeError):
        return None


def label_names(storage: Storage, schemas: list[pa.Schema]) -> list[str] | None:
    """The names of the label integers: the longest list of ``labels.json`` and the files' schemas. A rerun
    that finds a new label appends its name (the others keep their integers), so a file written before it
    names fewer; the features job writes ``labels.json`` before any row that uses a name."""
    from ray_pipelines.features.catalog import LABELS_FILE  # here: only an output with labels needs it

    candidates = [schema_label_names(schema) for schema in schemas]
    if storage.exists(LABELS_FILE):
        candidates.append(storage.read_json(LABELS_FILE))
    named = [list(names) for names in candidates if isinstance(names, list) and names]
    return max(named, key=len) if named else None


def column_axes(schema: pa.Schema | None, column: str) -> list[str] | None:
    metadata = (schema.metadata if schema is not None else None) or {}
    try:
        return list(json.loads(metadata[b"ray_pipelines.axes"])[column])
    except (KeyError, ValueError, TypeError):
        return None


def as_image(value: np.ndarray, axes: list[str] | None, time_major: bool, channel: int | None) -> np.ndarray:
    """One row's tensor -> ``[frequency, time]``."""
    if value.ndim == 3:
        channel = channel or 0
        if not 0 <= channel < value.shape[0]:
            count = value.shape[0]
            have = "1 channel (0)" if count == 1 else f"{count} channels (0 to {count - 1})"
            raise Refused(f"--channel {channel}: the tensor has {have}", 2)
        value, axes = value[channel], axes[1:] if axes else None
    if axes:
        time_major = axes[0].lower() in TIME_AXES
    return value.T if time_major else value


def title_of(rows: dict[str, Any], i: int, names: list[str] | None, split: str | None = None) -> str:
    """A panel's title: the row's key (or path), index and label name, after ``[split]`` when given."""
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
    return (f"[{split}] " if split else "") + "\n".join(parts)


def tensor_panels(
    rows: Rows,
    columns: list[str],
    time_major: bool,
    channel: int | None,
    names: list[str] | None = None,
) -> list[Panel]:
    """Panels of each row's ``columns`` (one, or a pair on one colour scale), in row order; each titled
    with its row's split when the rows come from several (else the figure's title names it)."""
    schema = rows.schemas[0] if rows.schemas else None
    several_splits = len(set(rows.splits)) > 1
    panels = []
    for i in range(len(rows.values[columns[0]])):
        title = title_of(rows.values, i, names, rows.splits[i] if several_splits else None)
        row_panels = []
        for column in columns:
            value = np.asarray(rows.values[column][i], dtype=np.float32)
            if channel is not None and value.ndim != 3:  # drawn without it, it looked taken
                raise Refused(
                    f"--channel {channel}: {column} is a {value.ndim}-D tensor {list(value.shape)}, without "
                    "channels: only a 3-D tensor's channel can be picked",
                    2,
                )
            suffix = f"\n{column}" if len(columns) > 1 else ""
            if value.ndim == 1:
                row_panels.append(Panel("line", value, title + suffix))
            else:
                image = as_image(value, column_axes(schema, column), time_major, channel)
                row_panels.append(Panel("image", image, title + suffix))
        share_color_range([p for p in row_panels if p.kind == "image"])
        panels.extend(row_panels)
    return panels


def share_color_range(images: list[Panel]) -> None:
    """One colour range over a row's images (the augment views: apart, each view's own range hid their gains)."""
    finite = [p.data[np.isfinite(p.data)] for p in images]
    finite = [values for values in finite if values.size]
    if len(images) > 1 and finite:
        shared = (float(min(v.min() for v in finite)), float(max(v.max() for v in finite)))
        for panel in images:
            panel.color_range = shared


def histogram_panels(rows: dict[str, Any], columns: list[str]) -> list[Panel]:
    return [Panel("hist", np.asarray(rows[c], dtype=np.float64), f"{c} ({len(rows[c])} rows)") for c in columns]


def draw(panels: list[Panel], title: str, cols: int = 3) -> Figure:
    """The matplotlib Figure of the grid (matplotlib's object API: no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(cols, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        if panel.kind == "image":
            vmin, vmax = panel.color_range or (None, None)
            shown = ax.imshow(
                panel.data, origin="lower", aspect="auto", cmap="magma", interpolation="nearest", vmin=vmin, vmax=vmax
            )
            ax.set_xlabel("time (frames)", fontsize=7)
            ax.set_ylabel("frequency bin / channel", fontsize=7)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        elif panel.kind == "line":
            ax.plot(panel.data, linewidth=0.6)
            ax.set_xlabel("sample / frame", fontsize=7)
        else:
            finite = panel.data[np.isfinite(panel.data)]
            ax.hist(finite, bins=min(50, max(5, len(finite) // 4 or 5)))
            ax.set_ylabel("rows", fontsize=7)
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def render(panels: list[Panel], title: str, cols: int = 3) -> bytes:
    buffer = io.BytesIO()
    draw(panels, title, cols).savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def preview(output: str, **options: Any) -> tuple[bytes, int]:
    """The PNG bytes of the preview and how many rows it shows (``options``: :func:`grid`'s)."""
    laid_out = grid(output, **options)
    return render(laid_out.panels, laid_out.title, laid_out.cols), laid_out.shown


@dataclass
class Grid:
    """What the PNG shows: its panels, the figure's title, the rows shown, and the panels a line."""

    panels: list[Panel]
    title: str
    shown: int
    cols: int = 3


def grid(
    output: str,
    *,
    n: int = 6,
    split: str | None = None,
    column: str | None = None,
    channel: int | None = None,
    time_major: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> Grid:
    """The panels of an output's preview (the arguments are the command's)."""
    if n < 1:
        raise Refused("--n must be at least 1", 2)
    storage = Storage(output, storage_options)
    files = data_files(storage, split)
    if not files:
        if storage.exists(FILELIST):  # the stable-audio-tools layout alone (layout both previews its Parquet files)
            if split not in (None, "train"):  # its samples sit at the root: split train, as the Parquet layout's
                raise Refused(f"no split {split!r} in {storage.root} (splits: train)", 2)
            if column not in (None, "latents"):
                raise Refused(f"column {column!r}: a stable-audio-tools layout output holds latents only", 2)
            samples = read_sat_samples(storage, n, shuffle, seed)
            if samples["latents"]:
                rows = Rows(samples, ["train"] * len(samples["latents"]), [])
                panels = tensor_panels(rows, ["latents"], time_major, channel)
                return Grid(panels, "latents (stable-audio-tools layout)" + splits_note(rows.splits), len(panels))
        if not storage.exists(""):
            raise Refused(f"{output} does not exist")
        if storage.exists("manifest.json"):
            manifest = storage.read_json("manifest.json")
            if not manifest["files"]:  # committed, with no rows
                counts = manifest.get("counts", {})
                raise Refused(
                    f"no rows in {storage.root}: of its {counts.get('listed', 0)} inputs, "
                    f"{counts.get('errors', 0)} are error rows (errors.jsonl) and none gave rows"
                )
        elif storage.exists(JOB_FILE):
            job = storage.read_json(JOB_FILE)
            if job.get("job") == "encode" and job.get("config", {}).get("layout", "sat") == "sat":
                raise Refused(
                    f"{storage.root} is the encode job's stable-audio-tools layout (no Parquet files by design), "
                    f"whose {FILELIST} its run writes at the commit: no run has committed yet (one is writing it, "
                    "or stopped before its commit); preview it once one has"
                )
        raise Refused(f"no Parquet files in {storage.root}" + (f" for split {split!r}" if split else ""))
    with storage.fs.open(storage.abspath(files[0].path), "rb") as f:
        schema = pq.read_schema(f)
    chosen = pick_column(schema, column)
    if chosen is None:  # no tensors: the distribution of every numeric column, over all rows
        if channel is not None:
            raise Refused(f"--channel {channel}: this output holds no tensor columns (its preview is histograms)", 2)
        numeric = numeric_columns(schema)
        if not numeric:
            raise Refused(f"no tensor or numeric column among {schema.names}")
        values = read_columns(storage, files, numeric)
        title = "scores" + splits_note([f.split for f in files])
        return Grid(histogram_panels(values, numeric), title, len(values[numeric[0]]))
    partner = PAIRS.get(chosen)
    columns = [chosen, partner] if column is None and partner in schema.names else [chosen]
    rows = read_rows(storage, files, columns, n, shuffle, seed)
    names = label_names(storage, rows.schemas) if "label" in rows.values else None
    panels = tensor_panels(rows, columns, time_major, channel, names)
    title = " | ".join(columns) + splits_note(rows.splits)
    return Grid(panels, title, len(rows.values[chosen]), cols=2 if len(columns) == 2 else 3)


def splits_note(splits: list[str]) -> str:
    """The figure title's end: the split the rows come from, or the splits in the order shown."""
    named = list(dict.fromkeys(splits))
    return f", split {named[0]}" if len(named) == 1 else f", splits {', '.join(named)}"


def main(argv: Sequence[str] | None = None) -> int:
    from ray_pipelines.config import parse_overrides
    from ray_pipelines.storage import get_fs, split_protocol, storage_errors, url_credentials, url_problem

    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options = parse_overrides(args.storage_option)
    # PNG bytes under a .jpg name were written without a word: a viewer or upload that trusts the name fails
    suffix = posixpath.splitext(split_protocol(args.out)[1])[1]
    if suffix.lower() != ".png":  # (a name without one too: a PNG named "grid" is one nobody opens as one)
        print(f"ray-pipelines preview: --out {args.out}: the preview is a PNG; give a .png name", file=sys.stderr)
        return 2
    for url, written in ((args.output, False), (args.out, True)):
        if hidden := url_credentials(url):  # refused as the jobs refuse it: every line below would show it
            print(
                f"ray-pipelines preview: {hidden} holds credentials (user:password@); set them in the environment",
                file=sys.stderr,
            )
            return 2
        if problem := url_problem(url, written):
            print(f"ray-pipelines preview: {url}: {problem}", file=sys.stderr)
            return 2
    try:
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
    except Refused as e:
        print(f"ray-pipelines preview: {e}", file=sys.stderr)
        return e.status
    except storage_errors() as e:  # an endpoint that does not answer, no credentials, a damaged file
        print(f"ray-pipelines preview: cannot read {args.output}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        fs, path = get_fs(args.out, options)  # a local path too
        with fs.open(path, "wb") as f:
            f.write(png)
    except storage_errors() as e:
        print(f"ray-pipelines preview: cannot write {args.out}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"preview of {shown} rows written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
