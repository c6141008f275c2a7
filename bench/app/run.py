"""The Hydra app: `tunebench run [overrides]` or `python -m tunebench.app.run [overrides]`."""
from __future__ import annotations

import logging
import os
import sys

# Before submitit is imported (it reads this once): SLURM jobs get SIGUSR1 before their time limit
# and on `scancel --signal=USR1`, then checkpoint and requeue (tunebench.core.checkpoint).
os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")

import hydra  # noqa: E402
from hydra.core.plugins import Plugins  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from hydra_plugins.tunebench_sweeper import TunebenchSweeper  # noqa: E402
from tunebench.core import record  # noqa: E402
from tunebench.core.names import file_component  # noqa: E402
from tunebench.app.runner import SweepSummary, run_cell, semantic_config  # noqa: E402


def _run_id_of_root(*, _root_) -> str:
    """`${tb_run_id:}` in Hydra output dirs: the same run id the record gets."""
    return record.run_id(semantic_config(_root_))


def _config_groups() -> str:
    """`${tb_config_groups:}` in `run --help`: each group's options, without the `_*.yaml` files
    (defaults shared by several options, not options themselves)."""
    from importlib.resources import files

    lines = []
    for group in sorted((p for p in files("tunebench.conf").iterdir() if p.is_dir()), key=lambda p: p.name):
        options = sorted(p.name[:-5] for p in group.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))
        if options:
            lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


def _invocation() -> str:
    """`${tb_invocation:}` in Hydra output dirs: this `tunebench run`'s process id, so two sweeps started in
    the same second get their own folders. Kept in the environment, which submitit / SLURM jobs inherit."""
    return os.environ.setdefault("TUNEBENCH_INVOCATION", str(os.getpid()))


def _cells_at_once(threads) -> int:
    """`${tb_cells_at_once:${threads}}` in launcher=parallel: the cores this process may use (its CPU affinity: a
    SLURM allocation or taskset, not the machine's) over the threads per cell, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(threads or cores)))


OmegaConf.register_new_resolver("tb_run_id", _run_id_of_root, replace=True)
OmegaConf.register_new_resolver("tb_cells_at_once", _cells_at_once, replace=True)
OmegaConf.register_new_resolver("tb_invocation", _invocation, replace=True)
OmegaConf.register_new_resolver("tb_config_groups", _config_groups, replace=True)
# Hydra's output folders are named after the sweep: mapped to a safe component whatever it is (the run refuses an
# unsafe sweep name before it writes a record; Hydra creates its folder before the run starts).
OmegaConf.register_new_resolver("tb_component", file_component, replace=True)
# Hydra's plugin scan does not see modules of an editable install: register ours by hand (after
# the scan, which Plugins.instance() runs); importing it stores its config.
Plugins.instance().register(TunebenchSweeper)
FAILED = ("failed", "diverged", "missing", "cancelled", "lost", "unsaved")  # unsaved: the record went to the fallback folder


@hydra.main(version_base="1.3", config_path="pkg://tunebench.conf", config_name="config")
def app(cfg: DictConfig) -> str:
    status = run_cell(cfg)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.RUN and status in FAILED:
        sys.exit(1)  # a single run that failed; in a multirun the sweep goes on
    from tunebench.core import distributed as dp

    if status in FAILED and dp.launcher_name() == "torchrun":
        # A failed multi-process cell may leave its process group unusable: this torchrun sweep stops here (its
        # record says why); `train.processes=N` gives each cell its own torchrun, and such a sweep goes on.
        logging.getLogger("tunebench").error("a cell failed under torchrun: stopping this multirun (use train.processes "
                                             "for sweeps whose other cells go on)")
        sys.exit(1)
    return status


def _results_root_refused(argv: list[str]) -> str | None:
    """One line if the results root cannot be written (before Hydra, which would fail creating its output
    folder there with chained tracebacks); None if it can, or if this call only prints (--help, --cfg)."""
    if any(a in ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve") for a in argv):
        return None
    given = [a.split("=", 1)[1] for a in argv if a.startswith("paths.root=")]
    key = "paths.root" if given else "TUNEBENCH_RESULTS" if "TUNEBENCH_RESULTS" in os.environ else "paths.root (default)"
    root = given[-1] if given else os.environ.get("TUNEBENCH_RESULTS", "results")
    try:
        record.ensure_writable(root, key)
    except record.NotWritable as e:
        return f"tunebench run: {e}"
    return None


def _unsafe_name(argv: list[str]) -> str | None:
    """One line if the sweep name this call would use is not a plain folder name (`sweep=../../x` would put records,
    locks and Hydra's folders outside the results root); checked before Hydra creates anything."""
    from hydra.errors import HydraException

    from tunebench.app.compose import compose_config, split_overrides
    from tunebench.core.names import UnsafeName, check_component

    if any(a in ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve") for a in argv):
        return None
    try:
        fixed, swept = split_overrides([a for a in argv if not a.startswith("-")])
        for value in swept.get("sweep", []):
            check_component(value, "sweep")
        for experiment in swept.get("experiment", [None]):
            chosen = [*fixed, *([f"experiment={experiment}"] if experiment else [])]
            sweep = swept["sweep"][0] if "sweep" in swept else compose_config(chosen).sweep
            check_component(sweep, "sweep")
    except UnsafeName as e:
        return f"tunebench run: {e}"
    except (HydraException, ValueError):
        return None  # a bad override or group: Hydra itself says which, as before
    return None


def main() -> int:
    refused = _unsafe_name(sys.argv[1:]) or _results_root_refused(sys.argv[1:])
    if refused:
        print(refused, file=sys.stderr)
        return 2
    app()
    return 1 if any(s in FAILED for s in SweepSummary.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
