"""The deployment files, checked offline as far as they can be without a cluster or a Docker daemon.

- every KubeRay manifest validates against KubeRay's CRD schemas (tests/data/kuberay-crds, the operator
  release docs/operations.md installs) with unknown fields refused, and every pod in it against
  Kubernetes' own schemas (kubernetes-validate); the cluster-launcher config against Ray's schema;
- one Python and one Ray across the images, the lock, pyproject.toml and every manifest;
- every file an entrypoint reads is in the image or mounted into the pod that runs it;
- every Secret and ConfigMap a pod reads is created by KubeRay or by a command in docs/operations.md, and
  the documented pull-Secret changes (for a private registry) keep every manifest valid;
- the launcher's nodes boot the documented AMI, and the head's instance profile is documented with a policy
  that covers the EC2 calls of Ray's autoscaler and passes the workers' role;
- the nightly schedule has its deadlines, TTLs and retries, runs on the long-running cluster's spec, and
  is paused by deleting it (KubeRay catches up every slot missed while suspended).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from ray_pipelines.cli import JOBS
from ray_pipelines.config import load_config, packaged_config_names
from tests import deploy

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

# The Kubernetes versions whose schemas the pods are checked against: the oldest a current managed
# Kubernetes offers and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")
# KubeRay's name limits (ray-operator/controllers/ray/utils/constant.go): the objects it derives from a
# name (services, the RayJob of a RayCronJob slot) must stay valid Kubernetes names.
NAME_LIMITS = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 36}
DNS_1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def project() -> dict[str, Any]:
    return tomllib.loads((deploy.REPO / "pyproject.toml").read_text())["project"]


def ray_and_python_of(image: str) -> tuple[str, str]:
    """``("2.60.0", "3.11")`` for ``rayproject/ray:2.60.0-py311-cpu``."""
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)-\w+", image)
    assert match, f"{image}: not a tagged rayproject/ray image (<ray version>-py<XY>-<platform>)"
    return match.group(1), f"{match.group(2)}.{match.group(3)}"


# --- schemas ----------------------------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as `kubectl apply --validate=strict` does.

    The API server prunes unknown fields silently, so a misspelled field would be dropped, not reported.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    # libyaml's loader: the CRDs are megabytes of YAML (PyYAML's pure-Python loader takes seconds each).
    crd = yaml.load((deploy.CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]
    unknown_metadata = set(doc["metadata"]) - {"name", "labels", "annotations"}
    if unknown_metadata:
        errors.append(f"metadata: unexpected {sorted(unknown_metadata)}")
    return errors


def all_pods() -> list[tuple[str, str, dict[str, Any]]]:
    """``(file, group, pod template)`` of every pod the manifests define."""
    pods = []
    for name, doc in deploy.manifests():
        spec = deploy.cluster_spec(doc)
        if spec:
            pods += [(name, group, template) for group, template in deploy.pod_templates(spec)]
        job = deploy.job_spec(doc)
        if job and job.get("submitterPodTemplate"):
            pods.append((name, "submitter", job["submitterPodTemplate"]))
    return pods


def test_every_file_in_cluster_is_checked_here():
    checked = {*deploy.KUBERAY_MANIFESTS, deploy.LAUNCHER_CONFIG.name, deploy.OPERATOR_VALUES.name}
    assert {p.name for p in deploy.CLUSTER.iterdir() if p.is_file()} == checked


@pytest.mark.parametrize("name, doc", deploy.manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_validates_against_the_kuberay_crd(name, doc):
    assert doc["apiVersion"] == "ray.io/v1"
    assert crd_errors(doc) == []
    assert DNS_1123.fullmatch(doc["metadata"]["name"])
    assert len(doc["metadata"]["name"]) <= NAME_LIMITS[doc["kind"]]


@pytest.mark.parametrize(
    "path, value",
    [
        (["spec", "jobTemplate", "rayClusterSpec", "rayversion"], "2.60.0"),  # a misspelled key
        (
            ["spec", "jobTemplate", "rayClusterSpec", "headGroupSpec", "template", "spec", "containers", 0, "envfrom"],
            [],
        ),
        (["spec", "jobTemplate", "backoffLimit"], "two"),  # a wrong type
    ],
)
def test_the_crd_check_refuses_what_the_api_server_would_drop_or_reject(path, value):
    (doc,) = [d for _, d in deploy.manifests() if d["kind"] == "RayCronJob"]
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert crd_errors(broken)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_pod_validates_against_the_kubernetes_schema(version):
    for name, group, template in all_pods():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
        try:
            kubernetes_validate.validate(pod_template, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name} {group} pod: {'.'.join(map(str, e.path))}: {e.message}")


def test_the_cluster_launcher_config_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` checks, with defaults filled in
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config({**copy.deepcopy(config), "file_mount": {}}))


# --- one Python, one Ray ----------------------------------------------------------------------------


def test_one_python_and_one_ray_across_images_lock_pyproject_and_manifests():
    bases = deploy.base_images()
    assert set(bases) == {"cpu", "gpu"}
    (ray_version, python), *others = {ray_and_python_of(image) for image in bases.values()}
    assert not others, f"the CPU and GPU images differ in Ray or Python: {bases}"

    pinned = [Requirement(r) for r in project()["dependencies"] if Requirement(r).name == "ray"]
    assert [str(r.specifier) for r in pinned] == [f"=={ray_version}"]
    assert deploy.lock_pins()["ray"] == ray_version
    command = deploy.lock_command()
    assert command[command.index("--python-version") + 1] == python

    specs = [deploy.cluster_spec(doc) for _, doc in deploy.manifests()]
    assert {spec["rayVersion"] for spec in specs if spec} == {ray_version}


def test_the_gpu_base_image_has_the_cuda_of_the_locked_torch():
    cuda = deploy.lock_pins()["cuda-toolkit"]  # torch's CUDA libraries, as pip packages
    major, minor = cuda.split(".")[:2]
    assert deploy.base_images()["gpu"].endswith(f"-cu{major}{minor}")


def project_images() -> dict[str, str]:
    """``{flavour: image}`` as the manifests name them: the registry is the user's, the tag the version."""
    version = project()["version"]
    return {flavour: f"ghcr.io/your-org/ray-pipelines:{version}-{flavour}" for flavour in deploy.base_images()}


