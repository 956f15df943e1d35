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
import io
import pickle
import re
import warnings
import zipfile
from typing import Any

import torch
from torch import nn

from .model_files import (  # noqa: F401  (re-exported: the torch-free half lives in model_files)
    ModelLoadError,
    ModelUnreachable,
    _first_line,
    bytes_sha256,
    factory_code_sha256,
    model_error,
    read_model_file,
    resolve_factory,
)


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
        hint = (
            ": it is a torch.save file (a state dict or a pickled module), not TorchScript: give it as a factory's "
            "checkpoint (kind: factory), or save the model with torch.jit.save"
            if _is_torch_save(data)
            else f": {type(e).__name__}: {_first_line(e)}"
        )
        raise ModelLoadError(f"cannot load TorchScript model {name}{hint}") from None


def _is_torch_save(data: bytes) -> bool:
    """A ``torch.save`` zip (``data.pkl``, no ``code/`` folder as TorchScript's ``torch.jit.save`` writes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def build_from_factory(
    reference: str,
    kwargs: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    checkpoint_name: str = "",
) -> nn.Module:
    """Call the factory and load ``state`` (strictly) into the module it returns."""
    factory = resolve_factory(reference)
    try:
        module = factory(**(kwargs or {}))
    except Exception as e:  # the user's code: a config error (exit 2, before Ray starts), or the network's
        raise model_error(f"factory {reference!r} failed", e) from e
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


def model_classes(model: nn.Module) -> set[type]:
    """The classes of a model's modules (whose files :func:`factory_code_sha256` hashes)."""
    return {type(m) for m in model.modules()}


def weights_sha256(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\x1f{t.dtype}\x1f{list(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


PROBE_AUDIO_SEED = 0


def probe_audio(*shape: int) -> torch.Tensor:
    """The audio a model is probed with before any work (a teacher's actors, the encode job's layout probe):
    seeded white noise at about -40 dBFS, not silence. ``silence_db`` can keep silent audio from a model,
    and a model that divides by its input's peak, fine on every real clip, failed the whole job on an
    all-zero probe."""
    generator = torch.Generator().manual_seed(PROBE_AUDIO_SEED)
    return 0.01 * torch.randn(*shape, generator=generator)
