"""PESTO (``pesto-pitch``): f0 in Hz and voicing confidence per 10 ms frame.

The weights ship inside the PyPI package (``pesto/weights/*.ckpt``). PESTO's
own loader calls ``torch.load(weights_only=False)``; here the checkpoint is
loaded with ``weights_only=True``, allowing only the OmegaConf containers its
hyper-parameters are stored in (plain data classes, no code), and the model
is rebuilt the way ``pesto.loader.load_model`` does.
"""

from __future__ import annotations

import collections
import os
import typing
from importlib.metadata import version as package_version
from typing import Any, Literal

import torch
from pydantic import Field

from .base import Teacher, TeacherLoadError, TeacherOutput, file_sha256
from .spec import TeacherSpecBase

PESTO_SAMPLE_RATE = 16000  # its CQT is laid out for 16 kHz (the top bins sit just below Nyquist)
OUTPUTS = (TeacherOutput("f0"), TeacherOutput("confidence"))


def pesto_checkpoint_path(model: str) -> str:
    import pesto

    path = os.path.join(os.path.dirname(pesto.__file__), "weights", f"{model}.ckpt")
    if not os.path.exists(path):
        shipped = sorted(f[:-5] for f in os.listdir(os.path.dirname(path)) if f.endswith(".ckpt"))
        raise TeacherLoadError(f"pesto: no shipped model {model!r} (the package has: {', '.join(shipped)})")
    return path


def load_pesto_checkpoint(path: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with OmegaConf's data containers allowed."""
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.dictconfig import DictConfig
    from omegaconf.listconfig import ListConfig
    from omegaconf.nodes import AnyNode

    allowed = [
        DictConfig,
        ListConfig,
        AnyNode,
        Metadata,
        ContainerMetadata,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
    ]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def build_pesto(model: str, step_ms: float, sample_rate: int, reduction: str) -> torch.nn.Module:
    from pesto.data import Preprocessor
    from pesto.model import PESTO, Resnet1d

    checkpoint = load_pesto_checkpoint(pesto_checkpoint_path(model))
    hparams, hcqt_params = checkpoint["hparams"], dict(checkpoint["hcqt_params"])
    preprocessor = Preprocessor(hop_size=step_ms, sampling_rate=sample_rate, **hcqt_params)
    net = PESTO(
        Resnet1d(**hparams["encoder"]),
        preprocessor=preprocessor,
        crop_kwargs=hparams["pitch_shift"],
        reduction=reduction,
    )
    missing, unexpected = net.load_state_dict(checkpoint["state_dict"], strict=False)
    # The CQT kernels are computed from the sample rate, not stored (pesto's loader tolerates the same).
    missing = [k for k in missing if not k.startswith("preprocessor.hcqt_kernels.")]
    if missing or unexpected:
        raise TeacherLoadError(
            f"pesto {model}: checkpoint does not fit the model "
            f"(missing {missing[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return net.eval()


class PestoTeacher(Teacher):
    kind = "pesto"
    sample_rate = PESTO_SAMPLE_RATE
    outputs = OUTPUTS

    def __init__(self, name: str = "pesto", model: str = "mir-1k_g7", step_ms: float = 10.0, reduction: str = "alwa"):
        super().__init__(name)
        self.net = build_pesto(model, step_ms, self.sample_rate, reduction)
        self.version = pesto_version(model)

    def modules(self) -> list[torch.nn.Module]:
        return [self.net]

    def forward(self, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        f0, confidence, _volume, _activations = self.net(
            audio, sr=self.sample_rate, convert_to_freq=True, return_activations=True
        )
        return {"f0": f0.float(), "confidence": confidence.float()}


def pesto_version(model: str) -> str:
    return f"pesto-pitch {package_version('pesto-pitch')} {model}"


class PestoSpec(TeacherSpecBase):
    """``kind: pesto`` — outputs ``f0`` (Hz) and ``confidence`` (0..1), one value per ``step_ms``."""

    kind: Literal["pesto"] = "pesto"
    model: str = Field("mir-1k_g7", description="A checkpoint shipped in pesto/weights (mir-1k_g7, mir-1k).")
    step_ms: float = Field(10.0, gt=0, description="Hop between frames in milliseconds.")
    reduction: Literal["alwa", "argmax", "mean"] = "alwa"

    def default_name(self) -> str:
        return "pesto"

    def declared_outputs(self) -> tuple[TeacherOutput, ...]:
        return OUTPUTS

    def build(self) -> PestoTeacher:
        return PestoTeacher(self.teacher_name, self.model, self.step_ms, self.reduction)

    def identity(self) -> dict[str, Any]:
        return self.base_identity(
            pesto_version(self.model), file_sha256(pesto_checkpoint_path(self.model)), PESTO_SAMPLE_RATE
        )
