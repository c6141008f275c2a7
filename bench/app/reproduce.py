"""`tunebench reproduce [TARGETS ...] [--run] [overrides]`: published figures checked against this harness's records.

A targets file (CSV, one per paper or table, under targets/; format in docs/reproduce.md) has one row per
published figure: what it is (table, method, model, dataset, metric), how to compare (kind, target, tolerance),
where it comes from (source), whether it should reproduce here (status) and the cell that measures it (`cell`:
the overrides of `tunebench run`, a comma list such as `seed=0,1,2` naming several runs). Each row's runs are
found by run id (the hash of the cell's composed config, as `tunebench run` computes it) among the records
under <results>/runs; `--run` first runs the cells that have none (`tunebench run -m <cell> [overrides]`).

kinds:   exact      every run's value equals the target (counts)
         abs        |mean - target| <= tolerance
         one_sided  mean >= target - tolerance (a regression floor, as ContinualAI's baselines check)
         ci         the target lies inside the 95% t-interval of the runs' mean (needs 2 runs or more)
status:  expected        should reproduce here: a mismatch fails (exit 1)
         known_mismatch  the published figure is known not to follow from its own setup (notes say why)
         needs:gpu / needs:network / needs:gpu+network   runs where that is available; `--run` runs it when
                         the overrides name a launcher (e.g. launcher=slurm_gpu) or with --all
Exit 1 if a row fails, is invalid (its row is named), or is expected but has no record; 0 otherwise.
"""
from __future__ import annotations

import argparse
import csv
import functools
import math
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from tunebench.app.tables import markdown_table

COLUMNS = ("table", "method", "model", "dataset", "metric", "kind", "target", "tolerance", "source", "status",
           "notes", "cell")
KINDS = ("exact", "abs", "one_sided", "ci")
NEEDS = ("gpu", "network")
TARGETS_DIR = Path("targets")
EXTRA = "__extra_fields__"  # what a row holds beyond the header: an unquoted comma


@dataclass(frozen=True)
class Metric:
    section: str  # the record's block: cost or metrics
    domain: str  # count (an integer >= 0), fraction ([0, 1]), percent ([0, 100])

    def check(self, value: float) -> str | None:
        """Why `value` cannot be this metric's value, or None."""
        if self.domain == "count" and (value < 0 or value != int(value)):
            return "a parameter count is a whole number >= 0"
        if self.domain == "fraction" and not 0 <= value <= 1:
            return "an accuracy is a fraction in [0, 1]"
        if self.domain == "percent" and not 0 <= value <= 100:
            return "a percentage lies in [0, 100]"
        return None


METRICS = {
    "params_total": Metric("cost", "count"),
    "params_trainable": Metric("cost", "count"),
    "params_trainable_excl_head": Metric("cost", "count"),
    "trainable_pct": Metric("cost", "percent"),
    "test_acc": Metric("metrics", "fraction"),
    "test_macro_f1": Metric("metrics", "fraction"),
    "meta_test_acc": Metric("metrics", "fraction"),
    "zero_shot_acc": Metric("metrics", "fraction"),
}


class TargetError(ValueError):
    """A targets row that cannot be checked as written."""


@dataclass(frozen=True)
class Target:
    file: str
    line: int
    fields: dict = field(hash=False)

    def __getattr__(self, name: str):
        if name in COLUMNS:
            return self.fields.get(name, "")
        raise AttributeError(name)

    @property
    def label(self) -> str:
        return f"{self.file} line {self.line} ({self.table}: {self.method}, {self.model}, {self.dataset}, {self.metric})"

    @property
    def target_value(self) -> float:
        return float(self.fields["target"])

    @property
    def tolerance_value(self) -> float:
        return float(self.fields.get("tolerance") or 0)

    @property
    def needs(self) -> list[str]:
        return self.status.split(":", 1)[1].split("+") if self.status.startswith("needs:") else []


