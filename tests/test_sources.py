"""Listing inputs: stable keys from globs, folders, list files and tar shards."""

from __future__ import annotations

import numpy as np
import pytest

from ray_pipelines.audio.decode import AudioFile, InputAudio, load_window
from ray_pipelines.sources import SourceError, list_inputs, read_key_list
from tests.audio_helpers import encoded_bytes, tone, write_audio, write_tar

EXT = ["wav", "flac", "ogg", "mp3"]


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "lib"
    write_audio(root / "a" / "one.wav", tone(0.5))
    write_audio(root / "a" / "deep" / "two.flac", tone(0.5))
    write_audio(root / "b" / "three.ogg", tone(0.5))
    (root / "b" / "notes.txt").write_text("not audio")
    return root


def test_directory_keys_are_relative_and_sorted(library):
    items = list_inputs(str(library), EXT)
    assert [i.key for i in items] == ["a/deep/two.flac", "a/one.wav", "b/three.ogg"]
    assert all(i.size > 0 and i.etag for i in items)


def test_glob_root_is_the_fixed_prefix(library):
    items = list_inputs(str(library / "a" / "**" / "*.flac"), EXT)
    assert [i.key for i in items] == ["deep/two.flac"]


def test_keys_do_not_change_when_files_are_added(library):
    before = {i.key: i.uri for i in list_inputs(str(library), EXT)}
    write_audio(library / "c" / "new.wav", tone(0.5))
    after = {i.key: i.uri for i in list_inputs(str(library), EXT)}
    assert {k: after[k] for k in before} == before and "c/new.wav" in after


def test_list_file(library, tmp_path):
    listing = library / "inputs.txt"
    listing.write_text("# comment\na/one.wav\n\nb/three.ogg\nmissing.wav\n")
    items = {i.key: i for i in list_inputs(str(listing), EXT)}
    assert set(items) == {"a/one.wav", "b/three.ogg", "missing.wav"}
    assert items["missing.wav"].error.startswith("missing")
    assert not items["a/one.wav"].error


def test_tar_members_become_inputs_with_byte_ranges(tmp_path):
    clip = tone(1.0, 44100, freq=330.0)
    shard = write_tar(
        tmp_path / "shards" / "shard-000.tar",
        {
            "clips/x.flac": encoded_bytes(clip),
            "clips/y.wav": encoded_bytes(clip, "wav"),
            "../escape.wav": encoded_bytes(clip, "wav"),
            "meta.json": b"{}",
        },
    )
    items = {i.key: i for i in list_inputs(str(shard.parent), EXT)}
    assert set(items) == {"shard-000.tar/clips/x.flac", "shard-000.tar/clips/y.wav", "shard-000.tar/../escape.wav"}
    assert "escapes its folder" in items["shard-000.tar/../escape.wav"].error
    member = items["shard-000.tar/clips/x.flac"]
    assert member.member_offset > 0 and member.source.endswith("#clips/x.flac")
    with AudioFile(InputAudio(member.uri, member.size, member.member_offset)) as f:
        window, _ = load_window(f, 0.0, 1.0, 44100)
    np.testing.assert_allclose(window, clip, atol=1e-3)


def test_missing_input_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        list_inputs(str(tmp_path / "nowhere"), EXT)


def test_key_list(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("a/one.wav\n# comment\n\nb/three.ogg\n")
    assert read_key_list(str(path)) == {"a/one.wav", "b/three.ogg"}
