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
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .config import ConfigError
from .storage import get_fs


class ModelLoadError(ConfigError):
    """A model that cannot be built (missing file, code in a checkpoint, bad factory).

    A :class:`~ray_pipelines.config.ConfigError`: the CLI reports it like a bad config (exit 2),
    before Ray starts.
    """


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_model_file(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model or checkpoint file (local path or fsspec URL)."""
    try:
        fs, path = get_fs(url, storage_options)
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {url}") from None
    except Exception as e:
        raise ModelLoadError(f"cannot read model file {url}: {type(e).__name__}: {e}") from None


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
        raise ModelLoadError(f"factory {reference!r}: cannot import {target}: {type(e).__name__}: {e}") from None
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


# A factory's folder or package with more Python files than this is not hashed whole (a factory file
# left in a home folder): its own file and its model's class files still are.
MAX_CODE_FILES = 2000


def factory_code_sha256(reference: str, classes: Iterable[type] = ()) -> str:
    """A digest of the code a factory's model runs, so that editing it changes the config fingerprint
    (rows of the old code and the new never share an output). Hashed, where they are user code (not
    part of the Python installation, its packages or this project): the ``.py`` files of the factory's
    package (a module factory's top-level package, or the folder of a factory file with the packages
    in it), and the files that define ``classes`` (the built model's modules and their bases). The
    factory's own file is always hashed. Editing any of them, even code the model does not run, makes
    the next run refuse the output: a refusal is safe, rows of two models mixed are not."""
    try:
        source = inspect.getsourcefile(resolve_factory(reference))
    except TypeError:
        source = None
    files = set()
    if source and os.path.exists(source):
        files.add(os.path.abspath(source))
        target = reference.rpartition(":")[0]
        if _is_user_code(source):
            files.update(_package_files(target, source))
    for cls in classes:
        for base in getattr(cls, "__mro__", (cls,)):
            module = sys.modules.get(getattr(base, "__module__", "") or "")
            path = getattr(module, "__file__", None)
            if path and path.endswith(".py") and _is_user_code(path):
                files.add(os.path.abspath(path))
    if not files:
        return ""
    digest = hashlib.sha256()
    for path in sorted(files):
        with open(path, "rb") as f:
            digest.update(f"{path}\n".encode() + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _package_files(target: str, source: str) -> set[str]:
    """The ``.py`` files of the package a factory lives in (see :func:`factory_code_sha256`)."""
    if target.endswith(".py") or "/" in target:  # a factory file: its folder's files and packages
        folder = os.path.dirname(os.path.abspath(source))
        found = {os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".py")}
        roots = [
            os.path.join(folder, n)
            for n in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, n, "__init__.py"))
        ]
    else:
        top = sys.modules.get(target.split(".")[0])
        paths = list(getattr(top, "__path__", []) or [])
        found = {os.path.abspath(top.__file__)} if top is not None and not paths and top.__file__ else set()
        roots = [p for p in paths if _is_user_code(p)]
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith((".", "__pycache__")))
            found.update(os.path.join(folder, n) for n in names if n.endswith(".py"))
            if len(found) > MAX_CODE_FILES:
                return set()
    return found if len(found) <= MAX_CODE_FILES else set()


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
