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
    """Run a block without moving the caller's random streams (python, numpy, torch CPU).

    Refinements build artefacts on a cache miss and only load them on a hit; drawing from the run's
    streams there would make a run's model init and data order depend on the cache state."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
