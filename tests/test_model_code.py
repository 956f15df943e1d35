"""What a user model's code digest covers: editing the code a factory's model runs changes it (a rerun then
refuses the output, where it silently mixed rows of the old code and the new); files that are not code,
or not the user's, do not."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys

import pytest

from ray_pipelines.model_files import factory_code_sha256, read_model_file
from ray_pipelines.models import ModelLoadError, ModelUnreachable, build_from_factory, model_classes
from tests.audio_helpers import REPO, tone, write_audio
from tests.conftest import http_server


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


# ---- a factory's download the network did not deliver: exit 1 (rerun), not a config error (exit 2) ----------


class Statuses(http.server.BaseHTTPRequestHandler):
    """Answers ``/<status>/...`` with that HTTP status and no body."""

    def do_GET(self):
        self.send_response(int(self.path.split("/")[1]))
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def status_server():
    with http_server(Statuses) as address:
        yield f"http://{address}"


@pytest.fixture
def closed() -> str:
    """An address on loopback where nothing listens (connection refused): the port stays bound, not
    listening, while the test runs, so no other process can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}/w.pt"


DOWNLOADING = """import urllib.request
import requests
import torch


def by_urllib(url):
    urllib.request.urlopen(url, timeout=10).read()
    return torch.nn.Identity()


def by_requests(url):
    requests.get(url, timeout=10).raise_for_status()
    return torch.nn.Identity()
"""
UNREACHABLE = r"\(the network failed: rerun when it answers\)$"


def test_a_download_the_network_did_not_deliver_is_unreachable_and_a_wrong_url_a_model_error(tmp_path, closed):
    """A factory that downloads its weights (a hub, a bucket) during an outage was refused as a bad config,
    exit 2: "fix your config" to whoever is paged for a nightly run that the next night would finish."""
    write(tmp_path / "fx.py", DOWNLOADING)
    with status_server() as base:
        for function in ("by_urllib", "by_requests"):
            reference = f"{tmp_path / 'fx.py'}:{function}"
            for url, error, reason in (
                (
                    closed,
                    ModelUnreachable,
                    "ConnectionError" if function == "by_requests" else "ConnectionRefusedError",
                ),
                ("htp://host/w.pt", ModelLoadError, "URLError" if function == "by_urllib" else "InvalidSchema"),
                (f"{base}/503/w.pt", ModelUnreachable, "HTTPError"),
                (f"{base}/429/w.pt", ModelUnreachable, "HTTPError"),
                (f"{base}/404/w.pt", ModelLoadError, "HTTPError"),  # the URL is wrong: the config's to fix
            ):
                with pytest.raises(error) as raised:
                    build_from_factory(reference, {"url": url})
                message = str(raised.value)
                assert message.startswith(f"factory {reference!r} failed: {reason}: "), message
                assert (error is ModelUnreachable) == bool(re.search(UNREACHABLE, message))
        # a checkpoint given as a URL: the same split (fsspec's HTTP reports both as FileNotFoundError)
        with pytest.raises(ModelUnreachable, match=rf"cannot read model file {base}/503/w.pt: .*{UNREACHABLE}"):
            read_model_file(f"{base}/503/w.pt")
        with pytest.raises(ModelLoadError, match=rf"model file not found: {base}/404/w.pt$"):
            read_model_file(f"{base}/404/w.pt")
    with pytest.raises(
        ModelUnreachable, match=rf"cannot read model file {closed}: ClientConnectorError: .*{UNREACHABLE}"
    ):
        read_model_file(closed)


