"""Connecting to Ray and sizing actor pools from what the cluster has."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import ray
import ray._private.ray_constants
import ray._private.services
import ray._private.utils
from ray.data import DataContext

from ..config import ActorPool, CommonConfig, ConfigError
from ..error_text import exception_chain
from ..stopping import stops_held

log = logging.getLogger(__name__)

# CPU left free for the write tasks (and decode tasks on GPU clusters) when sizing CPU actors.
CPU_RESERVE = 0.5
WRITE_TASK_CPUS = 0.25
MAX_TASK_RETRIES = 2
# An autoscaler without a GPU limit (maxReplicas unset) still gets a bounded pool: Ray Data adds
# actors up to this many as blocks wait, and the input blocks cap it further.
GPU_CEILING = 64
# The same for CPU actors on a cluster whose autoscaler may add CPU workers.
CPU_CEILING = 1024
# In what autoscaler_limits gives: the CPUs of the node types without a GPU, those a pool of CPU actors may grow
# onto (Ray's autoscaler only ranks GPU nodes last for CPU demand: it starts them too).
CPU_NODES_CPU = "CPU of nodes without GPUs"
# How long the driver waits for ray.nodes(): Ray asks the GCS without a timeout (its global state
# accessor retries forever), and a reply lost once left a test run's driver waiting there for good.
NODES_TIMEOUT_S = 30.0
# How long a named cluster may not answer before the job gives up (RAY_PIPELINES_CONNECT_TIMEOUT_S).
# ray.init itself retries a silent address 20 times at up to 10 s each, behind the progress line,
# before it says anything; a mistyped --address then looked like a job stuck at 0 %.
CONNECT_TIMEOUT_S = 30.0
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
    if address and urlsplit(address).scheme in ("http", "https"):
        # Ray's own error for it ends on "either:" once cut to one line (the job's last line).
        raise ConnectionError(
            f"{address} (--address or RAY_ADDRESS) is an HTTP address, the dashboard's, which `ray job submit "
            f"--address` takes; a job run here needs {DEFAULT_GCS_ADDRESS} or ray://HOST:10001 (Ray Client), or "
            "neither set for an embedded local Ray"
        )
    if address:
        timeout_s = float(os.environ.get("RAY_PIPELINES_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
        wait_for_cluster(address, timeout_s)
        problem = gcs_problem(address, min(GCS_PROBE_TIMEOUT_S, timeout_s))
        if problem:
            raise ConnectionError(problem)
        try:
            with ray_starting():
                ray.init(address=address, log_to_driver=WORKER_LOGS_TO_DRIVER, configure_logging=False)
        except ConnectionError as e:
            if token_refused(e):
                raise ConnectionError(token_advice(address)) from e
            raise
        return f"cluster at {address}"
    with ray_starting(), ray_processes_in_own_groups():
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


@contextlib.contextmanager
def ray_starting() -> Iterator[None]:
    """Around ``ray.init`` in the driver: a stop (Ctrl-C, SIGTERM) that comes while Ray starts is raised
    once it has started (:func:`~ray_pipelines.stopping.stops_held`), so the run unwinds as from any
    other point: exit 130/143, the lease released, an embedded Ray shut down. Two things in Ray would
    otherwise act on it first: the SIGTERM handler ``ray.init`` sets (``sys.exit(15)``: exit 15, or no
    stop at all where it ran inside a fork handler), kept out here; and the core worker's C++ crash
    handler, which took SIGTERM for the second its constructor runs and aborted (exit 134, the lease
    left behind), not installed in the driver. The driver keeps Python's tracebacks on a crash
    (``ray.init`` turns on ``faulthandler``); its C++ stack is what a crash no longer prints."""
    constants, utils = ray._private.ray_constants, ray._private.utils
    saved = constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, utils.set_sigterm_handler
    constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    utils.set_sigterm_handler = lambda handler: None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_as_ray_does)  # a caller without a handler keeps what ray.init sets
    try:
        with stops_held():
            yield
    finally:
        constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER, utils.set_sigterm_handler = saved


@contextlib.contextmanager
def ray_processes_in_own_groups() -> Iterator[None]:
    """Around an embedded ``ray.init``: the processes it starts (GCS, raylet, and through the raylet the
    workers; Ray's monitors) each lead a process group of their own, not the driver's. A stop sent to the
    driver's group (``timeout``, which signals the group it started; a shell's job control) then reaches
    the driver alone, which unwinds and shuts its Ray down in order; before, Ray's processes took the
    SIGTERM too (they block only SIGINT) and died under the stopping driver, which then now and then
    exited 1 with its lease left. A driver that dies still takes them with it (Ray's kernel fate-sharing,
    ``PR_SET_PDEATHSIG``); where that is missing they stay in the driver's group, as Ray needs then."""
    services = ray._private.services
    if sys.platform == "win32" or not ray._private.utils.detect_fate_sharing_support():
        yield
        return
    popen = services.ConsolePopen

    class OwnGroupPopen(popen):
        def __init__(self, *args, preexec_fn=None, **kwargs):
            def own_group() -> None:
                os.setpgid(0, 0)
                if preexec_fn is not None:
                    preexec_fn()

            super().__init__(*args, preexec_fn=own_group, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = popen


def _exit_as_ray_does(signum, frame) -> None:
    sys.exit(signum)


def cluster_endpoint(address: str) -> tuple[str, int] | None:
    """The host and port a cluster address names (``host:port``, ``ray://host:port``); None for
    ``auto``/``local`` and what Ray resolves itself."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname and port else None


def wait_for_cluster(address: str, timeout_s: float) -> None:
    """Return once something accepts connections at ``address``'s host and port; after
    ``timeout_s`` of refusals (or no such host), a ConnectionError that says what to check."""
    endpoint = cluster_endpoint(address)
    if endpoint is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(endpoint, timeout=max(0.1, min(5.0, deadline - time.monotonic()))).close()
            return
        except OSError as e:
            if time.monotonic() >= deadline:
                reason = e.strerror or str(e) or type(e).__name__
                raise ConnectionError(
                    f"no Ray cluster answers at {address} ({reason}, for {timeout_s:g} s): check --address or "
                    "RAY_ADDRESS, or leave both unset to run on an embedded local Ray"
                ) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


# How long a named address has to take an HTTP/2 connection and answer one GCS request.
GCS_PROBE_TIMEOUT_S = 10.0
DEFAULT_GCS_ADDRESS = "the head's GCS address (host:6379 by default)"


def gcs_problem(address: str, timeout_s: float = GCS_PROBE_TIMEOUT_S) -> str:
    """Why ``address``, where something accepts connections, will not take this driver: "" when its
    GCS answers (or the address is not checked: a ``ray://`` Ray Client address, TLS).

    ``ray.init`` asks an address for its cluster id 20 times, waiting 30 s for each answer: a port that
    is not a Ray GCS (the dashboard's 8265, Ray Client's 10001, another service) held the job at 0 %
    for 13 minutes, and a cluster wanting a token this driver does not send for 20 s of Ray's
    warnings. One gRPC request of Ray's own (``GetClusterId``) tells them apart in milliseconds."""
    endpoint = cluster_endpoint(address)
    if endpoint is None or "://" in address or os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return ""
    import grpc
    from ray._private.ray_constants import GLOBAL_GRPC_OPTIONS
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    host, port = endpoint
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Ray's own channel options: no HTTP proxy from the environment (unless RAY_grpc_enable_http_proxy).
    with grpc.insecure_channel(target, options=GLOBAL_GRPC_OPTIONS) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return (
                f"something answers at {address}, but not a Ray cluster: it does not speak gRPC (the dashboard's "
                f"port, 8265, is for `ray job submit --address http://HOST:8265`): give {DEFAULT_GCS_ADDRESS}"
            )
        try:
            gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
                gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                return (
                    f"{address} is a gRPC service but not a Ray cluster's GCS (Ray Client's port, 10001, is "
                    f"ray://HOST:10001): give {DEFAULT_GCS_ADDRESS}"
                )
            if e.code() == grpc.StatusCode.UNAUTHENTICATED and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
                return token_advice(address)
            # Anything else (a token this probe does not send, a GCS still starting): ray.init decides.
    return ""


def token_refused(error: BaseException) -> bool:
    """Whether ``ray.init``'s ConnectionError was the cluster refusing this driver's auth token: Ray
    says so only in the text of the error it chains (``AuthenticationError: ... InvalidAuthToken``)."""
    return any(
        "InvalidAuthToken" in str(seen) or type(seen).__name__ == "AuthenticationError"
        for seen in exception_chain(error)
    )


def token_advice(address: str) -> str:
    """What to do when the cluster at ``address`` refused this driver's token. A cluster started with
    ``ray start`` uses token auth by default since Ray 2.60, and Ray sends a token to an address named
    by ``--address`` or ``RAY_ADDRESS`` only with ``RAY_AUTH_MODE=token`` (it never sends one unasked:
    the address may not be the cluster the token is for). Before, the job printed Ray's retry warning
    every second for 20 s, then ``ConnectionError: Failed to connect to Ray cluster at ...``."""
    where = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            f"the Ray cluster at {address} wants an auth token (token auth is on by default since Ray 2.60), and "
            f"Ray sends one to an address it is given only with RAY_AUTH_MODE=token: export RAY_AUTH_MODE=token, "
            f"with the cluster's token in {where}"
        )
    return f"the Ray cluster at {address} refused this driver's auth token: put the cluster's token in {where}"


@dataclass(frozen=True)
class PoolPlan:
    min_size: int
    max_size: int
    num_gpus: float
    num_cpus: float  # per actor
    decode_cpus: float  # per decode task


def cluster_capacity() -> tuple[dict[str, float], dict[str, float]]:
    """What the cluster has now, and the most its autoscaler may start (:func:`autoscaler_limits`; the same
    as now where neither says more)."""
    now = {k: float(v) for k, v in ray.cluster_resources().items()}
    most = autoscaler_limits()
    return now, {k: max(float(most.get(k, 0) or 0), now.get(k, 0.0)) for k in set(now) | set(most)}


def autoscaler_limits() -> dict[str, float]:
    """The most of each resource the cluster's autoscaler may start: the config an autoscaler published in
    the GCS (Ray's v2 autoscaler of later versions), else, on KubeRay, the RayCluster's worker groups read
    through the Kubernetes API as Ray's KubeRay autoscaler reads them (Ray 2.60's autoscaler publishes
    nothing, so a GPU group at ``minReplicas: 0`` looked like a cluster without GPUs); {} where neither."""
    try:
        from ray._private.state import state

        published = state.get_max_resources_from_cluster_config()
    except Exception:  # older or newer Ray without it, or no GCS
        published = None
    if published:
        return {k: float(v or 0) for k, v in published.items()}
    name, namespace = os.environ.get("RAY_CLUSTER_NAME"), os.environ.get("RAY_CLUSTER_NAMESPACE")
    if not (name and namespace and os.environ.get("KUBERNETES_SERVICE_HOST")):
        return {}
    try:  # the head pod's service account may read its RayCluster (the autoscaler sidecar does); one request
        from ray.autoscaler._private.kuberay.node_provider import KubernetesHttpApiClient

        return limits_from_ray_cluster(KubernetesHttpApiClient(namespace).get(f"rayclusters/{name}"))
    except Exception as exc:  # no access, no API server answering: what is there is all there is
        # A warning: without the limits a GPU group at 0 replicas plans the job on CPU (num_gpus unset).
        log.warning(
            "could not read RayCluster %s/%s for its worker groups' limits (a group at 0 replicas counts for "
            "nothing: set num_gpus to plan on GPU workers that are not up yet): %s",
            namespace,
            name,
            exc,
        )
        return {}


def limits_from_ray_cluster(ray_cluster: dict) -> dict[str, float]:
    """The most of each resource a RayCluster's autoscaler may start, derived as Ray's KubeRay autoscaler
    derives its config: {} without ``enableInTreeAutoscaling`` (no group grows past its replicas now), and
    a suspended group starts nothing."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    spec = ray_cluster.get("spec", {})
    if not spec.get("enableInTreeAutoscaling"):
        return {}
    groups = [group for group in spec.get("workerGroupSpecs", []) if not group.get("suspend")]
    config = _derive_autoscaling_config_from_ray_cr({**ray_cluster, "spec": {**spec, "workerGroupSpecs": groups}})
    return limits_from_autoscaling_config(config)


def limits_from_autoscaling_config(config: dict) -> dict[str, float]:
    """Each resource's most in an autoscaling config (``available_node_types``): the head's once, each
    worker type's ``max_workers`` times its resources."""
    head = config.get("head_node_type")
    most: dict[str, float] = {}
    for name, node_type in config.get("available_node_types", {}).items():
        count = 1 if name == head else int(node_type.get("max_workers", 0) or 0)
        resources = node_type.get("resources") or {}
        for resource, amount in resources.items():
            most[resource] = most.get(resource, 0.0) + count * float(amount)
        if not resources.get("GPU"):
            most[CPU_NODES_CPU] = most.get(CPU_NODES_CPU, 0.0) + count * float(resources.get("CPU", 0))
    return most


_nodes_call = threading.Lock()  # held while a ray.nodes() call is out (at most one at a time)


def ray_nodes() -> list[dict] | None:
    """``ray.nodes()``, or None when it has not answered within ``NODES_TIMEOUT_S`` or an earlier call
    is still waiting: the call runs in a daemon thread, so a reply that never comes costs that thread,
    not the run."""
    if not _nodes_call.acquire(blocking=False):
        return None
    answer: list[list[dict]] = []

    def ask() -> None:
        try:
            answer.append(ray.nodes())
        finally:
            _nodes_call.release()

    asking = threading.Thread(target=ask, name="ray-nodes", daemon=True)
    asking.start()
    asking.join(NODES_TIMEOUT_S)
    if not answer:
        log.warning("ray.nodes() has not answered; going on without the nodes' list")
        return None
    return answer[0]


def node_sizes() -> tuple[float | None, float | None]:
    """CPUs of the smallest live node that has any, and GPUs of the live node that has the most (each None
    when Ray reports none, or does not answer): one ``ray.nodes()`` call for both."""
    live = [node.get("Resources", {}) for node in ray_nodes() or [] if node.get("Alive")]
    cpus = [float(r.get("CPU", 0)) for r in live if float(r.get("CPU", 0)) > 0]
    gpus = [float(r.get("GPU", 0)) for r in live]
    return (min(cpus) if cpus else None), (max(gpus) if gpus else None)


def plan_pool(
    cfg: CommonConfig,
    uses_gpu: bool = True,
    max_useful: int | None = None,
    capacity: tuple[dict[str, float], dict[str, float]] | None = None,
    node_cpus: float | None = None,
    pools: int = 1,
    node_gpus: float | None = None,
) -> PoolPlan:
    """Pool size and per-actor resources from the config and the cluster (``capacity``: what it has
    now and the most its autoscaler may start, :func:`cluster_capacity`).

    GPU when the cluster has one, or its autoscaler may start one, and ``num_gpus`` is unset (or > 0).
    A cluster that scales GPU workers from zero (``minReplicas: 0``) has none when the job starts: the
    pool is then planned from what the autoscaler may start, with one actor to begin with, and Ray
    Data's requests for the rest scale the workers up. On CPU the actors share all CPUs but
    ``CPU_RESERVE`` (decode then fuses into the actors; see docs/architecture.md). ``max_useful``
    (the number of input blocks) caps the pool: more actors than blocks would only sit idle.

    A CPU actor never asks for more than the smallest node has (``node_cpus``, from Ray when
    ``capacity`` is not given): a pool of one actor on a 2 + 1 CPU cluster would otherwise ask for
    2.5 CPUs, which no node can place, and wait forever (seen when a lost node's inputs ran again
    before Ray had marked the node dead). A job with ``pools`` actor stages shares the CPUs among
    all their actors: each pool sized for every CPU asked for twice what a 2-CPU machine has with one
    block left, and when the second stage's actor was placed first the first stage's never could
    (a run that waited forever).
    """
    if capacity is None:
        capacity, (node_cpus, node_gpus) = cluster_capacity(), node_sizes()
    now, most = capacity
    cpus_now = float(now.get("CPU", 1))
    cpus = cpus_now or min(float(most.get("CPU", 1)), CPU_CEILING)  # none up yet: what may come
    gpus_now, gpus_most = float(now.get("GPU", 0)), float(most.get("GPU", now.get("GPU", 0)))
    num_gpus = (1.0 if gpus_most >= 1 else 0.0) if cfg.num_gpus is None else float(cfg.num_gpus)
    if not uses_gpu:
        num_gpus = 0.0
    if num_gpus > 0 and gpus_most == 0:
        raise ConfigError(
            f"num_gpus: {num_gpus} GPUs per actor asked for, but the cluster has no GPU and its autoscaler "
            "can start none (set num_gpus: 0 to run on CPU)"
        )
    if num_gpus > 0 and gpus_most <= gpus_now and node_gpus is not None and num_gpus > node_gpus:
        # Ray places an actor on one node: asked for more GPUs than any has, it waited for a node that never
        # came, at 0 % until Ray Data's no-progress timeout (30 minutes), then exit 1.
        raise ConfigError(
            f"num_gpus: {num_gpus:g} GPUs per actor asked for, but no node of the cluster has more than "
            f"{node_gpus:g} and its autoscaler can start none (an actor runs on one node)"
        )
    scaling_up = num_gpus > 0 and gpus_now < num_gpus
    gpus = min(gpus_most, GPU_CEILING) if scaling_up else gpus_now
    if scaling_up:
        log.warning(
            "the cluster has %g GPUs now; its autoscaler may start up to %s: planning GPU actors "
            "(%g GPU each) that start as GPU workers come up",
            gpus_now,
            f"{gpus_most:g}" if gpus_most < GPU_CEILING else "any number",
            num_gpus,
        )
    if isinstance(cfg.actors, ActorPool):
        low, high = cfg.actors.min, cfg.actors.max
    elif isinstance(cfg.actors, int):
        low = high = cfg.actors
    elif num_gpus > 0:
        low = high = max(1, math.floor(gpus / num_gpus + 1e-9))  # (1 // 0.2 is 4.0: 5 actors of 0.2 fit)
        if scaling_up:
            low = 1  # the first worker's actor starts the run; the others join as workers come up
    else:
        low = high = max(1, int(cpus))
    cpus_most = min(float(most.get(CPU_NODES_CPU, 0.0)), CPU_CEILING)
    # CPU actors sized to the CPUs up now, on a cluster whose autoscaler may add CPU workers, filled them and
    # asked for no more: Ray's autoscaler, which starts workers for waiting demand, never started one (a pool
    # of 15 on one worker of a 1-to-32 group). The pool may grow to what the autoscaler may start.
    cpu_scaling = num_gpus == 0 and cfg.actors is None and cpus_most >= cpus_now + 1
    if cpu_scaling:
        low = max(1, int(cpus_now))  # (none up: one actor, whose request starts the first worker)
        high = max(low, int(cpus_most))
    if max_useful is not None:
        high = max(1, min(high, max_useful))
        low = min(low, high)
    if num_gpus > 0:
        return PoolPlan(low, high, num_gpus, num_cpus=1.0, decode_cpus=1.0)
    if cpu_scaling and high > low:
        log.info(
            "the cluster has %g CPUs now; its autoscaler may start up to %g: %d CPU actors, up to %d as workers "
            "come up",
            cpus_now,
            cpus_most,
            low,
            high,
        )
    # Rounded down, so that the actors of every pool still fit together (those up now, where more may come;
    # none up: a CPU each).
    if cpu_scaling and not cpus_now:
        per_actor = 1.0
    else:
        sized = low if cpu_scaling else high
        per_actor = max(0.1, math.floor(1000 * (cpus - CPU_RESERVE) / (sized * max(1, pools))) / 1000)
    if node_cpus is not None:
        per_actor = min(per_actor, node_cpus)
    return PoolPlan(low, high, 0.0, num_cpus=per_actor, decode_cpus=per_actor)


def configure_data_context(cfg: CommonConfig, progress: bool = True) -> DataContext:
    """The run's settings on this process's Ray Data context (:func:`data_context_kept` puts a caller's back)."""
    ctx = DataContext.get_current()
    ctx.max_errored_blocks = cfg.max_errored_blocks
    # On small clusters the default per-operator reservation idles half the CPUs.
    ctx.op_resource_reservation_enabled = False
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = False
    return ctx


@contextlib.contextmanager
def data_context_kept() -> Iterator[None]:
    """For the body: the process's Ray Data context as it was before (a notebook's own pipelines after a
    run_job kept its max_errored_blocks and its order otherwise)."""
    ctx = DataContext.get_current()
    saved = {name: getattr(ctx, name) for name in CONTEXT_SETTINGS}
    order = ctx.execution_options.preserve_order
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(ctx, name, value)
        ctx.execution_options.preserve_order = order


CONTEXT_SETTINGS = ("max_errored_blocks", "op_resource_reservation_enabled", "enable_progress_bars")
