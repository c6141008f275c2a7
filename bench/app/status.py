"""`tunebench status SWEEP_DIR`: every cell as ok / failed / diverged / missing, with its error line.

Cells come from the records and from the sweeper's notes of launched cells (a launched cell with
no record is `missing`: a job SLURM lost, a node that died, a sweep still running). Exits 1 if any
cell is not ok, so scripts (and SLURM users, where a failed Python job may still show as COMPLETED)
can trust it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from tunebench.app.frame import load_frame
from tunebench.app.sweeper import launched_cells
from tunebench.app.tables import markdown_table

COLUMNS = ["status", "task", "refine", "method", "lr", "seed", "run_id", "slurm_job_id", "error"]


def _missing_rows(sweep_dir: Path, recorded: set[str]) -> list[dict]:
    return [
        {"status": "missing", "run_id": rid, "method": _override(note, "method"), "seed": _override(note, "seed"),
         "slurm_job_id": note.get("slurm_job_id"),
         "error": "no record" + (f"; SLURM job {note['slurm_job_id']} ended {note['slurm_state']}" if note.get("slurm_job_id") else "")
                  + "; launched as: " + " ".join(note["overrides"])}
        for rid, note in launched_cells(sweep_dir).items() if rid not in recorded
    ]


def _override(note: dict, key: str):
    return next((o.split("=", 1)[1] for o in note["overrides"] if o.split("=", 1)[0] == key), None)


def cell_frame(sweep_dir: Path) -> pd.DataFrame:
    """Recorded cells plus launched cells without a record."""
    sweep_dir = Path(sweep_dir)
    try:
        frame = load_frame(sweep_dir)
    except FileNotFoundError:
        if not launched_cells(sweep_dir):
            raise
        frame = pd.DataFrame(columns=["status", "run_id"])
    missing = _missing_rows(sweep_dir, set(frame.run_id))
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce")
    return frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench status", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    args = parser.parse_args(argv)
    try:
        frame = cell_frame(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench status: {e}")
        return 2
    frame = frame.sort_values(["task", "refine", "method", "lr", "seed"], na_position="last")
    shown = frame[COLUMNS].astype(object).where(frame[COLUMNS].notna(), "-")
    shown["error"] = shown["error"].map(lambda e: str(e).splitlines()[0][:160] if e != "-" else "-")
    print(markdown_table(shown, index=False))
    counts = frame.status.value_counts().to_dict()
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0 if set(counts) == {"ok"} else 1
