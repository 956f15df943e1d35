"""Device choice shared by every stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(device: str | None = None, cpu_threads: int = 1) -> torch.device:
    """``cuda`` when this process can see a GPU (Ray sets CUDA_VISIBLE_DEVICES for
    actors given ``num_gpus``), else ``cpu``.

    On CPU the stage runs single-threaded by default: Ray scales by actors, and a
    fixed thread count keeps float reductions in one order (deterministic bytes).
    torch is imported here, where a stage runs: importing ``ray_pipelines.stages``
    (as the driver does) does not import it.
    """
    import torch

    chosen = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if chosen.type == "cpu" and cpu_threads:
        torch.set_num_threads(cpu_threads)
    return chosen
