"""The Hydra app: `tunebench run [overrides]` or `python -m tunebench.run [overrides]`."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from tunebench import record
from tunebench.runner import SweepSummary, run_cell


def _run_id_of_root(*, _root_) -> str:
    """`${tb_run_id:}` in Hydra output dirs: the same run id the record gets."""
    config = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k]
              for k in _root_ if k != "hydra"}
    return record.run_id(config)


OmegaConf.register_new_resolver("tb_run_id", _run_id_of_root, replace=True)
FAILED = ("failed", "diverged")


@hydra.main(version_base="1.3", config_path="pkg://tunebench.conf", config_name="config")
def app(cfg: DictConfig) -> str:
    status = run_cell(cfg)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.get().mode == RunMode.RUN and status in FAILED:
        sys.exit(1)  # a single run that failed; in a multirun the sweep goes on
    return status


def main() -> int:
    app()
    return 1 if any(s in FAILED for s in SweepSummary.outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
