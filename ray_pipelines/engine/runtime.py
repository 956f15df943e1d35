"""Connecting to Ray and sizing actor pools from what the cluster has."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from ray.data import DataContext

from ..config import ActorPool, CommonConfig, ConfigError

log = logging.getLogger(__name__)

# CPU left free for the write tasks (and decode tasks on GPU clusters) when sizing CPU actors.
CPU_RESERVE = 0.5
WRITE_TASK_CPUS = 0.25
MAX_TASK_RETRIES = 2
# Whether workers' stdout/stderr stream to the driver's console; the CLI turns it off unless
# --verbose (ray_pipelines/console.py). Off, they stay in Ray's worker log files.
WORKER_LOGS_TO_DRIVER = True


def connect(address: str | None = None, num_cpus: int | None = None, quiet: bool = False) -> str:
    """Attach to a cluster (``address`` or ``RAY_ADDRESS``) or start an embedded one
    (``quiet``: workers' logs stay in Ray's log files instead of the driver's output).

    Returns how it connected, for the summary.
    """
    if ray.is_initialized():
        return "existing Ray session"
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=WORKER_LOGS_TO_DRIVER, configure_logging=False)
        return f"cluster at {address}"
    # Keep idle workers: otherwise every write task pays a fresh worker's start-up
    # (about 1 CPU-second per block, measured in bench/encode.py).
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        log_to_driver=WORKER_LOGS_TO_DRIVER and not quiet,
        configure_logging=False,
        _system_config={"kill_idle_workers_interval_ms": 0},
    )
    return "embedded local Ray"


@dataclass(frozen=True)
class PoolPlan:
    min_size: int
    max_size: int
    num_gpus: float
    num_cpus: float  # per actor
    decode_cpus: float  # per decode task


def plan_pool(cfg: CommonConfig, uses_gpu: bool = True, max_useful: int | None = None) -> PoolPlan:
    """Pool size and per-actor resources from the config and the cluster.

    GPU when the cluster has one and ``num_gpus`` is unset (or > 0). On CPU the
    actors share all CPUs but ``CPU_RESERVE`` (decode then fuses into the
    actors; see docs/architecture.md). ``max_useful`` (the number of input
    blocks) caps the pool: more actors than blocks would only sit idle.
    """
    resources = ray.cluster_resources()
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    num_gpus = (1.0 if gpus >= 1 else 0.0) if cfg.num_gpus is None else float(cfg.num_gpus)
    if not uses_gpu:
        num_gpus = 0.0
    if num_gpus > 0 and gpus == 0:
        raise ConfigError(
            f"num_gpus: {num_gpus} GPUs per actor asked for, but the cluster has no GPU (set num_gpus: 0 to run on CPU)"
        )
    if isinstance(cfg.actors, ActorPool):
        low, high = cfg.actors.min, cfg.actors.max
    elif isinstance(cfg.actors, int):
        low = high = cfg.actors
    elif num_gpus > 0:
        low = high = max(1, int(gpus // num_gpus))
    else:
        low = high = max(1, int(cpus))
    if max_useful is not None:
        high = max(1, min(high, max_useful))
        low = min(low, high)
    if num_gpus > 0:
        return PoolPlan(low, high, num_gpus, num_cpus=1.0, decode_cpus=1.0)
    per_actor = max(0.1, round((cpus - CPU_RESERVE) / high, 3))
    return PoolPlan(low, high, 0.0, num_cpus=per_actor, decode_cpus=per_actor)


def configure_data_context(cfg: CommonConfig, progress: bool = True) -> DataContext:
    ctx = DataContext.get_current()
    ctx.max_errored_blocks = cfg.max_errored_blocks
    # On small clusters the default per-operator reservation idles half the CPUs.
    ctx.op_resource_reservation_enabled = False
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    return ctx
