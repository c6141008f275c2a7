"""`tunebench report SWEEP_DIR`: comparison tables (Markdown, CSV, LaTeX) and plots from the records.

Rows are (configuration, task, refinement, method, lr), with mean +- std over seeds of accuracy and
macro-F1 and the mean cost columns. A configuration is everything in the runs' config but the method
and the seed (as in `tunebench claim`): runs of two models or two data sizes are never averaged
together, and the `configuration` column names what differs. Failed / diverged runs are counted, never averaged in. When the sweep has
continual-learning runs, their average accuracy, forgetting and backward transfer (BWT) get columns too,
as do CLIP runs' zero-shot accuracy and image->text / text->image recall@1 and @5;
when it has few-shot runs, rows are split by N-way K-shot setting and show the meta-test accuracy
± its 95% confidence interval over tasks (mean over seeds of the per-run interval half-widths) and the
number of meta-test tasks. Runs of several processes (DDP / FSDP) add `ranks` and `device s` (training time
summed over devices); their peak memory is per device (the largest rank's). Federated runs add the megabytes
sent per client per round (one way) and in total (both ways, all rounds), and the server's peak memory
(their `peak mem MB` is the largest client's). In an lr grid (an arm at several lrs) the best validation accuracy, which
chooses the lr, gets a column beside test accuracy.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tunebench.app.frame import CLIP_KEYS, CONTINUAL_KEYS, load_frame, setting_keys
from tunebench.app.tables import latex_table, markdown_table, write_csv
from tunebench.core.names import file_component

# One row per configuration, task, refinement, arm (the method, with its knobs where they differ) and lr.
GROUP_KEYS = ["comparison", "configuration", "task", "refine", "method", "lr"]

STAT_COLUMNS = {"test_acc": "acc", "test_macro_f1": "macro_f1"}
CONTINUAL_COLUMNS = {"avg_acc": "avg acc", "forgetting": "forgetting", "bwt": "BWT"}  # shown when any run has them
CLIP_COLUMNS = {"zero_shot_acc": "zero-shot acc", "recall_i2t_1": "i→t R@1", "recall_i2t_5": "i→t R@5",
                "recall_t2i_1": "t→i R@1", "recall_t2i_5": "t→i R@5"}  # likewise
COST_COLUMNS = {
    "params_trainable": "trainable_params", "trainable_pct": "trainable_pct", "peak_memory_mb": "peak_mem_mb",
    "train_seconds": "train_s", "samples_per_second": "samples_per_s", "saved_bytes": "saved_bytes",
}


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, task, refine, method, lr): seeds, failures, mean / std of scores, mean costs."""
    frame = frame.assign(method=frame["arm"])
    ok = frame[frame.status == "ok"]
    keys = GROUP_KEYS + setting_keys(frame)
    groups = frame.groupby(keys, dropna=False, sort=True)
    table = pd.DataFrame({"seeds_ok": ok.groupby(keys, dropna=False).size()})
    table = table.reindex(groups.size().index, fill_value=0)
    table["not_ok"] = groups.size() - table["seeds_ok"]
    ok_groups = ok.groupby(keys, dropna=False)
    for source, name in STAT_COLUMNS.items():
        table[f"{name}_mean"] = ok_groups[source].mean()
        table[f"{name}_std"] = ok_groups[source].std(ddof=1)
    for source in continual_columns(frame):
        table[f"{source}_mean"] = ok_groups[source].mean()
        table[f"{source}_std"] = ok_groups[source].std(ddof=1)
    if "meta_test_acc" in frame and frame["meta_test_acc"].notna().any():
        half_width = (ok["meta_test_ci95_high"] - ok["meta_test_ci95_low"]) / 2
        table["meta_test_acc_mean"] = ok_groups["meta_test_acc"].mean()
        table["meta_test_ci95_half"] = half_width.groupby([ok[k] for k in keys], dropna=False).mean()
        table["meta_test_tasks"] = ok_groups["meta_test_tasks"].min()
    if _is_lr_grid(frame):  # the lr is chosen on validation, so a grid shows what chose it
        table["val_acc_mean"] = ok_groups["best_val_acc"].mean()
        table["val_acc_std"] = ok_groups["best_val_acc"].std(ddof=1)
    for source, name in COST_COLUMNS.items():
        table[name] = ok_groups[source].mean()
    if "ranks" in frame and (frame["ranks"] > 1).any():  # multi-process runs: how many devices, and device-seconds
        table["ranks"] = ok_groups["ranks"].max()
        table["device_s"] = ok_groups["device_seconds"].mean()
    if "comm_bytes_total" in frame and frame["comm_bytes_total"].notna().any():  # federated: traffic both ways
        table["comm_mb"] = ok_groups["comm_bytes_total"].mean() / 2**20
        table["comm_client_round_mb"] = ok_groups["comm_bytes_per_client_round"].mean() / 2**20
        table["server_peak_mb"] = ok_groups["peak_memory_server_mb"].mean()
    if "dp_epsilon" in frame and frame["dp_epsilon"].notna().any():  # DP: one guarantee per arm (max: the weakest, should seeds ever differ)
        table["dp_epsilon"] = ok_groups["dp_epsilon"].max()
        table["dp_delta"] = ok_groups["dp_delta"].max()
    return table.reset_index()


