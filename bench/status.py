"""`tunebench status SWEEP_DIR`: every recorded cell as ok / failed / diverged with its error line.

Exits 1 if any cell is not ok, so scripts (and SLURM users, where a failed Python job may still
show as COMPLETED) can trust it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tunebench.frame import load_frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench status", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    args = parser.parse_args(argv)
    try:
        frame = load_frame(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench status: {e}")
        return 2
    frame = frame.sort_values(["task", "refine", "method", "lr", "seed"], na_position="last")
    columns = ["status", "task", "refine", "method", "lr", "seed", "run_id", "slurm_job_id", "error"]
    shown = frame[columns].fillna("-")
    shown["error"] = shown["error"].map(lambda e: str(e).splitlines()[0][:160] if e != "-" else "-")
    print(shown.to_markdown(index=False))
    counts = frame.status.value_counts().to_dict()
    print("\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0 if set(counts) == {"ok"} else 1
