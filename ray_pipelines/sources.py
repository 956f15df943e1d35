"""Listing inputs: one row per audio input with a stable key.

A key is the input's path relative to its source root (the directory of a
glob's non-wildcard prefix, the directory given, or the shard for a tar
member), so it stays the same wherever the data is mounted and whatever
else is added to the source. Listing reads no audio, only names and sizes
(and tar headers).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import posixpath
import re
import stat
import tarfile
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from fsspec.asyn import sync
from fsspec.utils import glob_translate

from .config import AUDIO_EXTENSIONS, OTHER_MEDIA_EXTENSIONS, ConfigError
from .key_lines import parse_key_line
from .storage import get_fs, has_magic, is_local, split_protocol, to_url, without_query

log = logging.getLogger(__name__)

LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list")
# A folder of macOS's zip archives holding only AppleDouble files (below).
MACOS_ZIP_FOLDER = "__MACOSX"


class SourceError(RuntimeError):
    """The source cannot be listed at all (missing path, unreachable storage)."""


NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


@dataclass(slots=True)  # no __dict__ per input: 65 MB less for a listing of a million inputs
class InputItem:
    """One input to a job. Tar members carry the shard URL plus byte range."""

    key: str
    uri: str
    size: int  # bytes; -1 where the store does not say (an HTTP answer without Content-Length)
    etag: str = ""  # its identity (etag, else mtime/size): tells a changed input from a committed one
    member_offset: int = -1  # >= 0 for a tar member: data offset inside the shard
    error: str = ""  # listing-time error (e.g. unsafe tar member name)
    source: str = ""  # where it came from, for people: the URL, or shard URL#member
    # Job columns (e.g. label, split). Read-only: replace it, never update it in place; items without
    # any share one empty mapping (an empty dict per input was 65 MB of a million inputs' listing).
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA)

    def to_row(self) -> dict[str, Any]:
        """The row the engine hands to Ray for this input (``runner.inputs_table``): ``source`` is
        None where it would repeat the uri (decoders fall back to the uri)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        row["source"] = self.source or None
        row.update(self.extra)
        return row


def _is_glob(fs, path: str) -> bool:
    """A pattern, unless its only pattern characters are brackets and a file or folder of that very name
    is there: music libraries name folders ``Album [2019]`` and files ``take [1].wav``, which as patterns
    match ``Album 2`` and ``take 1.wav``. (``*`` and ``?`` stay patterns: ``/data/*.wav`` is every file
    even where a stray file is named ``*.wav``.)"""
    if not has_magic(path):
        return False
    return "*" in path or "?" in path or not fs.exists(path)


ESCAPED = re.compile(r"\[([\[*?])\]")  # [[], [*], [?]: the character itself in a pattern (glob.escape)


def _glob_root(path: str) -> str:
    """The directory part of ``path`` before its first wildcard (``[[]``, ``[*]``, ``[?]``: the
    character itself, as :func:`glob.escape` writes it)."""
    parts = path.split("/")
    fixed = []
    for part in parts:
        literal = ESCAPED.sub(r"\1", part)
        if has_magic(ESCAPED.sub("", part)):
            break
        fixed.append(literal)
    return "/".join(fixed[:-1] if len(fixed) == len(parts) else fixed)


def _etag_of(info: dict[str, Any]) -> str:
    """An input's identity, compared with the one its committed rows recorded (engine/changes.py):
    the store's tag (an ETag, else GCS's md5Hash) where it has one, else ``mtime/size``."""
    for name in ("ETag", "etag", "md5Hash"):
        if info.get(name):
            return str(info[name]).strip('"')
    for name in ("mtime", "LastModified", "last_modified", "Last-Modified", "created"):
        if info.get(name) is not None:
            size = _size_of(info)
            return f"{info[name]}/{size}" if size >= 0 else str(info[name])  # (a size unknown is left out)
    return ""


def _size_of(info: dict[str, Any]) -> int:
    """A file's size in bytes from its info, or -1 where the store does not give it (an HTTP server that
    answers without Content-Length): the decoder then measures the file, where 0 made it an "empty file"."""
    size = info.get("size")
    return -1 if size is None else int(size)


