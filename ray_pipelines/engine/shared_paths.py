"""Local paths on a cluster of several nodes: every node must see the driver's files at the same path.

A job's tasks read its inputs and write its output on whichever node they run. A local path (not a
URL) works on a cluster only where a file system is shared at that path by every node (NFS, EFS, a
volume mounted on each pod). Without one, a worker node finds none of its inputs, and its writers fail
(the run's ``_job.json`` is not on that node's disk): its blocks go to the lost-input retry, and whether
the run ends complete depends on where Ray puts them again.

Before anything is read, one zero-CPU task on each other node looks for what the driver sees: this
run's ``_lease.json`` under a local output (its run id, so that a same-named folder left on a node's
own disk by an earlier run does not pass) and the first and last local inputs of the run. A node that
does not see them is asked again every few seconds for up to ``RAY_PIPELINES_SHARED_PATH_WAIT_S``
(60 s: a network file system may keep a node's cached directory for up to a minute, ``acdirmax``),
then stops the run in one line naming the node and the path (exit 2: the config is wrong for this
cluster). A node keeps its last answer when a later look cannot be placed there, and is left out
when it dies. Nodes an autoscaler adds later are not asked.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..config import ConfigError
from ..error_text import short_error
from ..storage import split_protocol
from .runtime import ray_nodes

log = logging.getLogger(__name__)

# How long the driver waits for the nodes' answers (each starts a worker process first).
LOOK_TIMEOUT_S = 120.0
# How long a node that does not see the paths is asked again (RAY_PIPELINES_SHARED_PATH_WAIT_S), and how often.
WAIT_S = 60.0
ASK_AGAIN_S = 5.0


@ray.remote(num_cpus=0, max_retries=0)
def _look(lease_path: str | None, inputs: list[str]) -> tuple[str | None, list[str]]:
    """On one node: the run id in the lease file there (None: no such file) and the inputs missing there."""
    run_id = None
    if lease_path is not None:
        try:
            with open(lease_path, "rb") as f:
                lease = json.loads(f.read())
            run_id = lease.get("run_id") if isinstance(lease, dict) else None
        except (OSError, ValueError):
            pass
    return run_id, [path for path in inputs if not os.path.exists(path)]


def local_files(uris: list[str]) -> list[str]:
    """The local paths among input URIs (``file://`` ones without their protocol)."""
    return [split_protocol(uri)[1] for uri in uris if split_protocol(uri)[0] == "file"]


@dataclass(frozen=True)
class Answer:
    """What one node said: whether it sees this run's lease file (True where the output is not local)
    and the first local input it does not see."""

    sees_run: bool
    missing: str | None

    @property
    def blind(self) -> bool:
        return not self.sees_run or self.missing is not None


def check_nodes_see_local_paths(output: str, lease_path: str | None, run_id: str, inputs: list[str]) -> None:
    """Raise :class:`ConfigError` when an alive node other than the driver's does not see this run's lease
    file (``lease_path``: set when the output is local) or one of ``inputs`` (local input files)."""
    if lease_path is None and not inputs:
        return
    try:
        here = ray.get_runtime_context().get_node_id()
    except Exception:  # a driver on no node of the cluster (Ray Client): every node is asked
        here = None
    nodes = [n for n in ray_nodes() or [] if n.get("Alive") and n["NodeID"] != here]
    if not nodes:
        return
    names = {n["NodeID"]: _name(n) for n in nodes}
    wait_s = float(os.environ.get("RAY_PIPELINES_SHARED_PATH_WAIT_S", WAIT_S))
    deadline = time.monotonic() + wait_s
    answers: dict[str, Answer] = {}
    asking, unasked_told = list(names), set()
    for attempt in itertools.count():
        said, unasked = _ask(asking, lease_path, run_id, inputs)
        answers.update(said)
        for node in unasked.keys() - unasked_told:
            log.warning(
                "node %s could not be asked whether it sees the run's local paths: %s", names[node], unasked[node]
            )
        unasked_told |= unasked.keys()
        asking = to_ask_again(asking, answers, alive_node_ids())
        left = deadline - time.monotonic()
        if not asking or left <= 0:
            break
        if attempt == 0 and any(a.blind for a in answers.values()):
            log.warning(
                "%d of the %d other nodes do not see the run's local paths; asking them again for up to %.0f s "
                "(a network file system may show a new file late)",
                sum(a.blind for a in answers.values()),
                len(names),
                wait_s,
            )
        time.sleep(min(ASK_AGAIN_S, left))
    blind_to_output = [names[node] for node, a in answers.items() if not a.sees_run]
    blind_to_inputs = [(names[node], a.missing) for node, a in answers.items() if a.missing is not None]
    problem = blindness(output, blind_to_output, blind_to_inputs, len(names))
    if problem:
        raise ConfigError(
            problem + ": a cluster's tasks read and write on every node, so a local path needs a file system "
            "mounted at that path on each of them (NFS, EFS, a shared volume); else use object storage "
            "(s3://bucket/...)"
        )


def to_ask_again(asked: list[str], answers: dict[str, Answer], alive: set[str] | None) -> list[str]:
    """The nodes of ``asked`` to ask again: those still alive whose last answer was blind. A node that dies
    is dropped from ``answers`` (its tasks will not run there); one whose later look fails keeps its last
    answer (Ray may refuse to place a task on a node it has just answered from, on a loaded machine: "The
    node specified via NodeAffinitySchedulingStrategy doesn't exist any more or is infeasible"); one that
    never answered is left out, with the warning. ``alive``: None when Ray did not say (all taken as alive)."""
    if alive is not None:
        for node in [node for node in answers if node not in alive]:
            del answers[node]
    return [node for node in asked if node in answers and answers[node].blind]


def alive_node_ids() -> set[str] | None:
    nodes = ray_nodes()
    return None if nodes is None else {n["NodeID"] for n in nodes if n.get("Alive")}


def _ask(
    nodes: list[str], lease_path: str | None, run_id: str, inputs: list[str]
) -> tuple[dict[str, Answer], dict[str, str]]:
    """One look on each of ``nodes`` (ids): the answers, and why each node that gave none did not."""
    asked = {
        _look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            lease_path, inputs
        ): node
        for node in nodes
    }
    ready, waiting = ray.wait(list(asked), num_returns=len(asked), timeout=LOOK_TIMEOUT_S)
    unasked = {}
    for ref in waiting:
        ray.cancel(ref, force=True)
        unasked[asked[ref]] = f"no answer in {LOOK_TIMEOUT_S:.0f} s"
    answers = {}
    for ref in ready:
        try:
            seen_run, missing = ray.get(ref)
        except Exception as e:  # the node died meanwhile, or Ray could not place the task there
            unasked[asked[ref]] = short_error(str(e))  # one line: a remote error carries a traceback
            continue
        answers[asked[ref]] = Answer(lease_path is None or seen_run == run_id, missing[0] if missing else None)
    return answers, unasked


