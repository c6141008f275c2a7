"""A cache build in a spawned process. Its own module, so a spawned child imports only the cache (importing
tests.test_checkpoint would load torch, transformers and peft first: ~12 s in each of four children)."""
from __future__ import annotations

import os
import time

from tunebench.core.cache import cached


def build_in_process(args):
    cache_dir, counter = args

    def build(folder):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that the other processes arrive while it builds
        (folder / "artefact.txt").write_text("synthetic data")

    entry = cached(cache_dir, "synthetic", {"ratio": 1.0, "data": "abc", "seed": 0}, build)
    return str(entry.path), entry.built, (entry.path / "artefact.txt").read_text()
