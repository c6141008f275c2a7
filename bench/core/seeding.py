"""Seed everything that draws random numbers, so the same seed on the same CPU gives the same numbers."""
from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@contextmanager
def isolated_rng():
    """Run a block without moving the caller's random streams (python, numpy, torch CPU, and CUDA
    devices already in use).

    Artefacts are built on a cache miss and only loaded on a hit; drawing from the run's streams there
    would make a run's model init, dropout and data order depend on whether a cache was warm."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda_devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
