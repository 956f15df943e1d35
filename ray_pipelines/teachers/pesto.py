"""PESTO (``pesto-pitch``): f0 in Hz and voicing confidence per 10 ms frame.

The weights ship inside the PyPI package (``pesto/weights/*.ckpt``). PESTO's
own loader calls ``torch.load(weights_only=False)``; here the checkpoint is
loaded with ``weights_only=True``, allowing only the OmegaConf containers its
hyper-parameters are stored in (plain data classes, no code), and the model
is rebuilt the way ``pesto.loader.load_model`` does.
"""

from __future__ import annotations

import collections
import typing
from typing import Any

import torch

from .base import Teacher, TeacherLoadError
from .spec import (  # noqa: F401  (re-exported: the spec and the weights' location are torch-free, in spec)
    PESTO_OUTPUTS,
    PESTO_SAMPLE_RATE,
    PestoSpec,
    pesto_checkpoint_path,
    pesto_version,
)

OUTPUTS = PESTO_OUTPUTS


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
