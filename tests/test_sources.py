"""Listing inputs: stable keys from globs, folders, list files and tar shards."""

from __future__ import annotations

import functools
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import threading

import fsspec
import numpy as np
import pytest

from ray_pipelines.audio.decode import AudioFile, InputAudio, is_retryable, load_window
from ray_pipelines.config import ConfigError
from ray_pipelines.engine.runner import inputs_table
from ray_pipelines.sources import SourceError, list_inputs, list_specs, overlapping_input, read_key_list
from tests.audio_helpers import REPO, encoded_bytes, tone, write_audio, write_tar
from tests.conftest import Lines

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
    # saved by a Windows editor: a byte-order mark and CRLF line ends (the first line was "missing")
    listing.write_bytes("a/one.wav\r\nb/three.ogg\r\n".encode("utf-8-sig"))
    assert [(i.key, i.error) for i in list_inputs(str(listing), EXT)] == [("a/one.wav", ""), ("b/three.ogg", "")]
    # a name a plain line would lose (a leading '#', a line break) as a JSON string, as kept.txt writes it
    write_audio(library / "#1 take.wav", tone(0.5))
    write_audio(library / "a" / "new\nline.wav", tone(0.5))
    listing.write_text('"#1 take.wav"\n"a/new\\nline.wav"\n  a/one.wav  \n')
    assert [(i.key, i.error) for i in list_inputs(str(listing), EXT)] == [
        ("#1 take.wav", ""),
        ("a/new\nline.wav", ""),
        ("a/one.wav", ""),
    ]


def test_names_with_brackets_are_names_where_they_are_there_and_patterns_can_escape_them(tmp_path):
    """Music libraries name folders "Album [2019]": as a pattern, [2019] matches one of 2, 0, 1, 9, so the
    folder, a file in it and a glob below it matched nothing, and an output beside them was refused as
    inside the input tree (the pattern's fixed part was their parent)."""
    album = tmp_path / "Album [2019]"
    for name in ("take [1].wav", "take 2.wav"):
        write_audio(album / name, tone(0.3))
    keys = lambda spec: [i.key for i in list_inputs(spec, EXT)]  # noqa: E731
    assert keys(str(album)) == ["take 2.wav", "take [1].wav"]
    assert keys(str(album / "take [1].wav")) == ["take [1].wav"]
    assert keys(f"{tmp_path}/Album [[]2019]/take*.wav") == ["take 2.wav", "take [1].wav"]  # glob.escape's form
    write_audio(album / "*.wav", tone(0.3))  # a stray file named as a pattern: * and ? stay patterns
    assert keys(f"{tmp_path}/Album [[]2019]/*.wav") == ["*.wav", "take 2.wav", "take [1].wav"]
    (album / "*.wav").unlink()
    with pytest.raises(SourceError, match=r"write a \[ that is part of a name as \[\[\] \(Music \[\[\]FLAC\]"):
        list_specs([f"{tmp_path}/Album [2019]/*.wav"], EXT)
    for spec in (str(album), f"{tmp_path}/Album [[]2019]/*.wav"):
        assert overlapping_input([spec], str(tmp_path / "out")) == ""
        assert overlapping_input([spec], str(album / "out")) == spec


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # not one stderr line per request
        pass