def test_pods_run_the_projects_images_gpu_only_where_gpus_are_requested():
    images = project_images()
    for name, group, template in all_pods():
        for container in template["spec"]["containers"]:
            wants_gpu = "nvidia.com/gpu" in container.get("resources", {}).get("limits", {})
            expected = images["gpu" if wants_gpu else "cpu"]
            assert container["image"] == expected, f"{name} {group}"

    launcher = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())
    assert launcher["docker"]["image"] == images["cpu"]
    types = launcher["available_node_types"]
    assert types["gpu_worker"]["docker"]["worker_image"] == images["gpu"]
    assert "docker" not in types["cpu_worker"] and "worker_image" not in launcher["docker"]
    assert types["cpu_worker"]["min_workers"] >= 1  # as on KubeRay: CPUs to size the pools from at a job's start


def test_the_documented_builds_make_the_images_the_manifests_run():
    built = {}
    for command in deploy.documented(["docker", "build"]):
        flavour = command[command.index("--build-arg") + 1].removeprefix("FLAVOR=")
        built[flavour] = command[command.index("-t") + 1]
        assert command[command.index("-f") + 1] == "docker/Dockerfile"
    tags = {flavour: image.split(":")[1] for flavour, image in project_images().items()}
    assert {flavour: image.split(":")[1] for flavour, image in built.items()} == tags
    pushed = {c[2].split(":")[1] for c in deploy.documented(["docker", "push"])}
    assert pushed == set(tags.values())


# --- the images' contents ---------------------------------------------------------------------------


def test_dependencies_are_installed_before_the_code_is_copied():
    steps = deploy.dockerfile_instructions()
    lines = [f"{instruction} {args}" for instruction, args in steps]
    copy_lock = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "requirements.lock" in line)
    install_lock = next(
        i for i, line in enumerate(lines) if line.startswith("RUN") and "-r /tmp/requirements.lock" in line
    )
    copy_code = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "ray_pipelines" in line)
    assert copy_lock < install_lock < copy_code
    assert "--require-hashes" in lines[install_lock]
    assert any("pip check" in line for line in lines[copy_code:])


