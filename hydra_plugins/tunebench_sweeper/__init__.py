"""The `tunebench` Hydra sweeper: Hydra's basic sweeper, plus a note of every cell it launches.

Cells whose ok record exists are not launched at all (a re-submitted SLURM sweep queues only the
unfinished cells; `force=true` launches them anyway). With the notes, `tunebench status` lists
cells that never wrote a record as `missing`, and the sweep summary counts outcomes from the
records (right for every launcher). It lives here because Hydra loads plugins only from the
`hydra_plugins` namespace package.
"""
# No `from __future__ import annotations`: Hydra's plugin scan executes this module outside
# sys.modules, where dataclasses cannot resolve string annotations.

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper

from tunebench.core import record as rec
from tunebench.app.sweeper import LAUNCHED, account_lost_jobs, note_cell


@dataclass
class TunebenchSweeperConf:
    _target_: str = "hydra_plugins.tunebench_sweeper.TunebenchSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


log = logging.getLogger("tunebench")
ConfigStore.instance().store(group="hydra/sweeper", name="tunebench", node=TunebenchSweeperConf, provider="tunebench")


class TunebenchSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        # BasicSweeper.__init__ calls super(BasicSweeper, self) by module-global name, and Hydra's
        # plugin scan re-executes that module, so the name no longer means our base: set its fields here.
        Sweeper.__init__(self)
        self.overrides, self.batch_index = None, 0
        self.max_batch_size, self.params = max_batch_size, params or {}
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        LAUNCHED.clear()
        launch = self.launcher.launch

        def note_then_launch(job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
            notes = [self._note_cell(list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]
            to_run = [o for o, note in zip(job_overrides, notes) if note is not None]
            if not to_run:
                return []
            try:
                return launch(to_run, initial_job_idx)
            except Exception as e:  # submitit: a job ended without a result (scancel, time limit, node failure)
                from submitit.core.utils import UncompletedJobError  # only submitit launchers get here

                if not isinstance(e, UncompletedJobError):
                    raise
                # The cells that ran still wrote records; name the lost ones in the summary and `status`.
                account_lost_jobs(str(e), [n for n in notes if n is not None])
                return []

        self.launcher.launch = note_then_launch

    def _note_cell(self, overrides: list[str], job_num: int) -> Optional[dict]:
        """Note the cell; None if it needs no job (its ok record exists and force is off)."""
        from tunebench.app.runner import semantic_config

        from tunebench.core.names import check_component

        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        check_component(job_cfg.sweep, "sweep")  # the note goes under the sweep's folder
        rid = rec.run_id(semantic_config(job_cfg))
        sweep_dir = Path(job_cfg.paths.runs) / str(job_cfg.sweep)
        note = note_cell(sweep_dir, rid, overrides, job_num)
        LAUNCHED.append(note)
        if not job_cfg.force and rec.existing_status(sweep_dir, rid) == "ok":
            log.info("skip %s (%s): ok record exists in %s", rid, " ".join(overrides), sweep_dir)
            return None
        return note