def _link_error(fs, path: str, info: dict[str, Any]) -> str:
    """Why a local symlink that does not lead to a file cannot be an input ("" when it is not one):
    a loop is final, a dangling link may heal (its target may still be copied in)."""
    if not (is_local(fs) and info.get("islink") and info.get("type") != "file"):
        return ""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"symlink loop: {path} ({e.strerror})"
        return f"missing: broken symlink to {info.get('destination', '?')}"
    return ""


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower().lstrip(".")


def _is_audio(path: str, extensions: Iterable[str]) -> bool:
    return _extension(path) in set(extensions)


def _is_tar(path: str) -> bool:
    return path.lower().endswith(".tar")


# Archives other than a plain .tar: tars compressed as a whole (a member has no byte range to read it by),
# zip, 7z and rar. Named and left out, so a folder of them is not "no inputs matched" without a word.
OTHER_ARCHIVE_EXTENSIONS = (
    *(".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst"),
    *(".zip", ".7z", ".rar"),
)


def is_hidden(relpath: str) -> bool:
    """A dotfile, a file in a dot folder (``.git``, ``.Trash``), or one under ``__MACOSX/``.

    macOS writes an AppleDouble twin (``._clip.flac``, a few KB of metadata) beside every file it copies
    to a non-Apple disk, in its tars and, under ``__MACOSX/``, in its zips: listed, each was an
    "undecodable" error row. Folders, globs and tar shards leave such names out, as Hugging Face datasets'
    folder loading does; a single file, a list file's lines and a glob that spells a hidden part still reach
    them, and the config's ``include_hidden`` takes them all.
    """
    if not relpath.startswith(".") and "/." not in relpath and MACOS_ZIP_FOLDER not in relpath:
        return False  # nearly every name, without splitting it (about 0.13 µs a key)
    return any(
        (part.startswith(".") and part not in (".", "..")) or part == MACOS_ZIP_FOLDER for part in relpath.split("/")
    )


def list_inputs(
    spec: str, extensions: Iterable[str], storage_options: dict[str, Any] | None = None, include_hidden: bool = False
) -> list[InputItem]:
    """List every input named by ``spec``: a glob, directory, file, list file or tar shard(s); hidden names
    (:func:`is_hidden`) only with ``include_hidden`` or where the spec names them."""
    items, left_out = _list_inputs(spec, extensions, storage_options, include_hidden)
    if left_out:
        log.warning("%s: left out %s", spec, left_out)
    return items


@dataclass
class LeftOut:
    """Files a folder or glob listing left out that a user may have meant as inputs."""

    archives: list[str] = field(default_factory=list)  # not plain .tar
    # Media whose extension is not in ``extensions``: counted, not kept (a bucket of videos has millions).
    media: Counter[str] = field(default_factory=Counter)  # extension -> files
    media_example: str = ""

    def add_media(self, key: str) -> None:
        self.media[_extension(key)] += 1
        self.media_example = self.media_example or key

    def __bool__(self) -> bool:
        return bool(self.archives or self.media)

    def __str__(self) -> str:
        parts = []
        if self.archives:
            parts.append(
                f"{len(self.archives)} archives that are not plain .tar (e.g. {self.archives[0]}): only a .tar's "
                "members are read where they lie (by byte range); unpack them, or repack them as .tar (the audio "
                "in them is compressed already)"
            )
        if self.media:
            counts = self.media.most_common()
            named = ", ".join(f"{ext}: {n}" for ext, n in counts[:MEDIA_KINDS_NAMED])
            more = f", {len(counts) - MEDIA_KINDS_NAMED} more kinds" if len(counts) > MEDIA_KINDS_NAMED else ""
            files = "1 media file" if self.media.total() == 1 else f"{self.media.total()} media files"
            parts.append(
                f"{files} whose extension is not in `extensions` ({named}{more}; e.g. {self.media_example}): add "
                "the extension to `extensions` to read the audio (through FFmpeg)"
            )
        return "; and ".join(parts)