def test_everything_the_dockerfile_copies_exists_and_is_in_the_build_context():
    included = {
        line[1:].rstrip("/")
        for line in (deploy.REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in deploy.copied_sources():
        assert (deploy.REPO / source).exists(), source
        assert source.rstrip("/") in included, f"{source} is excluded by .dockerignore"


def test_the_lock_satisfies_pyproject():
    """Every dependency the images install (the base set and the teachers extra) is pinned, within its range."""
    pins = deploy.lock_pins()
    for text in project()["dependencies"] + project()["optional-dependencies"]["teachers"]:
        requirement = Requirement(text)
        name = deploy.normalised(requirement.name)
        assert name in pins, f"{name} is not in docker/requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {requirement}"


# --- what the pods read -----------------------------------------------------------------------------


def test_each_entrypoint_reads_only_what_the_image_or_the_drivers_pod_holds():
    docs = [doc for _, doc in deploy.manifests()]
    configmap_sources = deploy.documented_configmap_sources()
    for doc in docs:
        job = deploy.job_spec(doc)
        if job is None:
            continue
        argv = deploy.entrypoint_argv(job)
        assert argv[0] == "ray-pipelines" and "ray-pipelines" in project()["scripts"]  # a console script of the package
        assert argv[1] in JOBS
        assert "working_dir" not in job.get("runtimeEnvYAML", ""), "the image holds the code: no upload"
        (config,) = deploy.option_values(argv, "--config")
        if "/" not in config:
            assert config in packaged_config_names()  # package data: in the image with the package
            path = config
        else:
            mounts = deploy.mounted_configmaps(deploy.driver_cluster(doc, docs))
            (mount,) = [m for m in mounts if config.startswith(m.rstrip("/") + "/")]
            files = {p.name: p for p in configmap_sources[mounts[mount]]}
            path = files[config[len(mount) :].lstrip("/")]
        # The config the driver will load validates, with the entrypoint's overrides.
        load_config(deploy.job_model(argv[1]), path, deploy.option_values(argv, "--set"))


def test_the_launcher_mounts_the_job_configs_and_the_token_from_files_that_exist():
    mounts = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())["file_mounts"]
    assert mounts["/etc/ray-pipelines"] == "./cluster/configs"
    assert (deploy.REPO / mounts["/etc/ray-pipelines"]).is_dir()
    assert mounts["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"  # `ray get-auth-token --generate`


# The AMI the launcher's nodes boot: AWS's DLAMI with an NVIDIA driver for CUDA 13, per region from its
# public SSM parameter; the config holds a placeholder (an AMI id is per region and per release).
DLAMI_SSM_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
AMI_PLACEHOLDER = "ami-REPLACE-ME"


def test_every_launcher_node_boots_the_documented_ami():
    """Unset, Ray boots its default AMI (a CUDA 11.2 driver), which cannot run the GPU image."""
    launcher = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())
    for name, node_type in launcher["available_node_types"].items():
        assert node_type["node_config"].get("ImageId") == AMI_PLACEHOLDER, name
    lookups = deploy.documented(["aws", "ssm", "get-parameter"])
    assert [c[c.index("--name") + 1] for c in lookups] == [DLAMI_SSM_PARAMETER]
    assert [c[c.index("--region") + 1] for c in lookups] == [launcher["provider"]["region"]]
    assert AMI_PLACEHOLDER in deploy.OPERATIONS.read_text()


def allowed(policy: dict[str, Any], action: str, resource: str = "*") -> bool:
    """Whether an IAM policy's Allow statements (wildcards and all) grant ``action`` on ``resource``."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action, a) for a in actions):
            if any(fnmatch.fnmatchcase(resource, r) for r in resources):
                return True
    return False


def test_the_head_profile_lets_the_autoscaler_start_workers_with_the_workers_profile():
    """Ray uses a head profile named in the config as it is: its role must launch and pass the workers' role."""
    from ray.autoscaler._private.aws import node_provider

    launcher = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())
    types = launcher["available_node_types"]
    profile = {name: t["node_config"]["IamInstanceProfile"]["Name"] for name, t in types.items()}
    head = profile.pop(launcher["head_node_type"])
    (workers,) = set(profile.values())
    assert head != workers
    (policy,) = [json.loads(b) for b in deploy.documented_blocks("json") if "iam:PassRole" in b]
    # The EC2 calls of Ray's AWS node provider, which the autoscaler on the head makes.
    source = Path(node_provider.__file__).read_text()
    calls = {
        "create_instances(": "ec2:RunInstances",
        "create_tags(": "ec2:CreateTags",
        "terminate_instances": "ec2:TerminateInstances",
        "instances.filter(": "ec2:DescribeInstances",
    }
    assert not launcher["provider"]["cache_stopped_nodes"]  # else ec2:StartInstances and ec2:StopInstances too
    for call, action in calls.items():
        assert call in source, f"Ray's AWS node provider no longer calls {call}: review the documented policy"
        assert allowed(policy, action), action
    assert allowed(policy, "iam:PassRole", f"arn:aws:iam::<account>:role/{workers}")
    assert not allowed(policy, "iam:PassRole", "arn:aws:iam::<account>:role/some-other-role")
    text = deploy.OPERATIONS.read_text()
    assert f"`{head}`" in text and f"`{workers}`" in text


