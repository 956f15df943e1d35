"""The deployment files as the deployment tests read them: cluster/, docker/ and docs/operations.md.

One place that knows where KubeRay keeps a cluster spec, a job spec and the pods inside a manifest, so the
checks in test_deploy_manifests.py and the local run in test_deploy_entrypoints.py read them the same way.
"""

from __future__ import annotations

import importlib
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY_MANIFESTS = ("raycluster.yaml", "rayjob-augment.yaml", "raycronjob-nightly.yaml")
LAUNCHER_CONFIG = CLUSTER / "cluster-launcher-aws.yaml"
OPERATOR_VALUES = CLUSTER / "kuberay-operator-values.yaml"
JOB_CONFIGS = CLUSTER / "configs"
DOCKERFILE = REPO / "docker" / "Dockerfile"
LOCK = REPO / "docker" / "requirements.lock"
OPERATIONS = REPO / "docs" / "operations.md"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"

Doc = dict[str, Any]


def manifests() -> list[tuple[str, Doc]]:
    """``(file name, object)`` for every Kubernetes object in the KubeRay manifests."""
    return [
        (name, doc)
        for name in KUBERAY_MANIFESTS
        for doc in yaml.safe_load_all((CLUSTER / name).read_text())
        if doc is not None
    ]


def job_spec(doc: Doc) -> Doc | None:
    """The RayJob spec of a RayJob or of a RayCronJob's template; None for other kinds."""
    if doc["kind"] == "RayJob":
        return doc["spec"]
    if doc["kind"] == "RayCronJob":
        return doc["spec"]["jobTemplate"]
    return None


def cluster_spec(doc: Doc) -> Doc | None:
    """The RayCluster spec a manifest defines (RayCluster, or a job's own cluster); None if it has none."""
    if doc["kind"] == "RayCluster":
        return doc["spec"]
    spec = job_spec(doc)
    return spec.get("rayClusterSpec") if spec else None


def driver_cluster(doc: Doc, all_docs: list[Doc]) -> Doc:
    """The RayCluster spec whose head runs a job's driver: its own, or the RayCluster its clusterSelector names."""
    spec = job_spec(doc)
    if spec.get("rayClusterSpec"):
        return spec["rayClusterSpec"]
    name = spec["clusterSelector"]["ray.io/cluster"]
    (found,) = [d["spec"] for d in all_docs if d["kind"] == "RayCluster" and d["metadata"]["name"] == name]
    return found


def pod_templates(spec: Doc) -> Iterator[tuple[str, Doc]]:
    """``(group name, pod template)`` of a RayCluster spec's head ("head") and worker groups."""
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def head_container(spec: Doc) -> Doc:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0]


def mounted_configmaps(spec: Doc) -> dict[str, str]:
    """``{mount path: ConfigMap name}`` of the head container of a RayCluster spec."""
    pod = spec["headGroupSpec"]["template"]["spec"]
    configmaps = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    return {
        m["mountPath"]: configmaps[m["name"]]
        for m in head_container(spec).get("volumeMounts", [])
        if m["name"] in configmaps
    }


def referenced_secrets(pod_spec: Doc) -> set[str]:
    """Names of the Secrets a pod reads: envFrom, env valueFrom, secret volumes and image pull secrets."""
    names = {v["secret"]["secretName"] for v in pod_spec.get("volumes", []) if "secret" in v}
    names |= {s["name"] for s in pod_spec.get("imagePullSecrets", [])}
    for container in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        names |= {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
        names |= {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})
        }
    return names


def job_model(name: str) -> type:
    """The config model of the job ``ray-pipelines <name>`` runs."""
    from ray_pipelines.cli import JOBS

    return importlib.import_module(JOBS[name]).JOB.config_model


def entrypoint_argv(spec: Doc) -> list[str]:
    """A job's entrypoint split as the submitter's shell splits it."""
    return shlex.split(spec["entrypoint"])


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


# --- docs/operations.md: the commands a reader runs -------------------------------------------------


def shell_commands(markdown: str) -> list[list[str]]:
    """The commands in the fenced shell blocks of a Markdown page, continuation lines joined, split by shlex."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def documented(prefix: list[str]) -> list[list[str]]:
    """The documented commands that start with ``prefix`` (e.g. ``["kubectl", "create", "secret"]``)."""
    return [c for c in shell_commands(OPERATIONS.read_text()) if c[: len(prefix)] == prefix]


def documented_configmap_sources() -> dict[str, list[Path]]:
    """``{ConfigMap name: [files]}`` for each documented ``kubectl create configmap NAME --from-file=...``."""
    sources: dict[str, list[Path]] = {}
    for command in documented(["kubectl", "create", "configmap"]):
        name = command[3]
        for arg in command[4:]:
            if arg.startswith("--from-file="):
                path = REPO / arg.split("=")[-1]
                sources.setdefault(name, []).extend(sorted(path.iterdir()) if path.is_dir() else [path])
    return sources


def documented_secrets() -> set[str]:
    """The Secrets a documented ``kubectl create secret generic|docker-registry NAME`` creates."""
    kinds = ("generic", "docker-registry")
    return {command[4] for kind in kinds for command in documented(["kubectl", "create", "secret", kind])}


def documented_blocks(language: str) -> list[str]:
    """The fenced blocks of docs/operations.md in ``language`` (``yaml``, ``json``), as written."""
    return re.findall(rf"```{language}\n(.*?)```", OPERATIONS.read_text(), flags=re.S)


# --- docker/ ----------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of docker/Dockerfile, continuation lines joined, comments dropped."""
    text = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    text = text.replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip()]  # type: ignore[misc]


def copied_sources() -> list[str]:
    """The repository paths docker/Dockerfile's COPY instructions take from the build context."""
    sources = []
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY":
            sources += [a for a in args.split() if not a.startswith("--")][:-1]
    return sources


def base_images() -> dict[str, str]:
    """``{flavour: base image}`` from the tagged stages ``FROM image AS ray-<flavour>``."""
    images = {}
    for instruction, args in dockerfile_instructions():
        match = re.fullmatch(r"(\S+) AS ray-(\w+)", args) if instruction == "FROM" else None
        if match:
            images[match.group(2)] = match.group(1)
    return images


def normalised(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    """``{normalised name: version}`` pinned by docker/requirements.lock."""
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", LOCK.read_text(), flags=re.M)
    return {normalised(name): version for name, version in pins}


def lock_command() -> list[str]:
    """The ``uv pip compile ...`` command recorded in the lock's header."""
    match = re.search(r"^#\s+(uv pip compile .*)$", LOCK.read_text(), flags=re.M)
    return shlex.split(match.group(1))