def _is_lr_grid(frame: pd.DataFrame) -> bool:
    """Some arm (configuration, task, refinement, method) ran at more than one lr."""
    if "best_val_acc" not in frame or "lr" not in frame:
        return False
    keys = [k for k in GROUP_KEYS if k not in ("lr", "comparison")]
    return bool((frame.groupby(keys, dropna=False)["lr"].nunique() > 1).any())


def continual_columns(frame: pd.DataFrame) -> list[str]:
    """The method-family metrics (continual learning, CLIP) some run of the sweep has; none for a sweep without them."""
    return [k for k in CONTINUAL_KEYS + CLIP_KEYS if k in frame and frame[k].notna().any()]


def _pm(mean, std, digits: int = 4) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _setting(ways, shots) -> str:
    return "-" if pd.isna(ways) or pd.isna(shots) else f"{ways:.0f}-way {shots:.0f}-shot"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable columns for Markdown / LaTeX (the CSV keeps the raw numbers)."""
    shown = [k for k in GROUP_KEYS if k != "comparison" and (k != "configuration" or table[k].astype(bool).any())]
    out = table[shown + ["seeds_ok", "not_ok"]].copy()
    out["lr"] = out["lr"].map(lambda v: f"{v:.1e}")
    if "meta_test_acc_mean" in table:  # few-shot: the setting, then meta-test accuracy ± 95% CI over tasks
        out.insert(shown.index("method"), "setting", [_setting(w, s) for w, s in zip(table.ways, table.shots)])
        out["meta-test acc ± 95% CI"] = [_pm(m, h) for m, h in zip(table.meta_test_acc_mean, table.meta_test_ci95_half)]
        out["tasks"] = table.meta_test_tasks.map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    if "val_acc_mean" in table:
        out["best val acc"] = [_pm(m, s) for m, s in zip(table.val_acc_mean, table.val_acc_std)]
    out["acc"] = [_pm(m, s) for m, s in zip(table.acc_mean, table.acc_std)]
    out["macro-F1"] = [_pm(m, s) for m, s in zip(table.macro_f1_mean, table.macro_f1_std)]
    for source, name in {**CONTINUAL_COLUMNS, **CLIP_COLUMNS}.items():
        if f"{source}_mean" in table:
            out[name] = [_pm(m, s) for m, s in zip(table[f"{source}_mean"], table[f"{source}_std"])]
    out["trainable"] = table.trainable_params.map(lambda v: "-" if pd.isna(v) else f"{v:,.0f}")
    out["trainable %"] = table.trainable_pct.map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    out["peak mem MB"] = table.peak_mem_mb.map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    out["train s"] = table.train_s.map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    if "ranks" in table:
        out["ranks"] = table.ranks.map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
        out["device s"] = table.device_s.map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
    if "comm_mb" in table:
        out["sent MB / client / round"] = table.comm_client_round_mb.map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
        out["sent MB total"] = table.comm_mb.map(lambda v: "-" if pd.isna(v) else f"{v:.4g}")
        out["server peak MB"] = table.server_peak_mb.map(lambda v: "-" if pd.isna(v) else f"{v:.0f}")
    if "dp_epsilon" in table:
        out["DP ε (δ)"] = [("no DP" if pd.isna(e) else f"{e:.3g} ({d:.0e})") for e, d in zip(table.dp_epsilon, table.dp_delta)]
    return out


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Mask of points no other point beats on both axes (lower cost, higher accuracy)."""
    mask = np.ones(len(cost), dtype=bool)
    for i in range(len(cost)):
        dominated = (cost <= cost[i]) & (acc >= acc[i]) & ((cost < cost[i]) | (acc > acc[i]))
        mask[i] = not dominated.any()
    return mask


