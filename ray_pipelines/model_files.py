"""The torch-free half of ``models``: the user-model error, model files and their hashes, factories.

The driver uses these (the config fingerprint hashes model files; a bad path is refused before Ray
starts) and never imports torch; ``ray_pipelines.models`` re-exports every name, and adds what needs
torch (loading checkpoints, TorchScript, building modules, hashing their weights).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
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
        raise ModelLoadError(f"factory {reference!r}: {target} has no callable {attribute!r}")
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


def factory_code_sha256(reference: str) -> str:
    """Hash of the factory's source file, so editing the model code changes the fingerprint."""
    try:
        source = inspect.getsourcefile(resolve_factory(reference))
    except TypeError:
        source = None
    if not source or not os.path.exists(source):
        return ""
    with open(source, "rb") as f:
        return bytes_sha256(f.read())
