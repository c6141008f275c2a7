"""`tunebench report SWEEP_DIR --html`: one self-contained HTML page per sweep, and `--compare A B`.

The page holds what results.md, claim.md and the plots hold, for one reader and one file: the comparison
table (sortable, filterable by task / refinement / method / model, mean ± std with the seed count, cells
that failed or diverged listed with their error), the claim as a forest plot (one row per comparison and
part, estimate and 95% CI, the threshold line, the verdict coloured: Holm-adjusted as colour, unadjusted
as the marker), accuracy-vs-cost Pareto plots (trainable parameters, peak memory, train time; log axes;
hover details), validation curves per method, the panels of the method families the sweep has (continual
accuracy matrices, few-shot meta-test intervals, CLIP zero-shot and recall, federated rounds), the run
environment and a link to every record. Figures are Plotly's, with plotly.js inlined: the page needs no
network and no server (open it from a cluster's login node or mail it).

`--compare A B` puts two sweeps side by side, cell by cell (configuration, task, refinement, method): the
mean test accuracy of each, the difference and its 95% Welch interval over seeds; a difference whose
interval holds 0 is within seed noise.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from tunebench.app.frame import load_frame
from tunebench.app.report import display_table, pareto_front, summarize

VERDICT_COLOURS = {"supported": "#1a9850", "refuted": "#d73027", "inconclusive": "#fdae61", "no data": "#999999"}
COST_AXES = [("trainable_params", "trainable parameters"), ("peak_mem_mb", "peak memory (MB)"), ("train_s", "train time (s)")]
FILTER_COLUMNS = ("task", "refine", "method", "configuration", "model")

# Sorting and filtering of the page's tables (no charting here: the figures are Plotly's).
TABLE_SCRIPT = """
// A figure is drawn as soon as its script runs, when the grid row it sits in may not hold its later panels yet:
// it takes the width the cell had then. Once the page has loaded, every figure is fitted to its cell.
window.addEventListener('load', () => document.querySelectorAll('.js-plotly-plot').forEach(gd => Plotly.Plots.resize(gd)));
function tbNumber(text) { const m = text.replace(/,/g, '').match(/^-?[0-9.]+(e[-+]?[0-9]+)?/i); return m ? parseFloat(m[0]) : NaN; }
function tbSort(th) {
  const table = th.closest('table'), body = table.tBodies[0], index = th.cellIndex;
  const ascending = th.dataset.order !== 'asc';
  table.querySelectorAll('th').forEach(h => { delete h.dataset.order; });
  th.dataset.order = ascending ? 'asc' : 'desc';
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = a.cells[index].textContent.trim(), y = b.cells[index].textContent.trim();
    const nx = tbNumber(x), ny = tbNumber(y), numeric = !isNaN(nx) && !isNaN(ny);
    if (!numeric && (!isNaN(nx) || !isNaN(ny))) return isNaN(nx) ? 1 : -1;  // "-" (no value) last either way
    const order = numeric ? nx - ny : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(r => body.appendChild(r));
}
function tbFilter(tableId) {
  const table = document.getElementById(tableId);
  const selects = document.querySelectorAll('select[data-table="' + tableId + '"]');
  Array.from(table.tBodies[0].rows).forEach(row => {
    let shown = true;
    selects.forEach(s => { if (s.value && row.cells[+s.dataset.column].textContent.trim() !== s.value) shown = false; });
    row.style.display = shown ? '' : 'none';
  });
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('table.sortable th').forEach(th => th.addEventListener('click', () => tbSort(th)));
  document.querySelectorAll('select[data-table]').forEach(s => s.addEventListener('change', () => tbFilter(s.dataset.table)));
});
"""

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 0 auto; max-width: 1400px; padding: 0 1rem 3rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; }
.grid { display: flex; flex-wrap: wrap; gap: 0.5rem; } .grid .cell { flex: 1 1 380px; min-width: 300px; }
h3 { font-size: 1rem; margin-bottom: 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; position: sticky; top: 0; }
table.sortable th { cursor: pointer; } table.sortable th[data-order=asc]::after { content: ' ▲'; } table.sortable th[data-order=desc]::after { content: ' ▼'; }
tr.not-ok td { background: #fde0dc; }
.filters label { margin-right: 1rem; font-size: 0.85rem; }
.note { color: #555; font-size: 0.85rem; max-width: 70rem; }
.verdict-supported { color: #1a9850; font-weight: 600; } .verdict-refuted { color: #d73027; font-weight: 600; }
.verdict-inconclusive { color: #b86e00; font-weight: 600; }
"""


