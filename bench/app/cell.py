"""One cell of a local multirun in its own child process: `python -m tunebench.app.cell CONFIG.yaml LOGFILE`.

Hydra's basic launcher runs the cells of a multirun one after another in one process. A run's peak
memory is its resident set above its own baseline, so in a shared process the first cell pays the
one-time costs (lazy library initialisation, allocator arenas, kernel caches) and later cells reuse
pages earlier ones left: measured, the first cell of a sweep came out up to 12x higher than the same
cell run later. Each cell in a fresh process pays the same start-up, whatever ran before it, so its
peak memory does not depend on the order of the sweep (`cell_process: auto`, the default: on with the
basic launcher in a multirun, except for `count_only` cells, which train nothing and have no test score, so
the claim reads no memory from them; submitit and SLURM jobs are separate processes already).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("tunebench")
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# Hydra's joblib launcher runs jobs in worker processes it reuses: each cell still gets its own child
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
LOCAL_LAUNCHERS = (BASIC_LAUNCHER, JOBLIB_LAUNCHER)


def wanted(cfg: DictConfig) -> bool:
    """True when this cell should run in a child process (see the module doc), or in several
    (`train.processes` > 1 outside a multi-process launch: the children are torchrun's)."""
    from tunebench.core import distributed as dp

    if dp.is_launched():
        return False  # this process is already one rank of the cell
    if int(cfg.train.processes) > 1:
        return True
    setting = str(cfg.cell_process).lower()
    if setting in ("true", "false"):
        return setting == "true"
    if setting != "auto":
        raise ValueError(f"cell_process={cfg.cell_process!r}: expected auto, true or false")
    if cfg.get("count_only"):
        return False  # counts parameters, trains nothing: a child process would only add its start-up
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("_target_") in LOCAL_LAUNCHERS


def child_command(config_file: str, log_file: Path, processes: int) -> list[str]:
    """`python -m tunebench.app.cell ...`; with several processes, the same under torchrun (one machine)."""
    cell = ["-m", "tunebench.app.cell", config_file, str(log_file)]
    if processes <= 1:
        return [sys.executable, *cell]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *cell]


def run_in_child(cfg: DictConfig, config: dict, run_id: str, record_path: Path) -> str:
    """Run the cell in `python -m tunebench.app.cell` (under torchrun when `train.processes` > 1); returns
    the status its record says.

    A child that dies without a record (killed, out of memory) gets a `failed` record that says so."""
    from hydra.core.hydra_config import HydraConfig

    from tunebench.core import record as rec

    log_file = _log_file(HydraConfig.get() if HydraConfig.initialized() else None, run_id)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix=f"cell-{run_id}-", delete=False) as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}), resolve=True))
    try:
        proc = subprocess.run(child_command(f.name, log_file, int(cfg.train.processes)), env=_child_environment())
    finally:
        Path(f.name).unlink(missing_ok=True)
    for written, elsewhere in ((record_path, False), (rec.fallback_path(record_path), True)):  # the fallback: its folder refused the record
        try:
            status = rec.read_record(written)["status"]
        except (FileNotFoundError, ValueError):
            continue
        return "unsaved" if elsewhere else status  # a record outside its sweep folder is not a success
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
    record = rec.failed_record(config, run_id, str(cfg.sweep), "CellProcessDied",
                               f"the cell's process {how} before writing its record (out of memory?); log: {log_file}")
    rec.write_atomic(record_path, record)
    log.error("run %s failed: its process %s", run_id, how)
    return "failed"


def _child_environment() -> dict:
    """This process's environment, plus how many cells of the multirun may run at once (the record says it)."""
    from hydra.core.hydra_config import HydraConfig

    from tunebench.core.record import CELLS_AT_ONCE_VARIABLE

    env = os.environ.copy()
    if HydraConfig.initialized() and HydraConfig.get().launcher.get("_target_") == JOBLIB_LAUNCHER:
        from joblib import effective_n_jobs  # -1: every core, as joblib counts them

        env[CELLS_AT_ONCE_VARIABLE] = str(effective_n_jobs(int(HydraConfig.get().launcher.n_jobs)))
    return env


def _log_file(hydra_cfg, run_id: str) -> Path:
    if hydra_cfg is None:
        return Path(tempfile.gettempdir()) / f"tunebench-cell-{run_id}.log"
    return Path(hydra_cfg.runtime.output_dir) / f"{hydra_cfg.job.name}.log"


def main(argv: list[str]) -> int:
    from tunebench.core import distributed as dp

    config_file, log_file = argv
    rank = dp.launch_rank()
    if rank > 0:  # one log file per rank: <job>.rank1.log, ...
        log_file = str(Path(log_file).with_suffix(f".rank{rank}.log"))
    prefix = f"[rank {rank}]" if dp.is_launched() else ""
    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)]
    logging.basicConfig(level=logging.INFO, format=f"[%(asctime)s][%(name)s][%(levelname)s]{prefix} - %(message)s", handlers=handlers)
    from tunebench.app.runner import run_cell

    status = run_cell(OmegaConf.load(config_file), in_child=True)
    # One rank of several that failed exits non-zero, so that torchrun stops the others at once.
    return 1 if dp.is_launched() and status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
