"""Encode readers: the SAT .npy/.json layout and Parquet, exactly once, shuffled, cropped on N.

The outputs are written by the project's SatSink (``layout: both``) and
committed as the encode job does, with ``filelist.txt``.
"""

from __future__ import annotations

import ast
import io
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ray_pipelines.readers.batches as batches_module
import ray_pipelines.readers.encode as encode_module
from bench.readers import encode_rows, write_encode
from ray_pipelines.readers.clients import ProcessFilesystem
from ray_pipelines.readers.encode import (
    EncodedLatents,
    EncodedShardRows,
    array_from_npy,
    collate_encoded,
    crop_latents,
    crop_starts,
    loads_json,
    mask_array,
    open_encoded,
)
from ray_pipelines.readers.errors import UnreadableFile
from ray_pipelines.seeding import derive_seed
from tests.test_readers import BATCHING_AGAIN, memory_id, take_checking_reuse

# Every test here reads tensors as real outputs are read: decoded from their pages.
pytestmark = pytest.mark.usefixtures("small_tensor_pages")

ITEMS, Q, N = 24, 2, 40


def token_rows() -> dict:
    """Discrete tokens [Q, N] (codebooks first) with a padding mask of N frames: real clips of 5 to 40 frames."""
    rows = encode_rows(ITEMS, channels=Q, frames=N, ratio=256)
    rng = np.random.default_rng(1)
    valid = rng.integers(5, N + 1, ITEMS)
    rows["padding_mask"] = (np.arange(N)[None, :] < valid[:, None]).astype(np.uint8)
    rows["valid_samples"] = valid * 256
    tokens = rng.integers(1, 1000, (ITEMS, Q, N)).astype(np.int16)
    rows["latents"] = tokens * rows["padding_mask"][:, None, :]  # 0 in the padding
    return rows


@pytest.fixture(scope="module")
def tokens_output(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("encode") / "out"
    write_encode(out, ITEMS, rows=token_rows())
    return out


def keys(items) -> list[str]:
    return [md["key"] for _, md in items]


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_every_item_once_per_epoch_across_workers_and_ranks(tokens_output, layout):
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            dataset = open_encoded(str(tokens_output), layout, shuffle=True, seed=3, rank=rank, world_size=2)
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=5, num_workers=2, collate_fn=collate_encoded)
            got = [md["key"] for _, metadata in loader for md in metadata]
            assert len(got) == len(dataset) == ITEMS // 2
            seen += got
        assert sorted(seen) == sorted(token_rows()["key"].tolist())
        orders.append(seen)
    assert orders[0] != orders[1]


def test_both_layouts_give_the_same_cropped_tokens_on_the_last_axis(tokens_output):
    sat = EncodedLatents(str(tokens_output), latent_crop_length=16, seed=2)
    parquet = EncodedShardRows(str(tokens_output), latent_crop_length=16, seed=2)
    for epoch in (0, 1):
        sat.set_epoch(epoch)
        parquet.set_epoch(epoch)
        by_key = {md["key"]: (z, md) for z, md in parquet}
        items = list(sat)
        assert len(items) == len(by_key) == ITEMS
        for tokens, md in items:
            assert tokens.shape == (Q, 16) and tokens.dtype == torch.int16  # N cropped, codebooks kept
            assert md["padding_mask"].shape == (16,) and md["padding_mask"].any()
            # the crop keeps tokens where the mask is set, zeros where it is not
            assert torch.equal(tokens != 0, md["padding_mask"][None, :].expand(Q, 16))
            other, other_md = by_key[md["key"]]
            assert torch.equal(tokens, other) and md["latent_crop_start"] == other_md["latent_crop_start"]
    first = sat[0]
    assert first[0].shape == (Q, 16) and first[1]["latent_filename"].endswith(".npy")


