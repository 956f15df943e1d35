"""Read speed of the tensor representation: ``python -m bench.formats [--quick]``.

Training reads an output tens of times, so the representation every job writes
(nested fixed-size lists with non-null values, ``engine.arrow``) is measured
against the alternatives on the same data in the same run:

- ``arrow.fixed_shape_tensor`` (what augment, teacher and encode wrote before):
  pyarrow and Ray Data read it as tensors, Hugging Face datasets cannot read it;
- nested fixed-size lists with nullable values (what the features job wrote):
  the same readers, with Parquet definition levels for every value.

Per representation: the file size, pyarrow reading every row group into
``[n, *shape]`` float32 (what ``ShardRows`` does each epoch) and polars
reading the file into a numpy array, in MiB of float32 per CPU-second (the
representations take turns, best of several rounds: CPU time holds when other
work shares the machine), and, for the representation
written, Hugging Face ``with_format("numpy")`` batches of the loaded dataset
with the dataset card's ``Array2D``/``Array3D`` features against the nested
``List`` features ``load_dataset("parquet")`` infers without the card. Two
shapes: AST features ``[1024, 128]`` and augment views ``[1, 128, 130]``.
Random normal values (features barely compress either); lz4 and zstd as the
jobs write them, byte-stream-split floats.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import table
from ray_pipelines.engine.arrow import column_to_numpy, tensor_array
from ray_pipelines.engine.hf import dataset_card, datasets_features, parquet_splits

SHAPES = {"features [1024, 128], lz4": ((1024, 128), "lz4"), "views [1, 128, 130], zstd": ((1, 128, 130), "zstd")}


def nullable_nested(values: np.ndarray) -> pa.Array:
    """The features job's former type: nested fixed-size lists with nullable values."""
    array: pa.Array = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):
        array = pa.FixedSizeListArray.from_arrays(array, size)
    return array


REPRESENTATIONS = {
    "nested lists, non-null values (written now)": tensor_array,
    "nested lists, nullable values (features before)": nullable_nested,
    "arrow.fixed_shape_tensor (others before)": pa.FixedShapeTensorArray.from_numpy_ndarray,
}


def write(path: Path, column: pa.Array, compression: str) -> None:
    """As the sink writes: byte-stream-split float values, dictionary and statistics for scalars only."""
    storage = column.type.storage_type if isinstance(column.type, pa.BaseExtensionType) else column.type
    leaf = "x" + ".list.element" * column_depth(storage)
    table_ = pa.table({"x": column, "label": pa.array(np.arange(len(column)) % 10)})
    pq.write_table(
        table_,
        path,
        compression=compression,
        compression_level=1 if compression == "zstd" else None,
        use_dictionary=["label"],
        write_statistics=["label"],
        use_byte_stream_split=[leaf],
        row_group_size=64,
    )


def column_depth(arrow_type: pa.DataType) -> int:
    depth = 0
    while pa.types.is_fixed_size_list(arrow_type):
        depth, arrow_type = depth + 1, arrow_type.value_type
    return depth


def best_of(repeats: int, fn, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        started = clock()
        fn()
        times.append(clock() - started)
    return min(times)


def read_row_groups(path: Path) -> None:
    handle = pq.ParquetFile(path)
    for group in range(handle.num_row_groups):
        column_to_numpy(handle.read_row_group(group, columns=["x"]).column("x"))


def read_polars(path: Path) -> None:
    import polars

    polars.read_parquet(path, columns=["x"])["x"].to_numpy()


def hf_batches(folder: Path, shape: tuple[int, ...], with_card: bool, cache: Path, repeats: int) -> float:
    """Seconds per 10,000 rows of ``with_format("numpy")`` batches of 32."""
    import datasets

    datasets.disable_progress_bars()
    if with_card:
        schema = pq.read_schema(folder / "train" / "part-0.parquet")
        files = [{"path": "train/part-0.parquet", "split": "train", "rows": rows_of(folder), "bytes": 0}]
        card = dataset_card("bench", datasets_features(schema), parquet_splits(files), "0" * 64)
        (folder / "README.md").write_text(card)
        loaded = datasets.load_dataset(str(folder), cache_dir=str(cache))["train"]
    else:
        (folder / "README.md").unlink(missing_ok=True)
        files = str(folder / "train" / "part-0.parquet")
        loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(cache))["train"]
    rows = loaded.with_format("numpy")

    def scan() -> None:
        for start in range(0, len(rows), 32):
            batch = rows[start : start + 32]["x"]
            assert batch.shape[1:] == shape

    return best_of(repeats, scan) / len(rows) * 10_000


def rows_of(folder: Path) -> int:
    return pq.ParquetFile(folder / "train" / "part-0.parquet").metadata.num_rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows and repeats")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 7
    work = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    rng = np.random.default_rng(0)
    try:
        for shape_index, (name, (shape, compression)) in enumerate(SHAPES.items()):
            rows = (96 if args.quick else 256) if shape[0] == 1024 else (512 if args.quick else 2048)
            values = rng.standard_normal((rows, *shape), dtype=np.float32)
            paths = {}
            for index, (label, make) in enumerate(REPRESENTATIONS.items()):
                folder = work / f"{shape_index}-{index}"
                (folder / "train").mkdir(parents=True)
                paths[label] = folder / "train" / "part-0.parquet"
                write(paths[label], make(values), compression)
                assert np.array_equal(column_to_numpy(pq.read_table(paths[label]).column("x")), values)
            cpu = {label: {"pyarrow": [], "polars": []} for label in paths}
            for _ in range(repeats):  # the representations take turns
                for label, path in paths.items():
                    for reader, read in (("pyarrow", read_row_groups), ("polars", read_polars)):
                        cpu[label][reader].append(
                            best_of(1, lambda read=read, path=path: read(path), time.process_time)
                        )
            mib = values.nbytes / 2**20
            results = []
            for label, path in paths.items():
                hf = "fails (no datasets dtype)" if "fixed_shape" in label else "-"
                if label.startswith("nested lists, non-null"):
                    folder = path.parent.parent
                    card = hf_batches(folder, shape, True, work / "hf-card", repeats)
                    bare = hf_batches(folder, shape, False, work / "hf-bare", max(1, repeats // 3))
                    hf = f"{card:.2f} s with the card (Array), {bare:.2f} s without (List): {bare / card:.0f}x"
                results.append(
                    [
                        label,
                        f"{path.stat().st_size / values.nbytes:.3f}",
                        f"{mib / min(cpu[label]['pyarrow']):.0f}",
                        f"{mib / min(cpu[label]['polars']):.0f}",
                        hf,
                    ]
                )
            base = float(results[-1][2])
            for row in results:
                row[2] = f"{row[2]} ({float(row[2]) / base:.2f}x)"
            print(f"\n### {name}: {rows} rows, {values.nbytes / 2**20:.0f} MiB of float32\n")
            header = [
                "representation",
                "size / raw",
                "pyarrow MiB per CPU-s (vs FST)",
                "polars MiB per CPU-s",
                "HF numpy batches of 32, per 10k rows",
            ]
            print(table(results, header))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