@pytest.fixture
def served(library):
    """``library`` behind a real HTTP server on 127.0.0.1 (Python's: index pages name the links, no sizes)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=library))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_http_urls_are_inputs_from_a_folder_a_glob_a_url_and_list_files(library, served):
    """An https:// dataset (a web server, a model hub's files): fsspec's HTTP paths are whole URLs, and
    an index page gives no sizes (before: every file an 'empty file (0 bytes)' error, and every
    list-file line 'missing')."""
    local = {i.key: i for i in list_inputs(str(library), EXT)}
    folder = {i.key: i for i in list_inputs(f"{served}/", EXT)}
    assert sorted(folder) == sorted(local) == ["a/deep/two.flac", "a/one.wav", "b/three.ogg"]
    assert {k: (i.uri, i.size, i.error) for k, i in folder.items()} == {
        k: (f"{served}/{k}", local[k].size, "") for k in local
    }
    assert all(i.etag.endswith(f" GMT/{i.size}") for i in folder.values())  # Last-Modified and size
    assert [(i.key, i.uri) for i in list_inputs(f"{served}/a/**/*.flac", EXT)] == [
        ("deep/two.flac", f"{served}/a/deep/two.flac")
    ]
    assert [(i.key, i.size) for i in list_inputs(f"{served}/b/three.ogg", EXT)] == [
        ("three.ogg", local["b/three.ogg"].size)
    ]
    (library / "urls.txt").write_text(f"{served}/a/one.wav\n{served}/nope.wav\n")
    (library / "relative.txt").write_text("a/one.wav\nb/three.ogg\n")
    host = served.removeprefix("http://")
    for listing in (str(library / "urls.txt"), f"{served}/urls.txt"):  # the list file local or served
        items = {i.key: i for i in list_inputs(listing, EXT)}
        assert (items[f"{host}/a/one.wav"].uri, items[f"{host}/a/one.wav"].size) == (
            f"{served}/a/one.wav",
            local["a/one.wav"].size,
        )
        assert items[f"{host}/nope.wav"].error == "missing: listed in the list file but not found"
    # A presigned URL: the signature (new with every signing, a credential while it lasts) stays in the
    # uri the decoder fetches, out of the key and of the source the rows keep
    signed = f"{served}/b/three.ogg?X-Amz-Signature=abc&X-Amz-Expires=600"
    (library / "signed.txt").write_text(f"{signed}\n")
    [item] = list_inputs(str(library / "signed.txt"), EXT)
    assert (item.key, item.uri, item.source) == (f"{host}/b/three.ogg", signed, f"{served}/b/three.ogg")
    assert item.size == local["b/three.ogg"].size and item.to_row()["source"] == f"{served}/b/three.ogg"
    # the same URL as the input itself, a '/' in its query too (it listed nothing: its name, query and all,
    # is no .ogg)
    [alone] = list_inputs(signed + "/x%2F", EXT)
    assert (alone.key, alone.uri, alone.source) == ("three.ogg", signed + "/x%2F", f"{served}/b/three.ogg")
    served_lines = list_inputs(f"{served}/relative.txt", EXT)
    assert [(i.key, i.uri) for i in served_lines] == [
        ("a/one.wav", f"{served}/a/one.wav"),
        ("b/three.ogg", f"{served}/b/three.ogg"),
    ]
    # a presigned list file: its query's '?' made it a glob ("no inputs matched"), and its name no .txt
    presigned_list = list_inputs(f"{served}/relative.txt?X-Amz-Signature=abc&X-Amz-Expires=600", EXT)
    assert [(i.key, i.uri) for i in presigned_list] == [(i.key, i.uri) for i in served_lines]
    with AudioFile(InputAudio(folder["a/deep/two.flac"].uri, folder["a/deep/two.flac"].size)) as remote:
        with AudioFile(InputAudio(str(library / "a" / "deep" / "two.flac"), local["a/deep/two.flac"].size)) as disk:
            np.testing.assert_array_equal(
                load_window(remote, 0.1, 0.3, 16000)[0], load_window(disk, 0.1, 0.3, 16000)[0]
            )


def test_archives_other_than_tar_are_named_with_the_reason_not_passed_over_silently(tmp_path):
    """A folder of .tar.gz shards (or zips) was 'no inputs matched' with nothing about them (neither
    audio nor .tar); a list file's .tgz line was an error row from the audio decoder."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for name in ("shard-0.tar.gz", "shard-1.tgz"):
        with tarfile.open(shards / name, "w:gz") as tar:
            info = tarfile.TarInfo("x.flac")
            data = encoded_bytes(tone(0.2))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shards / "shard-2.zip").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    reason = r"only a .tar's members are read where they lie \(by byte range\); unpack them, or repack them as .tar"
    with pytest.raises(
        SourceError,
        match=rf"^no inputs matched {shards} apart from 3 archives that are not plain .tar \(e.g. shard-0.tar.gz\): "
        + reason,
    ):
        list_specs([str(shards)], EXT)
    said, logger = Lines(), logging.getLogger("ray_pipelines.sources")
    logger.addHandler(said)
    try:
        write_audio(shards / "loose.wav", tone(0.2))
        assert [i.key for i in list_specs([str(shards)], EXT)] == ["loose.wav"]
        assert said.lines == [
            f"{shards}: left out 3 archives that are not plain .tar (e.g. shard-0.tar.gz): only a .tar's members are "
            "read where they lie (by byte range); unpack them, or repack them as .tar (the audio in them is "
            "compressed already)"
        ]
    finally:
        logger.removeHandler(said)
    (tmp_path / "list.txt").write_text("shards/shard-1.tgz\n")
    [line] = list_inputs(str(tmp_path / "list.txt"), EXT)
    assert (line.key, line.error) == (
        "shards/shard-1.tgz",
        "an archive that is not plain .tar: only a .tar's members are read; unpack it, or repack it as .tar",
    )


