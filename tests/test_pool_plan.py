"""Sizing the actor pool from what the cluster has now and what its autoscaler may start: a
KubeRay cluster whose GPU workers scale from zero (minReplicas 0) still gets a GPU pool."""

from __future__ import annotations

import logging

import pytest

from ray_pipelines.config import CommonConfig, ConfigError
from ray_pipelines.engine.runner import WRITE_TASKS_PER_GPU_ACTOR, write_tasks
from ray_pipelines.engine.runtime import (
    CPU_NODES_CPU,
    GPU_CEILING,
    PoolPlan,
    autoscaler_limits,
    cluster_capacity,
    limits_from_autoscaling_config,
    limits_from_ray_cluster,
    plan_pool,
)
from tests.conftest import Lines


def config(**keys) -> CommonConfig:
    return CommonConfig(input="/in", output="/out", **keys)


def test_a_cluster_with_gpus_now_gets_one_actor_per_gpu():
    plan = plan_pool(config(), capacity=({"CPU": 16, "GPU": 4}, {"CPU": 16, "GPU": 4}), max_useful=100)
    assert plan == PoolPlan(4, 4, 1.0, num_cpus=1.0, decode_cpus=1.0)


def test_gpu_workers_at_zero_replicas_still_plan_a_gpu_pool():
    # Head only (4 CPUs, no GPU) now; the autoscaler may start 2 workers of 4 GPUs.
    capacity = ({"CPU": 4}, {"CPU": 4 + 2 * 16, "GPU": 8})
    lines, logger = Lines(), logging.getLogger("ray_pipelines.engine.runtime")
    logger.addHandler(lines)
    try:
        plan = plan_pool(config(), capacity=capacity, max_useful=100)
    finally:
        logger.removeHandler(lines)
    assert plan == PoolPlan(1, 8, 1.0, num_cpus=1.0, decode_cpus=1.0)
    assert any("has 0 GPUs now; its autoscaler may start up to 8" in line for line in lines.lines)
    # Fewer input blocks than GPUs: no more actors than blocks.
    assert plan_pool(config(num_gpus=2), capacity=capacity, max_useful=3) == PoolPlan(1, 3, 2.0, 1.0, 1.0)
    # An autoscaler without a GPU limit: bounded all the same.
    assert plan_pool(config(), capacity=({"CPU": 4}, {"CPU": 4, "GPU": 2**62})).max_size == GPU_CEILING


def test_gpus_asked_for_where_none_can_ever_come_are_refused():
    with pytest.raises(ConfigError, match="its autoscaler can start none"):
        plan_pool(config(num_gpus=1), capacity=({"CPU": 4}, {"CPU": 4}))
    # Unset num_gpus on a CPU cluster: a CPU pool, one actor per CPU.
    plan = plan_pool(config(), capacity=({"CPU": 4}, {"CPU": 4}), max_useful=100)
    assert plan == PoolPlan(4, 4, 0.0, num_cpus=0.875, decode_cpus=0.875)


def test_cpu_actors_grow_with_the_cpu_workers_an_autoscaler_may_start():
    """One CPU worker of 15 up, a group that may grow to 32: the pool was 15 actors sized to fill that worker,
    so no actor ever waited and Ray's autoscaler (which starts workers for waiting demand) never started one."""
    config_of_groups = {
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "cpu": {"resources": {"CPU": 15}, "min_workers": 1, "max_workers": 32},
            "gpu": {"resources": {"CPU": 47, "GPU": 1}, "min_workers": 0, "max_workers": 8},
        },
    }
    most = limits_from_autoscaling_config(config_of_groups)
    assert most == {"CPU": 32 * 15 + 8 * 47, "GPU": 8, CPU_NODES_CPU: 32 * 15}
    capacity = ({"CPU": 15}, most)
    lines, logger = Lines(), logging.getLogger("ray_pipelines.engine.runtime")
    logger.addHandler(lines)
    level, _ = logger.level, logger.setLevel(logging.INFO)
    try:
        plan = plan_pool(config(num_gpus=0), capacity=capacity, max_useful=1000)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    # sized as before to the CPUs up now (14.5 of 15 shared by 15), growing to one actor per CPU that may come on
    # nodes without GPUs (the GPU nodes' CPUs would have Ray's autoscaler start GPU nodes for CPU actors)
    assert plan == PoolPlan(15, 480, 0.0, num_cpus=0.966, decode_cpus=0.966)
    assert lines.lines == ["the cluster has 15 CPUs now; its autoscaler may start up to 480: 15 CPU actors, up to 480 "
                           "as workers come up"]  # fmt: skip
    assert plan_pool(config(num_gpus=0), capacity=capacity, max_useful=40).max_size == 40  # no more than blocks
    unbounded = ({"CPU": 15}, {"CPU": 2.0**62, CPU_NODES_CPU: 2.0**62})
    assert plan_pool(config(), capacity=unbounded, max_useful=10**6).max_size == 1024
    # no CPU up yet (a head of no CPUs, workers from zero): one actor of a CPU to start, more as workers come;
    # with an autoscaler without a limit an actor asked for 4.6e17 CPUs, never placed
    assert plan_pool(config(), capacity=({"CPU": 0}, unbounded[1]), max_useful=10) == PoolPlan(1, 10, 0.0, 1.0, 1.0)
    assert plan_pool(config(), capacity=({"CPU": 0}, {"CPU": 2.0**62}), max_useful=10).num_cpus <= 1024
    # given actors, or a cluster that cannot grow: as before
    assert plan_pool(config(actors=4, num_gpus=0), capacity=capacity, max_useful=100) == PoolPlan(
        4, 4, 0.0, 3.625, 3.625
    )
    assert plan_pool(config(), capacity=({"CPU": 15}, {"CPU": 15}), max_useful=100) == PoolPlan(
        15, 15, 0.0, 0.966, 0.966
    )


