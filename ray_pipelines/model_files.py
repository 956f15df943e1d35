"""The torch-free half of ``models``: the user-model error, model files and their hashes, factories.

The driver uses these (the config fingerprint hashes model files; a bad path is refused before Ray
starts) and never imports torch; ``ray_pipelines.models`` re-exports every name, and adds what needs
torch (loading checkpoints, TorchScript, building modules, hashing their weights).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .config import ConfigError
from .storage import get_fs, relative_local


class ModelLoadError(ConfigError):
    """A model that cannot be built (missing file, code in a checkpoint, bad factory).

    A :class:`~ray_pipelines.config.ConfigError`: the CLI reports it like a bad config (exit 2),
    before Ray starts.
    """


class ModelUnreachable(RuntimeError):
    """A model's file or download that the network did not deliver (no connection, a timeout, an unknown
    host, a server error): the run could not run (exit 1, as for storage that does not answer), not a
    config error (exit 2); the same command may well work the next time."""


# Exception classes (by name, anywhere in an exception's class hierarchy, so that no client library need
# be imported) that say the network failed, not the request: Python's own, requests', httpx's (the Hub's
# clients), urllib3's, botocore's and aiohttp's (s3fs). urllib's URLError and an address lookup's gaierror
# are told apart by what they carry (network_failure): a mistyped URL or host is the config's.
NETWORK_ERROR_NAMES = frozenset(
    {
        "ConnectionError",  # builtins (refused, reset, aborted), requests, botocore's EndpointConnectionError
        "TimeoutError",
        "Timeout",  # requests
        "TransportError",  # httpx: connect, read, write and protocol errors, timeouts
        "TimeoutException",
        "NewConnectionError",  # urllib3
        "MaxRetryError",
        "ProtocolError",
        "ConnectTimeoutError",  # botocore
        "ReadTimeoutError",
        "ClientConnectionError",  # aiohttp
        "ServerTimeoutError",
    }
)


def network_failure(error: BaseException | None) -> BaseException | None:
    """The exception in ``error``'s chain (itself, what it was raised from or, unless suppressed, while
    handling) that says the network failed, or that a server answered 5xx or 429; None where there is none
    (an HTTP 404 is the request's fault: a wrong URL or model name)."""
    chain = list(_chain(error))
    # A host name's lookup decides wherever it is (requests' ConnectionError wraps urllib3's, which wraps
    # it): only "try again" is the network's, an unknown name is the URL's fault.
    lookup = next((e for e in chain if isinstance(e, socket.gaierror)), None)
    if lookup is not None:
        return lookup if lookup.errno == socket.EAI_AGAIN else None
    for error in chain:
        if isinstance(error, ModelUnreachable):
            return error
        status = _http_status(error)
        if status is not None:
            if status >= 500 or status == 429:
                return error
        elif type(error).__name__ == "URLError":
            continue  # urllib: the failure it wraps follows in the chain; a text reason is the URL's fault
        elif any(cls.__name__ in NETWORK_ERROR_NAMES for cls in type(error).__mro__):
            return error
    return None


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then what it was raised from (or, unless suppressed, while handling), and so on; an error
    that wraps its reason in ``reason`` (urllib's URLError, urllib3's MaxRetryError) is followed by it."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        reason = getattr(error, "reason", None)
        if isinstance(reason, BaseException) and id(reason) not in seen:
            yield from _chain(reason)
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__


def _http_status(error: BaseException) -> int | None:
    """The HTTP status an error carries: urllib's ``code``, requests' and httpx's ``response.status_code``,
    botocore's ``response["ResponseMetadata"]["HTTPStatusCode"]`` (S3's SlowDown: 503), aiohttp's
    ``status``."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        metadata = response.get("ResponseMetadata")
        response_status = metadata.get("HTTPStatusCode") if isinstance(metadata, Mapping) else None
    else:
        response_status = getattr(response, "status_code", None)
    for status in (
        response_status,
        getattr(error, "code", None) if type(error).__name__ == "HTTPError" else None,
        getattr(error, "status", None),
    ):
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def model_error(message: str, error: BaseException) -> Exception:
    """The error to raise for ``message``, caused by ``error``: :class:`ModelUnreachable` where the network
    failed, else :class:`ModelLoadError` (the model itself is wrong)."""
    failed = network_failure(error)
    if isinstance(failed, ModelUnreachable):  # already says so (a model file the factory read)
        return ModelUnreachable(f"{message}: {failed}")
    if failed is not None:
        return ModelUnreachable(
            f"{message}: {type(failed).__name__}: {_first_line(failed)} (the network failed: rerun when it answers)"
        )
    return ModelLoadError(f"{message}: {type(error).__name__}: {_first_line(error)}")


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_model_file(url: str, storage_options: dict[str, Any] | None = None, key: str = "") -> bytes:
    """The bytes of a model or checkpoint file (local path or fsspec URL); ``key``, the config key that names
    it (``model.checkpoint``), starts a not-found message, which says where a relative path was looked for."""
    try:
        fs, path = get_fs(url, storage_options)
        with fs.open(path, "rb") as f:
            return f.read()
    except Exception as e:
        # fsspec's HTTP filesystem reports a refused connection or a 503 as FileNotFoundError too
        if isinstance(e, FileNotFoundError) and network_failure(e) is None:
            where = f" (relative to {os.getcwd()})" if relative_local(url) else ""
            raise ModelLoadError(f"{key + ': ' if key else ''}model file not found: {url}{where}") from None
        raise model_error(f"cannot read model file {url}", e) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else ""


def resolve_factory(reference: str) -> Callable[..., Any]:
    """``package.module:name`` or ``path/to/file.py:name`` -> the callable."""
    target, _, attribute = reference.rpartition(":")
    if not target or not attribute:
        raise ModelLoadError(f"factory {reference!r} must look like 'package.module:function' or 'file.py:function'")
    try:
        module = (
            _module_from_file(target) if target.endswith(".py") or "/" in target else importlib.import_module(target)
        )
    except ModelLoadError:
        raise
    except Exception as e:
        raise model_error(f"factory {reference!r}: cannot import {target}", e) from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        names = [n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(attribute, names, n=1)
        guess = f"; did you mean {close[0]}?" if close else ""
        raise ModelLoadError(f"factory {reference!r}: {target} has no callable {attribute!r}{guess}")
    return factory


def _module_from_file(path: str):
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"factory file not found: {path}")
    name = "ray_pipelines_user_model_" + bytes_sha256(path.encode())[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


# A factory's folder or package with more Python files than this (or more names to look through: a data
# folder inside it) is not hashed whole (a factory file left in a home folder): its own file and its
# model's class files still are, and a warning says so.
MAX_CODE_FILES = 2000
MAX_NAMES_SEEN = 20000
USER_MODULE_PREFIX = "ray_pipelines_user_model_"  # modules loaded from a factory file (named by its path)


def factory_code_sha256(reference: str, classes: Iterable[type] = ()) -> str:
    """A digest of the code a factory's model runs, so that editing it changes the config fingerprint
    (rows of the old code and the new never share an output). Hashed, where they are user code (not
    part of the Python installation, its packages or this project): the ``.py`` files of the factory's
    package (a module factory's top-level package; for a factory file or a top-level module, its folder's
    ``.py`` files and the packages in it), and the files that define ``classes`` (the built model's
    modules and their bases). The factory's own file is always hashed. Each file counts by its path
    within that package or folder (or its module's name), not where the folder is: a copy elsewhere (a
    Ray job's working_dir, unpacked under a new session folder at every start) hashes the same. Editing
    any of them, even code the model does not run, makes the next run refuse the output: a refusal is
    safe, rows of two models mixed are not."""
    try:
        source = inspect.getsourcefile(resolve_factory(reference))
    except TypeError:
        source = None
    target = reference.rpartition(":")[0]
    named = _reference_file(target) or source  # the file the reference names (not a decorator's)
    root, files = (None, {})
    if named and _is_user_code(named):
        root, files = _package_files(target, named)
    for path in (named, source):
        if path and os.path.isfile(path):
            files.setdefault(_label(path, root, None), path)
    for cls in classes:
        for base in getattr(cls, "__mro__", (cls,)):
            module = sys.modules.get(getattr(base, "__module__", "") or "")
            path = getattr(module, "__file__", None)
            if path and path.endswith(".py") and _is_user_code(path):
                files.setdefault(_label(path, root, module.__name__), path)
    if not files:
        return ""
    digest = hashlib.sha256()
    for label, path in sorted(files.items()):
        try:
            with open(path, "rb") as f:
                content = hashlib.sha256(f.read()).digest()
        except OSError as e:  # unreadable: counted as such, the same on every run while it stays so
            content = f"unreadable: {type(e).__name__}".encode()
        digest.update(f"{label}\n".encode() + content)
    return digest.hexdigest()


def _reference_file(target: str) -> str | None:
    if target.endswith(".py") or "/" in target:
        return os.path.abspath(target)
    return getattr(sys.modules.get(target), "__file__", None)


def _label(path: str, root: str | None, module: str | None) -> str:
    """How a hashed file is named in the digest: its path within the factory's folder or package, else its
    module's name, else its file name (never the folder it is in)."""
    path = os.path.abspath(path)
    if root and path.startswith(root + os.sep):
        return os.path.relpath(path, root).replace(os.sep, "/")
    if module and not module.startswith(USER_MODULE_PREFIX):
        return module
    return os.path.basename(path)


def _package_files(target: str, named: str) -> tuple[str, dict[str, str]]:
    """(the folder that holds them, {label: path}) of the ``.py`` files of the package a factory lives in
    (see :func:`factory_code_sha256`)."""
    top = None if target.endswith(".py") or "/" in target else sys.modules.get(target.split(".")[0])
    packages = [p for p in getattr(top, "__path__", None) or [] if _is_user_code(p)]
    if packages:  # a module factory in a package: the whole top-level package
        root = os.path.dirname(os.path.abspath(packages[0]))
        candidates, walked = [], packages
    else:  # a factory file, or a top-level module: its folder's files and the packages in it
        root = os.path.dirname(os.path.abspath(named))
        names = sorted(n for n in os.listdir(root) if not n.startswith("."))
        candidates = [os.path.join(root, n) for n in names if n.endswith(".py")]
        walked = [
            os.path.join(root, n)
            for n in names
            if os.path.isfile(os.path.join(root, n, "__init__.py")) and _is_user_code(os.path.join(root, n))
        ]
    seen = len(candidates)
    for package in walked:
        for folder, subfolders, names in os.walk(package):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__")
            seen += len(names) + len(subfolders)
            candidates.extend(os.path.join(folder, n) for n in names if n.endswith(".py") and not n.startswith("."))
            if seen > MAX_NAMES_SEEN or len(candidates) > MAX_CODE_FILES:
                logging.getLogger(__name__).warning(
                    "%s: more than %d Python files (or %d names) in %s: only the factory's file and its model's "
                    "class files enter the fingerprint; keep the model's code in a package of its own",
                    target,
                    MAX_CODE_FILES,
                    MAX_NAMES_SEEN,
                    root,
                )
                return root, {}
    files = {_label(p, root, None): p for p in candidates if os.path.isfile(p)}
    return root, files


def _is_user_code(path: str) -> bool:
    """Not part of the Python installation, an installed package or this project."""
    path = os.path.realpath(path)
    return not any(path == root or path.startswith(root + os.sep) for root in _installed_roots())


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # this project (its version is in the manifest)
    return tuple(sorted(os.path.realpath(r) for r in roots if r))