def validate(row: Target) -> None:
    """Raise TargetError naming the row for anything that cannot be checked as written."""
    def bad(message: str):
        raise TargetError(f"{row.label}: {message}")

    if row.fields.get(EXTRA):
        bad(f"{len(row.fields[EXTRA])} more fields than the header ({row.fields[EXTRA]}): quote a value that holds "
            f"commas, such as a cell's seed=0,1,2")
    if row.metric not in METRICS:
        bad(f"metric {row.metric!r} is not one reproduce knows ({', '.join(METRICS)})")
    if row.kind not in KINDS:
        bad(f"kind {row.kind!r} is not one of {', '.join(KINDS)}")
    if not (row.status in ("expected", "known_mismatch") or (row.needs and set(row.needs) <= set(NEEDS))):
        bad(f"status {row.status!r} is not expected, known_mismatch or needs:<{'|'.join(NEEDS)}>[+...]")
    for key in ("target", "tolerance"):
        text = row.fields.get(key, "")
        if key == "tolerance" and text == "":
            continue
        try:
            value = float(text)
        except ValueError:
            bad(f"{key} {text!r} is not a number")
        if not math.isfinite(value):
            bad(f"{key} {text!r} is not a finite number")
    if row.tolerance_value < 0:
        bad(f"tolerance {row.tolerance_value} is negative")
    if row.kind in ("abs", "one_sided") and row.fields.get("tolerance", "") == "":
        bad(f"kind {row.kind} needs a tolerance")
    impossible = METRICS[row.metric].check(row.target_value)
    if impossible:
        bad(f"target {row.fields['target']} is impossible for {row.metric}: {impossible}")
    if not row.source:
        bad("no source: say where the figure is published (paper, table, page or URL)")
    if row.status == "known_mismatch" and not row.notes:
        bad("status known_mismatch needs notes saying why the figure does not follow from its setup")
    if not row.cell:
        bad("no cell: the overrides of `tunebench run` that measure this figure")


def read_targets(path: Path) -> list[Target]:
    """The rows of one targets file (each knows its line); a missing column fails the file, naming it."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f, restkey=EXTRA)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TargetError(f"{path}: columns {missing} missing (a targets file has {', '.join(COLUMNS)})")
        return [Target(str(path), reader.line_num, {k: v if k == EXTRA else (v or "").strip() for k, v in raw.items() if k})
                for raw in reader]


def target_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths or [TARGETS_DIR]:
        if path.is_dir():
            files += sorted(path.glob("*.csv"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no targets file or folder {path}")
    if not files:
        raise FileNotFoundError(f"no targets files (*.csv) in {', '.join(map(str, paths or [TARGETS_DIR]))}")
    return files


# --- cells: a row's overrides, expanded and hashed as `tunebench run` does ---------------------------------

def expand(cell: str) -> list[list[str]]:
    """The runs a row's overrides name: `a=1 seed=0,1,2` -> three override lists (Hydra's own sweep grammar)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(shlex.split(cell))
    return [list(batch) for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]]


