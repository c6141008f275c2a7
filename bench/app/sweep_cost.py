"""What a sweep cost to run, from its records (cost.md): per task and arm the mean training and evaluation
seconds of a cell, its training-state megabytes (weights, gradients and optimiser state: `cost.training_state_bytes`)
and measured peak memory, and for the whole sweep the cells, their summed seconds, the span from the first cell's start
to the last one's finish and the machines that ran them (record `env.machine`).

Written by `tunebench publish` so that docs quote a sweep's cost from a file a command regenerates, never a sum
typed by hand. The span is wall time only if the sweep ran without a pause; the summed seconds are each cell's own
measurement (`cost.train_seconds` + `cost.eval_seconds`), so cells that ran side by side count once each.
"""
from __future__ import annotations

import pandas as pd

from tunebench.app.tables import markdown_table


def cost_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, refinement, configuration, arm) of the ok runs: cells and mean seconds per cell."""
    if frame.empty or "started_at" not in frame:
        return pd.DataFrame()
    ok = frame[(frame.status == "ok") & frame.train_seconds.notna()]
    ok = ok.assign(started_at=pd.to_datetime(ok.started_at, utc=True, errors="coerce"),
                   finished_at=pd.to_datetime(ok.finished_at, utc=True, errors="coerce"))
    if ok.empty:
        return pd.DataFrame()
    keys = ["task", "refine", "configuration", "arm"]
    table = ok.assign(eval_seconds=ok.eval_seconds.fillna(0.0)).groupby(keys, sort=True, dropna=False).agg(
        cells=("run_id", "size"), train_s=("train_seconds", "mean"), eval_s=("eval_seconds", "mean"),
        state_bytes=("training_state_bytes", "mean"), peak_mb=("peak_memory_mb", "mean"),
        sum_s=("train_seconds", "sum"), sum_eval_s=("eval_seconds", "sum"),
        first_start=("started_at", "min"), last_finish=("finished_at", "max"), machines=("machine", _distinct))
    return table.reset_index()


def _distinct(values: pd.Series) -> tuple[str, ...]:
    return tuple(sorted({str(v) for v in values.dropna()}))


def sweep_totals(table: pd.DataFrame) -> dict:
    """The whole sweep: ok cells, summed train + eval seconds, first start to last finish, machines."""
    first, last = table.first_start.min(), table.last_finish.max()
    machines = sorted({m for row in table.machines for m in row})
    return {"cells": int(table.cells.sum()), "seconds": float(table.sum_s.sum() + table.sum_eval_s.sum()),
            "first_start": first, "last_finish": last, "span_seconds": float((last - first).total_seconds()),
            "machines": machines}


def _minutes(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _whole(value: float) -> str:
    return "-" if pd.isna(value) else f"{value:,.0f}"


def _span(totals: dict) -> str:
    if pd.isna(totals["first_start"]) or pd.isna(totals["last_finish"]):
        return "-"  # records without start and finish times
    return (f"{totals['first_start']:%Y-%m-%d %H:%M} -> {totals['last_finish']:%H:%M} UTC "
            f"({_minutes(totals['span_seconds'])})")


def cost_markdown(table: pd.DataFrame) -> str:
    totals = sweep_totals(table)
    configuration = {"configuration": table.configuration} if table.configuration.astype(bool).any() else {}
    shown = pd.DataFrame({
        "task": table.task, "refine": table.refine, **configuration, "method": table.arm, "cells": table.cells,
        "train s per cell": table.train_s.map("{:.0f}".format), "eval s per cell": table.eval_s.map("{:.0f}".format),
        "training state MB": (table.state_bytes / 2**20).map(_whole), "peak memory MB": table.peak_mb.map(_whole),
    })
    summary = pd.DataFrame([{
        "ok cells": totals["cells"], "train + eval s (summed over cells)": f"{totals['seconds']:,.0f}",
        "first start -> last finish": _span(totals),
        "machines (env.machine)": "; ".join(totals["machines"]) or "-",
    }])
    return (markdown_table(summary, index=False, disable_numparse=True) + "\n\n"
            + markdown_table(shown, index=False, disable_numparse=True))
