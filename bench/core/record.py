"""Run records: one JSON file per run, written atomically, keyed by a hash of the semantic config."""
from __future__ import annotations

import functools

import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import re
import socket
import stat
import subprocess
import sys
import tempfile
import traceback
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from tunebench import RECORD_SCHEMA_VERSION

log = logging.getLogger("tunebench")
# Top-level config keys that do not change what a run computes: they are left out of the run id,
# so moving results, switching loggers or launchers, or forcing a rerun keeps the same id.
# `claim` and `decide` declare how the sweep will be judged (primary hypotheses, sequential seeds), not what it runs.
NON_SEMANTIC_KEYS = ("logger", "paths", "force", "sweep", "threads", "launcher", "cell_process", "save_model", "claim",
                     "decide")
STATUSES = ("ok", "failed", "diverged", "awaiting_labels")  # awaiting_labels: a human oracle has queries to label
TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "hydra-core", "numpy", "pandas", "scikit-learn",
    "datasets", "wandb", "avalanche-lib", "learn2learn", "open_clip_torch", "timm", "submitit",
)


def run_id(config: dict) -> str:
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    canonical = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def record_path(sweep_dir: Path, rid: str) -> Path:
    return Path(sweep_dir) / f"{rid}.json"


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON; keep them readable as strings instead of producing invalid files."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_atomic(path: Path, record: dict) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader never sees half a record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; collaborators read records as any file
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(record), f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class NotWritable(OSError):
    """A results folder the run cannot write to; the message names the folder and the key."""


PROBE_BYTES = 64 * 1024  # room for Hydra's config files and a small record


def ensure_writable(folder: Path, key: str) -> None:
    """Create `folder` if needed and prove a file can be written in it, before any work is spent: bytes written
    and synced, since a full disk still lets an empty file be created (Hydra then failed saving its config)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder) as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as e:
        raise NotWritable(f"{key}: cannot write to {folder} ({e.strerror or e}); point TUNEBENCH_RESULTS or "
                          f"paths.root at a writable folder") from None


def fallback_path(path: Path) -> Path:
    """Where a record goes when its folder refuses it at the end of a run (never thrown away): a folder private to
    this user (0700) and to the results root the record belonged to, so two roots with the same sweep name, or two
    users, never share one."""
    path = Path(path)
    root = hashlib.sha256(str(path.parent.parent.resolve()).encode()).hexdigest()[:12]
    return private_folder(Path(tempfile.gettempdir()) / f"tunebench-unsaved-records-{os.getuid()}") / root / path.parent.name / path.name


def private_folder(folder: Path) -> Path:
    """`folder`, created 0700 if missing; refused (OSError) if another user owns it or others can write to it."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022 or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{folder} is not this user's private folder (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}): "
                      f"refusing to keep a record there; remove it or set TMPDIR")
    return folder


def clear_stale_temps(sweep_dir: Path, rid: str) -> None:
    """Remove the temp files a killed write of this cell's record left (`.<run_id>.<random>.tmp`); called while the
    cell's lock is held, so no write of this record is under way."""
    for leftover in Path(sweep_dir).glob(f".{rid}.*.tmp"):
        leftover.unlink(missing_ok=True)


def failed_record(config: dict, rid: str, sweep: str, error_type: str, message: str) -> dict:
    """A `failed` record for a cell that never ran its code (refused config, a cell process that died)."""
    record = new_record(config, rid, sweep)
    record.update(status="failed", finished_at=now_iso(), env=environment("cpu"), resumed_from_step=0,
                  error={"type": error_type, "message": message, "traceback": ""})
    return record


def write_record(path: Path, record: dict) -> Path:
    """write_atomic, or the fallback path (returned) if the record's folder cannot be written any more."""
    try:
        write_atomic(path, record)
        return Path(path)
    except OSError as e:
        kept = fallback_path(path)
        write_atomic(kept, record)
        log.error("cannot write the record %s (%s); kept it at %s: copy it there once the "
                  "folder is writable", path, e.strerror or e, kept)
        return kept


@contextmanager
def cell_lock(sweep_dir: Path, rid: str) -> Iterator[bool]:
    """Hold `<sweep>/.cells/<run_id>.lock` (flock, as the artefact cache) while a cell runs; yields False
    at once, without waiting, when another process holds it (a second sweep over the same cells)."""
    folder = Path(sweep_dir) / ".cells"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{rid}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def current_umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def read_record(path: Path) -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid JSON record ({e})") from None
    if not isinstance(record, dict) or "run_id" not in record or record.get("status") not in STATUSES:
        raise ValueError(f"{path}: not a tunebench run record (needs 'run_id' and a status in {STATUSES})")
    return record


