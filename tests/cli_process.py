"""`tunebench <args>` for the tests, each in a new process that starts with the heavy libraries already imported.

A `tunebench run` imports torch, transformers and peft before it reads its arguments: ~12 s per process on this
2-core machine, and the suite starts dozens. Here each command runs in a child forked from a multiprocessing
forkserver that imported them once (per pytest worker) and did nothing else: a fresh process with its own
arguments, working folder, environment, stdout / stderr and exit code, that skips the import. Tests of how the
interpreter starts (`python -m` from the project root, a killed process tree) start real processes themselves;
TUNEBENCH_TEST_FRESH=1 makes every command a real `python -m tunebench.app.cli` too.
"""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
from pathlib import Path

# The project root: on pytest's sys.path (it imports tests/ as a package), where its `datasets/` folder would shadow
# HuggingFace's in the child; a real `python -m` run from elsewhere does not see it.
ROOT = os.path.realpath(Path(__file__).resolve().parents[1])

# What a `tunebench run` imports before it trains (a module missing here is imported by the child, only slower).
PRELOAD = ["torch", "transformers.modeling_utils", "peft", "sklearn.metrics", "hydra", "omegaconf",
           "tunebench.app.cli", "tunebench.app.run", "tunebench.app.runner", "tunebench.core.engine"]

# Run in the forked child (builtins.exec is the process target: nothing from tests/ has to be importable there).
CHILD = r"""
import atexit, os, sys, traceback
os.chdir(cwd)
sys.path[:] = [cwd, *(p for p in sys.path if p and os.path.realpath(p) != root)]  # as `python -m` from cwd
os.environ.clear()
os.environ.update(env)
for fd, path in ((1, out), (2, err)):
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(opened, fd)
    os.close(opened)
sys.stdout = open(1, "w", buffering=1, closefd=False)
sys.stderr = open(2, "w", buffering=1, closefd=False)
sys.argv = ["tunebench", *argv]
code = 1
try:
    from tunebench.app.cli import main
    code = main()
except SystemExit as e:
    code = e.code
except BaseException:
    traceback.print_exc()
    code = 1
finally:
    atexit._run_exitfuncs()  # what an interpreter runs at exit (os._exit below would skip it)
if code is not None and not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(code or 0)
"""

_forkserver = None


def _context():
    """The forkserver context, started once per process from a neutral folder (the project root would let its
    `datasets/` folder shadow HuggingFace's while the preloaded modules import)."""
    global _forkserver
    if _forkserver is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        here = os.getcwd()
        os.chdir(tempfile.gettempdir())
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
        finally:
            os.chdir(here)
        _forkserver = context
    return _forkserver


def run_cli(command: list[str], args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`command + args` (the real `python -m tunebench.app.cli ...`, for messages) run as a forked child."""
    if os.environ.get("TUNEBENCH_TEST_FRESH") == "1":
        return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="tb-cli-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        scope = {"argv": list(args), "cwd": str(cwd), "env": dict(env), "out": str(out), "err": str(err), "root": ROOT}
        child = _context().Process(target=exec, args=(CHILD, scope))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([*command, *args], timeout, output=out.read_text(), stderr=err.read_text())
        return subprocess.CompletedProcess([*command, *args], child.exitcode, out.read_text(), err.read_text())