# --- the page's parts ---------------------------------------------------------------------------------------

def _table_html(frame: pd.DataFrame, table_id: str, row_classes: list[str] | None = None, links: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, (_, row) in enumerate(frame.iterrows()):
        cells = [html.escape("" if pd.isna(v) else str(v)) for v in row]
        if links is not None and links[i]:
            cells[-1] = f'<a href="{html.escape(links[i])}">{cells[-1]}</a>'
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _filters(frame: pd.DataFrame, table_id: str) -> str:
    parts = []
    for column in FILTER_COLUMNS:
        if column in frame and frame[column].nunique(dropna=True) > 1:
            index = list(frame.columns).index(column)
            options = "".join(f'<option value="{html.escape(str(v))}">{html.escape(str(v))}</option>'
                              for v in sorted(frame[column].dropna().astype(str).unique()))
            parts.append(f'<label>{column} <select data-table="{table_id}" data-column="{index}">'
                         f'<option value="">all</option>{options}</select></label>')
    return f'<div class="filters">{"".join(parts)}</div>' if parts else ""


def results_section(frame: pd.DataFrame) -> str:
    table = summarize(frame)
    shown = display_table(table)
    models = frame.groupby("comparison")["model"].first()
    shown.insert(list(shown.columns).index("method") + 1, "model", table["comparison"].map(models).to_numpy())
    classes = ["not-ok" if n else "" for n in table["not_ok"]]
    return ("<h2>Results</h2><p class='note'>Mean ± std over the seeds that finished (seeds_ok); not_ok counts the "
            "cells that failed or diverged, which are never averaged in (listed below). Click a column to sort.</p>"
            + _filters(shown, "results") + _table_html(shown, "results", classes))


def failures_section(frame: pd.DataFrame, page_dir: Path) -> str:
    bad = frame[frame.status != "ok"]
    if bad.empty:
        return "<h2>Cells not ok</h2><p class='note'>None: every cell finished.</p>"
    shown = bad[["status", "task", "refine", "method", "seed", "error", "run_id"]].copy()
    links = [_relative(p, page_dir) for p in bad["path"]]
    return ("<h2>Cells not ok</h2>" + _table_html(shown, "failures", ["not-ok"] * len(shown), links))


def forest_figure(comparisons: list[dict]):
    """One panel per kind of part (accuracy in points, ratios), one row per comparison; the estimate, its 95%
    CI, the claim's threshold as a dashed line; colour = Holm-adjusted verdict, open marker = unadjusted
    verdict differs."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = [_forest_row(c, p) for c in comparisons for p in c["parts"] if p.get("estimate") is not None]
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    if not rows:
        return None
    counts = [sum(r["kind"] == k for r in rows) for k in kinds]
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=kinds, vertical_spacing=0.35 / max(len(kinds), 1),
                        row_heights=[max(c, 1) for c in counts])
    for i, kind in enumerate(kinds, 1):
        part_rows = [r for r in rows if r["kind"] == kind]
        for verdict in VERDICT_COLOURS:
            chosen = [r for r in part_rows if r["verdict_adjusted"] == verdict]
            if not chosen:
                continue
            fig.add_trace(go.Scatter(
                x=[r["estimate"] for r in chosen], y=[r["label"] for r in chosen], mode="markers",
                name=verdict, legendgroup=verdict, showlegend=not any(t.name == verdict for t in fig.data),
                marker={"color": VERDICT_COLOURS[verdict], "size": 11,
                        "symbol": ["circle-open" if r["verdict"] != r["verdict_adjusted"] else "circle" for r in chosen],
                        "line": {"width": 2, "color": VERDICT_COLOURS[verdict]}},
                error_x={"type": "data", "symmetric": False, "array": [r["high"] - r["estimate"] for r in chosen],
                         "arrayminus": [r["estimate"] - r["low"] for r in chosen], "color": VERDICT_COLOURS[verdict]},
                text=[r["hover"] for r in chosen], hovertemplate="%{text}<extra></extra>"), row=i, col=1)
        threshold = part_rows[0]["threshold_value"]
        if threshold is not None:
            fig.add_vline(x=threshold, line_dash="dash", line_color="#444", row=i, col=1)
        if part_rows[0]["log"]:
            fig.update_xaxes(type="log", row=i, col=1)
    fig.update_layout(height=140 + 42 * len(rows) + 60 * len(kinds), margin={"l": 10, "r": 10, "t": 40, "b": 30},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "title": "verdict (Holm)"})
    return fig


def _forest_row(comparison: dict, part: dict) -> dict:
    name = part["part"]
    kind = name.split(" (")[0]
    ratio = "PEFT / full" in name  # ratios on a log axis; the accuracy difference in points on a linear one
    estimate = float(part["estimate"])
    low = estimate if part.get("ci_low") is None else float(part["ci_low"])
    high = estimate if part.get("ci_high") is None else float(part["ci_high"])
    label = comparison_label(comparison)
    hover = (f"<b>{label}</b><br>{html.escape(name)}: {estimate:.4g} [{low:.4g}, {high:.4g}]<br>"
             f"threshold: {html.escape(str(part.get('threshold')))}<br>verdict: {part['verdict_adjusted']} (Holm), "
             f"{part['verdict']} (unadjusted)<br>{html.escape(str(part.get('note') or ''))}")
    return {"kind": name, "label": label, "estimate": estimate, "low": low, "high": high, "hover": hover,
            "verdict": part["verdict"], "verdict_adjusted": part["verdict_adjusted"],
            "threshold_value": _threshold_value(part), "log": ratio and estimate > 0}


def comparison_label(comparison: dict) -> str:
    """Two lines, so the labels leave a forest plot its width on a narrow screen."""
    config = f" [{comparison['configuration']}]" if comparison.get("configuration") else ""
    setting = f" {comparison['ways']}-way {comparison['shots']}-shot" if "ways" in comparison else ""
    return f"{comparison['task']}{setting} / {comparison['refine']}{config}:<br>{comparison['peft']} vs {comparison['reference']}"


def _threshold_value(part: dict) -> float | None:
    """The number in the part's threshold text ('non-inferior: CI low > -1 pt', 'ratio <= 0.8')."""
    import re

    numbers = re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", str(part.get("threshold") or ""))
    return float(numbers[-1]) if numbers else None


def forest_section(comparisons: list[dict], source: str) -> str:
    if not comparisons:
        return "<h2>Claim</h2><p class='note'>No PEFT arm to compare with a reference in this sweep.</p>"
    fig = forest_figure(comparisons)
    planned = any(p.get("sequential") for c in comparisons for p in c["parts"])
    verdicts = pd.DataFrame([{"comparison": comparison_label(c).replace("<br>", " "), "part": p["part"],
                              "estimate": "-" if p.get("estimate") is None else f"{p['estimate']:.4g}",
                              "95% CI": "-" if p.get("ci_low") is None else f"[{p['ci_low']:.4g}, {p['ci_high']:.4g}]",
                              "threshold": p.get("threshold"), "verdict (Holm)": p["verdict_adjusted"],
                              "verdict (unadjusted)": p["verdict"], **(_plan_columns(p) if planned else {})}
                             for c in comparisons for p in c["parts"]])
    figure = "" if fig is None else _figure_html(fig, "forest")
    return (f"<h2>Claim</h2><p class='note'>From {html.escape(source)}. One row per comparison and part; the bar is "
            "the 95% interval, the dashed line the claim's threshold; colour is the Holm-adjusted verdict, an open "
            "marker means the unadjusted verdict differs (docs/statistics.md).</p>"
            + figure + _table_html(verdicts, "claim"))


def _plan_columns(part: dict) -> dict:
    """A declared plan's view of a part: primary or secondary hypothesis, and the rule that decided it (or not)."""
    plan = part.get("sequential") or {}
    return {"hypothesis": plan.get("family", "-"), "decision": plan.get("rule", "not a test")}


def pareto_section(frame: pd.DataFrame) -> str:
    import plotly.graph_objects as go

    table = summarize(frame).dropna(subset=["acc_mean"])
    out = ["<h2>Accuracy vs cost</h2><p class='note'>Mean test accuracy (± std over seeds) against each cost, log "
           "axes; the dashed line joins the Pareto front (no other arm is cheaper and more accurate).</p>"]
    for (configuration, task, refine), group in table.groupby(["configuration", "task", "refine"]):
        title = f"{task} — refinement: {refine}" + (f" — {configuration}" if configuration else "")
        figures = []
        for column, label in COST_AXES:
            g = group.dropna(subset=[column])
            g = g[g[column] > 0]
            if g.empty:
                continue
            hover = [f"<b>{m}</b> (lr {lr:.1e})<br>acc {a:.4f} ± {0 if pd.isna(s) else s:.4f}<br>{label}: {c:,.4g}"
                     for m, lr, a, s, c in zip(g.method, g.lr, g.acc_mean, g.acc_std, g[column])]
            front = g[pareto_front(g[column].to_numpy(), g.acc_mean.to_numpy())].sort_values(column)
            fig = go.Figure([
                go.Scatter(x=g[column], y=g.acc_mean, mode="markers+text", text=list(g.method), textposition="top center",
                           error_y={"type": "data", "array": g.acc_std.fillna(0)}, hovertext=hover, hoverinfo="text",
                           name="arms"),
                go.Scatter(x=front[column], y=front.acc_mean, mode="lines", line={"dash": "dash", "color": "#d73027"},
                           hoverinfo="skip", name="Pareto front")])
            x_range, y_range = _pareto_ranges(g[column].to_numpy(float), g.acc_mean.to_numpy(float), g.acc_std.fillna(0).to_numpy(float))
            fig.update_xaxes(type="log", title_text=label, range=x_range)
            fig.update_yaxes(range=y_range)
            # The title on the left, the toolbar (top right) above the plot: neither covers the other.
            fig.update_layout(yaxis_title="test accuracy", showlegend=False, height=340,
                              margin={"l": 10, "r": 10, "t": 44, "b": 40},
                              title={"text": label, "font": {"size": 13}, "x": 0.01, "xanchor": "left", "y": 0.98})
            figures.append(f"<div class='cell'>{_figure_html(fig, f'pareto-{task}-{refine}-{configuration}-{column}')}</div>")
        out.append(f"<h3>{html.escape(title)}</h3><div class='grid'>{''.join(figures)}</div>")
    return "".join(out)


def _pareto_ranges(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[list[float], list[float]]:
    """Axis ranges that hold every arm, its error bar and its label: Plotly's autorange on a log axis with text
    labels left the reference arm (the largest cost) outside the drawn range. x in log10 units, as Plotly wants."""
    lo, hi = float(np.log10(x.min())), float(np.log10(x.max()))
    x_pad = max(0.15 * (hi - lo), 0.15)
    low, high = float((mean - std).min()), float((mean + std).max())
    y_pad = max(0.1 * (high - low), 0.01)
    return ([round(lo - x_pad, 6), round(hi + x_pad, 6)],
            [round(low - y_pad, 6), round(high + 2.5 * y_pad, 6)])  # room above for the arm's name


def curves_section(records: list[dict]) -> str:
    """Validation accuracy per step (federated: per round), mean over the seeds, one line per method."""
    import plotly.graph_objects as go

    records = _ok(records)
    points = [{"task": r["cell"]["task"], "refine": r["cell"]["refine"], "method": r["cell"]["method"],
               "step": p["step"], "val_acc": p["val_acc"]}
              for r in records for p in (r.get("curve") or []) if p.get("val_acc") is not None and "step" in p]
    if not points:
        return ""
    data = pd.DataFrame(points).groupby(["task", "refine", "method", "step"], as_index=False)["val_acc"].mean()
    out = ["<h2>Training curves</h2><p class='note'>Validation accuracy at each evaluation (federated runs: each "
           "round, scored by the server), mean over seeds.</p>"]
    for (task, refine), group in data.groupby(["task", "refine"]):
        fig = go.Figure([go.Scatter(x=g.step, y=g.val_acc, mode="lines+markers", name=method)
                         for method, g in group.groupby("method")])
        fig.update_layout(title=f"{task} — refinement: {refine}", xaxis_title="step", yaxis_title="validation accuracy",
                          height=340, margin={"l": 10, "r": 10, "t": 50, "b": 40})
        out.append(_figure_html(fig, f"curve-{task}-{refine}"))
    return "".join(out)


def family_sections(frame: pd.DataFrame, records: list[dict]) -> str:
    """Panels of the method families the sweep has: continual, few-shot, CLIP, federated."""
    import plotly.express as px
    import plotly.graph_objects as go

    ok = frame[frame.status == "ok"]
    records = _ok(records)
    out = []
    matrices = [(r["cell"]["method"], r["cell"]["seed"], r["metrics"]["acc_matrix"]) for r in records
                if isinstance((r.get("metrics") or {}).get("acc_matrix"), list)]
    if matrices:
        out.append("<h2>Continual learning</h2><p class='note'>Accuracy on each test experience (columns) after "
                   "training on each experience (rows), mean over seeds.</p>")
        for method in sorted({m for m, _, _ in matrices}):
            mean = np.mean([np.asarray(a, dtype=float) for m, _, a in matrices if m == method], axis=0)
            fig = px.imshow(mean, text_auto=".2f", zmin=0, zmax=1, color_continuous_scale="Viridis",
                            labels={"x": "test experience", "y": "after training on", "color": "accuracy"}, title=method)
            fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 50, "b": 30})
            out.append(_figure_html(fig, f"continual-{method}"))
    if "meta_test_acc" in ok and ok["meta_test_acc"].notna().any():
        g = ok.dropna(subset=["meta_test_acc"])
        labels = [f"{m} ({w:.0f}-way {s:.0f}-shot) seed {seed:.0f}" for m, w, s, seed in zip(g.method, g.ways, g.shots, g.seed)]
        fig = go.Figure(go.Scatter(x=g.meta_test_acc, y=labels, mode="markers", error_x={
            "type": "data", "symmetric": False, "array": g.meta_test_ci95_high - g.meta_test_acc,
            "arrayminus": g.meta_test_acc - g.meta_test_ci95_low}))
        fig.update_layout(title="Few-shot: meta-test accuracy and its 95% CI over tasks, per run", height=120 + 24 * len(g),
                          margin={"l": 10, "r": 10, "t": 50, "b": 30}, xaxis_title="meta-test accuracy")
        out.append("<h2>Few-shot</h2>" + _figure_html(fig, "fewshot"))
    clip_rows = [{"method": r["cell"]["method"], "zero-shot acc before": m.get("zero_shot_acc_start"),
                  "zero-shot acc after": m.get("zero_shot_acc"), "test acc": m.get("test_acc"),
                  "image→text R@1": m.get("recall_i2t_1"), "text→image R@1": m.get("recall_t2i_1")}
                 for r in records for m in [r.get("metrics") or {}] if m.get("zero_shot_acc") is not None]
    if clip_rows:
        means = pd.DataFrame(clip_rows).groupby("method").mean().reset_index().melt(id_vars="method", var_name="metric")
        fig = px.bar(means.dropna(), x="method", y="value", color="metric", barmode="group",
                     title="CLIP: zero-shot accuracy before and after training, test accuracy, recall@1; mean over seeds")
        fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 50, "b": 30})
        out.append("<h2>CLIP</h2>" + _figure_html(fig, "clip"))
    rounds = [(r["cell"]["method"], p["round"], p.get("val_acc")) for r in records for p in (r.get("curve") or []) if "round" in p]
    if rounds and "comm_bytes_total" in ok and ok["comm_bytes_total"].notna().any():
        data = pd.DataFrame(rounds, columns=["method", "round", "val_acc"]).groupby(["method", "round"], as_index=False).mean()
        fig = px.line(data, x="round", y="val_acc", color="method", markers=True,
                      title="Federated: the server's validation accuracy after each round, mean over seeds")
        fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 50, "b": 30})
        out.append("<h2>Federated</h2>" + _figure_html(fig, "federated"))
    return "".join(out)