MEDIA_KINDS_NAMED = 5
MEDIA_EXTENSIONS = frozenset((*AUDIO_EXTENSIONS, *OTHER_MEDIA_EXTENSIONS))


def _list_inputs(
    spec: str, extensions: Iterable[str], storage_options: dict[str, Any] | None, include_hidden: bool
) -> tuple[list[InputItem], LeftOut]:
    """:func:`list_inputs`'s items, and the keys of the other archives and media it left out."""
    extensions = list(extensions)
    protocol, _ = split_protocol(spec)
    fs, path = get_fs(spec, storage_options)
    try:
        # An http(s) URL's query is no pattern and no part of its name (a presigned list.txt?X-Amz-Signature=...)
        named = without_query(path)  # (other URLs and paths as they are)
        glob = _is_glob(fs, named)
        if named.lower().endswith(LIST_FILE_EXTENSIONS) and not glob:
            return _list_from_list_file(fs, path, extensions, storage_options, include_hidden), LeftOut()
        if glob:
            root = _glob_root(path)
            infos = glob_local(path, root) if is_local(fs) else fs.glob(path, detail=True)
            files = {p: i for p, i in infos.items() if i.get("type", "file") == "file" or _link_error(fs, p, i)}
            skip_hidden = not (include_hidden or is_hidden(_relative_key(path, root)))  # a pattern may ask for them
        elif fs.isdir(path):
            root = path.rstrip("/")
            files = find_files(fs, root)
            skip_hidden = not include_hidden
        elif fs.exists(path):
            root = posixpath.dirname(named.rstrip("/"))  # (a query may hold a '/')
            files = {path: fs.info(path)}
            skip_hidden = False
        else:
            raise SourceError(f"input not found: {spec}")
        _add_missing_sizes(fs, files)
    except SourceError:
        raise
    except FileNotFoundError:
        raise SourceError(f"input not found: {spec}") from None
    except Exception as e:  # unreachable endpoint, missing bucket, permissions
        raise SourceError(f"cannot list input {spec}: {type(e).__name__}: {e}") from None

    items: list[InputItem] = []
    shards: list[tuple[str, str, dict[str, Any]]] = []
    hidden: list[str] = []
    left_out = LeftOut()
    audio_listing = not MEDIA_EXTENSIONS.isdisjoint(extensions)  # (not the score job's .pt files)
    for file_path, info in sorted(files.items()):
        name = without_query(file_path)  # a presigned URL named alone: its signature is no part of its name
        key = _relative_key(name, root)
        if skip_hidden and is_hidden(key):
            if _is_audio(name, extensions) or _is_tar(name):  # (a .DS_Store was never an input)
                hidden.append(key)
            continue
        if name.lower().endswith(OTHER_ARCHIVE_EXTENSIONS):
            left_out.archives.append(key)
            continue
        link_error = _link_error(fs, file_path, info) if _is_audio(name, extensions) else ""
        if _readable_name(key) != key and (_is_audio(name, extensions) or _is_tar(name)):
            items.append(_not_utf8_item(key, int(info.get("size") or 0), _etag_of(info)))
        elif link_error:
            items.append(InputItem(key=key, uri=to_url(fs, file_path), size=0, error=link_error))
        elif _is_tar(name):
            shards.append((file_path, key, info))
        elif _is_audio(name, extensions):
            items.append(_file_item(key, fs, file_path, info))
        elif audio_listing and _extension(name) in MEDIA_EXTENSIONS:
            left_out.add_media(key)
    if hidden:
        log.info("%s: left out %d hidden audio files, e.g. %s (sources.is_hidden)", spec, len(hidden), hidden[0])
    if shards:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for members in pool.map(lambda s: _list_tar(fs, *s, extensions, include_hidden), shards):
                items.extend(members)
    return sorted(items, key=lambda i: i.key), left_out


def _add_missing_sizes(fs, files: dict[str, dict[str, Any]]) -> None:
    """Look up the files a listing gave without a size (an HTTP server's index page names only the
    links): the size and identity come from each file's own answer (a HEAD request), not 0 and none."""
    unsized = [path for path, info in files.items() if info.get("size") is None and info.get("type") == "file"]
    for path, info in zip(unsized, _infos_of([(fs, path) for path in unsized])):
        if isinstance(info, dict):
            files[path] = info  # a file gone since is an error row when it is read