def test_media_whose_extension_is_not_taken_are_named_not_passed_over_silently(tmp_path):
    """A folder of talks as .mp4 (or Monkey's Audio, or .wav where ``extensions`` names FLAC alone) was
    'no inputs matched' with nothing about them, and beside other audio they were left out without a word."""
    talks = tmp_path / "talks"
    for name in ("a.mp4", "b.mp4", "c.ape"):
        write_audio(talks / name.replace(".", "_") / "x.wav", tone(0.2))  # (a folder: no media)
        (talks / name).write_bytes(encoded_bytes(tone(0.2)))
    (talks / "notes.txt").write_text("not media")
    with pytest.raises(
        SourceError,
        match=rf"^no inputs matched {talks}/\*\.\* apart from 3 media files whose extension is not in `extensions` "
        r"\(mp4: 2, ape: 1; e.g. a.mp4\): add the extension to `extensions` to read the audio \(through FFmpeg\)$",
    ):
        list_specs([f"{talks}/*.*"], EXT)
    with pytest.raises(SourceError, match=r"apart from 1 media file whose extension is not in `extensions` \(ape: 1;"):
        list_specs([f"{talks}/c.*"], EXT)
    said, logger = Lines(), logging.getLogger("ray_pipelines.sources")
    logger.addHandler(said)
    try:
        assert len(list_specs([str(talks)], EXT)) == 3  # the folders' WAVs
        assert said.lines == [
            f"{talks}: left out 3 media files whose extension is not in `extensions` (mp4: 2, ape: 1; e.g. a.mp4): "
            "add the extension to `extensions` to read the audio (through FFmpeg)"
        ]
        said.lines.clear()
        assert [i.key for i in list_specs([f"{talks}/*.*"], [*EXT, "mp4", "ape"])] == ["a.mp4", "b.mp4", "c.ape"]
        assert list_specs([f"{talks}/*.*"], ["pt"], allow_empty=True) == []  # not an audio listing: no media named
        assert said.lines == []
    finally:
        logger.removeHandler(said)


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


# What macOS leaves beside a collection: an AppleDouble twin of each file (a few KB of metadata, not
# audio), its zips' __MACOSX/ folder, Finder's .DS_Store; and a tool's dot folder.
APPLE_DOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000)


