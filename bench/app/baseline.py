"""Is each arm above its task's trivial baseline? One row per (configuration, method, lr) of a sweep.

The trivial baseline is the record's `majority_baseline_test_acc`: the accuracy, on the test split, of always
answering the most frequent training answer (class). An arm is **above** it when every seed's test accuracy
is: per seed, a one-sided exact binomial test of its correct count over the test examples (`test_correct`)
against the baseline rate (few-shot runs: a t-test over their meta-test tasks' accuracies); the arm's p-value is the largest of its seeds' (an intersection-union test: every
seed must clear the baseline), Holm-adjusted over the rows of the table, and "above" needs it at or below
2.5% (the one-sided level of the claim's 95% intervals). Otherwise the verdict is "not shown above": the arm
may be at the baseline, or too few test examples separate it from it. The per-seed Clopper-Pearson lower
95% bound shows how far above the baseline the weakest seed is.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from tunebench.app.claim import _resampling_units
from tunebench.app.stats import ALPHA, adjust
from tunebench.app.tables import markdown_table

GROUP = ["comparison", "configuration", "task", "refine", "method", "lr"]  # the report's rows; `method`: the arm


def seed_test(correct: str, baseline: float, tasks=None) -> tuple[float, float]:
    """One seed: (one-sided p-value of 'accuracy > baseline', lower bound at 1 - ALPHA / 2). Test examples are
    independent draws: exact binomial test, Clopper-Pearson bound. Few-shot query predictions are not (those of
    one meta-test task share its support set): a one-sample t-test over the tasks' accuracies."""
    n, k = len(correct), correct.count("1")
    units, _ = _resampling_units(np.array([[c == "1" for c in correct]], dtype=float), tasks)  # the claim's units
    if units.shape[1] < n:  # meta-test tasks
        t = sps.ttest_1samp(units[0], baseline, alternative="greater")
        return float(t.pvalue), float(t.confidence_interval(1 - ALPHA / 2).low)
    p = float(sps.binomtest(k, n, baseline, alternative="greater").pvalue) if 0 < baseline < 1 else float(k == 0)
    low = float(sps.beta.ppf(ALPHA / 2, k, n - k + 1)) if k > 0 else 0.0
    return p, low


def baseline_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The table's rows (empty when no ok record has per-example test outcomes and a baseline)."""
    if frame.empty or not {"test_correct", "majority_baseline_test_acc"} <= set(frame):
        return pd.DataFrame()
    frame = frame.assign(method=frame["arm"])
    ok = frame[(frame.status == "ok") & frame.test_correct.map(lambda s: isinstance(s, str) and len(s) > 0)
               & frame.majority_baseline_test_acc.notna()]
    rows = []
    for key, runs in ok.groupby(GROUP, dropna=False, sort=True):
        tasks = runs["meta_test_tasks"] if "meta_test_tasks" in runs else [None] * len(runs)
        tests = [seed_test(c, float(b), t) for c, b, t in zip(runs.test_correct, runs.majority_baseline_test_acc, tasks)]
        rows.append({**dict(zip(GROUP, key)), "seeds": len(runs), "acc": float(runs.test_acc.mean()),
                     "baseline": float(runs.majority_baseline_test_acc.mean()),
                     "weakest_seed_low": min(low for _, low in tests), "p": max(p for p, _ in tests)})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = adjust(table.p.tolist(), "holm")
        table["verdict"] = np.where(table.p_holm <= ALPHA / 2, "above", "not shown above")
    return table


def baseline_markdown(table: pd.DataFrame) -> str:
    configuration = {"configuration": table.configuration} if table.configuration.astype(bool).any() else {}
    shown = pd.DataFrame({
        **configuration, "task": table.task, "refine": table.refine, "method": table.method,
        "lr": table.lr.map(lambda v: "-" if pd.isna(v) else f"{v:.1e}"), "seeds": table.seeds,
        "acc": table.acc.map("{:.4f}".format), "trivial baseline": table.baseline.map("{:.4f}".format),
        "weakest seed, 95% low": table.weakest_seed_low.map("{:.4f}".format),
        "p (Holm)": table.p_holm.map("{:.2g}".format), "verdict": table.verdict.map(lambda v: f"**{v}**"),
    })
    return markdown_table(shown, index=False, disable_numparse=True)
