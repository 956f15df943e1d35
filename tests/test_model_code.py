"""What a user model's code digest covers: editing the code a factory's model runs changes it (a rerun then
refuses the output, where it silently mixed rows of the old code and the new); files that are not code,
or not the user's, do not."""

from __future__ import annotations

import sys

import pytest

from ray_pipelines.model_files import factory_code_sha256
from ray_pipelines.models import ModelLoadError, build_from_factory, model_classes


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def digest(reference: str) -> str:
    return factory_code_sha256(reference, model_classes(build_from_factory(reference)))


def test_a_factory_files_folder_and_the_files_defining_its_models_classes_are_hashed(tmp_path, monkeypatch):
    folder, elsewhere = tmp_path / "fx", tmp_path / "shared_layers"
    monkeypatch.syspath_prepend(str(elsewhere))
    write(
        elsewhere / "blocks.py",
        "import torch\nclass Gain(torch.nn.Module):\n    def forward(self, x):\n        return 0.5 * x\n",
    )
    write(folder / "layers.py", "GAIN = 0.5\n")  # a sibling the factory imports a constant from
    write(
        folder / "effect.py",
        "import sys, os\nsys.path.insert(0, os.path.dirname(__file__))\nimport torch\nfrom layers import GAIN\n"
        "from blocks import Gain\n"
        "def build():\n    return torch.nn.Sequential(Gain(), torch.nn.Identity())\n",
    )
    write(folder / "notes.txt", "not code\n")
    reference = f"{folder / 'effect.py'}:build"
    first = digest(reference)
    assert len(first) == 64
    (folder / "notes.txt").write_text("edited, still not code\n")
    assert digest(reference) == first
    changed = {first}
    for path, text in (
        (folder / "layers.py", "GAIN = 2.0\n"),  # the helper's case: a constant in a module beside the factory
        (
            elsewhere / "blocks.py",
            "import torch\nclass Gain(torch.nn.Module):\n    def forward(self, x):\n        return 2 * x\n",
        ),
        (folder / "effect.py", (folder / "effect.py").read_text() + "# a comment\n"),
        (folder / "sub" / "__init__.py", ""),  # a package in the factory's folder
    ):
        write(path, text)
        changed.add(digest(reference))
    assert len(changed) == 5  # every edit a new digest
    sys.modules.pop("blocks", None), sys.modules.pop("layers", None)


def test_a_module_factorys_package_is_hashed_whole_and_installed_code_only_by_its_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / "my_codecs" / "__init__.py", "")
    write(tmp_path / "my_codecs" / "models.py", "import torch\nfrom .nn import make\ndef build():\n    return make()\n")
    write(
        tmp_path / "my_codecs" / "nn" / "__init__.py", "import torch\ndef make():\n    return torch.nn.Linear(2, 2)\n"
    )
    first = digest("my_codecs.models:build")
    write(
        tmp_path / "my_codecs" / "nn" / "__init__.py",
        "import torch\ndef make():\n    return torch.nn.Linear(2, 2)  # v2\n",
    )
    assert digest("my_codecs.models:build") != first
    # torch's own factory: its file alone (torch's version is in the manifest), the same on every call
    assert digest("torch.nn:Identity") == digest("torch.nn:Identity") != ""
    for name in [m for m in sys.modules if m.startswith("my_codecs")]:
        sys.modules.pop(name)


def test_a_factory_that_raises_is_a_model_load_error_naming_it(tmp_path):
    write(tmp_path / "boom.py", "def build():\n    raise RuntimeError('factory boom')\n")
    with pytest.raises(ModelLoadError, match=r"factory '.*boom.py:build' failed: RuntimeError: factory boom$"):
        build_from_factory(f"{tmp_path / 'boom.py'}:build")


def test_a_mistyped_factory_name_gets_the_closest_callable(tmp_path):
    write(tmp_path / "fx.py", "import torch\nGAIN = 2\ndef build_fx():\n    return torch.nn.Identity()\n")
    with pytest.raises(ModelLoadError, match=r"fx.py has no callable 'build_fxx'; did you mean build_fx\?$"):
        build_from_factory(f"{tmp_path / 'fx.py'}:build_fxx")
    with pytest.raises(ModelLoadError, match=r"has no callable 'GAIN'$"):  # not callable, nothing close
        build_from_factory(f"{tmp_path / 'fx.py'}:GAIN")


def test_a_copy_elsewhere_hashes_the_same_and_what_is_not_code_is_left_out(tmp_path, monkeypatch):
    """The digest named each file by its absolute path: a Ray job's working_dir, unpacked under a new session
    folder at every start, refused its own output on the next run. An editor's lock file (a broken link
    named .#fx.py) failed the fingerprint."""
    import shutil

    for place in ("a", "b"):
        write(tmp_path / place / "proj" / "fx.py", "import torch\ndef build():\n    return torch.nn.Identity()\n")
        write(tmp_path / place / "proj" / "fx_layers.py", "GAIN = 0.5\n")
    (tmp_path / "a" / "proj" / ".#fx.py").symlink_to("/nonexistent/emacs-lock")
    (tmp_path / "a" / "proj" / "folder.py").mkdir()
    assert digest(f"{tmp_path / 'a' / 'proj' / 'fx.py'}:build") == digest(f"{tmp_path / 'b' / 'proj' / 'fx.py'}:build")
    # a top-level module factory (its folder on sys.path): its folder's files, as for a factory file
    shutil.copytree(tmp_path / "b" / "proj", tmp_path / "c")
    monkeypatch.syspath_prepend(str(tmp_path / "c"))
    first = digest("fx:build")
    write(tmp_path / "c" / "fx_layers.py", "GAIN = 2.0\n")
    assert digest("fx:build") != first
    sys.modules.pop("fx", None)