def plot(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    data = table.dropna(subset=["acc_mean"])
    axes_spec = [("trainable_params", "trainable parameters (log)", True), ("peak_mem_mb", "peak memory over baseline (MB)", False)]
    for (configuration, task, refine), group in data.groupby(["configuration", "task", "refine"]):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, (column, label, log_x) in zip(axes, axes_spec):
            g = group.dropna(subset=[column])
            front = pareto_front(g[column].to_numpy(), g["acc_mean"].to_numpy())
            ax.errorbar(g[column], g["acc_mean"], yerr=g["acc_std"].fillna(0), fmt="o", capsize=3, color="tab:blue")
            for (_, row), on_front in zip(g.iterrows(), front):
                ax.annotate(f"{row.method} ({row.lr:.0e})", (row[column], row.acc_mean), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
            f = g[front].sort_values(column)
            ax.plot(f[column], f["acc_mean"], "--", color="tab:red", label="Pareto front")
            ax.set_xscale("log" if log_x else "linear")
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (mean ± std over seeds)")
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right")
        fig.suptitle(f"{task} — refinement: {refine}" + (f" — {configuration}" if configuration else ""))
        fig.tight_layout()
        suffix = f"__{_slug(configuration)}" if configuration else ""
        path = out_dir / f"{file_component(task)}__{file_component(refine)}{suffix}__accuracy_vs_cost.png"  # names are data
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)[:80]


def write_tables(frame: pd.DataFrame, tables_dir: Path, caption: str) -> dict:
    """results.md / .csv / .tex in tables_dir; returns the table, its Markdown and the paths."""
    tables_dir.mkdir(parents=True, exist_ok=True)
    table = summarize(frame)
    shown = display_table(table)
    markdown = markdown_table(shown, index=False, disable_numparse=True)
    paths = {"md": tables_dir / "results.md", "csv": tables_dir / "results.csv", "tex": tables_dir / "results.tex"}
    paths["md"].write_text(markdown + "\n")
    write_csv(table.drop(columns=["comparison"]), paths["csv"], index=False)
    paths["tex"].write_text(latex_table(shown, f"{caption}: test accuracy and cost (mean ± std over seeds)"))
    return {"table": table, "markdown": markdown, "paths": paths}


def results_root(sweep_dir: Path, out: Path | None = None) -> Path:
    """Where tables/ and plots/ go: `--out`, else the results root the sweep folder is in (<root>/runs/<sweep>)."""
    return Path(out) if out else Path(sweep_dir).parent.parent


def write_report(sweep_dir: Path, out_root: Path | None = None) -> dict:
    sweep_dir = Path(sweep_dir)
    out_root = results_root(sweep_dir, out_root)
    plots_dir = out_root / "plots" / sweep_dir.name
    plots_dir.mkdir(parents=True, exist_ok=True)
    frame = load_frame(sweep_dir)
    result = write_tables(frame, out_root / "tables" / sweep_dir.name, f"tunebench sweep {sweep_dir.name}")
    result["paths"]["plots"] = plot(result["table"], plots_dir)
    return {**result, "runs": len(frame)}


def _compare(args) -> int:
    from tunebench.app.html_report import write_compare

    a, b = args.compare
    out_root = results_root(a, args.out)
    out, table = write_compare(a, b, out_root / "tables" / f"{a.name}_vs_{b.name}.html")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    print(f"-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, nargs="?", help="folder of run records, e.g. results/runs/quick")
    parser.add_argument("--out", type=Path, default=None, help="results root for tables/ and plots/ (default: two levels above SWEEP_DIR)")
    parser.add_argument("--html", action="store_true",
                        help="also write tables/<sweep>/report.html: one self-contained page (table, claim forest plot, "
                             "Pareto plots, curves; it shows the claim.json beside it, as `tunebench claim` wrote it)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("SWEEP_A", "SWEEP_B"), default=None,
                        help="instead: two sweeps side by side, cell by cell, with B - A and whether it is within seed "
                             "noise -> tables/<A>_vs_<B>.html (SWEEP_DIR is then not given)")
    args = parser.parse_args(argv)
    if (args.sweep_dir is None) == (args.compare is None):
        parser.error("give SWEEP_DIR, or --compare SWEEP_A SWEEP_B")
    try:
        if args.compare:
            return _compare(args)
        result = write_report(args.sweep_dir, args.out)
        if args.html:
            from tunebench.app.html_report import write_html

            page = results_root(args.sweep_dir, args.out) / "tables" / args.sweep_dir.name / "report.html"
            result["paths"]["html"] = write_html(args.sweep_dir, page)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench report: {e}")
        return 2
    print(result["markdown"])
    print(f"\n{result['runs']} records -> " + ", ".join(str(p) for k, p in result["paths"].items() if k != "plots"))
    for p in result["paths"]["plots"]:
        print(f"plot -> {p}")
    return 0
