"""User models: a TorchScript file, or ``module:factory`` plus a checkpoint.

Checkpoints are read with ``torch.load(weights_only=True)`` (plain tensors
only: no pickled code runs) or, for ``.safetensors`` files, with safetensors.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import os
import sys
import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..storage import get_fs
from .base import ModelLoadError


def read_model_file(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The bytes of a model file (local path or fsspec URL)."""
    fs, path = get_fs(url, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ModelLoadError(f"model file not found: {url}") from None
    except Exception as e:
        raise ModelLoadError(f"cannot read model file {url}: {type(e).__name__}: {e}") from None


def load_state_dict(data: bytes, name: str) -> dict[str, torch.Tensor]:
    """A state dict from checkpoint bytes; unwraps ``{"state_dict": ...}``."""
    if name.endswith(".safetensors"):
        from safetensors.torch import load as load_safetensors

        state: Any = load_safetensors(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot load checkpoint {name} with torch.load(weights_only=True): "
                                 f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"checkpoint {name} is not a state dict (a mapping of names to tensors)")
    return state


def load_torchscript(data: bytes, name: str) -> nn.Module:
    """A ``torch.jit.save`` file. Its ``encode`` must be compiled: ``@torch.jit.export`` it (or make it ``forward``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)   # torch.jit is deprecated in favour of torch.export
            return torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:
        raise ModelLoadError(f"cannot load TorchScript model {name}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}") from None


def resolve_factory(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` or ``"/path/to/file.py:function"`` -> the function."""
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            module = _import_file(module_name)
        else:
            module = importlib.import_module(module_name)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"model.factory {spec!r}: cannot import {module_name}: {type(e).__name__}: {e}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelLoadError(f"model.factory {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _import_file(path: str):
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model.factory: file not found: {path}")
    name = "ray_pipelines_user_model_" + hashlib.sha1(path.encode()).hexdigest()[:12]
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


def build_from_factory(spec: str, kwargs: dict[str, Any], checkpoint: bytes | None, checkpoint_name: str) -> nn.Module:
    module = resolve_factory(spec)(**kwargs)
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"model.factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    if checkpoint is not None:
        state = load_state_dict(checkpoint, checkpoint_name)
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            raise ModelLoadError(f"checkpoint {checkpoint_name} does not fit the model from {spec}: "
                                 f"{str(e).splitlines()[0]} ...") from None
    return module
