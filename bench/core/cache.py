"""Content-addressed artefact cache: `results/cache/<name>-<hash>/`, built once even when many jobs ask.

Refinements (synthetic data, SSL weights, cleaned splits) key their artefacts by everything that
determines them (their config, the input data hash, the seed). Concurrent callers, e.g. the jobs of
a SLURM array on a shared file system, serialise on a lock file (flock; on NFS this needs NFSv4 or
lockd, as on most clusters): the first builds into a temp folder and renames it into place, the
others wait and reuse it. A crashed build leaves only a temp folder, never a half-built entry.

Every build runs inside `isolated_rng()`: a builder may initialise a network or sample freely, and the
run that asked still draws the same numbers afterwards whether the entry was built or reused. This is
the one place all builders go through, so no call site has to remember it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger("tunebench")
COMPLETE = ".complete"


@dataclass
class CacheEntry:
    path: Path      # the artefact folder
    key: str        # hash of the key dict, also in the folder name
    built: bool     # True if this call built it, False if it was reused

    def report(self) -> dict:
        """What a run record keeps about the artefact it used."""
        return {"cache_key": self.key, "cache_path": str(self.path), "cache_built": self.built}


def stored_report(entry: CacheEntry, stored: dict) -> dict:
    """A report saved inside an artefact at build time, as seen by this run: the entries it used
    (`*cache_built`) count as built only if this run built the artefact, not on a cache hit."""
    return {**{k: (v and entry.built) if k.endswith("cache_built") else v for k, v in stored.items()}, **entry.report()}


# Every entry this process built, in order (name-hash): a run records the builds that happened during it, so a
# record says whether it paid for (and, before builds were isolated, was perturbed by) a cold cache.
BUILT_HERE: list[str] = []


def builds_since(mark: int) -> list[str]:
    """The entries this process built since `len(BUILT_HERE)` was `mark`."""
    return list(BUILT_HERE[mark:])


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(cache_dir: Path, name: str, key: dict, build: Callable[[Path], None]) -> CacheEntry:
    """The folder for (name, key), calling `build(folder)` to fill it if no complete one exists."""
    digest = key_hash(key)
    cache_dir = Path(cache_dir)
    final = cache_dir / f"{name}-{digest}"
    if (final / COMPLETE).exists():
        log.info("cache hit %s", final)
        return CacheEntry(final, digest, built=False)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds this entry
        if (final / COMPLETE).exists():
            log.info("cache hit %s (built by another job while this one waited)", final)
            return CacheEntry(final, digest, built=False)
        log.info("cache miss %s: building", final)
        from tunebench.core.seeding import isolated_rng  # here, not at the top: torch stays out of light importers
        tmp = cache_dir / f".{name}-{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            with isolated_rng():  # a cold cache must not move the run's random streams (model init, dropout, order)
                build(tmp)
            (tmp / "key.json").write_text(json.dumps(key, sort_keys=True, indent=1, default=str))
            (tmp / COMPLETE).touch()
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover of a crashed older layout
            os.replace(tmp, final)
            BUILT_HERE.append(final.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return CacheEntry(final, digest, built=True)
