"""Notes of launched cells (`<sweep dir>/.cells/<run_id>.json`), written by the `tunebench` sweeper
(hydra_plugins/tunebench_sweeper: Hydra's basic sweeper plus the note; Hydra only loads sweepers
from the hydra_plugins package).

With the note, `tunebench status` can list cells that never wrote a record as `missing` (a job lost
by SLURM, a node that died), and the sweep summary can count outcomes from the records themselves,
which works for every launcher (with submitit the jobs' callbacks run on the nodes, not here).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tunebench.core import record as rec

log = logging.getLogger("tunebench")
CELLS_DIR = ".cells"
# Cells launched by this process's sweep, in order. Kept here, not on the sweeper class: Hydra's
# plugin scan may re-execute the plugin module, which would make a second class with its own list.
LAUNCHED: list[dict] = []


def launched_cells(sweep_dir: Path) -> dict[str, dict]:
    """run_id -> note, for every cell ever launched into this sweep directory."""
    cells = {}
    for path in sorted((Path(sweep_dir) / CELLS_DIR).glob("*.json")):
        try:
            note = json.loads(path.read_text())
            cells[note["run_id"]] = note
        except (ValueError, KeyError) as e:
            log.warning("ignoring unreadable cell note %s: %s", path, e)
    return cells


def note_cell(sweep_dir: Path, run_id: str, overrides: list[str], job_num: int) -> dict:
    cell = {"run_id": run_id, "overrides": overrides, "job_num": job_num, "sweep_dir": str(sweep_dir),
            "launched_at": rec.now_iso()}
    rec.write_atomic(Path(sweep_dir) / CELLS_DIR / f"{run_id}.json", cell)
    return cell