def semantic_configs(cell: str) -> list[dict]:
    """The config of every run the cell names, composed as `tunebench run` composes it, without the keys that
    do not change what a run computes (tunebench.core.record.NON_SEMANTIC_KEYS)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from tunebench.core.record import NON_SEMANTIC_KEYS

    configs = []
    GlobalHydra.instance().clear()
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        for overrides in expand(cell):
            cfg = compose("config", overrides=[*overrides, "hydra/sweeper=basic"])
            configs.append({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                            for k in cfg if k != "hydra" and k not in NON_SEMANTIC_KEYS})
    return configs


@functools.lru_cache(maxsize=None)
def run_ids(cell: str) -> tuple[str, ...]:
    """The run id of every run the cell names (the hash `tunebench run` gives its record); composed once per
    cell and process (rows share cells, and --run judges every row twice)."""
    from tunebench.core.record import run_id

    return tuple(run_id(config) for config in semantic_configs(cell))


# Packaged models renamed to their YAML stems (commit cbf0119): the same files, so the same cell.
RENAMED_MODELS = {"minilm-l6": "minilm", "small-cnn": "small_cnn", "efficientnet-lite0": "efficientnet_lite0",
                  "effnet-lite0+minilm": "clip_effnet_minilm"}


def differences(recorded, composed, path: str = "") -> list[str]:
    """Keys whose recorded value the composed config does not have (keys added since the record are ignored:
    a new option's default keeps the old behaviour; a packaged model's old name is its new one)."""
    if isinstance(recorded, dict) and isinstance(composed, dict):
        return [d for k, v in recorded.items() for d in differences(v, composed.get(k, "<missing>"), f"{path}{k}.")]
    if path == "model.name." and RENAMED_MODELS.get(recorded) == composed:
        return []
    return [] if recorded == composed else [f"{path.rstrip('.')}: recorded {recorded!r}, now {composed!r}"]


def record_index(runs_root: Path) -> dict[str, Path]:
    """run id -> record file, over every sweep folder under `runs_root` (a run id does not depend on the sweep)."""
    index = {}
    for path in sorted(runs_root.glob("*/*.json")):
        index.setdefault(path.stem, path)
    return index


# --- comparison ---------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    verdict: str  # pass | fail | known mismatch | not run here | missing | invalid
    measured: str = ""
    why: str = ""
    records: list[str] = field(default_factory=list)


def measured_values(records: list[dict], metric: str) -> tuple[list[float], list[str]]:
    """The metric of each ok record, and why the others give none."""
    section = METRICS[metric].section
    values, problems = [], []
    for r in records:
        if r.get("status") != "ok":
            problems.append(f"run {r.get('run_id')} is {r.get('status')}: {(r.get('error') or {}).get('message', '')}"[:200])
            continue
        value = (r.get(section) or {}).get(metric)
        if value is None:
            problems.append(f"run {r.get('run_id')} has no {section}.{metric}")
        else:
            values.append(float(value))
    return values, problems


def compare(row: Target, values: list[float]) -> tuple[bool, str, str]:
    """(agrees, measured as text, how it was judged) for the row's kind."""
    target, tol, n = row.target_value, row.tolerance_value, len(values)
    mean = float(np.mean(values))
    if row.kind == "exact":
        distinct = sorted(set(values))
        text = ", ".join(_fmt(v, row.metric) for v in distinct)
        return distinct == [target], text, "equal"
    digits = _digits(tol)
    text = _fmt(mean, row.metric, digits) + (f" (mean of {n})" if n > 1 else "")
    if row.kind == "abs":
        agrees = abs(mean - target) <= tol + 1e-12
        off = _fmt(abs(mean - target), row.metric, digits)
        return agrees, text, f"off by {off} {'<=' if agrees else '>'} {_fmt(tol, row.metric, digits)}"
    if row.kind == "one_sided":
        agrees = mean >= target - tol - 1e-12
        return agrees, text, f"{'>=' if agrees else '<'} {_fmt(target - tol, row.metric, digits)}"
    if n < 2:
        return False, text, "a 95% interval needs 2 runs or more"
    half = float(sps.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    low, high = mean - half, mean + half
    return low - 1e-12 <= target <= high + 1e-12, f"{text} [{_fmt(low, row.metric)}, {_fmt(high, row.metric)}]", "target in 95% CI"


def _digits(tolerance) -> int:
    """Decimals that show a tolerance: 4, or enough for a tighter one (1e-6 -> 6)."""
    if not tolerance or tolerance <= 0 or not math.isfinite(tolerance):
        return 4
    return max(4, -math.floor(math.log10(tolerance)))


def _fmt(value: float, metric: str, digits: int = 4) -> str:
    if METRICS[metric].domain == "count":
        return f"{int(round(value)):,}"
    if digits > 4 and abs(value) < 10 ** -digits:
        return f"{value:.1e}" if value else "0"
    return f"{value:.{digits}f}"


def check_row(row: Target, index: dict[str, Path]) -> Outcome:
    import json

    try:
        validate(row)
        ids = run_ids(row.cell)
    except TargetError as e:  # the row is named where the verdict is printed
        return Outcome("invalid", why=str(e).removeprefix(f"{row.label}: "))
    except Exception as e:  # a cell Hydra cannot compose: the row is wrong
        return Outcome("invalid", why=f"cell {row.cell!r} does not compose: {type(e).__name__}: {e}")
    found = [index[i] for i in ids if i in index]
    if not found:
        if row.needs:
            return Outcome("not run here", why=f"needs {' and '.join(row.needs)} (run it with --run launcher=slurm_gpu)")
        return Outcome("missing", why=f"no record of its {len(ids)} run(s) (run with --run)")
    records = [json.loads(p.read_text()) for p in found]
    values, problems = measured_values(records, row.metric)
    short = [] if len(found) == len(ids) else [f"{len(ids) - len(found)} of {len(ids)} runs have no record"]
    if not values or short or problems:
        return Outcome("fail", why="; ".join(short + problems) or "no value", records=[str(p) for p in found])
    agrees, measured, how = compare(row, values)
    if row.status == "known_mismatch":
        verdict = "known mismatch (now agrees)" if agrees else "known mismatch"
        return Outcome(verdict, measured, f"{how}; {row.notes}", [str(p) for p in found])
    return Outcome("pass" if agrees else "fail", measured, how, [str(p) for p in found])


def table(rows: list[Target], outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame([{
        "table": r.table, "method": r.method, "model": r.model, "dataset": r.dataset, "metric": r.metric,
        "kind": r.kind, "target": r.fields.get("target", ""), "tolerance": r.fields.get("tolerance", ""),
        "measured": o.measured, "verdict": o.verdict, "why": o.why, "source": r.source,
    } for r, o in zip(rows, outcomes)])


def to_markdown(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=["source"]).copy()
    shown["why"] = shown["why"].str.replace("|", "\\|", regex=False)  # a literal bar inside a table cell
    return markdown_table(shown, index=False, disable_numparse=True)


# --- running what is missing --------------------------------------------------------------------------------

def wants_run(row: Target, outcome: Outcome, overrides: list[str], include_needs: bool) -> bool:
    if outcome.verdict not in ("missing", "not run here"):
        return False
    return not row.needs or include_needs or any(o.startswith("launcher=") for o in overrides)


def run_cells(cells: list[str], overrides: list[str], results: Path) -> None:
    """`tunebench run -m <cell> <overrides>` for each cell, into <results>/runs/<the preset's sweep> or
    <results>/runs/reproduce (failures are recorded by the runs themselves and judged as such)."""
    env = {**os.environ, "TUNEBENCH_RESULTS": str(results)}
    for i, cell in enumerate(cells, 1):
        named = any(o.startswith(("experiment=", "sweep=")) for o in shlex.split(cell) + overrides)
        command = [sys.executable, "-m", "tunebench.app.run", "-m", *shlex.split(cell), *overrides,
                   *([] if named else ["sweep=reproduce"])]  # a preset's cells go to its own sweep folder
        print(f"[{i}/{len(cells)}] tunebench run -m {cell} {' '.join(overrides)}", flush=True)
        subprocess.run(command, env=env, check=False)


# --- regression targets: a published sweep's headline numbers -------------------------------------------------

def regression_rows(published: Path) -> list[dict]:
    """One `ci` row (test accuracy: the published mean must stay inside a new run's 95% interval) and one `exact`
    row (trainable parameters) per method of a published sweep whose name is its experiment preset. Each row's
    cell must hash to the published records' run ids, so the rows check what was published, nothing else."""
    import json
    from collections import defaultdict

    records = [json.loads(p.read_text()) for p in sorted((published / "records").glob("*.json"))]
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise FileNotFoundError(f"no ok records under {published / 'records'} (tunebench publish writes them)")
    by_arm = defaultdict(list)
    for r in ok:
        by_arm[(r["sweep"], r["cell"]["task"], r["cell"]["refine"], r["cell"]["method"])].append(r)
    rows = []
    for (sweep, task, refine, method), arm in sorted(by_arm.items()):
        seeds = sorted(r["cell"]["seed"] for r in arm)
        cell = f"experiment={sweep} method={method} seed={','.join(map(str, seeds))}"
        composed = {c["seed"]: c for c in semantic_configs(cell)}
        changed = [d for r in arm for d in differences(_semantic(r["config"]), composed[r["cell"]["seed"]])]
        if changed:
            raise TargetError(f"{published}: `{cell}` is not the cell its records ran ({'; '.join(changed[:3])}); "
                              f"regression rows need the preset's own cells")
        counts = {r["cost"]["params_trainable"] for r in arm}
        common = {"table": f"published/{published.name}", "method": method, "model": arm[0]["cell"].get("model", ""),
                  "dataset": task if refine == "none" else f"{task} / {refine}", "source": f"results/published/{published.name}",
                  "status": "expected", "cell": cell}
        metric = "meta_test_acc" if "meta_test_acc" in arm[0]["metrics"] else "test_acc"  # few-shot: the meta-test score
        acc = float(np.mean([r["metrics"][metric] for r in arm]))
        rows.append({**common, "metric": metric, "kind": "ci", "target": f"{acc:.4f}", "tolerance": "",
                     "notes": f"published mean of {len(arm)} seeds; a change that moves it outside a rerun's 95% interval fails"})
        if len(counts) == 1:
            rows.append({**common, "metric": "params_trainable", "kind": "exact", "target": str(counts.pop()),
                         "tolerance": "", "notes": "published trainable parameters"})
    return rows


def _semantic(config: dict) -> dict:
    from tunebench.core.record import NON_SEMANTIC_KEYS

    return {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}


def write_regression(published: list[Path], out: Path) -> int:
    rows = [r for folder in published for r in regression_rows(folder)]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} regression targets from {', '.join(map(str, published))} -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench reproduce", description=__doc__.splitlines()[0],
                                     epilog=__doc__.split("\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", type=Path, help="targets files or folders (default: targets/)")
    parser.add_argument("--run", action="store_true", help="run the cells that have no record first")
    parser.add_argument("--all", action="store_true", help="with --run: also run rows whose status is needs:...")
    parser.add_argument("--results", type=Path, default=Path(os.environ.get("TUNEBENCH_RESULTS", "results")),
                        help="results root whose runs/ holds the records (default: $TUNEBENCH_RESULTS or results)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for <targets file>.md / .csv (default: <results>/tables/reproduce)")
    parser.add_argument("--regression-from", type=Path, nargs="+", default=None, metavar="PUBLISHED_DIR",
                        help="write regression targets from published sweeps (results/published/<sweep>) to --to, then stop")
    parser.add_argument("--to", type=Path, default=TARGETS_DIR / "regression.csv", help="file for --regression-from")
    args, overrides = parser.parse_known_args(argv)
    if args.regression_from:
        try:
            return write_regression(args.regression_from, args.to)
        except (FileNotFoundError, TargetError) as e:
            print(f"tunebench reproduce: {e}", file=sys.stderr)
            return 1
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown options {unknown}; Hydra overrides for --run look like key=value")
    try:
        files = target_files(args.targets)
        per_file = {path: read_targets(path) for path in files}
    except (FileNotFoundError, TargetError) as e:
        print(f"tunebench reproduce: {e}", file=sys.stderr)
        return 1
    out = args.out or args.results / "tables" / "reproduce"
    status = 0
    for path, rows in per_file.items():
        outcomes = _check_all(rows, args.results)
        if args.run:
            todo = sorted({r.cell for r, o in zip(rows, outcomes) if wants_run(r, o, overrides, args.all)})
            if todo:
                run_cells(todo, overrides, args.results)
                outcomes = _check_all(rows, args.results)
        frame = table(rows, outcomes)
        out.mkdir(parents=True, exist_ok=True)
        text = to_markdown(frame)
        (out / f"{path.stem}.md").write_text(text + "\n")
        frame.to_csv(out / f"{path.stem}.csv", index=False)
        print(f"\n## {path}\n\n{text}\n-> {out / (path.stem + '.md')}")
        for row, outcome in zip(rows, outcomes):
            if outcome.verdict in ("fail", "invalid", "missing"):
                print(f"{outcome.verdict.upper()}: {row.label}: {outcome.why}", file=sys.stderr)
                status = 1
    return status


def _check_all(rows: list[Target], results: Path) -> list[Outcome]:
    index = record_index(results / "runs")
    return [check_row(row, index) for row in rows]


if __name__ == "__main__":
    sys.exit(main())
