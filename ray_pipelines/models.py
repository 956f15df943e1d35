"""User models, shared by every job that runs one (teacher, encode, score).

A user model is a TorchScript file, or ``module:factory`` (or
``path/to/file.py:factory``) plus an optional checkpoint. Checkpoints are
read with ``torch.load(weights_only=True)`` (or safetensors), so no code from
a file ever runs; a checkpoint that needs pickled code is refused with a
message saying what to save instead. Files come from a local path or any
fsspec URL. Hashes of weights and factory code enter the jobs' config
fingerprints, so a new model never silently extends an old output.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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


def load_checkpoint(data: bytes, name: str) -> Any:
    """``torch.load(weights_only=True)`` (``.safetensors``: safetensors); code is refused, saying why."""
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        return load_safetensors(data)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.findall(r"GLOBAL ([\w.]+)", str(e))
        needs = f" (it needs {', '.join(dict.fromkeys(found))})" if found else ""
        raise ModelLoadError(
            f"checkpoint {name} needs pickled code to load{needs}. Checkpoints are loaded with "
            "torch.load(weights_only=True), which never runs code from a file. Save the weights only "
            "(torch.save(model.state_dict(), path)) and build the model with a module:factory, "
            "or export it with torch.jit.script / torch.jit.trace and load it as TorchScript"
        ) from None
    except Exception as e:
        raise ModelLoadError(
            f"cannot load checkpoint {name} with torch.load(weights_only=True): {type(e).__name__}: {_first_line(e)}"
        ) from None


def state_dict_of(checkpoint: Any, name: str, key: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: itself, ``checkpoint[key]``, or the usual
    ``state_dict`` / ``model`` / ``model_state_dict`` entry."""
    if key is not None:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise ModelLoadError(f"checkpoint {name} has no entry {key!r} (state_dict_key)")
        checkpoint = checkpoint[key]
    elif isinstance(checkpoint, dict) and not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        for candidate in ("state_dict", "model", "model_state_dict"):
            if isinstance(checkpoint.get(candidate), dict):
                checkpoint = checkpoint[candidate]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ModelLoadError(
            f"checkpoint {name} is not a state dict (a mapping of names to tensors); set state_dict_key"
        )
    return checkpoint


def load_state_dict(data: bytes, name: str, key: str | None = None) -> dict[str, torch.Tensor]:
    return state_dict_of(load_checkpoint(data, name), name, key)


def load_torchscript(data: bytes, name: str) -> nn.Module:
    """A ``torch.jit.save`` file, on CPU."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated for torch.export
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(f"cannot load TorchScript model {name}: {type(e).__name__}: {_first_line(e)}") from None


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


def build_from_factory(
    reference: str,
    kwargs: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    checkpoint_name: str = "",
) -> nn.Module:
    """Call the factory and load ``state`` (strictly) into the module it returns."""
    module = resolve_factory(reference)(**(kwargs or {}))
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"factory {reference!r} returned {type(module).__name__}, not a torch.nn.Module")
    if state is not None:
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise ModelLoadError(
                f"checkpoint {checkpoint_name} does not fit the model from {reference}: {_first_line(e)} ..."
            ) from None
    return module


def weights_sha256(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{list(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
