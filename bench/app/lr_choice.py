"""Each arm's learning rate chosen on validation in a learning-rate grid (lr_choice.md).

The rule the lr-grid presets state: per configuration and arm (a method and its own knobs), the lr with the best
mean validation score (`best_val_acc`: exact match on generation tasks, accuracy elsewhere), averaged over seeds
within each task, then over the tasks, so that each task counts once; ties (within 1e-9) go to the lower lr. An lr
at which some task of the grid has no ok run (a failed or unfinished cell) is not eligible: the table says so.
Test scores play no part. Written by `tunebench publish` for every sweep in which some arm ran at several lrs.
"""
from __future__ import annotations

import pandas as pd

from tunebench.app.tables import markdown_table

TIE = 1e-9


def lr_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, arm, lr): the mean validation score per task, their mean, and the choice."""
    if frame.empty or "best_val_acc" not in frame:
        return pd.DataFrame()
    ok = frame[(frame.status == "ok") & frame.best_val_acc.notna() & frame.lr.notna()]
    tasks = sorted(ok.task.unique())
    rows = []
    for (configuration, arm), runs in ok.groupby(["configuration", "arm"], sort=True):
        if runs.lr.nunique() < 2:
            continue
        per_task = runs.groupby(["lr", "task"]).best_val_acc.mean().unstack("task").reindex(columns=tasks)
        for lr, scores in per_task.iterrows():
            complete = bool(scores.notna().all())
            rows.append({"configuration": configuration, "method": arm, "lr": float(lr), **scores.to_dict(),
                         "mean": float(scores.mean()) if complete else float("nan"), "complete": complete,
                         "runs": int((runs.lr == lr).sum())})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["chosen"] = False
    for _, group in table.groupby(["configuration", "method"]):
        eligible = group[group.complete]
        if eligible.empty:
            continue
        best = eligible["mean"].max()
        table.loc[eligible[eligible["mean"] >= best - TIE].lr.idxmin(), "chosen"] = True
    return table


def chosen_lrs(frame: pd.DataFrame) -> dict[tuple[str, str], float]:
    """{(configuration, arm): the chosen lr}."""
    table = lr_table(frame)
    if table.empty:
        return {}
    return {(r.configuration, r.method): r.lr for r in table[table.chosen].itertuples()}


def lr_choice_markdown(table: pd.DataFrame) -> str:
    tasks = [c for c in table.columns if c not in ("configuration", "method", "lr", "mean", "complete", "runs", "chosen")]
    configuration = {"configuration": table.configuration} if table.configuration.astype(bool).any() else {}
    shown = pd.DataFrame({
        **configuration, "method": table.method, "lr": table.lr.map("{:.1e}".format), "runs": table.runs,
        **{f"val {t}": table[t].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}") for t in tasks},
        "mean": [f"{m:.3f}" if c else "incomplete" for m, c in zip(table["mean"], table.complete)],
        "chosen": table.chosen.map(lambda c: "**chosen**" if c else ""),
    })
    return markdown_table(shown, index=False, disable_numparse=True)
