"""Run the driver's model checks in a child process, so the driver itself never imports torch.

A few things a job does on the driver need torch: the encode job loads and probes its encoder
(sample rate, channels, output layout, weights hash), the score job builds and checks the
reconstruction model and hashes its weights, and a ``factory`` teacher's checkpoint is opened
(``torch.load(weights_only=True)`` refuses one that needs pickled code) and its code hashed.
:func:`call` runs such a function in a fresh Python process (``python -m ray_pipelines.isolated``)
and hands back its JSON result, or raises its error again here: the same class for the project's
errors (``ConfigError``, ``ModelLoadError``) and Python's own, else an exception class of the same
name. Importing torch there costs the seconds it cost here, but its memory (about 0.5 GB) is
returned when the child exits, before the driver lists a single input.

When torch is already imported in the calling process (tests, benchmarks, an actor) there is
nothing to save, and the function runs in this process, its result through the same JSON round trip.
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import subprocess
import sys
import tempfile
import traceback
from typing import Any

# Modules whose exception classes are raised again as themselves (they import no torch).
ERROR_MODULES = ("ray_pipelines.config", "ray_pipelines.model_files")


class ChildProcessFailed(RuntimeError):
    """The child process ended without a reply (killed, crashed in native code)."""


def call(target: str, /, **kwargs: Any) -> Any:
    """``target(**kwargs)`` for ``target`` = ``"package.module:function"``; arguments and result are JSON
    values. In a child process unless torch is already imported here (module docstring)."""
    if "torch" in sys.modules:
        return json.loads(json.dumps(_resolve(target)(**kwargs)))
    request = json.dumps({"target": target, "kwargs": kwargs, "sys_path": sys.path})
    with tempfile.TemporaryDirectory(prefix="ray-pipelines-") as folder:
        reply_path = os.path.join(folder, "reply.json")
        # stdout and stderr are this process's: what the model code prints shows as it would here.
        done = subprocess.run(
            [sys.executable, "-m", "ray_pipelines.isolated", reply_path], input=request.encode(), check=False
        )
        try:
            with open(reply_path) as f:
                reply = json.load(f)
        except (OSError, ValueError):
            raise ChildProcessFailed(
                f"{target} failed in a child process (exit code {done.returncode}) without a reply"
            ) from None
    if "error" in reply:
        raise _rebuilt(reply["error"])
    return reply["result"]


def _resolve(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _rebuilt(error: dict[str, str]) -> BaseException:
    """The child's exception, raised again here: the same class where that class is torch-free."""
    module, name, message, args = error["module"], error["name"], error["message"], error["args"]
    cls: type | None = None
    if module == "builtins":
        cls = getattr(builtins, name, None)
    elif module in ERROR_MODULES:
        cls = getattr(importlib.import_module(module), name, None)
    rebuilt: BaseException | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            rebuilt = cls(*args)
        except Exception:  # a constructor that takes other arguments (UnicodeDecodeError, ...)
            rebuilt = None
    if rebuilt is None:  # a class only the child imported (torch's, the user's): one of the same name
        rebuilt = type(name, (Exception,), {"__module__": module})(message)
    if hasattr(rebuilt, "add_note"):
        rebuilt.add_note(f"(raised in a child process, ray_pipelines.isolated)\n{error['traceback']}")
    return rebuilt


def _child(reply_path: str) -> int:
    request = json.loads(sys.stdin.buffer.read())
    sys.path[:] = request["sys_path"]
    try:
        reply: dict[str, Any] = {"result": _resolve(request["target"])(**request["kwargs"])}
        text = json.dumps(reply)
    except Exception as e:
        cls = type(e)
        try:
            args = json.loads(json.dumps(list(e.args)))
        except (TypeError, ValueError):
            args = [str(e)]
        error = {"module": cls.__module__, "name": cls.__qualname__, "message": str(e), "args": args}
        text = json.dumps({"error": {**error, "traceback": traceback.format_exc()}})
    with open(reply_path, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