def test_crop_starts_are_uniform_over_the_starts_that_keep_a_real_frame():
    length, frames, draws = 8, 30, 4600
    masks = np.zeros((4, frames), dtype=np.uint8)
    masks[0] = 1  # real throughout: every start 0..22
    masks[1, 25:27] = 1  # frames 25 and 26: a crop [s, s + 8) holds one for s in 18..22
    masks[2, :3] = 1  # frames 0..2: starts 0..2
    expected = [range(23), range(18, 23), range(3), range(23)]  # row 3 has no real frame: any start
    numbers = [derive_seed(0, "test", i) for i in range(draws)]
    for mask, usable in zip(masks, expected):
        starts = crop_starts(np.repeat(mask[None], draws, axis=0), length, numbers)
        counts = np.bincount(starts, minlength=frames - length + 1)
        assert set(np.flatnonzero(counts).tolist()) == set(usable)
        mean = draws / len(usable)
        assert counts[list(usable)].min() > 0.75 * mean and counts[list(usable)].max() < 1.25 * mean
        # one item at a time (the item mode, the sat layout) picks what the batch picks
        for number, start in list(zip(numbers, starts.tolist()))[:50]:
            tokens = np.arange(frames)[None].repeat(2, axis=0)
            cropped, cropped_mask, got = crop_latents(tokens, mask, length, number)
            assert got == start and cropped[0].tolist() == list(range(start, start + length))
            assert cropped_mask.tolist() == mask[start : start + length].tolist()
    assert crop_starts(masks, length, None).tolist() == [0, 0, 0, 0]  # random_crop=False


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_bytes_are_read_as_np_load_reads_them(version, monkeypatch):
    """Plain arrays' headers are read without NumPy's ast.literal_eval (CPython 3.11 fails an AST
    conversion that another interrupts: encode._PLAIN_HEADER); other headers go to NumPy."""
    arrays = [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.asfortranarray(np.arange(15, dtype=np.float64).reshape(3, 5)),
        np.zeros((0, 4), dtype=np.int16),
        np.array(3.5),
        np.arange(6, dtype=">i4").reshape(2, 3),
        np.arange(7, dtype=np.float16),
        np.array([[True, False]]),
        np.arange(200, dtype=np.uint8).reshape(2, 100),
    ]
    encode_module._npy_layout.cache_clear()
    with monkeypatch.context() as patched:
        patched.setattr(ast, "literal_eval", lambda text: pytest.fail(f"NumPy's parser read {text!r}"))
        for array in arrays:
            stream = io.BytesIO()
            np.lib.format.write_array(stream, array, version=version)
            got = array_from_npy(stream.getvalue())
            assert got.dtype == array.dtype and got.shape == array.shape and np.array_equal(got, array)
            assert not got.flags.writeable  # a view of the bytes read
            if array.size:
                with pytest.raises(ValueError):  # cut short
                    array_from_npy(stream.getvalue()[:-1])
    structured = np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")])  # a header NumPy's parser reads
    stream = io.BytesIO()
    np.lib.format.write_array(stream, structured, version=version)
    assert np.array_equal(array_from_npy(stream.getvalue()), structured)
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        array_from_npy(stream.getvalue())
    with pytest.raises(ValueError, match="magic string"):
        array_from_npy(b"not an npy file at all")


def test_an_items_json_is_parsed_as_json_parses_it():
    """orjson where it can, json for what orjson refuses (NaN, integers past 64 bits); errors stay json's."""
    plain = b'{"padding_mask": [1, 1, 0], "key": "a/b.wav", "window": 2, "seconds_start": 1.5, "tags": null}'
    assert loads_json(plain) == json.loads(plain)
    assert math.isnan(loads_json(b'{"seconds_total": NaN}')["seconds_total"])
    for big in (123456789012345678901234567890, -9223372036854775809, 18446744073709551615, -(2**63)):
        assert loads_json(f'{{"id": {big}, "m": [1, 0]}}'.encode()) == {"id": big, "m": [1, 0]}
    assert loads_json(b'{"x": 1e400}')["x"] == math.inf
    with pytest.raises(json.JSONDecodeError):
        loads_json(b'{"padding_mask": [1, 1')


def test_a_json_mask_becomes_the_uint8_values_numpy_gives():
    for mask in ([1, 0, 1, 1], [True, False], [1.0, 0.0], [0, 2, 255], np.array([1, 0], dtype=np.int64), []):
        got, expected = mask_array(mask), np.asarray(mask, dtype=np.uint8)
        assert got.dtype == np.uint8 and got.tolist() == expected.tolist()
    for bad in ([256], [-1]):
        with pytest.raises(OverflowError):
            mask_array(bad)


def test_a_local_item_is_read_whole(tmp_path):
    data = bytes(range(256)) * 1000
    (tmp_path / "x.npy").write_bytes(data)
    for url in (str(tmp_path), f"file://{tmp_path}"):
        client = ProcessFilesystem(url)
        assert client.local and client.cat(str(tmp_path / "x.npy")) == data
    assert not ProcessFilesystem("s3://bucket/out").local