def test_what_is_a_network_failure_in_an_exceptions_chain():
    """S3's SlowDown (s3fs raises it as an OSError caused by botocore's ClientError, its status in a dict) is
    the network's; a mistyped URL, a missing local file and a context the code suppressed (``from None``)
    are not."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from ray_pipelines.model_files import model_error

    def raised(make) -> Exception:
        try:
            make()
        except Exception as e:
            return e
        raise AssertionError("nothing raised")

    def suppressed():
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise ValueError("bad checkpoint format") from None

    def slow_down():
        error = ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject")
        raise translate_boto_error(error) from error

    import urllib.request

    assert isinstance(model_error("m", raised(slow_down)), ModelUnreachable)
    for make in (suppressed, lambda: urllib.request.urlopen("htp://host/w.pt"), lambda: open("/nonexistent/w.pt")):
        assert type(model_error("m", raised(make))) is ModelLoadError
    # requests' ConnectionError for a host name that does not exist, as requests and urllib3 raise it:
    # the URL's fault; the same chain for a lookup that could not reach a name server is the network's
    import socket

    import requests
    import urllib3

    def unknown_host(errno: int):
        def make():
            try:
                try:
                    try:
                        raise socket.gaierror(errno, "Name or service not known")
                    except socket.gaierror as e:
                        raise urllib3.exceptions.NameResolutionError("hub.exmaple", None, e) from e
                except urllib3.exceptions.NameResolutionError as e:
                    raise urllib3.exceptions.MaxRetryError(None, "/w.pt", e) from e
            except urllib3.exceptions.MaxRetryError as e:
                raise requests.exceptions.ConnectionError(e)  # noqa: B904 (as requests raises it: no "from")

        return make

    assert type(model_error("m", raised(unknown_host(socket.EAI_NONAME)))) is ModelLoadError
    assert isinstance(model_error("m", raised(unknown_host(socket.EAI_AGAIN))), ModelUnreachable)
    # a model file the factory read itself, unreachable: said once, not wrapped into a model error
    twice = model_error("factory 'f' failed", ModelUnreachable("cannot read model file u: X (the network failed)"))
    assert isinstance(twice, ModelUnreachable) and str(twice).count("the network failed") == 1


def test_the_cli_exits_1_for_a_factory_whose_download_failed(tmp_path, closed):
    """Through the driver's child process (the score job's model check) and the CLI: exit 1, one line naming
    the model. The score job's check turned every error of its child into a config error (exit 2). The
    teacher job names the teacher (its driver check, here in this process: torch is imported)."""
    from ray_pipelines.config import validate_config
    from ray_pipelines.jobs.teacher import TeacherConfig, TeacherJob

    write(tmp_path / "fx.py", DOWNLOADING)
    factory = {"factory": f"{tmp_path / 'fx.py'}:by_urllib", "kwargs": {"url": closed}}
    teachers = [{"kind": "factory", "name": "fx", "sample_rate": 16000, **factory}]
    teacher = {"input": "synth://", "output": str(tmp_path / "teach"), "teachers": teachers}
    with pytest.raises(ModelUnreachable, match=rf"^teachers\[0\] \(fx\): factory .* failed: .*{UNREACHABLE}"):
        TeacherJob(validate_config(TeacherConfig, teacher))

    write_audio(tmp_path / "in" / "a.wav", tone(1.0, 16000), 16000)
    model = {"kind": "factory", **factory}
    settings = [f"input={tmp_path / 'in'}", f"output={tmp_path / 'out'}", f"model={json.dumps(model)}"]
    done = subprocess.run(
        [sys.executable, "-m", "ray_pipelines.cli", "score", "--config", "score-mae"]
        + [a for setting in settings for a in ("--set", setting)],
        cwd=REPO,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("ray-pipelines score: model (factory): factory "), (
        done.stderr
    )
    assert "failed: ConnectionRefusedError: [Errno 111] Connection refused" in done.stderr
    assert done.stderr.rstrip().endswith("(the network failed: rerun when it answers)")
    # refused before anything was written (the score job checks its model once it holds the output's lease:
    # the lock file, an empty file a local output keeps, is all there is)
    assert sorted(p.name for p in (tmp_path / "out").glob("*")) in ([], ["_lease.lock"])