def environment_section(frame: pd.DataFrame, records: list[dict], page_dir: Path) -> str:
    envs = [r.get("env") or {} for r in records]
    commits = sorted({str(e.get("git_commit")) for e in envs})
    devices = sorted({str(e.get("device")) for e in envs})
    packages = envs[0].get("packages", {}) if envs else {}
    facts = {"records": len(records), "git commits": ", ".join(c[:12] for c in commits), "devices": ", ".join(devices),
             "python": envs[0].get("python") if envs else "-",
             "machine": json.dumps(envs[0].get("machine")) if envs and envs[0].get("machine") else "-",
             **{f"package {k}": v for k, v in packages.items()}}
    env_table = pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]})
    listing = frame[["run_id", "status", "task", "refine", "method", "seed"]].copy()
    listing["record"] = [Path(p).name for p in frame["path"]]
    links = [_relative(p, page_dir) for p in frame["path"]]
    return ("<h2>Environment</h2>" + _table_html(env_table, "environment")
            + "<h2>Records</h2>" + _table_html(listing, "records", links=links))


# --- assembly ----------------------------------------------------------------------------------------------

def _last_finished(records: list[dict]) -> str:
    return max((r["finished_at"] for r in records if r.get("finished_at")), default="-")


def _records(frame: pd.DataFrame) -> list[dict]:
    """Every record of the frame, read once per page (the sections take what they need from this list)."""
    return [json.loads(Path(p).read_text()) for p in frame["path"]]


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"]