def test_a_damaged_item_file_is_named(tmp_path):
    """An .npy cut short or a .json that is not JSON: NumPy's and json's errors do not say which file; the
    SAT reader's do (from a DataLoader worker too)."""
    write_encode(tmp_path / "out", 6, rows=token_rows())
    dataset = EncodedLatents(str(tmp_path / "out"), shuffle=True)
    npy = tmp_path / "out" / dataset.files[3]
    sidecar = npy.with_suffix(".json")
    npy_bytes = npy.read_bytes()
    npy.write_bytes(npy_bytes[:-5])
    with pytest.raises(UnreadableFile, match=f"reading {re.escape(str(npy))}: "):
        list(DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_encoded))
    npy.write_bytes(npy_bytes)
    sidecar.write_text('{"padding_mask": [1, 1')
    with pytest.raises(UnreadableFile, match=f"reading {re.escape(str(sidecar))}: Expecting"):
        list(dataset)


def test_a_rank_folder_of_the_sat_layout_is_not_taken_for_the_output(tokens_output):
    with pytest.raises(FileNotFoundError) as said:
        open_encoded(str(tokens_output / "0"), "sat")
    assert str(said.value) == (
        f"{tokens_output / '0'} is a folder inside the output {tokens_output}: give the output's root (the folder "
        "holding filelist.txt)"
    )


def test_a_split_given_as_open_encodeds_layout_is_refused_saying_it_takes_none(tokens_output):
    """open_encoded(out, "train"), the other readers' habit: "written with layout 'sat', not 'train'" (as if
    train were a layout), and on a layout: both output the Parquet reader, silently."""
    with pytest.raises(ValueError) as said:
        open_encoded(str(tokens_output), "train")
    assert str(said.value) == (
        "layout must be 'sat' or 'parquet' (or None: the output's own), got 'train' (open_encoded takes no split: "
        "it reads the output's windows of every split)"
    )
    with pytest.raises(ValueError, match=r"got 'both' \(a layout: both is an output's, which holds the two"):
        open_encoded(str(tokens_output), "both")  # (it opened the Parquet reader, silently)