def blindness(output: str, blind_to_output: list[str], blind_to_inputs: list[tuple[str, str]], of: int) -> str:
    """What the nodes do not see, in one clause ('' when they see it all): ``blind_to_output`` names
    the nodes without this run's lease, ``blind_to_inputs`` pairs a node with an input missing there."""
    blind_to_input = [node for node, _ in blind_to_inputs]
    unseen_input = f"the input {blind_to_inputs[0][1]}" if blind_to_inputs else ""
    unseen_output = f"the output {output} (a local path)"
    if blind_to_output and sorted(blind_to_output) == sorted(blind_to_input):
        return f"{_nodes(blind_to_output, of)} {unseen_output} nor {unseen_input}"
    problems = [f"{_nodes(blind_to_output, of)} {unseen_output}"] if blind_to_output else []
    problems += [f"{_nodes(blind_to_input, of)} {unseen_input}"] if blind_to_input else []
    return "; ".join(problems)


def _name(node: dict) -> str:
    """A node's address and the start of its id (nodes on one machine share the address)."""
    return f"{node['NodeManagerAddress']} [{node['NodeID'][:8]}]"


def _nodes(names: list[str], of: int) -> str:
    """``node A (1 of the 3 other nodes) does not see``, ``nodes A, B (2 of ...) do not see``."""
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    many = len(names) > 1
    return f"node{'s' if many else ''} {shown} ({len(names)} of the {of} other nodes) do{'' if many else 'es'} not see"