def _relative(path: str, page_dir: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), page_dir.resolve())).as_posix()


def _stable(values):
    """Numbers to 12 significant digits: a ratio's last bits differ between CPUs' float kernels (AVX2 vs AVX512
    reductions), and a published page must be the same wherever it is regenerated."""
    if values is None or isinstance(values, str):
        return values
    return [float(f"{v:.12g}") if isinstance(v, (float, np.floating)) else v for v in values]


def _figure_html(fig, name: str) -> str:
    for trace in fig.data:
        for key in ("x", "y"):
            if key in trace:
                trace[key] = _stable(trace[key])
        for key in ("error_x", "error_y"):
            if key in trace and trace[key] is not None:
                for part in ("array", "arrayminus"):
                    trace[key][part] = _stable(trace[key][part])
    div_id = "fig-" + "".join(c if c.isalnum() else "-" for c in name)
    # responsive: a figure in a grid cell takes the cell's width, not the width of the page it was first drawn in
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False, "responsive": True})


def page(title: str, body: str, shared_dir: Path | None = None, page_dir: Path | None = None) -> str:
    """The whole page; plotly.js, the style and the table script inlined, or (published pages, which live in the
    repository side by side) one shared local copy of each in `shared_dir`, referenced relatively: still no network
    and no server."""
    from plotly.offline import get_plotlyjs

    assets = {"report.css": STYLE, "plotly.min.js": get_plotlyjs(), "report.js": TABLE_SCRIPT}
    if shared_dir is None:
        head = "<style>{}</style><script>{}</script><script>{}</script>".format(*assets.values())
    else:
        for name, text in assets.items():
            if not (shared_dir / name).is_file() or (shared_dir / name).read_text() != text:
                _write_atomic(shared_dir / name, text)
        css, plotly, script = (html.escape(_relative(str(shared_dir / name), page_dir)) for name in assets)
        head = f'<link rel="stylesheet" href="{css}"><script src="{plotly}"></script><script src="{script}"></script>'
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>{head}</head>"
            f"<body>{body}</body></html>\n")


