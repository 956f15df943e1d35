"""Listing inputs whose paths or sizes the store gives in ways a plain listing does not expect: a list file's
`../` lines on an object store, an HTTP server that sends no Content-Length."""

from __future__ import annotations

import http.server

import numpy as np

from ray_pipelines.audio.decode import AudioFile, InputAudio
from ray_pipelines.engine.changes import identity_changed
from ray_pipelines.engine.decode import Window, WindowDecoder
from ray_pipelines.sources import list_inputs
from tests.audio_helpers import encoded_bytes, tone, write_audio
from tests.conftest import http_server

EXT = ["wav", "flac", "ogg", "mp3"]


def test_a_list_files_parent_folder_lines_are_found_on_s3_as_on_disk(s3_bucket, tmp_path):
    """`../audio/a.wav` in s3://b/t/lists/train.txt was the key t/lists/../audio/a.wav, which names no object
    (an object store's keys are literal): `missing`, retried, exit 3 in every run; on disk it was read (fsspec's
    abspath). The line stays the key, as written."""
    bucket, options, fs = s3_bucket
    fs.pipe(f"{bucket}/t/audio/a.wav", encoded_bytes(tone(0.5), "wav"))
    fs.pipe(f"{bucket}/t/lists/b.wav", encoded_bytes(tone(0.3), "wav"))
    lines = b"../audio/a.wav\n./../lists/b.wav\n"
    fs.pipe(f"{bucket}/t/lists/train.txt", lines)
    items = list_inputs(f"s3://{bucket}/t/lists/train.txt", EXT, storage_options=options)
    assert [(i.key, i.uri, i.error) for i in items] == [
        ("../audio/a.wav", f"s3://{bucket}/t/audio/a.wav", ""),
        ("./../lists/b.wav", f"s3://{bucket}/t/lists/b.wav", ""),
    ]
    assert [i.size for i in items] == [fs.size(f"{bucket}/t/audio/a.wav"), fs.size(f"{bucket}/t/lists/b.wav")]
    write_audio(tmp_path / "audio" / "a.wav", tone(0.5))
    write_audio(tmp_path / "lists" / "b.wav", tone(0.3))
    (tmp_path / "lists" / "train.txt").write_bytes(lines)
    local = list_inputs(str(tmp_path / "lists" / "train.txt"), EXT)
    assert [(i.key, i.uri, i.error) for i in local] == [
        ("../audio/a.wav", str(tmp_path / "audio" / "a.wav"), ""),
        ("./../lists/b.wav", str(tmp_path / "lists" / "b.wav"), ""),
    ]


def test_a_presigned_lines_query_is_kept_as_written_where_its_path_is_resolved(tmp_path):
    """An http(s) list file's relative line: its path resolved, its query (a signature, which may hold
    `/` and `..`) as written."""
    served = write_audio(tmp_path / "a" / "one.wav", tone(0.5)).read_bytes()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "signed.txt").write_text("../a/one.wav?X-Amz-Signature=ab/../cd\n")

    class Files(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    with http_server(Files) as host:
        [item] = list_inputs(f"http://{host}/lists/signed.txt", EXT)
        assert (item.key, item.uri, item.source, item.error) == (
            "../a/one.wav?X-Amz-Signature=ab/../cd",
            f"http://{host}/a/one.wav?X-Amz-Signature=ab/../cd",
            f"http://{host}/a/one.wav",
            "",
        )
        assert item.size == len(served)


def chunked_server(body: bytes, last_modified: str | None):
    """A handler that answers GET and HEAD without Content-Length (chunked, as a server streaming what it
    makes: a CGI script, a proxy), and ignores ranges."""

    class Chunked(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _headers(self):
            self.send_response(200)
            self.send_header("Content-Type", "audio/wav")
            self.send_header("Transfer-Encoding", "chunked")
            if last_modified:
                self.send_header("Last-Modified", last_modified)
            self.end_headers()

        def do_HEAD(self):
            self._headers()

        def do_GET(self):
            self._headers()
            for at in range(0, len(body), 65536):
                chunk = body[at : at + 65536]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")

    return Chunked


def test_an_http_input_without_content_length_is_read_not_an_empty_file(tmp_path):
    """Its listing recorded size 0 and the decoder's final error was `empty file (0 bytes)` for a 529 KB
    WAV. Its size is now unknown (-1): the decoder copies the stream to a temporary file and reads it.
    Its identity (Last-Modified, with no size) is the same in every listing, so a rerun does not see it
    changed; without Last-Modified there is none (never "changed")."""
    path = write_audio(tmp_path / "clip.wav", tone(3.0, 44100, channels=2))
    body = path.read_bytes()
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    decoder = WindowDecoder(
        plan=lambda key, duration: [Window(0, 0.5), Window(1, 2.0)], sample_rate=16000, duration=1.0, index_column="i"
    )
    expected = decoder.decode_input({"key": "clip.wav", "uri": str(path), "size": len(body)})
    with http_server(chunked_server(body, stamp)) as host:
        [item] = list_inputs(f"http://{host}/clip.wav", EXT)
        [again] = list_inputs(f"http://{host}/clip.wav", EXT)
        assert (item.key, item.size, item.etag, item.error) == ("clip.wav", -1, stamp, "")
        assert not identity_changed(item.etag, again.etag)
        rows = decoder.decode_input(item.to_row())
        with AudioFile(InputAudio.from_row(item.to_row())) as remote:
            assert (remote.size, remote.frames) == (len(body), 3 * 44100)
    assert [row["error"] for row in rows] == ["", ""]
    for row, local in zip(rows, expected):
        np.testing.assert_array_equal(row["audio"], local["audio"])
    with http_server(chunked_server(body, None)) as host:
        [item] = list_inputs(f"http://{host}/clip.wav", EXT)
        assert (item.size, item.etag) == (-1, "")
        assert decoder.decode_input(item.to_row())[0]["error"] == ""
