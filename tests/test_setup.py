"""What `make` sets up that the rest of the suite's running time depends on."""
import importlib
import importlib.util
from pathlib import Path

import pytest


@pytest.mark.parametrize("module", ["torch", "torch._dynamo", "transformers.modeling_utils", "peft.tuners.lora.model",
                                    "flwr.simulation", "tunebench.core.engine"])
def test_the_heavy_imports_have_compiled_bytecode(module):
    """With PYTHONDONTWRITEBYTECODE=1 (set on this machine) Python never caches what it compiles, so a venv installed
    without bytecode compiles torch / transformers / peft again in every process: 34 s instead of 14 s to import them,
    and the suite (hundreds of processes: CLI runs, cells, Ray actors, ranks, SLURM jobs) went from 23 to over 50 min.
    The Makefile compiles at install (uv --compile-bytecode, pip's default, compileall for the project)."""
    source = importlib.import_module(module).__file__
    compiled = Path(importlib.util.cache_from_source(source))
    assert compiled.exists(), f"{module}: no bytecode at {compiled}; reinstall with `make venv` (compiles at install)"


def test_each_worker_uses_its_share_of_the_cores():
    """conftest gives each pytest-xdist worker (and the `tunebench` processes it starts) cores / workers torch threads,
    set before torch is imported: more would oversubscribe the cores (see threads_per_worker)."""
    import os

    import torch

    from .conftest import threads_per_worker

    assert threads_per_worker(2, 2) == 1 and threads_per_worker(8, 2) == 4 and threads_per_worker(2, 4) == 1
    if "PYTEST_XDIST_WORKER_COUNT" not in os.environ:
        pytest.skip("not under pytest-xdist: torch keeps its default threads")
    expected = threads_per_worker(len(os.sched_getaffinity(0)), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    assert os.environ["OMP_NUM_THREADS"] == str(expected)
    assert torch.get_num_threads() == expected
