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