def test_more_gpus_per_actor_than_any_node_has_are_refused_and_fractions_fill_a_gpu():
    """num_gpus: 2 on nodes of one GPU each waited at 0 % for a node that never came (Ray places an actor on
    one node), until Ray Data's no-progress timeout, then exit 1."""
    two_nodes = ({"CPU": 16, "GPU": 2}, {"CPU": 16, "GPU": 2})
    with pytest.raises(ConfigError, match="no node of the cluster has more than 1 and its autoscaler can start none"):
        plan_pool(config(num_gpus=2), capacity=two_nodes, node_gpus=1.0)
    assert plan_pool(config(num_gpus=1), capacity=two_nodes, node_gpus=1.0, max_useful=100).max_size == 2
    # A cluster whose autoscaler may start more: its nodes' sizes are not known here, so planned as before.
    assert plan_pool(config(num_gpus=2), capacity=({"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 8}), node_gpus=1.0)
    # Five actors of 0.2 GPU fit on one (1 // 0.2 is 4.0).
    for share, actors in ((0.2, 5), (0.1, 10), (0.5, 2), (0.3, 3)):
        plan = plan_pool(config(num_gpus=share), capacity=({"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 1}), max_useful=99)
        assert plan.max_size == actors, share


def test_a_runs_ray_data_settings_do_not_stay_in_the_callers_context():
    """A notebook that called run_job and then ran its own Ray Data pipeline had max_errored_blocks 16 and
    no order kept without asking."""
    from ray.data import DataContext

    from ray_pipelines.engine.runtime import configure_data_context, data_context_kept

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a caller's (the run sets False)
    before = (ctx.max_errored_blocks, ctx.op_resource_reservation_enabled, ctx.execution_options.preserve_order)
    with data_context_kept():
        configure_data_context(config(max_errored_blocks=7), progress=False)
        assert ctx.max_errored_blocks == 7 and not ctx.execution_options.preserve_order
    after = (ctx.max_errored_blocks, ctx.op_resource_reservation_enabled, ctx.execution_options.preserve_order)
    assert after == before
    ctx.execution_options.preserve_order = False


def test_a_cpu_actor_never_asks_for_more_than_the_smallest_node_has():
    # A 2 + 1 CPU cluster and one block left (a lost node's inputs running again): one actor. Sized
    # from the cluster's total it would ask for 2.5 CPUs, which neither node can place.
    capacity = ({"CPU": 3}, {"CPU": 3})
    assert plan_pool(config(), capacity=capacity, max_useful=1).num_cpus == 2.5
    plan = plan_pool(config(), capacity=capacity, max_useful=1, node_cpus=1.0)
    assert plan == PoolPlan(1, 1, 0.0, num_cpus=1.0, decode_cpus=1.0)
    # Many blocks: one actor per CPU, well under a node's size, as before.
    assert plan_pool(config(), capacity=capacity, max_useful=100, node_cpus=1.0).num_cpus == round(2.5 / 3, 3)


def test_the_actors_of_every_stage_fit_on_the_cpus_together():
    """Two actor stages and one block left on 2 CPUs: sized per pool, each actor asked for 1.5 CPUs
    and the second stage's, placed first, kept the first stage's from ever starting. Shared, both
    fit beside the reserve."""
    capacity = ({"CPU": 2}, {"CPU": 2})
    assert plan_pool(config(), capacity=capacity, max_useful=1).num_cpus == 1.5
    two = plan_pool(config(), capacity=capacity, max_useful=1, pools=2)
    assert two == PoolPlan(1, 1, 0.0, num_cpus=0.75, decode_cpus=0.75)
    many = plan_pool(config(), capacity=({"CPU": 4}, {"CPU": 4}), max_useful=100, pools=2)
    assert many.max_size == 4 and 2 * many.max_size * many.num_cpus <= 4 - 0.5


def test_the_smallest_node_is_read_from_ray(ray_local):
    from ray_pipelines.engine.runtime import node_sizes

    assert node_sizes() == (2.0, 0.0)  # the session's embedded Ray: one node of 2 CPUs, no GPU
    assert plan_pool(config(), max_useful=1).num_cpus == 1.5  # 2 - CPU_RESERVE, within the node


def test_a_ray_nodes_call_that_never_answers_costs_a_timeout_not_the_run(ray_local, monkeypatch):
    """Ray's global state accessor asks the GCS without a timeout; one lost reply once held a test run's
    driver in ray.nodes() for good. The engine asks in a thread and goes on without the list."""
    import threading
    import time

    from ray_pipelines.engine import runtime
    from ray_pipelines.engine.control import RunControl

    assert [n["Alive"] for n in runtime.ray_nodes()] == [True]  # the real call answers
    released = threading.Event()
    monkeypatch.setattr(runtime.ray, "nodes", lambda: released.wait(30) and [])  # a reply that does not come
    monkeypatch.setattr(runtime, "NODES_TIMEOUT_S", 0.3)
    started = time.monotonic()
    assert runtime.ray_nodes() is None and runtime.node_sizes() == (None, None)  # the second: one call at a time
    with RunControl.__new__(RunControl).watch_nodes(every_s=0.05):  # its start and its watch go on
        time.sleep(0.2)
    assert time.monotonic() - started < 5
    assert plan_pool(config(), max_useful=1).num_cpus == 1.5  # planning falls back to the cluster's total
    released.set()  # the stuck call returns; the next one is asked again
    deadline = time.monotonic() + 5
    while runtime._nodes_call.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    monkeypatch.setattr(runtime.ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 3.0}}])
    assert runtime.node_sizes() == (3.0, 0.0)


def test_a_gpu_actor_gets_several_write_tasks_a_cpu_actor_one():
    assert write_tasks(PoolPlan(4, 4, 1.0, num_cpus=1.0, decode_cpus=1.0)) == 4 * WRITE_TASKS_PER_GPU_ACTOR
    assert write_tasks(PoolPlan(1, 1, 0.5, num_cpus=1.0, decode_cpus=1.0)) == WRITE_TASKS_PER_GPU_ACTOR
    assert write_tasks(PoolPlan(2, 6, 0.0, num_cpus=0.5, decode_cpus=0.5)) == 6


def test_the_gpus_a_kuberay_cluster_may_start_come_from_its_worker_groups():
    """Ray 2.60's autoscaler publishes no limits in the GCS (nothing calls report_cluster_config), so a GPU
    group at minReplicas 0 looked like a cluster that can never have a GPU: a GPU job ran on CPU or exited 2.
    The limits now come from the RayCluster as Ray's KubeRay autoscaler derives them (its own function on
    the project's manifests; only the API request is not made here)."""
    from tests import deploy

    for name, doc in deploy.manifests():
        spec = deploy.cluster_spec(doc)
        if spec is None:
            continue
        ray_cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "c", "namespace": "n"}}
        limits = limits_from_ray_cluster({**ray_cluster, "spec": spec})
        gpus = sum(
            group["maxReplicas"]
            * int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
            for group in spec["workerGroupSpecs"]
        )
        assert gpus > 0 and limits["GPU"] == gpus, name
        plan = plan_pool(config(), capacity=({"CPU": 2}, {**limits, "CPU": max(limits["CPU"], 2)}), max_useful=100)
        assert plan.num_gpus == 1.0 and plan.max_size == min(gpus, GPU_CEILING), name
        # Without the autoscaler, or with the GPU group suspended, no GPU can come: none is counted
        suspended = [{**g, "suspend": "nvidia.com/gpu" in str(g)} for g in spec["workerGroupSpecs"]]
        assert limits_from_ray_cluster({**ray_cluster, "spec": {**spec, "enableInTreeAutoscaling": False}}) == {}
        assert (
            limits_from_ray_cluster({**ray_cluster, "spec": {**spec, "workerGroupSpecs": suspended}}).get("GPU", 0) == 0
        )


def test_outside_kubernetes_without_a_published_config_the_limits_are_what_is_there(ray_local, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert autoscaler_limits() == {}
    now, most = cluster_capacity()
    assert most == now and now["CPU"] > 0
