"""docker/requirements.lock is a resolution of pyproject.toml, and it resolves with Ray's image.

Both tests resolve against PyPI (package metadata only, through uv's cache), as `make install` does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests import deploy

UV = Path(sys.executable).parent / "uv"


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def uv(args: list[str]) -> None:
    done = subprocess.run([str(UV), *args], cwd=deploy.REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"uv {' '.join(args)}:\n{done.stderr[-3000:]}"


def test_the_makefile_makes_the_lock_with_the_recorded_command():
    recipe = re.search(r"^lock:.*\n((?:\t.*\n)+)", (deploy.REPO / "Makefile").read_text(), flags=re.M).group(1)
    date = re.search(r"^LOCK_DATE := (\S+)", (deploy.REPO / "Makefile").read_text(), flags=re.M).group(1)
    words = recipe.replace("\\\n", " ").replace("$(LOCK_DATE)", date).split()
    assert words[0] == "$(VENV)/bin/uv"
    assert [w for w in words[1:] if w != "--quiet"] == deploy.lock_command()[1:]


def pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)", text, flags=re.M))


def test_the_lock_is_a_resolution_of_pyproject(tmp_path):
    """`make lock`'s command, held to the lock's pins, gives exactly the lock's pins: every dependency of
    pyproject.toml is in the lock at a version it allows, and nothing else is. (Not a fresh resolution
    compared byte for byte: PyPI's index here does not always carry upload times, so `--exclude-newer`
    cannot hold a fresh resolution still while new releases appear.)"""
    command = deploy.lock_command()
    assert option(command, "-o") == "docker/requirements.lock" and "--exclude-newer" in command
    out = tmp_path / "requirements.lock"
    command[command.index("-o") + 1] = str(out)
    uv([*command[1:], "--constraint", str(deploy.LOCK), "--quiet"])
    assert pins(out.read_text()) == pins(deploy.LOCK.read_text()), (
        "docker/requirements.lock does not match pyproject.toml's dependencies: run `make lock`"
    )


def resolve_with_the_lock(requirements: Path, out: Path) -> None:
    """``requirements`` resolved for the image's Python and platform with the lock's pins as constraints (a
    conflict fails the test with uv's explanation)."""
    command = deploy.lock_command()
    uv(
        [
            "pip",
            "compile",
            str(requirements),
            "--constraint",
            str(deploy.LOCK),
            *("--python-version", option(command, "--python-version")),
            *("--python-platform", option(command, "--python-platform")),
            *("--exclude-newer", option(command, "--exclude-newer")),
            "--quiet",
            *("-o", str(out)),
        ]
    )


def test_the_lock_resolves_together_with_what_rays_base_image_holds(tmp_path):
    """The base image holds ray[all]; the lock is installed over it and `pip check` must still pass."""
    requirements = tmp_path / "ray-image.in"
    requirements.write_text(f"ray[all]=={deploy.lock_pins()['ray']}\n")
    resolve_with_the_lock(requirements, tmp_path / "ray-image.txt")


def test_the_lock_fits_what_rays_base_deps_layer_leaves_in_the_image(tmp_path):
    """Ray's images install its base-deps lock (a copy in tests/data/ray-image) before ray[all], and the lock is
    installed over both: what the lock does not pin stays at the image's version, and `pip check` (the
    Dockerfile's) needs those to fit the lock's pins. boto3 1.29 (botocore < 1.33, the lock's is 1.43) and
    pyOpenSSL 24 (cryptography < 44) did not, until docker/ray-image.in put them in the lock."""
    ours = deploy.lock_pins()
    image = pins((deploy.REPO / "tests" / "data" / "ray-image" / "base_deps_py3.11.txt").read_text())
    kept = {name: version for name, version in image.items() if deploy.normalised(name) not in ours}
    requirements = tmp_path / "ray-image.in"
    requirements.write_text(
        "".join(f"{name}=={version}\n" for name, version in kept.items()) + f"ray[all]=={ours['ray']}\n"
    )
    resolve_with_the_lock(requirements, tmp_path / "ray-image.txt")


# Imported only where installed, with its own message when it is not (docs/encode.md).
OPTIONAL_IMPORTS = {"stable_audio_tools"}


def test_every_package_the_code_imports_is_in_the_images_lock():
    """safetensors was imported (models.py: .safetensors checkpoints) but declared nowhere: installed
    here by a test dependency, missing from the image, where such a checkpoint raised ModuleNotFoundError."""
    import ast
    import importlib.metadata

    def normal(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    imported: dict[str, str] = {}
    for path in sorted((deploy.REPO / "ray_pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.split(".")[0], str(path.relative_to(deploy.REPO)))
    third_party = {m: f for m, f in imported.items() if m not in sys.stdlib_module_names | {"ray_pipelines"}}
    distributions = importlib.metadata.packages_distributions()
    locked = {normal(name) for name in pins((deploy.REPO / "docker" / "requirements.lock").read_text())}
    missing = {
        module: where
        for module, where in third_party.items()
        if module not in OPTIONAL_IMPORTS and not {normal(d) for d in distributions.get(module, [module])} & locked
    }
    assert not missing, f"imported but not in the lock (declare them in pyproject.toml, then make lock): {missing}"