def test_hidden_files_are_left_out_of_folders_globs_and_shards_but_named_ones_are_read(library, tmp_path):
    (library / "a" / "._one.wav").write_bytes(APPLE_DOUBLE)
    (library / "__MACOSX" / "a").mkdir(parents=True)
    (library / "__MACOSX" / "a" / "._one.wav").write_bytes(APPLE_DOUBLE)
    (library / ".DS_Store").write_bytes(b"Bud1")
    write_audio(library / ".takes" / "take1.wav", tone(0.5))
    expected = ["a/deep/two.flac", "a/one.wav", "b/three.ogg"]
    assert [i.key for i in list_inputs(str(library), EXT)] == expected
    assert [i.key for i in list_inputs(str(library / "**" / "*.wav"), EXT)] == ["a/one.wav"]
    # asked for by name: a glob that spells the hidden part, a folder inside it, one file, a list file
    assert [i.key for i in list_inputs(str(library / ".takes" / "*.wav"), EXT)] == ["take1.wav"]
    assert [i.key for i in list_inputs(str(library / "**" / ".*" / "*.wav"), EXT)] == [".takes/take1.wav"]
    assert [i.key for i in list_inputs(str(library / ".takes"), EXT)] == ["take1.wav"]
    assert [i.key for i in list_inputs(str(library / "a" / "._one.wav"), EXT)] == ["._one.wav"]
    (tmp_path / "named.txt").write_text(f"{library}/.takes/take1.wav\n")
    assert [i.key for i in list_inputs(str(tmp_path / "named.txt"), EXT)] == [f"{library}/.takes/take1.wav".lstrip("/")]

    clip = encoded_bytes(tone(0.5, 44100))
    shard = write_tar(  # as macOS's tar writes it (COPYFILE_DISABLE unset): a ._ twin before each member
        tmp_path / "shards" / "shard-000.tar",
        {"./._x.flac": APPLE_DOUBLE, "./x.flac": clip, "clips/._y.flac": APPLE_DOUBLE, "clips/y.flac": clip},
    )
    (tmp_path / "shards" / "._shard-000.tar").write_bytes(APPLE_DOUBLE)  # the shard's own twin: not a tar
    write_audio(tmp_path / "only" / ".takes" / "t.wav", tone(0.5))  # every recording in a dot folder
    with pytest.raises(
        SourceError, match=r"no inputs matched \S+/only apart from hidden files \(1, e.g. .takes/t.wav\)"
    ):
        list_specs([str(tmp_path / "only")], EXT)
    assert [i.key for i in list_specs([str(tmp_path / "only")], EXT, include_hidden=True)] == [".takes/t.wav"]
    members = ["shard-000.tar/./x.flac", "shard-000.tar/clips/y.flac"]
    assert [i.key for i in list_inputs(str(shard.parent), EXT)] == members
    assert [i.key for i in list_inputs(str(shard), EXT)] == members  # a shard named alone: its twins left out too

    everything = [i.key for i in list_inputs(str(library), EXT, include_hidden=True)]
    assert everything == sorted([*expected, ".takes/take1.wav", "__MACOSX/a/._one.wav", "a/._one.wav"])
    twins = ["shard-000.tar/./._x.flac", "shard-000.tar/clips/._y.flac"]
    everything = {i.key: i.error for i in list_inputs(str(shard.parent), EXT, include_hidden=True)}
    assert sorted(everything) == sorted(["._shard-000.tar", *members, *twins])
    assert everything["._shard-000.tar"].startswith("unreadable tar shard")  # what every twin was before