def iter_record_files(sweep_dir: Path) -> Iterator[tuple[Path, dict]]:
    """(path, record) for every record under sweep_dir (recursively); temp files of interrupted writes are ignored."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    for path in sorted(sweep_dir.rglob("*.json")):
        # dot names: temp files of interrupted writes, the .cells/ manifest of launched cells
        if not any(part.startswith(".") for part in path.relative_to(sweep_dir).parts):
            yield path, read_record(path)


def iter_records(sweep_dir: Path) -> Iterator[dict]:
    """Every record under sweep_dir (recursively); temp files of interrupted writes are ignored."""
    for _, record in iter_record_files(sweep_dir):
        yield record


def existing_status(sweep_dir: Path, rid: str) -> str | None:
    path = record_path(sweep_dir, rid)
    if not path.exists():
        return None
    try:
        return read_record(path)["status"]
    except ValueError:
        return None  # a corrupt record is redone, not trusted


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


# CPU features that change which kernels oneDNN / MKL / torch pick, and so the last bits of a float result
# (bf16 and int8 dot products, FMA contraction, 512-bit reductions); the rest of /proc/cpuinfo's flags do not.
NUMERIC_CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                     "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")
# Environment variables that cap or pin the instruction set the math libraries use.
ISA_ENVIRONMENT = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ATEN_CPU_CAPABILITY",
                   "OPENBLAS_CORETYPE")


def numeric_cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The flags of NUMERIC_CPU_FLAGS this CPU has (from /proc/cpuinfo; [] where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in NUMERIC_CPU_FLAGS if flag in present]
    return []


@functools.lru_cache(maxsize=1)
def onednn_isa() -> str | None:
    """The instruction set oneDNN dispatches to in this process, as its verbose mode reports it (`isa:...`).

    oneDNN writes that line to the C-level stdout once per process, with the first primitive it creates in
    verbose mode, so stdout's file descriptor is redirected into a temp file while one tensor of constants (no
    random draw) is converted to oneDNN's layout, and the answer is kept for the process."""
    import ctypes

    import torch

    if not torch.backends.mkldnn.is_available():
        return None
    sys.stdout.flush()  # Python's own pending output goes to the real stdout, not into the probe's file
    saved = os.dup(1)
    with tempfile.TemporaryFile() as out:
        try:
            os.dup2(out.fileno(), 1)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.ones(1, 3, 8, 8).to_mkldnn()  # a reorder: always a oneDNN primitive (a small conv may not be)
            ctypes.CDLL(None).fflush(None)  # oneDNN printf()s into C's buffer: out to the file before it is restored
        except Exception:  # a build without the verbose switch: say nothing rather than guess
            return None
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = re.search(r"isa:([^\n,]+)", text)
    return found.group(1).strip() if found else None


def machine() -> dict:
    """What makes a number machine-dependent: the CPU and its numeric instruction-set flags, the instruction
    set torch and oneDNN dispatch to, the BLAS it calls, and how many threads it uses (float reductions differ
    across any of these)."""

    import torch

    build = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", build)
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": numeric_cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa(),
        "isa_environment": {k: os.environ[k] for k in ISA_ENVIRONMENT if k in os.environ},
        "blas": blas.group(1) if blas else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


CELLS_AT_ONCE_VARIABLE = "TUNEBENCH_CELLS_AT_ONCE"  # set by the parallel launcher's cells for their children


def environment(device: str) -> dict:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import torch

    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
        "host": socket.gethostname(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
        # cells of the same local multirun that could run at the same time (launcher=parallel; 1 one at a time):
        # their wall times include what they cost each other
        "cells_at_once": int(os.environ.get(CELLS_AT_ONCE_VARIABLE, 1)),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def error_info(exc: BaseException) -> dict:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }


def new_record(config: dict, rid: str, sweep: str) -> dict:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": rid,
        "sweep": sweep,
        "status": None,
        "started_at": now_iso(),
        "finished_at": None,
        "config": config,
        "cell": {},
        "task": {},
        "refinements": [],
        "metrics": {},
        "cost": {},
        "curve": [],
        "engine": {},  # the scale knobs as applied (precision, accumulation, checkpointing, compile)
        "cache_builds": [],  # artefact-cache entries this run built instead of loading (results/cache/<entry>)
        "env": {},
        "error": None,
    }