# Subfolder walks in flight at once (beyond its connection pool, 10 by default, aiobotocore queues them).
LIST_CONCURRENCY = 32


def find_files(fs, root: str) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` with its info: what ``fs.find(root, detail=True)`` gives, directories
    left out. On an asynchronous object store (s3fs, gcsfs) whose root holds subfolders, one delimited
    listing of the root names them and each is walked concurrently: ``find`` walks the whole tree one
    page of 1,000 keys at a time, one request after another (10,000 pages for 10 million objects)."""
    if is_local(fs):
        return walk_local(root)
    subfolders: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    if getattr(fs, "async_impl", False) and hasattr(fs, "_find"):
        for info in fs.ls(root, detail=True, refresh=True):  # never a cached listing of an earlier run
            if info.get("type") == "directory":
                subfolders.append(info["name"].rstrip("/"))
            else:
                files[info["name"]] = info
    if len(subfolders) < 2:  # nothing to share out: one walk
        found = [fs.find(root, detail=True)]
    else:
        found = sync(fs.loop, _walk_all, fs, subfolders)  # on the filesystem's own event loop
    for part in found:
        files.update(part)
    return {p: i for p, i in files.items() if i.get("type", "file") != "directory"}


def walk_local(root: str, maxdepth: int | None = None) -> dict[str, dict[str, Any]]:
    """Every file under a local folder (``maxdepth`` levels: 1 is the folder's own files), with what
    ``fs.find`` gives of it (``mtime``, ``size``: the identity), following symlinked folders.

    Datasets are often assembled from links (``train/speaker1 -> /mnt/corpus/speaker1``), and
    torchvision's ``ImageFolder`` follows them too; ``fs.find`` did not, so such a folder's files were
    left out without a word, and a glob left out symlinked files as well. A symlinked file's identity is
    its target's (a replaced target is a changed input). A link to a folder above it (a loop) is not
    followed: its files are listed once, by their path without the loop. A link that leads nowhere
    (dangling, or a loop of links) is listed as such, for ``_link_error`` to name. A file or folder deleted
    while the walk runs is left out, as ``fs.find`` left it out."""
    files: dict[str, dict[str, Any]] = {}
    top = os.stat(root)
    stack = [(root, 1, frozenset({(top.st_dev, top.st_ino)}))]  # (folder, depth, the real folders above)
    while stack:
        folder, depth, above = stack.pop()
        try:
            entries = os.scandir(folder)
        except FileNotFoundError:
            if folder == root:
                raise
            log.debug("%s: deleted while the folder above it was listed, left out", folder)
            continue  # its files are gone: not inputs (another error, e.g. permissions, fails the listing)
        with entries:
            for entry in entries:
                path = entry.path
                try:
                    info = entry.stat()  # follows a link
                except OSError:
                    if entry.is_symlink():
                        files[path] = dict(name=path, type="other", islink=True, destination=os.readlink(path))
                    continue
                if stat.S_ISREG(info.st_mode):
                    link = entry.is_symlink()
                    files[path] = dict(name=path, type="file", size=info.st_size, mtime=info.st_mtime, islink=link)
                elif stat.S_ISDIR(info.st_mode) and (maxdepth is None or depth < maxdepth):
                    real = (info.st_dev, info.st_ino)
                    if real in above:
                        log.info("%s: a link to a folder above it, not followed", path)
                    else:
                        stack.append((path, depth + 1, above | {real}))
    return files


def glob_local(pattern: str, root: str) -> dict[str, dict[str, Any]]:
    """``fs.glob`` on local disk (its own pattern rules: ``glob_translate``) over :func:`walk_local`, so
    a glob finds what a folder listing finds: files through symlinked folders, and symlinked files."""
    if not os.path.isdir(root):
        return {}
    maxdepth = None if "**" in pattern else pattern[len(root) + 1 :].count("/") + 1
    matches = re.compile(glob_translate(pattern)).match
    return {path: info for path, info in walk_local(root, maxdepth).items() if matches(path)}


async def _each_at_most_so_many(call, args: list[Any], return_exceptions: bool = False) -> list[Any]:
    """``await call(arg)`` for every arg, ``LIST_CONCURRENCY`` of them in flight at once, in order."""
    limit = asyncio.Semaphore(LIST_CONCURRENCY)

    async def one(arg: Any) -> Any:
        async with limit:
            return await call(arg)

    return await asyncio.gather(*(one(arg) for arg in args), return_exceptions=return_exceptions)


async def _walk_all(fs, folders: list[str]) -> list[dict[str, dict[str, Any]]]:
    return await _each_at_most_so_many(lambda folder: fs._find(folder, detail=True), folders)


def _relative_key(file_path: str, root: str) -> str:
    root = root.rstrip("/")
    if root and file_path.startswith(root + "/"):
        return file_path[len(root) + 1 :]
    return file_path.lstrip("/")


def _readable_name(name: str) -> str:
    """``name`` as it can be stored (UTF-8): bytes that are not UTF-8 (a name written by an old system in
    Latin-1 or Shift-JIS reaches Python as surrogates) shown as ``\\xe9``."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _not_utf8_item(key: str, size: int, etag: str) -> InputItem:
    """A final error row for a file whose name is not UTF-8: its key could not be stored (Arrow, JSON)
    and one such name stopped the whole job with UnicodeEncodeError."""
    shown = _readable_name(key)
    return InputItem(
        key=shown,
        uri=shown,
        size=size,
        etag=etag,
        error=f"file name is not UTF-8 ({shown}): rename it, e.g. convmv -f latin1 -t utf8 --notest",
    )


LISTED_DIRECTORY = (
    "not a file: a list file names files or .tar shards, one per line; give a folder as an input of its own"
)


def _list_from_list_file(
    fs, path: str, extensions: list[str], storage_options, include_hidden: bool
) -> list[InputItem]:
    """A text file with one input per line (paths relative to the list file, or URLs)."""
    with fs.open(path, "r", encoding="utf-8-sig") as f:  # without the BOM Windows tools write
        lines = [line for line in map(parse_key_line, f) if line is not None]
    base = posixpath.dirname(without_query(path))  # (a presigned list file's query may hold a '/')
    specs = []  # (key, spec)
    seen: set[str] = set()
    for line in lines:
        if "://" not in line and not line.startswith("/"):
            # The key stays the line as written, as the outputs already committed have it.
            key, spec = line, to_url(fs, _joined_path(base, line))
        else:
            key, spec = split_protocol(without_query(line))[1].lstrip("/"), line
        # the file it names: a URL without its query (signatures differ per signing), a path as it is read
        named = without_query(spec) if "://" in spec else os.path.normpath(spec)
        if named not in seen:  # one file named twice (`a.wav` and `./a.wav`) is read once, under its first key
            seen.add(named)
            specs.append((key, spec))
    del lines, seen
    items: list[InputItem] = []
    for start in range(0, len(specs), LIST_FILE_CHUNK):  # the store's answers held a chunk at a time
        entries = [(key, spec, *get_fs(spec, storage_options)) for key, spec in specs[start : start + LIST_FILE_CHUNK]]
        infos = _infos_of([(entry_fs, entry_path) for _, _, entry_fs, entry_path in entries])
        for (key, entry_spec, entry_fs, entry_path), info in zip(entries, infos):
            items.extend(_list_file_entry(key, entry_spec, entry_fs, entry_path, info, extensions, include_hidden))
    return items


def _joined_path(folder: str, line: str) -> str:
    """A list file's relative ``line`` below its ``folder``, with its ``.`` and ``..`` resolved: an object
    store has no such folders (its keys are literal), so `./a.wav` (from `find .`) and `../audio/a.wav` named
    no object and were missing on S3 in every run; local paths are read resolved so anyway (fsspec's
    abspath). An http(s) URL's path is resolved, not its query (a presigned line's signature)."""
    if folder.lower().startswith(("http://", "https://")):
        url = urllib.parse.urlsplit(f"{folder}/{line}")
        return urllib.parse.urlunsplit(url._replace(path=posixpath.normpath(url.path)))
    return posixpath.normpath(posixpath.join(folder, line))


# Lines of a list file whose files are looked up together (their infos held at once).
LIST_FILE_CHUNK = 10_000


def _list_file_entry(
    key: str, entry_spec: str, entry_fs, entry_path: str, info, extensions: list[str], include_hidden: bool
) -> list[InputItem]:
    """The inputs one line of a list file names (a tar shard names its members), from its ``info``
    (or the error looking it up raised: a missing file or a link loop is an error row)."""
    if isinstance(info, FileNotFoundError):
        return [InputItem(key=key, uri=entry_spec, size=0, error="missing: listed in the list file but not found")]
    if isinstance(info, OSError) and info.errno == errno.ELOOP:
        return [InputItem(key=key, uri=entry_spec, size=0, error=f"symlink loop: {entry_path} ({info.strerror})")]
    if isinstance(info, BaseException):
        raise info
    link_error = _link_error(entry_fs, entry_path, info)
    if link_error:
        return [InputItem(key=key, uri=entry_spec, size=0, error=link_error)]
    if info.get("type") == "directory":  # final: it will not become a file by itself
        return [InputItem(key=key, uri=entry_spec, size=0, error=LISTED_DIRECTORY)]
    if _is_tar(entry_path):
        return _list_tar(entry_fs, entry_path, key, info, extensions, include_hidden)
    if entry_path.lower().endswith(OTHER_ARCHIVE_EXTENSIONS):
        reason = "an archive that is not plain .tar: only a .tar's members are read; unpack it, or repack it as .tar"
        return [InputItem(key=key, uri=entry_spec, size=0, error=reason)]
    return [_file_item(key, entry_fs, entry_path, info)]


def _file_item(key: str, fs, path: str, info: dict[str, Any]) -> InputItem:
    """The input a listed file is: its URL (a presigned one's query kept: the decoder fetches with it) and,
    where that has a query, the URL without it as the source the output's rows name."""
    uri = to_url(fs, path)
    bare = without_query(uri)
    return InputItem(key=key, uri=uri, size=_size_of(info), etag=_etag_of(info), source=bare if bare != uri else "")


def _infos_of(entries: list[tuple[Any, str]]) -> list[dict[str, Any] | BaseException]:
    """``fs.info`` of each ``(fs, path)``, or the error it raised. On an asynchronous object store the
    requests go out ``LIST_CONCURRENCY`` at a time: one after another, a list file of a million S3 URLs
    was a million round trips before the job started."""
    found: list[dict[str, Any] | BaseException] = [{} for _ in entries]
    by_fs: dict[int, tuple[Any, list[int]]] = {}
    for at, (fs, _) in enumerate(entries):
        by_fs.setdefault(id(fs), (fs, []))[1].append(at)
    for fs, positions in by_fs.values():
        paths = [entries[at][1] for at in positions]
        if getattr(fs, "async_impl", False) and hasattr(fs, "_info") and len(paths) > 1:
            infos = sync(fs.loop, _info_all, fs, paths)  # on the filesystem's own event loop
        else:
            infos = [_info_or_error(fs, path) for path in paths]
        for at, info in zip(positions, infos):
            found[at] = info
    return found


def _info_or_error(fs, path: str) -> dict[str, Any] | BaseException:
    try:
        return fs.info(path)
    except Exception as e:  # the caller tells a missing file from a failure of the store
        return e


async def _info_all(fs, paths: list[str]) -> list[dict[str, Any] | BaseException]:
    return await _each_at_most_so_many(fs._info, paths, return_exceptions=True)  # errors told per path


def _safe_member_name(name: str) -> bool:
    normal = posixpath.normpath(name)
    return not (name.startswith("/") or normal.startswith("..") or "/../" in f"/{name}/" or normal == ".")


def _list_tar(
    fs, shard_path: str, shard_key: str, info: dict[str, Any], extensions: list[str], include_hidden: bool = False
) -> list[InputItem]:
    """One item per audio member of a WebDataset-style shard (key = shard key + member name); hidden member
    names (:func:`is_hidden`) only with ``include_hidden``, however the shard was named. A name the shard
    holds twice (``tar -u`` or ``-r`` appends a file's new version) is its last member, as ``tar -x`` and
    :meth:`tarfile.TarFile.getmember` take it."""
    shard_url = to_url(fs, shard_path)
    etag = _etag_of(info)
    items: dict[str, InputItem] = {}
    try:
        with fs.open(shard_path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not _is_audio(member.name, extensions) or not (member.isfile() or member.issym() or member.islnk()):
                    continue
                if not include_hidden and is_hidden(member.name):  # macOS's tar adds a ._ twin of every file
                    continue
                key = f"{shard_key}/{member.name}"
                if _readable_name(key) != key:  # tarfile reads a non-UTF-8 name as surrogates too
                    items[key] = _not_utf8_item(key, member.size, etag)
                    continue
                if member.issym() or member.islnk():  # its bytes are another member's, or outside the shard
                    kind = "symlink" if member.issym() else "hardlink"
                    items[key] = InputItem(
                        key=key,
                        uri=shard_url,
                        size=0,
                        etag=etag,
                        error=f"tar member is a link ({kind} to {member.linkname!r}); store the file itself",
                    )
                    continue
                if not _safe_member_name(member.name):
                    items[key] = InputItem(
                        key=key,
                        uri=shard_url,
                        size=member.size,
                        etag=etag,
                        error=f"unsafe tar member name {member.name!r}: it escapes its folder",
                    )
                    continue
                items[key] = InputItem(
                    key=key,
                    uri=shard_url,
                    size=member.size,
                    etag=etag,
                    member_offset=member.offset_data,
                    source=f"{shard_url}#{member.name}",
                )
    except tarfile.TarError as e:
        items[shard_key] = InputItem(
            key=shard_key,
            uri=shard_url,
            size=int(info.get("size") or 0),
            etag=etag,
            error=f"unreadable tar shard: {e}",
        )
    return list(items.values())


def list_specs(
    specs: Iterable[str],
    extensions: Iterable[str],
    storage_options: dict[str, Any] | None = None,
    allow_empty: bool = False,
    include_hidden: bool = False,
) -> list[InputItem]:
    """Every input of every spec, one per key, sorted by key.

    A spec that matches nothing (a glob typo, an empty folder or list file) raises
    :class:`SourceError` unless ``allow_empty``: an empty run would look like a finished one. A file
    that two specs both name (a glob and a folder around it) is one input; two different files with
    the same key (``a/x.flac`` under both ``/data1`` and ``/data2``) raise :class:`ConfigError`: keeping
    one of them, as listing did before, left the other out of the output without a word.
    """
    extensions = list(extensions)
    specs = list(specs)
    items: dict[str, InputItem] = {}
    clashes: list[tuple[InputItem, InputItem]] = []
    # A file -> its first key, only where specs can name one file under two keys (one spec's folder inside
    # another's, a single file or a list file beside a folder): a million-input listing pays nothing else.
    first_keys: dict[str, str] | None = {} if _specs_can_nest(specs, storage_options) else None
    renamed: list[tuple[InputItem, str]] = []
    for spec in specs:
        found, left_out = _list_inputs(spec, extensions, storage_options, include_hidden)
        if left_out and (found or allow_empty):
            log.warning("%s: left out %s", spec, left_out)
        elif left_out:
            raise SourceError(f"no inputs matched {spec} apart from {left_out}")
        if not found and not allow_empty:
            hidden = [] if include_hidden else list_inputs(spec, extensions, storage_options, include_hidden=True)
            if hidden:  # a folder whose recordings all sit in a dot folder
                raise SourceError(
                    f"no inputs matched {spec} apart from hidden files ({len(hidden)}, e.g. {hidden[0].key}): set "
                    "include_hidden: true to take dotfiles, dot folders and __MACOSX/"
                )
            raise SourceError(
                f"no inputs matched {spec} (extensions: {', '.join(extensions)}); "
                "check the path, or set allow_empty: true if an empty input is expected"
                + (LITERAL_BRACKETS if "[" in split_protocol(spec)[1] else "")
            )
        for item in found:
            if first_keys is not None and not item.error:
                first_key = first_keys.setdefault(item.source or item.uri, item.key)
                if first_key != item.key:
                    renamed.append((item, first_key))
                    continue
            first = items.setdefault(item.key, item)
            if first is not item and (first.source or first.uri) != (item.source or item.uri):
                clashes.append((first, item))
    if clashes:
        first, other = clashes[0]
        more = f" ({len(clashes) - 1} more keys likewise)" if len(clashes) > 1 else ""
        raise ConfigError(
            f"input: two different files have the key {first.key!r}: {first.source or first.uri} and "
            f"{other.source or other.uri}{more}. A key is the path below its spec's folder: give one folder "
            "above both, or each spec an output of its own"
        )
    if renamed:
        item, first_key = renamed[0]
        log.warning(
            "input: files named by two specs under two keys (%d, e.g. %s as %r and %r) are read once each, under "
            "the key of the first spec naming them (not twice, in what could be two splits)",
            len({item.source or item.uri for item, _ in renamed}),
            item.source or item.uri,
            first_key,
            item.key,
        )
    return [items[k] for k in sorted(items)]


def _specs_can_nest(specs: list[str], storage_options: dict[str, Any] | None) -> bool:
    """Whether two of ``specs`` can name one file under two keys (a key is the path below its spec's
    tree): one tree inside another, or a spec without a tree (a single file, a list file)."""
    if len(specs) < 2:
        return False
    trees = [input_tree(spec, storage_options) for spec in specs]
    return "" in trees or any(inner.startswith(outer + "/") for outer in trees for inner in trees)


LITERAL_BRACKETS = (
    "; in a pattern [...] matches one of the characters it holds: write a [ that is part of a name as [[] "
    "(Music [[]FLAC]/**/*.flac)"
)


def input_tree(spec: str, storage_options: dict[str, Any] | None = None) -> str:
    """The folder a spec reads everything under (a glob's fixed part, a directory, a tar shard's
    folder), as ``protocol://path``; ``""`` for a single file or a list file (they name their inputs)."""
    protocol, _ = split_protocol(spec)
    try:
        fs, path = get_fs(spec, storage_options)
        if _is_glob(fs, path):
            root = _glob_root(path)
        elif path.lower().endswith(LIST_FILE_EXTENSIONS) or not fs.isdir(path):
            return ""
        else:
            root = path
    except Exception:  # a generator (synth://) or an unreachable store: nothing to compare
        return ""
    if protocol == "file":
        root = os.path.realpath(root)
    return f"{protocol}://{root.rstrip('/')}"


def overlapping_input(specs: Iterable[str], output: str, storage_options: dict[str, Any] | None = None) -> str:
    """The first spec whose tree holds the output (the next run would read the job's own files),
    or that lies inside the output; ``""`` when they are apart."""
    protocol, path = split_protocol(output)
    out = os.path.realpath(path) if protocol == "file" else path.rstrip("/")
    out = f"{protocol}://{out}"
    for spec in specs:
        tree = input_tree(spec, storage_options)
        if tree and (out == tree or out.startswith(tree + "/") or tree.startswith(out + "/")):
            return spec
    return ""


def read_key_list(spec: str, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Keys from a keep/ignore list file (one key per line, '#' comments: :mod:`.key_lines`)."""
    fs, path = get_fs(spec, storage_options)
    try:
        with fs.open(path, "r", encoding="utf-8-sig") as f:  # without the BOM Windows tools write
            return {key for key in map(parse_key_line, f) if key is not None}
    except FileNotFoundError:
        raise SourceError(f"key list not found: {spec}") from None
    except Exception as e:  # permissions, unreachable storage: an input problem, not the output's
        raise SourceError(f"cannot read key list {spec}: {type(e).__name__}: {e}") from None