def claim_comparisons(frame: pd.DataFrame, claim_file: Path | None) -> tuple[list[dict], str]:
    """The claim of `tunebench claim` (its claim.json, with the options it was run with), else the defaults'."""
    if claim_file is not None and claim_file.is_file():
        return json.loads(claim_file.read_text()), str(claim_file)
    from tunebench.app.claim import check

    return check(frame), "tunebench claim with its default thresholds (no claim.json beside the report)"


def write_html(sweep_dir: Path, out: Path, claim_file: Path | None = None, shared_dir: Path | None = None,
               name: str | None = None) -> Path:
    """report.html for the sweep's records; `claim_file`: a claim.json to show (default: the one beside `out`);
    `shared_dir`: a folder of shared plotly.js / style / script files to reference instead of inlining them (see `page`)."""
    sweep_dir, out = Path(sweep_dir), Path(out)
    name = name or sweep_dir.name
    frame = load_frame(sweep_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    comparisons, source = claim_comparisons(frame, claim_file or out.parent / "claim.json")
    source = _relative(source, out.parent) if Path(source).is_file() else source
    records = _records(frame)
    counts = frame.status.value_counts().to_dict()
    header = (f"<h1>tunebench sweep {html.escape(name)}</h1><p class='note'>{len(frame)} cells: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f". Records: {html.escape(_relative(str(sweep_dir), out.parent))}/. "
              f"Last record finished {html.escape(str(_last_finished(records)))}.</p>")
    body = "".join([header, results_section(frame), failures_section(frame, out.parent), forest_section(comparisons, source),
                    pareto_section(frame), curves_section(records), family_sections(frame, records),
                    environment_section(frame, records, out.parent)])
    _write_atomic(out, page(f"tunebench: {name}", body, shared_dir, out.parent))
    return out


# --- two sweeps side by side -------------------------------------------------------------------------------

COMPARE_KEYS = ["configuration", "task", "refine", "method"]


def compare_table(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Cell by cell: mean test accuracy in A and B (ok seeds), B - A and its 95% Welch interval; within seed
    noise when the interval holds 0 (with fewer than 2 seeds on a side there is no interval)."""
    from scipy import stats

    def accs(frame):
        ok = frame[frame.status == "ok"]
        return ok.groupby(COMPARE_KEYS, dropna=False)["test_acc"].apply(lambda s: s.dropna().to_numpy())

    left, right = accs(a), accs(b)
    rows = []
    for key in sorted(set(left.index) | set(right.index), key=str):
        x, y = left.get(key, np.array([])), right.get(key, np.array([]))
        row = dict(zip(COMPARE_KEYS, key), seeds_a=len(x), seeds_b=len(y),
                   acc_a=x.mean() if len(x) else np.nan, acc_b=y.mean() if len(y) else np.nan)
        row["diff"] = row["acc_b"] - row["acc_a"]
        row["ci_low"] = row["ci_high"] = np.nan
        if len(x) >= 2 and len(y) >= 2:
            va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
            se = np.sqrt(va + vb)
            df = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1)) if se > 0 else 1.0
            half = stats.t.ppf(0.975, df) * se
            row["ci_low"], row["ci_high"] = row["diff"] - half, row["diff"] + half
        row["verdict"] = _noise_verdict(row)
        rows.append(row)
    return pd.DataFrame(rows)


def _noise_verdict(row: dict) -> str:
    if np.isnan(row["acc_a"]) or np.isnan(row["acc_b"]):
        return "only in " + ("B" if np.isnan(row["acc_a"]) else "A")
    if np.isnan(row["ci_low"]):
        return "equal" if row["diff"] == 0 else "no interval (fewer than 2 seeds)"
    return "within seed noise" if row["ci_low"] <= 0 <= row["ci_high"] else ("B higher" if row["diff"] > 0 else "B lower")


def write_compare(dir_a: Path, dir_b: Path, out: Path) -> tuple[Path, pd.DataFrame]:
    import plotly.graph_objects as go

    table = compare_table(load_frame(dir_a), load_frame(dir_b))
    shown = table.copy()
    for column in ("acc_a", "acc_b", "diff", "ci_low", "ci_high"):
        shown[column] = shown[column].map(lambda v: "-" if pd.isna(v) else f"{v:+.4f}" if column != "acc_a" and column != "acc_b" else f"{v:.4f}")
    labels = [" / ".join(str(v) for v in (r.task, r.refine, r.method) if v) + (f" [{r.configuration}]" if r.configuration else "")
              for r in table.itertuples()]
    has = table["ci_low"].notna()
    fig = go.Figure(go.Scatter(x=table["diff"][has], y=[l for l, h in zip(labels, has) if h], mode="markers",
                               error_x={"type": "data", "symmetric": False, "array": (table.ci_high - table["diff"])[has],
                                        "arrayminus": (table["diff"] - table.ci_low)[has]}))
    fig.add_vline(x=0, line_dash="dash")
    fig.update_layout(title="B - A: test accuracy difference and its 95% interval over seeds", height=140 + 28 * int(has.sum()),
                      margin={"l": 10, "r": 10, "t": 50, "b": 30})
    body = (f"<h1>tunebench: {html.escape(Path(dir_a).name)} (A) vs {html.escape(Path(dir_b).name)} (B)</h1>"
            f"<p class='note'>A: {html.escape(str(dir_a))}; B: {html.escape(str(dir_b))}. Cells matched by configuration, "
            "task, refinement and method; the interval is Welch's over the seeds of each side.</p>"
            + _filters(shown, "compare") + _table_html(shown, "compare") + _figure_html(fig, "compare"))
    _write_atomic(out, page(f"tunebench: {Path(dir_a).name} vs {Path(dir_b).name}", body))
    return out, table


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