def test_every_secret_and_configmap_a_pod_reads_is_created_or_documented():
    secrets, configmaps = deploy.documented_secrets(), set(deploy.documented_configmap_sources())
    for name, group, template in all_pods():
        assert deploy.referenced_secrets(template["spec"]) <= secrets, f"{name} {group}"
        used = {v["configMap"]["name"] for v in template["spec"].get("volumes", []) if "configMap" in v}
        assert used <= configmaps, f"{name} {group}"


def with_documented_pull_secret(doc: dict[str, Any]) -> dict[str, Any]:
    """A manifest as docs/operations.md has a private registry's user change it."""
    blocks = [yaml.safe_load(b) for b in deploy.documented_blocks("yaml")]
    (pod_lines,) = [b for b in blocks if list(b) == ["imagePullSecrets"]]
    (submitter,) = [b for b in blocks if list(b) == ["submitterPodTemplate"]]
    doc = copy.deepcopy(doc)
    spec = deploy.cluster_spec(doc)
    if spec:
        for _, template in deploy.pod_templates(spec):
            template["spec"].update(copy.deepcopy(pod_lines))
    job = deploy.job_spec(doc)
    if job is not None:
        job.update(copy.deepcopy(submitter))
    return doc


@pytest.mark.parametrize("name, doc", deploy.manifests(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_the_documented_pull_secret_gives_valid_manifests_that_pull_every_image_with_it(name, doc):
    changed = with_documented_pull_secret(doc)
    assert crd_errors(changed) == []
    spec, job = deploy.cluster_spec(changed), deploy.job_spec(changed)
    templates = [t for _, t in deploy.pod_templates(spec)] if spec else []
    if job is not None:
        templates.append(job["submitterPodTemplate"])
        (container,) = job["submitterPodTemplate"]["spec"]["containers"]
        assert container["image"] == project_images()["cpu"]  # the head's: the submitter runs `ray job submit`
        assert "command" not in container  # KubeRay then adds its own submit command
    for template in templates:
        assert [s["name"] for s in template["spec"]["imagePullSecrets"]] == ["registry-credentials"]
        assert deploy.referenced_secrets(template["spec"]) <= deploy.documented_secrets()
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "pod"}, "template": template}
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(pod_template, version, strict=True)


def test_object_store_credentials_come_only_from_a_secret():
    credential = re.compile(r"KEY|SECRET|TOKEN|PASSWORD")
    for name, group, template in all_pods():
        for container in template["spec"]["containers"]:
            literal = [e["name"] for e in container.get("env", []) if credential.search(e["name"]) and "value" in e]
            assert literal == [], f"{name} {group}: credentials as literal env values"
            assert {"secretRef": {"name": "object-store-credentials"}} in container["envFrom"], f"{name} {group}"


def test_token_auth_is_on_everywhere():
    # KubeRay then creates the token Secret itself, one per cluster, since authOptions names none.
    for _, doc in deploy.manifests():
        spec = deploy.cluster_spec(doc)
        if spec:
            assert spec["authOptions"] == {"mode": "token"}
    for _, _, template in all_pods():
        for container in template["spec"]["containers"]:
            assert not any(e["name"] == "RAY_AUTH_MODE" and e.get("value") != "token" for e in container.get("env", []))
    launcher = yaml.safe_load(deploy.LAUNCHER_CONFIG.read_text())
    assert "--env RAY_AUTH_MODE=token" in launcher["docker"]["run_options"]


# --- the nightly schedule ---------------------------------------------------------------------------


def nightly() -> dict[str, Any]:
    (doc,) = [d for _, d in deploy.manifests() if d["kind"] == "RayCronJob"]
    return doc


