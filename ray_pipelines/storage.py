"""Filesystem access for local paths and any fsspec URL (s3://, gs://, ...).

Credentials never pass through here: fsspec/s3fs read them from the
environment (AWS_ACCESS_KEY_ID, ...), so configs, manifests and task
arguments stay free of secrets. ``storage_options`` carries only endpoint,
region and similar settings.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import inspect
import json
import os
import posixpath
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

import fsspec
import fsspec.asyn

from .direct_io import DirectFile

# Keys that must never appear in storage_options, at any depth: they belong in the environment.
SECRET_OPTION_KEYS = frozenset(
    {
        "key",
        "secret",
        "token",
        "password",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "session_token",
        "client_secret",
        "access_key",
        "secret_key",
    }
)
# Parts of a key name (lower case, without '_' and '-') that mark a secret wherever they appear:
# client_kwargs.aws_secret_access_key, s3_additional_kwargs.SSECustomerKey, account_key, sas_token, ...
SECRET_NAME_PARTS = (
    "secret",
    "password",
    "passwd",
    "token",
    "credential",
    "privatekey",
    "sessionkey",
    "accesskey",
    "accountkey",
    "customerkey",
    "apikey",
    "connectionstring",
    "authorization",  # HTTP headers: client_kwargs.headers.Authorization (a bearer token), Cookie
    "cookie",
)
# Values of `token` that name a way to authenticate rather than hold a secret (gcsfs).
TOKEN_MODES = frozenset({"anon", "google_default", "cloud", "browser", "cache"})


def is_secret_name(name: str) -> bool:
    normal = name.lower().replace("_", "").replace("-", "")
    return name.lower() in SECRET_OPTION_KEYS or any(part in normal for part in SECRET_NAME_PARTS)


def find_secrets(options: Any, path: str = "") -> list[str]:
    """Dotted paths of every secret in ``options``, at any depth (nested dicts and lists): keys
    named like credentials, and URLs with a ``user:password@`` part."""
    found = []
    if isinstance(options, dict):
        for name, value in options.items():
            where = f"{path}{name}"
            secret_token_mode = str(name).lower() == "token" and isinstance(value, str) and value in TOKEN_MODES
            if is_secret_name(str(name)) and value not in (None, "") and not secret_token_mode:
                found.append(where)
            else:
                found.extend(find_secrets(value, where + "."))
    elif isinstance(options, (list, tuple)):
        for i, value in enumerate(options):
            found.extend(find_secrets(value, f"{path}{i}."))
    elif isinstance(options, str) and url_credentials(options):
        found.append(path.rstrip("."))
    return found


# A path that starts like a URL with its "://" mistyped: one slash missing (``s3:/bucket/out``), no slash
# (``s3:bucket/out``) or no colon (``s3//bucket/out``): a local folder named ``s3:`` or ``s3``. A protocol is
# two characters or more, so a Windows drive (``C:data``) is no such typo. The one-slash form counts for any
# protocol fsspec knows; the other two only for object stores' names (``data//mels`` is a local path with a
# doubled slash, ``data:2024/out`` a folder named so, whatever fsspec's "data" protocol is).
_MISTYPED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)(:/(?!/)|:(?!/)|//)")
# Object stores whose makedirs creates a missing bucket (or container) rather than failing.
BUCKET_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})
_REMOTE_PROTOCOLS = BUCKET_STORES | {"adl", "oci", "oss", "hf", "http", "https"}


def url_problem(url: str, written: bool = False) -> str:
    """Why ``url`` cannot be read (or ``written``) from here, "" when it can: a protocol fsspec does not
    know or whose package is not installed, an http(s) output, or a URL whose "://" is mistyped."""
    protocol, _ = split_protocol(url)
    if protocol == "file":
        missed = _MISTYPED_URL.match(url)
        name = missed.group(1).lower() if missed else ""
        if name in fsspec.available_protocols() and (missed.group(2) == ":/" or name in _REMOTE_PROTOCOLS):
            rest = url[missed.end() :]
            fixed = f"/{rest}" if name in ("file", "local") else f"{name}://{rest}"
            folder = missed.group(1) + (":" if missed.group(2).startswith(":") else "")
            return f"a local folder named {folder}, not a URL; did you mean {fixed}?"
        return ""
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as e:  # fsspec's message names the package (gs://: "Please install gcsfs ...")
        return f"{protocol}:// needs a package that is not installed: {e}"
    except ValueError:
        if (
            protocol.lower() != protocol and protocol.lower() in fsspec.available_protocols()
        ):  # S3://: fsspec's are lower case
            return f"{protocol}:// is no storage protocol fsspec knows; did you mean {protocol.lower()}://?"
        return f"{protocol}:// is no storage protocol fsspec knows"
    if written and protocol in ("http", "https"):
        return f"{protocol}:// is read-only here: write to a local path or object storage (s3://...)"
    return ""


def url_credentials(url: str) -> str:
    """``url`` with its password hidden when it carries ``user:password@``, else ``""``."""
    if "://" not in url:
        return ""
    scheme, rest = url.split("://", 1)
    authority, _, path = rest.partition("/")
    credentials, _, host = authority.rpartition("@")  # a password may hold "@" itself
    if ":" not in credentials:
        return ""
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" + (f"/{path}" if path or rest.endswith("/") else "")


# Where Ray unpacks a job's working_dir (`ray job submit --working-dir .`) on a node; the copy is deleted
# once no job uses it (the runtime-env cache), with anything written into it.
RAY_WORKING_DIR_COPIES = os.path.join("runtime_resources", "working_dir_files")
# Set by Ray's job supervisor in a submitted job's driver (its runtime_env and metadata), and inherited by
# whatever the entrypoint starts.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def in_ray_job_supervisor_folder() -> str:
    """The current folder when it is that of the Ray job supervisor that started this process (a job
    submitted without ``--working-dir`` whose entrypoint did not change folder: the folder the Ray head was
    started in, not where ``ray job submit`` ran), else ``""``."""
    if not os.environ.get(RAY_JOB_CONFIG_ENV):
        return ""
    import psutil  # Ray's own dependency; imported here, where a submitted job is at hand

    here = os.path.realpath(os.getcwd())
    try:
        for parent in psutil.Process().parents():
            if "JobSupervisor" in " ".join(parent.cmdline()):
                return here if os.path.realpath(parent.cwd()) == here else ""
    except psutil.Error:
        return ""
    return ""


def relative_local(spec: str) -> bool:
    """Whether a path or URL is a relative local path (resolved in the process's current folder)."""
    return "://" not in spec and not os.path.isabs(os.path.expanduser(spec))


def ray_working_dir_copy(spec: str) -> str:
    """The copy of a Ray job's working_dir a local ``spec`` lies in (a relative path resolved in a
    submitted job's driver does), or ``""`` (a URL, or a path elsewhere)."""
    protocol, path = split_protocol(spec)
    if protocol != "file":
        return ""
    resolved = os.path.realpath(os.path.expanduser(path))
    marker = f"{os.sep}{RAY_WORKING_DIR_COPIES}{os.sep}"
    at = resolved.find(marker)
    if at < 0:
        return ""
    return resolved[: at + len(marker)] + resolved[at + len(marker) :].split(os.sep, 1)[0]


def without_query(url: str) -> str:
    """An http(s) URL without its query and fragment (a presigned URL's signature, which changes with
    every signing and must not reach the output's keys and rows); any other URL or path as it is."""
    if not url.lower().startswith(("http://", "https://")):
        return url  # an S3 key or a file name may hold '?' and '#'
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def split_protocol(url: str) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for ``s3://bucket/key``; ``("file", path)`` for paths."""
    if "://" in url:
        protocol, path = url.split("://", 1)
        return protocol, path
    return "file", url


# What storage_options may name for S3 besides s3fs's own parameters: fsspec's (listings and instance
# caches, the async batch), the session's profile, and the project's aliases (fs_options).
S3_EXTRA_OPTIONS = frozenset(
    {
        "profile",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "batch_size",
        "region",
    }
)


def misspelt_storage_options(protocol: str, storage_options: dict[str, Any] | None) -> list[tuple[str, str]]:
    """``(key, the known key it is close to)`` for each S3 storage option that is a near miss of a known one:
    s3fs takes any keyword (the rest go to the session), so ``endpoint: http://minio:9000`` (not
    ``endpoint_url``) was accepted and ignored, and the run talked to AWS instead. Keys close to none pass."""
    if protocol not in ("s3", "s3a") or not storage_options:
        return []
    parameters = inspect.signature(fsspec.get_filesystem_class("s3").__init__).parameters
    known = sorted((set(parameters) - {"self", "kwargs"}) | S3_EXTRA_OPTIONS)
    misses = []
    for name in storage_options:
        if name not in known and (close := difflib.get_close_matches(name, known, n=1, cutoff=0.75)):
            misses.append((name, close[0]))
    return misses


def misspelt_options_problem(url: str, storage_options: dict[str, Any] | None) -> str:
    """Why ``storage_options`` would mislead ``url``'s filesystem (a near miss of a known option, which s3fs
    passes on to be ignored or refused later), or ``""``."""
    protocol = split_protocol(url)[0]
    misses = misspelt_storage_options(protocol, storage_options)
    if not misses:
        return ""
    said = ", ".join(f"{name} (did you mean {close}?)" for name, close in misses)
    return f"storage_options: {said}: {protocol}:// knows no such option (s3fs passes it on, to be ignored or refused)"


def fs_options(protocol: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Translate the project's storage_options into fsspec constructor kwargs."""
    options = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        client_kwargs = dict(options.pop("client_kwargs", {}) or {})
        if "endpoint_url" in options:
            client_kwargs["endpoint_url"] = options.pop("endpoint_url")
        if "region" in options:
            client_kwargs["region_name"] = options.pop("region")
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
    return options


def get_fs(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem for ``url`` and the path inside it, as that filesystem names it (without the
    protocol for object stores; HTTP's paths are the whole URL)."""
    protocol, path = split_protocol(url)
    if protocol == "file":
        fs = fsspec.filesystem("file")
        return fs, os.path.abspath(os.path.expanduser(path))  # ~/model.pt in a config file (no shell expands it)
    fs = fsspec.filesystem(protocol, **fs_options(protocol, storage_options))
    return fs, fs._strip_protocol(url)


def join_url(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with forward slashes."""
    protocol, path = split_protocol(base)
    joined = posixpath.join(path.rstrip("/") or "/", *parts) if protocol != "file" else os.path.join(path, *parts)
    return joined if protocol == "file" else f"{protocol}://{joined}"


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of a path ``fs`` listed (a local path stays a path)."""
    if is_local(fs):
        return path
    return fs.unstrip_protocol(path)


TEMP_MARK = ".tmp-"


def temp_name(target: str) -> str:
    """Where a local file is written before it is renamed to ``target`` (this process and thread's)."""
    return f"{target}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}"


def is_temp_file(relpath: str) -> bool:
    """A file written under ``temp_name`` and not yet renamed (its writer killed, if it is still there)."""
    return TEMP_MARK in posixpath.basename(relpath)


class Storage:
    """One output root: small helpers to read and write files under it."""

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        root = os.fspath(root)
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root)
        self.storage_options = storage_options or {}
        self.fs, self.path = get_fs(self.root, self.storage_options)

    def abspath(self, relpath: str) -> str:
        return os.path.join(self.path, relpath) if is_local(self.fs) else posixpath.join(self.path, relpath)

    def url(self, relpath: str) -> str:
        return join_url(self.root, relpath)

    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self.abspath(relpath))

    def makedirs(self, relpath: str = "") -> None:
        self.fs.makedirs(self.abspath(relpath), exist_ok=True)

    @contextlib.contextmanager
    def open_atomic(self, relpath: str, direct: bool = False) -> Iterator[BinaryIO]:
        """A binary file that appears at ``relpath`` whole or not at all.

        Local disk: a temp file renamed into place on success; ``direct`` writes it
        past the page cache (bulk data not read back soon: see ``direct_io``). Object
        stores: the upload completes only when the file closes without error.
        """
        target = self.abspath(relpath)
        self.fs.makedirs(posixpath.dirname(target), exist_ok=True)
        if is_local(self.fs):
            tmp = temp_name(target)
            try:
                with DirectFile(tmp) if direct else open(tmp, "wb") as f:
                    yield f
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            f = self.fs.open(target, "wb")
            try:
                yield f
            except BaseException:
                if hasattr(f, "discard"):  # abort a multipart upload: nothing appears
                    f.discard()
                raise
            f.close()

    def write_bytes(self, relpath: str, data: bytes) -> None:
        with self.open_atomic(relpath) as f:
            f.write(data)

    def write_json(self, relpath: str, obj: Any, compact: bool = False) -> None:
        """Pretty-printed for people (manifest.json), ``compact`` for machine state (per-block manifests)."""
        layout = {"separators": (",", ":")} if compact else {"indent": 2}
        self.write_bytes(relpath, (json.dumps(obj, sort_keys=True, default=_json_default, **layout) + "\n").encode())

    def cat_many(self, relpaths: list[str]) -> dict[str, bytes]:
        """The bytes of many files in one call: fsspec's ``cat`` of a list of paths, which s3fs
        and other async filesystems fetch concurrently. Relpath -> bytes."""
        if not relpaths:
            return {}
        wanted = {self.abspath(r).rstrip("/"): r for r in relpaths}
        if any(map(has_magic, wanted)):  # fsspec's cat would take [ ] * ? in them for a pattern
            got = dict(zip(wanted, _each_literal(self.fs.cat_file, list(wanted))))
        else:
            got = self.fs.cat(list(wanted))
        if len(wanted) == 1 and not isinstance(got, dict):
            got = {next(iter(wanted)): got}
        out = {}
        for path, data in got.items():
            path = path.rstrip("/")
            rel = wanted.get(path) or wanted.get(self.fs._strip_protocol(path)) or path[len(self.path) :].lstrip("/")
            out[rel] = data
        return out

    def remove_many(self, relpaths: list[str]) -> None:
        """Delete files (s3fs: DeleteObjects of up to 1,000 keys per request); missing ones are fine."""
        if not relpaths:
            return
        paths = [self.abspath(r) for r in relpaths]
        if is_local(self.fs):
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return
        if any(map(has_magic, paths)):  # fsspec's rm would take [ ] * ? in them for a pattern
            _each_literal(self._remove_file, paths)
            return
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(path)

    def _remove_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def read_json(self, relpath: str) -> Any:
        with self.fs.open(self.abspath(relpath), "rb") as f:
            return json.loads(f.read())

    def list(self, relpath: str) -> list[str]:
        """Paths (relative to the root) of the files directly under ``relpath``."""
        base = self.abspath(relpath)
        self.fs.invalidate_cache(base)
        try:  # one listing request (no separate existence check)
            entries = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for info in entries:
            if info.get("type") == "file":
                out.append(posixpath.join(relpath, posixpath.basename(info["name"].rstrip("/"))))
        return sorted(out)

    def select_files(self, keep: Callable[[str], bool]) -> list[str]:
        """Relative paths of every file under the root that ``keep`` accepts, listed a page at a time.
        On S3 the listing goes straight through the pages (s3fs's ``find`` would hold every object's
        details in its cache: 38 MB for the 31,000 data files of a million inputs); on local disk
        ``os.walk``; elsewhere ``find``."""
        if split_protocol(self.root)[0] in ("s3", "s3a") and hasattr(self.fs, "_iterdir"):
            return fsspec.asyn.sync(self.fs.loop, self._select_s3, keep)
        if not self.fs.exists(self.path):
            return []
        if is_local(self.fs):  # names only: ``find`` holds every file's details (300 MB for 312,000)
            return [
                rel
                for folder, _, names in os.walk(self.path)
                for rel in (self._relative(os.path.join(folder, name)) for name in names)
                if keep(rel)
            ]
        self.fs.invalidate_cache(self.path)
        return [rel for rel in map(self._relative, self.fs.find(self.path)) if keep(rel)]

    async def _select_s3(self, keep: Callable[[str], bool]) -> list[str]:
        bucket, key, _ = self.fs.split_path(self.path)
        prefix = key.rstrip("/") + "/" if key else ""
        selected, base = [], f"{bucket}/{prefix}"
        async for info in self.fs._iterdir(bucket, delimiter="", prefix=prefix):
            if info.get("type") == "file" and info["name"].startswith(base):
                rel = info["name"][len(base) :]
                if keep(rel):
                    selected.append(rel)
        return selected

    def _relative(self, path: str) -> str:
        return path[len(self.path) :].lstrip("/") if path.startswith(self.path) else posixpath.relpath(path, self.path)

    def remove(self, relpath: str) -> None:
        path = self.abspath(relpath)
        if not self.fs.exists(path):
            return
        if has_magic(path) and not is_local(self.fs):  # (the local rm takes paths as named)
            self.remove_many([self._relative(p) for p in self.fs.find(path)] if self.fs.isdir(path) else [relpath])
            return
        self.fs.rm(path, recursive=True)


def has_magic(path: str) -> bool:
    """Whether fsspec's methods that expand paths (``cat`` and ``rm`` of a list, ``rm`` of a folder) take
    ``path`` for a pattern (they ask :func:`glob.has_magic`): an output named ``views [v2]`` lost its commit
    to a FileNotFoundError, and on S3 a removal under it matched ``views 2/``, another folder, not its own."""
    return glob.has_magic(path)


LITERAL_CONCURRENCY = 16  # requests at once for paths read or removed one by one


def _each_literal(call: Callable[[str], Any], paths: list[str]) -> list[Any]:
    """``call(path)`` for each path, ``LITERAL_CONCURRENCY`` at once (the per-path calls take a path as named)."""
    with ThreadPoolExecutor(max_workers=min(LITERAL_CONCURRENCY, len(paths)) or 1) as pool:
        return list(pool.map(call, paths))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def missing_bucket(storage: Storage) -> str:
    """The bucket of an object-store ``storage`` when it is not there (or cannot be seen), else ``""``; a
    store that cannot answer the question is taken to have it (the write then says what is wrong)."""
    if split_protocol(storage.root)[0] not in BUCKET_STORES:
        return ""
    bucket = storage.path.split("/", 1)[0]
    try:
        return "" if storage.fs.exists(bucket) else bucket
    except Exception:  # noqa: BLE001 (a store's own error for an odd name: not this check's to raise)
        return ""


def storage_errors() -> tuple[type[BaseException], ...]:
    """What a call on a store raises when the store cannot be reached or refuses: the OS's errors
    (s3fs translates S3's error responses into them), botocore's own, which s3fs passes through
    as they are (an endpoint that does not answer, no credentials found), and aiohttp's, which
    fsspec's HTTP store passes through (a server that drops the connection mid-body)."""
    errors: list[type[BaseException]] = [OSError]  # local and other fsspec stores
    try:
        from botocore.exceptions import BotoCoreError

        errors.append(BotoCoreError)
    except ImportError:  # no s3fs installed
        pass
    try:
        from aiohttp import ClientError

        errors.append(ClientError)
    except ImportError:
        pass
    return tuple(errors)


def s3_error(error: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status behind an exception s3fs translated (its ``__cause__``):
    ``("NoSuchBucket", 404)``; ``("", 0)`` where there is none."""
    response = getattr(error.__cause__, "response", None) or getattr(error, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(response.get("Error", {}).get("Code", "")), status


def _json_default(value: Any) -> Any:
    """Let numpy scalars and paths pass through json.dumps."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
