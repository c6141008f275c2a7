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
import re
import shutil
import subprocess
import time
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


# run_id -> (state, job id) of cells whose job ended without a result in this process's sweep.
LOST: dict[str, tuple[str, str]] = {}


def account_lost_jobs(error: str, cells: list[dict]) -> None:
    """After submitit reported a job without a result: wait for the rest of its SLURM array, ask SLURM's
    accounting how each job ended, and note the job id and state of every cell left without a record
    (its note, so `tunebench status` shows them later, and LOST, for this sweep's summary)."""
    job = re.search(r"Job (\S+) ", error)
    state = re.search(r"state: ([A-Z_]+)", error)
    job_id = job.group(1) if job else "?"
    states = _array_states(job_id.split("_")[0]) if "_" in job_id and shutil.which("sacct") else {}
    if not states:  # not a SLURM array (the local executor): only the job submitit named is known
        states = {job_id: state.group(1) if state else "LOST"}
    for index, cell in enumerate(cells):
        task_job = f"{job_id.split('_')[0]}_{index}" if "_" in job_id else job_id
        if task_job not in states or (Path(cell["sweep_dir"]) / f"{cell['run_id']}.json").exists():
            continue
        LOST[cell["run_id"]] = (states[task_job], task_job)
        rec.write_atomic(Path(cell["sweep_dir"]) / CELLS_DIR / f"{cell['run_id']}.json",
                         {**cell, "slurm_job_id": task_job, "slurm_state": states[task_job]})
        log.error("cell %s: SLURM job %s ended %s without a record", cell["run_id"], task_job, states[task_job])


def _array_states(array_id: str, poll_s: float = 5.0) -> dict[str, str]:
    """Job id -> final SLURM state of every task of an array, once none is pending or running."""
    log.info("a job of SLURM array %s ended without a result; waiting for the array's other jobs", array_id)
    while subprocess.run(["squeue", "-h", "-j", array_id], capture_output=True, text=True).stdout.strip():
        time.sleep(poll_s)
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array_id], capture_output=True, text=True).stdout
    return {job: state.split()[0] for job, state in (line.split("|", 1) for line in out.splitlines() if "|" in line)}