def without_worker_counts(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    for group in spec["workerGroupSpecs"]:
        del group["replicas"], group["minReplicas"]
    return spec


def minimum_workers(spec: dict[str, Any]) -> dict[str, int]:
    return {g["groupName"]: g["minReplicas"] for g in spec["workerGroupSpecs"] if g["replicas"] == g["minReplicas"]}


def test_the_nightly_cluster_is_the_long_running_clusters_spec_with_a_gpu_worker_from_the_start():
    (cluster,) = [d["spec"] for _, d in deploy.manifests() if d["kind"] == "RayCluster"]
    nightly_cluster = nightly()["spec"]["jobTemplate"]["rayClusterSpec"]
    assert without_worker_counts(nightly_cluster) == without_worker_counts(cluster)
    # A job sizes its pools from the nodes present when it starts and has them grow from there: KubeRay
    # submits once the minimum replicas run, so the nightly starts with a worker of each group, and the
    # long-running cluster always has a CPU worker.
    assert minimum_workers(nightly_cluster) == {"cpu": 1, "gpu": 1}
    assert minimum_workers(cluster)["cpu"] >= 1


def test_the_nightly_schedule_has_deadlines_ttls_and_retries():
    spec = nightly()["spec"]
    assert len(spec["schedule"].split()) == 5 and "TZ" not in spec["schedule"]
    assert spec["timeZone"]
    job = spec["jobTemplate"]
    # One RayJob per slot with a submission id KubeRay derives from its name: a fixed jobId would be
    # the same for every slot.
    assert "jobId" not in job and job.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    assert "clusterSelector" not in job  # a fresh cluster per run, so retries (backoffLimit) are allowed
    assert job["backoffLimit"] >= 1 and job["submitterConfig"]["backoffLimit"] >= 1
    assert 0 < job["preRunningDeadlineSeconds"] < job["activeDeadlineSeconds"] < 24 * 3600
    rules = job["deletionStrategy"]["deletionRules"]
    assert not job.get("shutdownAfterJobFinishes")  # mutually exclusive with deletion rules
    for policy in ("DeleteCluster", "DeleteSelf"):
        conditions = [r["condition"] for r in rules if r["policy"] == policy]
        assert {c.get("jobStatus") for c in conditions} >= {"SUCCEEDED", "FAILED"}
        assert {"jobDeploymentStatus": "Failed"} in [
            {k: v for k, v in c.items() if k != "ttlSeconds"} for c in conditions
        ]
    ttl = {(r["policy"], r["condition"].get("jobStatus")): r["condition"]["ttlSeconds"] for r in rules}
    assert ttl[("DeleteCluster", "SUCCEEDED")] <= ttl[("DeleteSelf", "SUCCEEDED")]


def test_the_nightly_is_paused_by_deleting_it_not_by_suspend():
    """KubeRay's RayCronJob creates a RayJob for every slot missed while suspended as soon as it resumes."""
    crd = yaml.load((deploy.CRDS / "ray.io_raycronjobs.yaml").read_text(), Loader=yaml.CSafeLoader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    fields = set(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])
    assert not fields & {"concurrencyPolicy", "startingDeadlineSeconds"}, "KubeRay can now skip missed slots"
    assert "suspend" not in nightly()["spec"]
    (delete,) = deploy.documented(["kubectl", "delete", "raycronjob"])
    assert "--cascade=orphan" in delete  # keeps its RayJobs (a running night, the week of logs)
    assert not [c for c in deploy.documented(["kubectl", "patch", "raycronjob"]) if "suspend" in " ".join(c)]


def test_the_operator_is_installed_with_the_features_the_manifests_use():
    gates = {g["name"]: g["enabled"] for g in yaml.safe_load(deploy.OPERATOR_VALUES.read_text())["featureGates"]}
    assert gates["RayCronJob"] and gates["RayJobDeletionPolicy"]
    (install,) = deploy.documented(["helm", "install"])
    assert install[install.index("-f") + 1] == "cluster/kuberay-operator-values.yaml"
    assert install[install.index("--version") + 1] in (deploy.CRDS / "README.md").read_text()


def test_the_nightly_config_mirrors_the_bucket():
    """Re-uploads reprocessed, deletions pruned, and an empty listing an error (never a prune of everything)."""
    from ray_pipelines.config import load_config
    from ray_pipelines.jobs.augment import AugmentConfig

    (config,) = deploy.option_values(deploy.entrypoint_argv(nightly()["spec"]["jobTemplate"]), "--config")
    loaded = load_config(AugmentConfig, deploy.JOB_CONFIGS / config.rsplit("/", 1)[1])
    assert (loaded.on_change, loaded.on_delete, loaded.allow_empty) == ("reprocess", "prune", False)