def test_two_specs_naming_one_file_give_one_input_and_two_files_with_one_key_are_refused(library, tmp_path):
    said, logger = Lines(), logging.getLogger("ray_pipelines.sources")
    logger.addHandler(said)
    try:  # the glob and the file give a/one.wav the key one.wav: it was read twice, under two keys
        inputs = list_specs([str(library), str(library / "a" / "*.wav"), str(library / "a" / "one.wav")], EXT)
        assert [i.key for i in inputs] == ["a/deep/two.flac", "a/one.wav", "b/three.ogg"]
        inner_first = list_specs([str(library / "a"), str(library)], EXT)  # the first spec's keys are kept
        assert [i.key for i in inner_first] == ["b/three.ogg", "deep/two.flac", "one.wav"]
        assert [i.uri for i in inner_first] == [
            str(library / p) for p in ("b/three.ogg", "a/deep/two.flac", "a/one.wav")
        ]
    finally:
        logger.removeHandler(said)
    end = "are read once each, under the key of the first spec naming them (not twice, in what could be two splits)"
    assert said.lines == [
        f"input: files named by two specs under two keys (1, e.g. {library}/a/one.wav as 'a/one.wav' and 'one.wav') "
        + end,
        f"input: files named by two specs under two keys (2, e.g. {library}/a/deep/two.flac as 'deep/two.flac' and "
        "'a/deep/two.flac') " + end,
    ]
    assert [i.key for i in list_specs([str(library / "a"), str(library / "b")], EXT)] == [
        "deep/two.flac",
        "one.wav",
        "three.ogg",
    ]  # folders apart: keys as before
    other = tmp_path / "other"
    write_audio(other / "a" / "one.wav", tone(0.25))  # another recording under the same relative path
    write_audio(other / "c" / "four.wav", tone(0.25))
    with pytest.raises(ConfigError) as refused:  # it was left out of the output without a word
        list_specs([str(library), str(other)], EXT)
    assert str(refused.value).startswith(
        f"input: two different files have the key 'a/one.wav': {library}/a/one.wav and {other}/a/one.wav. "
    )
    done = subprocess.run(
        [sys.executable, "-m", "ray_pipelines.cli", "augment", "--config", "augment", "--set"]
        + [f"input=[{library}, {other}]", "--set", f"output={tmp_path / 'out'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "two different files have the key 'a/one.wav'" in done.stderr, done.stderr
    assert not (tmp_path / "out" / "_lease.json").exists()


def test_a_file_name_that_is_not_utf8_is_a_final_error_row_that_can_be_stored(library, tmp_path):
    """A name written in Latin-1 by an old system (Python reads its bytes as surrogates): one such file
    stopped the whole job with UnicodeEncodeError where the inputs became an Arrow table."""
    write_audio(library / "b" / "cafe.wav", tone(0.5))
    os.rename(bytes(library / "b" / "cafe.wav"), bytes(library / "b") + b"/caf\xe9.wav")
    tar = tmp_path / "shards" / "s.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as shard:
        member = tarfile.TarInfo("na\xefve.flac")  # stored as Latin-1 bytes; read back as surrogates
        data = encoded_bytes(tone(0.5, 44100))
        member.size = len(data)
        shard.addfile(member, io.BytesIO(data))
    for spec, key in ((str(library), "b/caf\\xe9.wav"), (str(tar.parent), "s.tar/na\\xefve.flac")):
        items = {i.key: i for i in list_inputs(spec, EXT)}
        assert items[key].error.startswith(f"file name is not UTF-8 ({key}): rename it")
        assert not is_retryable(items[key].error)
        table = inputs_table(list(items.values()))  # where the job stopped
        assert key in table["key"].to_pylist() and json.dumps(items[key].error)
    assert not list_inputs(str(library), EXT)[0].error  # the others are inputs as before


def test_missing_input_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        list_inputs(str(tmp_path / "nowhere"), EXT)


def test_key_list(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("a/one.wav\n# comment\n\nb/three.ogg\n")
    assert read_key_list(str(path)) == {"a/one.wav", "b/three.ogg"}
    path.write_bytes("a/one.wav\r\nb/three.ogg\r\n".encode("utf-8-sig"))  # Notepad's, Excel's
    assert read_key_list(str(path)) == {"a/one.wav", "b/three.ogg"}


def test_an_input_identity_is_mtime_and_size_on_local_disk(library):
    item = next(i for i in list_inputs(str(library), EXT) if i.key == "a/one.wav")
    mtime, size = item.etag.split("/")
    assert float(mtime) > 0 and int(size) == item.size == (library / "a" / "one.wav").stat().st_size


def test_a_member_appended_again_is_read_as_its_last_version(tmp_path):
    """`tar -rf shard.tar x.wav` (or `-u`) appends a file's new version after the old one; `tar -x` keeps
    the last. Listing kept the first, so the job read the recording the shard had replaced."""
    old, new = tone(1.0, 44100, freq=330.0), tone(1.0, 44100, freq=880.0)
    shard = write_tar(tmp_path / "shards" / "s.tar", {"clips/x.wav": encoded_bytes(old, "wav")})
    data = encoded_bytes(new, "wav")
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("clips/x.wav")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (item,) = list_inputs(str(shard.parent), EXT)
    assert item.key == "s.tar/clips/x.wav"
    with AudioFile(InputAudio(item.uri, item.size, item.member_offset)) as f:
        window, _ = load_window(f, 0.0, 1.0, 44100)
    np.testing.assert_allclose(window, new, atol=1e-3)


def test_tar_links_are_error_rows_not_silently_dropped(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "shards" / "links.tar"
    shard.parent.mkdir()
    data = encoded_bytes(tone(0.5), "wav")
    with tarfile.open(shard, "w") as tar:
        real = tarfile.TarInfo("real.wav")
        real.size = len(data)
        tar.addfile(real, io.BytesIO(data))
        for name, kind in (("soft.wav", tarfile.SYMTYPE), ("hard.wav", tarfile.LNKTYPE)):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = kind, "real.wav"
            tar.addfile(link)
    items = {i.key: i for i in list_inputs(str(shard.parent), EXT)}
    assert set(items) == {"links.tar/real.wav", "links.tar/soft.wav", "links.tar/hard.wav"}
    assert not items["links.tar/real.wav"].error
    assert items["links.tar/soft.wav"].error.startswith("tar member is a link (symlink to 'real.wav')")
    assert items["links.tar/hard.wav"].error.startswith("tar member is a link (hardlink to 'real.wav')")


def test_a_symlink_loop_is_a_final_error_and_a_dangling_link_a_retryable_one(library, tmp_path):
    from ray_pipelines.audio.decode import is_retryable

    (library / "loop.wav").symlink_to("loop.wav")
    (library / "gone.wav").symlink_to("nowhere.wav")
    for spec in (str(library), str(library / "*.wav")):
        items = {i.key: i for i in list_inputs(spec, EXT)}
        assert items["loop.wav"].error.startswith("symlink loop:") and not is_retryable(items["loop.wav"].error)
        assert items["gone.wav"].error.startswith("missing: broken symlink") and is_retryable(items["gone.wav"].error)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{library / 'loop.wav'}\n")
    assert list_inputs(str(listing), EXT)[0].error.startswith("symlink loop:")
    with pytest.raises(Exception) as opened:  # the decoder says the same if a loop appears later
        AudioFile(InputAudio(str(library / "loop.wav"), 10))
    assert str(opened.value).startswith("symlink loop:")


def test_symlinked_folders_and_files_are_inputs_like_any_other_and_a_loop_is_walked_once(library, tmp_path):
    """A dataset assembled from links (before: a linked folder's files were left out without a word, and
    a glob left out linked files too)."""
    write_audio(tmp_path / "corpus" / "speaker1" / "u1.wav", tone(0.5))
    (library / "c").symlink_to(tmp_path / "corpus")  # a folder elsewhere
    (library / "b" / "link.wav").symlink_to(library / "a" / "one.wav")  # a file
    (library / "a" / "deep" / "up").symlink_to(library)  # a loop: a folder above it
    linked = ["a/deep/two.flac", "a/one.wav", "b/link.wav", "b/three.ogg", "c/speaker1/u1.wav"]
    assert [i.key for i in list_inputs(str(library), EXT)] == linked
    assert [i.key for i in list_inputs(str(library / "**" / "*.wav"), EXT)] == [
        "a/one.wav",
        "b/link.wav",
        "c/speaker1/u1.wav",
    ]
    assert [i.key for i in list_inputs(str(library / "*" / "*.wav"), EXT)] == ["a/one.wav", "b/link.wav"]

    items = {i.key: i for i in list_inputs(str(library), EXT)}
    local = fsspec.filesystem("file")
    for key in ("a/one.wav", "a/deep/two.flac"):  # a plain file's identity is what it was (no rerun after upgrading)
        info = local.info(str(library / key))
        assert items[key].etag == f"{info['mtime']}/{info['size']}"
    assert items["b/link.wav"].etag == items["a/one.wav"].etag  # a link's is its target's
    write_audio(library / "a" / "one.wav", tone(0.7))
    os.utime(library / "a" / "one.wav", (1, 1))
    target_replaced = {i.key: i.etag for i in list_inputs(str(library), EXT)}["b/link.wav"]
    assert target_replaced == f"1.0/{(library / 'a' / 'one.wav').stat().st_size}" != items["b/link.wav"].etag


def test_a_directory_in_a_list_file_is_a_final_error_row(library, tmp_path):
    from ray_pipelines.audio.decode import is_retryable

    listing = library / "list.txt"
    listing.write_text("a/one.wav\nb\n")
    items = {i.key: i for i in list_inputs(str(listing), EXT)}
    assert not items["a/one.wav"].error
    assert items["b"].error.startswith("not a file: a list file names files") and not is_retryable(items["b"].error)
    with pytest.raises(Exception) as opened:  # the decoder's word for a directory met later: final too
        AudioFile(InputAudio(str(library / "b"), 10))
    assert str(opened.value).startswith("not a file:") and not is_retryable(str(opened.value))


def test_a_spec_that_matches_nothing_is_an_error_unless_allowed(tmp_path):
    from ray_pipelines.sources import list_specs

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing listed\n")
    for spec in (str(tmp_path / "empty"), str(tmp_path / "*.flac"), str(tmp_path / "empty.txt")):
        with pytest.raises(SourceError, match="no inputs matched"):
            list_specs([spec], EXT)
        assert list_specs([spec], EXT, allow_empty=True) == []


def test_an_output_overlapping_an_input_tree_is_found(library, tmp_path):
    from ray_pipelines.sources import overlapping_input

    assert overlapping_input([str(library / "**" / "*.wav")], str(library / "out")) == str(library / "**" / "*.wav")
    assert overlapping_input([str(library / "a")], str(library)) == str(library / "a")  # the input inside the output
    assert overlapping_input([str(library)], str(tmp_path / "out")) == ""
    assert overlapping_input([str(library / "a" / "one.wav")], str(library / "a" / "out")) == ""  # a single file
    assert overlapping_input(["synth://"], str(tmp_path / "out")) == ""


def test_subfolders_of_a_bucket_are_listed_concurrently_to_what_one_walk_finds(s3_bucket, monkeypatch):
    import ray_pipelines.sources as sources

    bucket, options, fs = s3_bucket
    names = ["top.flac", "notes.txt", "a/1.flac", "a/deep/2.flac", "b/3.wav", "b/4.flac", "c/d/e/5.flac"]
    fs.pipe({f"{bucket}/in/{name}": b"x" * (i + 1) for i, name in enumerate(names)})
    fs.pipe({f"{bucket}/in/empty/": b""})  # a folder marker, as consoles create: not a file
    walked = {p: i for p, i in fs.find(f"{bucket}/in", detail=True).items() if i.get("type") != "directory"}

    folders = []
    find = type(fs)._find

    async def recording_find(self, path, **kwargs):
        folders.append(path)
        return await find(self, path, **kwargs)

    monkeypatch.setattr(type(fs), "_find", recording_find)
    listed = sources.find_files(fs, f"{bucket}/in")
    assert sorted(folders) == [f"{bucket}/in/{f}" for f in ("a", "b", "c", "empty")]  # one walk per subfolder
    assert {p: i["size"] for p, i in listed.items()} == {p: i["size"] for p, i in walked.items()}
    assert {f"{bucket}/in/{name}" for name in names} <= set(listed)  # (and the marker, as find gives it)

    fs.pipe({f"{bucket}/in/later.flac": b"y"})  # a root listing cached by the first run is not reused
    assert f"{bucket}/in/later.flac" in sources.find_files(fs, f"{bucket}/in")

    items = sources.list_inputs(f"s3://{bucket}/in", EXT, options)
    assert [i.key for i in items] == sorted(["top.flac", "later.flac", "a/1.flac", "a/deep/2.flac", "b/3.wav",
                                             "b/4.flac", "c/d/e/5.flac"])  # fmt: skip


DELETE_A_FOLDER_MID_WALK = """
import os, shutil, sys
from ray_pipelines.sources import list_inputs

root, subfolders = sys.argv[1], {os.path.join(sys.argv[1], name) for name in ("a", "b")}
scanned = []

def delete_the_other_subfolder(event, args):  # a real deletion, between the root's listing and a subfolder's
    if event == "os.scandir" and args[0] in subfolders and not scanned:
        scanned.append(args[0])
        shutil.rmtree((subfolders - {args[0]}).pop())

sys.addaudithook(delete_the_other_subfolder)
print(" ".join(i.key for i in list_inputs(root, ["wav", "flac", "ogg"])))
print(os.path.relpath(scanned[0], root))
"""


def test_a_subfolder_deleted_while_the_walk_runs_is_left_out_not_an_input_not_found(library):
    """Before: the listing failed with ``input not found: <the whole input>`` (a nightly run over a
    folder being tidied died); ``fs.find`` left such a folder out. An audit hook deletes the subfolder
    not yet walked at the moment the first one is opened, in a process of its own (hooks stay)."""
    done = subprocess.run(
        [sys.executable, "-c", DELETE_A_FOLDER_MID_WALK, str(library)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    keys, walked = done.stdout.split("\n")[:2]
    assert keys.split() == [k for k in ("a/deep/two.flac", "a/one.wav", "b/three.ogg") if k.startswith(walked + "/")]
    assert not (library / ("b" if walked == "a" else "a")).exists()


def test_a_list_file_of_s3_urls_is_looked_up_concurrently_to_the_same_items(s3_bucket):
    """Its lines' files are looked up LIST_CONCURRENCY at a time (one after another, a million lines were
    a million round trips): the same items, in the list's order, with each one's etag and size."""
    bucket, options, fs = s3_bucket
    for i in range(25):
        fs.pipe(f"{bucket}/in/c{i % 3}/clip{i:02d}.flac", bytes(100 + i))
    fs.pipe(f"{bucket}/in/c1/extra.flac", bytes(99))
    lines = [f"s3://{bucket}/in/c{i % 3}/clip{i:02d}.flac" for i in range(25)]
    lines += [f"s3://{bucket}/in/gone.flac", "c1/extra.flac", f"s3://{bucket}/in/c2"]  # missing, relative, a folder
    fs.pipe(f"{bucket}/in/inputs.txt", "\n".join(lines).encode())
    items = list_inputs(f"s3://{bucket}/in/inputs.txt", EXT, storage_options=options)
    assert [i.key for i in items] == [line.removeprefix("s3://") for line in lines]
    by_key = {i.key: i for i in items}
    for i in range(25):
        item, info = by_key[f"{bucket}/in/c{i % 3}/clip{i:02d}.flac"], fs.info(f"{bucket}/in/c{i % 3}/clip{i:02d}.flac")
        assert (item.size, item.etag, item.error) == (100 + i, info["ETag"].strip('"'), "")
    assert by_key[f"{bucket}/in/gone.flac"].error.startswith("missing: listed in the list file")
    assert (by_key["c1/extra.flac"].size, by_key["c1/extra.flac"].error) == (99, "")
    assert by_key[f"{bucket}/in/c2"].error.startswith("not a file: a list file names files")


def test_a_list_files_dot_relative_lines_are_found_on_s3_and_one_file_named_twice_is_read_once(s3_bucket, tmp_path):
    """`find . -name '*.flac' > list.txt` writes ./a.flac: on S3 that was s3://b/in/./a.flac, "missing" in
    every run (exit 3 every night); `a.flac` and `./a.flac` in one list were read twice."""
    bucket, options, fs = s3_bucket
    fs.pipe(f"{bucket}/in/c1/a.flac", bytes(100))
    fs.pipe(f"{bucket}/in/b.flac", bytes(120))
    fs.pipe(f"{bucket}/in/list.txt", b"./c1/a.flac\nb.flac\n./b.flac\nc1/../b.flac\n")
    items = list_inputs(f"s3://{bucket}/in/list.txt", EXT, storage_options=options)
    assert [(i.key, i.size, i.error) for i in items] == [("./c1/a.flac", 100, ""), ("b.flac", 120, "")]
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "a.flac").write_bytes(bytes(100))
    (tmp_path / "list.txt").write_text("c1/a.flac\n./c1/a.flac\n")
    assert [i.key for i in list_inputs(str(tmp_path / "list.txt"), EXT)] == ["c1/a.flac"]


def test_a_local_list_files_lines_naming_one_file_are_read_once_as_it_is_read(tmp_path):
    """Local paths are read normalised by their text (fsspec's abspath: `link/../a.flac` is `a.flac`, the
    link not followed), so lines that normalise to one path are one file, read once under the first key."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "a.flac").write_bytes(bytes(10))
    (tmp_path / "a.flac").write_bytes(bytes(20))
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    (tmp_path / "list.txt").write_text(f"a.flac\nlink/../a.flac\n./a.flac\n{tmp_path / 'a.flac'}\n")
    assert [(i.key, i.size) for i in list_inputs(str(tmp_path / "list.txt"), EXT)] == [("a.flac", 20)]