def test_an_incomplete_sat_layout_output_is_read_with_a_warning_as_the_parquet_one(tokens_output, tmp_path):
    """Its reader read filelist.txt alone: an output its last run left to retry was read without a word."""
    out = tmp_path / "out"
    shutil.copytree(tokens_output, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"], manifest["counts"]["to_retry"] = False, 2
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(RuntimeWarning, match=r"out is incomplete: its last run left 2 inputs to retry") as said:
        reader = open_encoded(str(out), "sat")
    with pytest.warns(RuntimeWarning, match=r"out is incomplete") as direct:
        EncodedLatents(str(out))
    assert said[0].filename == direct[0].filename == __file__ and len(reader) == ITEMS
    # another job's output is refused by name, as the Parquet readers refuse it
    manifest["job"] = "augment"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"out is the augment job's output, not the encode job's"):
        open_encoded(str(out), "sat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_encoded(str(tokens_output), "sat")


def test_a_mask_that_does_not_match_the_last_axis_is_refused():
    tokens = np.zeros((N, Q), dtype=np.int16)  # frames first: the layout tokens must not have
    with pytest.raises(ValueError, match=r"padding_mask has 40 entries but the latents' last axis has 2 frames"):
        crop_latents(tokens, np.ones(N, dtype=np.uint8), 16)


@pytest.mark.parametrize("view_bytes", [1, 1 << 30], ids=["views", "gathered"])
@pytest.mark.parametrize("crop", [16, None, N + 8])  # N + 8: every item zero-padded
def test_batched_parquet_latents_are_the_items_cropped_alike(tokens_output, crop, view_bytes, monkeypatch):
    monkeypatch.setattr(batches_module, "VIEW_BYTES", view_bytes)
    items = EncodedShardRows(str(tokens_output), latent_crop_length=crop, shuffle=True, seed=2)
    batched = EncodedShardRows(str(tokens_output), latent_crop_length=crop, shuffle=True, seed=2, batch_size=5)
    assert len(batched) == -(-ITEMS // 5)
    for epoch in (0, 1):
        items.set_epoch(epoch)
        batched.set_epoch(epoch)
        expected = {md["key"]: (z, md) for z, md in items}
        seen = []
        for latents, metadata in DataLoader(batched, batch_size=None, num_workers=2):
            assert latents.is_shared() and latents.dtype == torch.int16 and latents.shape[1:] == (Q, crop or N)
            assert metadata["padding_mask"].dtype == torch.bool and metadata["padding_mask"].shape == (
                len(latents),
                crop or N,
            )
            assert len(metadata["key"]) == len(latents) and metadata["window"].shape == (len(latents),)
            for j, key in enumerate(metadata["key"]):
                z, md = expected[key]
                assert torch.equal(latents[j], z) and torch.equal(metadata["padding_mask"][j], md["padding_mask"])
                assert metadata["seconds_total"][j].item() == md["seconds_total"]
                if crop:
                    assert metadata["latent_crop_start"][j].item() == md["latent_crop_start"]
            seen += metadata["key"]
        assert sorted(seen) == sorted(expected)


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_a_dataloader_that_would_batch_the_latent_batches_again_is_refused(tokens_output, layout):
    batched = open_encoded(str(tokens_output), layout, batch_size=5, latent_crop_length=16)
    with pytest.raises(TypeError, match=BATCHING_AGAIN):
        next(iter(DataLoader(batched, batch_size=2)))
    latents, metadata = next(iter(DataLoader(batched, batch_size=None)))
    assert latents.shape == (5, Q, 16) and len(metadata["key"]) == 5


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_batched_every_item_once_across_workers_and_ranks_as_the_items(tokens_output, layout):
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            kwargs = dict(shuffle=True, seed=3, rank=rank, world_size=2, latent_crop_length=16)
            items = open_encoded(str(tokens_output), layout, **kwargs)
            batched = open_encoded(str(tokens_output), layout, batch_size=5, **kwargs)
            items.set_epoch(epoch)
            batched.set_epoch(epoch)
            expected = {md["key"]: (z, md) for z, md in items}
            batches = list(DataLoader(batched, batch_size=None, num_workers=2, persistent_workers=True))
            assert len(batches) == len(batched) == -(-(ITEMS // 2) // 5)
            for latents, metadata in batches:
                assert latents.is_shared() and metadata["padding_mask"].is_shared()
                # the batch's tensors arrive as views of one shared storage (one file descriptor)
                tensors = [latents, *(v for v in metadata.values() if isinstance(v, torch.Tensor))]
                assert len(tensors) >= 3 and len({memory_id(t) for t in tensors}) == 1
                for j, key in enumerate(metadata["key"]):
                    z, md = expected[key]
                    assert torch.equal(latents[j], z) and torch.equal(metadata["padding_mask"][j], md["padding_mask"])
                    assert int(metadata["latent_crop_start"][j]) == md["latent_crop_start"]
                seen += metadata["key"]
        assert sorted(seen) == sorted(token_rows()["key"].tolist())
        orders.append(seen)
    assert orders[0] != orders[1]


def same_latents(a, b) -> bool:
    (z, md), (expected_z, expected_md) = a, b
    return (
        torch.equal(z, expected_z)
        and torch.equal(md["padding_mask"], expected_md["padding_mask"])
        and torch.equal(md["latent_crop_start"], expected_md["latent_crop_start"])
        and md["key"] == expected_md["key"]
    )


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_reused_batches_are_the_fresh_ones(tokens_output, layout):
    def reader(reuse: int):
        kwargs = dict(shuffle=True, seed=3, latent_crop_length=16, batch_size=3, reuse_batches=reuse)
        return open_encoded(str(tokens_output), layout, **kwargs)

    # R = prefetch_factor + 1: a batch intact while the next W - 1 = 1 is taken
    storages = take_checking_reuse(reader(3), reader(0), workers=2, epochs=2, same=same_latents, intact_for=1)
    assert len(storages) <= 2 * 3  # 16 batches in the memory of 3 per worker
    assert len(take_checking_reuse(reader(2), reader(0), workers=0, epochs=1, same=same_latents)) == 2


def test_the_parquet_layout_is_read_by_the_split_name_datasets_gives_it_and_refuses_an_index(tokens_output):
    """The encode job writes its Parquet files at the output's root (split "" in the manifest): OutputRows(out)
    and OutputRows(out, "train") refused it ("split 'train' not in ... (splits: )"); [0] on the parquet
    layout raised torch's "Subclasses of Dataset should implement __getitem__"."""
    from ray_pipelines.readers import OutputRows

    for split in ("train", ""):
        assert sum(1 for _ in OutputRows(str(tokens_output), split, fields="key")) == ITEMS
    with pytest.raises(ValueError, match=r"split 'test' not in \S+ \(splits: train\)$"):
        OutputRows(str(tokens_output), "test")
    with pytest.raises(
        TypeError, match=r"by index: iterate it, .* \(the sat layout's items .*open_encoded\(output, 'sat'\)\)"
    ):
        open_encoded(str(tokens_output), "parquet")[0]


def test_columns_without_the_crops_key_and_window_are_refused(tokens_output):
    """columns=["latents", "padding_mask"] drew every item's crop from ("", 0): one start for all items."""
    for columns in (["latents", "padding_mask"], ["latents", "padding_mask", "key"]):
        with pytest.raises(
            ValueError, match=r"columns= leaves out .*window.*a random crop is drawn per key and window"
        ):
            EncodedShardRows(str(tokens_output), latent_crop_length=8, columns=columns)
    with pytest.raises(ValueError, match="columns= leaves out padding_mask, which an encode item needs"):
        EncodedShardRows(str(tokens_output), columns=["latents", "key"])  # was a bare KeyError in the first item
    kept = EncodedShardRows(
        str(tokens_output), latent_crop_length=8, columns=["latents", "padding_mask", "key", "window"]
    )
    starts = {md["latent_crop_start"] for _, md in kept}
    assert len(starts) > 3  # drawn per item
    fixed = EncodedShardRows(
        str(tokens_output), latent_crop_length=8, random_crop=False, columns=["latents", "padding_mask"]
    )
    assert len(list(fixed)) == ITEMS


class Tagged:
    def __call__(self, item):
        latents, metadata = item
        return latents.shape[-1], metadata["key"]


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_both_layouts_take_a_transform_and_a_batch_transform(tokens_output, layout):
    """The parquet layout's own conversion replaced a user's transform= (never called); the sat layout had
    neither transform= nor batch_transform= (TypeError), so one open_encoded call did not fit both layouts."""
    items = list(
        DataLoader(
            open_encoded(str(tokens_output), layout, latent_crop_length=8, transform=Tagged()),
            batch_size=None,
            num_workers=2,
        )
    )
    assert sorted(key for _, key in items) == sorted(token_rows()["key"].tolist()) and {n for n, _ in items} == {8}
    batched = open_encoded(
        str(tokens_output),
        layout,
        latent_crop_length=8,
        batch_size=5,
        batch_transform=lambda b: (b["latents"].shape, b["padding_mask"].shape, len(b["key"]), b["latent_crop_length"]),
    )
    expected = [((5, Q, 8), (5, 8), 5, 8)] * 4 + [((4, Q, 8), (4, 8), 4, 8)]
    assert [(tuple(z), tuple(m), n, length) for z, m, n, length in batched] == expected
    with pytest.raises(ValueError, match="transform applies to items"):
        open_encoded(str(tokens_output), layout, batch_size=5, transform=Tagged())


@pytest.mark.parametrize("layout", ["sat", "parquet"])
def test_a_missing_output_is_not_found_whatever_layout_is_asked(tmp_path, layout):
    """open_encoded("/tmp/nope", layout="parquet") said the output "was written with layout 'sat'"."""
    with pytest.raises(FileNotFoundError, match="nope"):
        open_encoded(str(tmp_path / "nope"), layout)


def test_the_sat_reader_orders_by_sample_id_whatever_the_rank_folders(tokens_output, tmp_path):
    """A window's rank folder is the write task's that took its block: two encodes of the same inputs listed
    the same files in other folders and orders, and the same seed drew another epoch order."""
    other = tmp_path / "out"
    shutil.copytree(tokens_output, other)
    listed = (other / "filelist.txt").read_text().split()
    moved = []
    for i, relpath in enumerate(listed):  # every other window in rank folder 1, the list reversed
        if i % 2:
            for suffix in (".npy", ".json"):
                source = other / relpath.replace(".npy", suffix)
                (other / "1").mkdir(exist_ok=True)
                source.rename(other / "1" / source.name)
            relpath = "1/" + relpath.split("/", 1)[1]
        moved.append(relpath)
    (other / "filelist.txt").write_text("\n".join(reversed(moved)) + "\n")
    for shuffle in (True, False):
        first = EncodedLatents(str(tokens_output), shuffle=shuffle, seed=5)
        second = EncodedLatents(str(other), shuffle=shuffle, seed=5)
        second.set_epoch(1), first.set_epoch(1)
        assert keys(first) == keys(second) and sorted(keys(first)) == sorted(token_rows()["key"].tolist())
    # map-style, item i is still the list's, as stable-audio-tools reads it
    assert second[0][1]["latent_filename"] == f"{other}/{moved[-1]}"
