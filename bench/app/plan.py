"""`tunebench plan SWEEP_DIR`: what it would take to decide what the claim left undecided.

For every stochastic part (accuracy, peak memory, train time) whose verdict is inconclusive, from the sweep's
own records:

* the variance components the claim estimates: for accuracy the seed, shared-test-example and interaction
  parts of the crossed design (two-way ANOVA mean squares, `tunebench.app.stats.MeanSquares`); for ratios
  the spread of the log ratio over seeds;
* the direction the part would most likely be decided in (the side of the threshold its estimate is on) and
  the distance to the threshold;
* the power of the claim's own test at S paired seeds: a noncentral t with the claim's degrees of freedom
  (Satterthwaite's, at the projected mean squares), at the one-sided level the claim will test it at
  (2.5% divided by the number of tests: Holm's first step, or by the number of primaries for a primary);
* the seeds needed for 80% and 90% power, what they cost from the records' measured wall time per cell, and,
  where the shared test set's noise alone keeps the part undecided, how many test examples would decide it.

The effect used is the estimate itself, so the plan says what it would take *if the truth is what the records
show*; a difference near the threshold needs very many seeds, and one at the threshold can never be decided:
the plan says so rather than naming a number. `tests/test_plan.py` checks the power against simulation.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from tunebench.app.claim import (PART_KINDS, RATIO_COLUMNS, ClaimPlan, Settings, accuracy_units, arm_method, best_lr_runs,
                                 check, plan_of)
from tunebench.app.sequential import seed_bound
from tunebench.app.stats import ALPHA, MeanSquares
from tunebench.app.tables import markdown_table

POWERS = (0.8, 0.9)


@dataclass(frozen=True)
class Components:
    """What the variance of a part's estimate is made of, per unit of design."""
    kind: str  # accuracy | ratio
    seed: float  # accuracy: sigma_a^2 (seed effect on the difference); ratio: var of the log ratio over seeds
    unit: float = 0.0  # accuracy: sigma_b^2 (shared test example / task effect)
    residual: float = 0.0  # accuracy: sigma_e^2 (seed x example interaction)
    units: int = 1  # shared test examples (or tasks) the records score

    @classmethod
    def of_accuracy(cls, per_unit: np.ndarray) -> "Components":
        squares = MeanSquares.of(per_unit)
        seeds, n = squares.seeds, squares.n
        residual = float(squares.ms_resid)
        return cls("accuracy", seed=max((float(squares.ms_seed) - residual) / n, 0.0),
                   unit=max((float(squares.ms_unit) - residual) / seeds, 0.0), residual=residual, units=n)

    @classmethod
    def of_log_ratios(cls, log_ratios: np.ndarray) -> "Components":
        return cls("ratio", seed=float(np.var(log_ratios, ddof=1)))

    def projected(self, seeds: int, units: int | None = None, level: float = ALPHA / 2) -> tuple[float, float]:
        """(standard error, degrees of freedom) of the claim's estimate at `seeds` paired seeds (and `units` test
        examples): the expected mean squares put through the claim's own formulas."""
        if self.kind == "ratio":
            return math.sqrt(self.seed / seeds), float(seeds - 1)
        n = units or self.units
        squares = MeanSquares(grand=np.float64(0.0), ms_seed=np.float64(n * self.seed + self.residual),
                              ms_unit=np.float64(seeds * self.unit + self.residual),
                              ms_resid=np.float64(self.residual), seeds=seeds, n=n)
        return float(np.sqrt(squares.variance())), float(squares.df(seed_bound(level)))


def power(components: Components, distance: float, seeds: int, level: float, units: int | None = None) -> float:
    """P(the one-sided test at `level` decides in the direction of `distance`) at `seeds` paired seeds, when the
    truth is `distance` away from the threshold (on the part's scale: accuracy fraction, log ratio)."""
    se, df = components.projected(seeds, units, level)
    if se == 0:
        return 1.0 if distance != 0 else 0.0
    critical = sps.t.isf(level, df)
    return float(sps.nct.sf(critical, df, abs(distance) / se))


def seeds_for(components: Components, distance: float, level: float, target: float, start: int,
              max_seeds: int, units: int | None = None) -> int | None:
    """The fewest paired seeds (from `start`) at which the power reaches `target` (with `units` test examples: the
    records' by default), or None up to `max_seeds`."""
    for seeds in range(max(start, 2), max_seeds + 1):
        if power(components, distance, seeds, level, units) >= target:
            return seeds
    return None


def units_for(components: Components, distance: float, level: float, target: float, seeds: int) -> int | None:
    """The fewest shared test examples (doubling) at which `seeds` seeds reach `target` power, or None."""
    if components.kind != "accuracy" or distance == 0:
        return None
    units = components.units
    for _ in range(12):
        units *= 2
        if power(components, distance, seeds, level, units) >= target:
            return units
    return None


def larger_test(components: Components, distance: float, level: float, seeds: int, max_seeds: int,
                available: int | None) -> tuple[int, int] | None:
    """A larger test set instead of (some) seeds: (test examples, paired seeds) reaching 80% power with at most
    `available` test examples, the fewest seeds first (from `seeds`), then the fewest examples at those seeds;
    None if even all of them do not at `max_seeds`, or the part is not an accuracy."""
    if components.kind != "accuracy" or distance == 0 or not available or available <= components.units:
        return None
    count = seeds_for(components, distance, level, POWERS[0], seeds, max_seeds, units=available)
    if count is None:
        return None
    low, high = components.units, available  # power(high) reaches the target; find the fewest examples that do
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(components, distance, count, level, middle) >= POWERS[0] else (middle, high)
    return high, count


@dataclass
class PartPlan:
    comparison: str
    part: str
    seeds: int
    estimate: float | None
    direction: str  # supported | refuted: the side of the threshold the estimate is on
    level: float
    power_now: float
    seeds_80: int | None
    seeds_90: int | None
    extra_cells_80: int | None  # cells to add for 80% (both arms)
    seconds_80: float | None  # their measured wall time, summed
    test_examples_80: int | None  # where seeds cannot do it: a test set this large would (at max_seeds)
    note: str
    larger_test: tuple[int, int] | None = None  # (test examples, seeds) for 80% from the task's unused examples


def _cell_seconds(runs: pd.DataFrame) -> float | None:
    """Mean wall seconds per cell (first start to finish), else train + eval seconds."""
    starts = pd.to_datetime(runs.get("started_at"), errors="coerce", utc=True)
    ends = pd.to_datetime(runs.get("finished_at"), errors="coerce", utc=True)
    wall = (ends - starts).dt.total_seconds()
    if wall.notna().any():
        return float(wall.mean())
    measured = runs.get("train_seconds", pd.Series(dtype=float)).fillna(0) + runs.get("eval_seconds", pd.Series(dtype=float)).fillna(0)
    return float(measured.mean()) if len(measured) else None


def plan(frame: pd.DataFrame, settings: Settings = Settings(), max_seeds: int = 100,
         claim_plan: ClaimPlan | None = None) -> list[PartPlan]:
    claim_plan = plan_of(frame) if claim_plan is None else claim_plan
    comparisons = check(frame, settings.margin, settings.params_ratio, settings.memory_factor, settings.time_factor,
                        plan=claim_plan)
    tests = sum(p["p_value"] is not None for c in comparisons for p in c["parts"])
    primaries = len(claim_plan.primaries)
    best = best_lr_runs(frame[(frame.status == "ok") & frame.test_acc.notna()])
    out = []
    for c in comparisons:
        if "seeds" not in c:
            continue
        runs = best[(best.comparison == c["comparison"]) & best.seed.isin(c["seeds"])]
        peft, full = (runs[runs.arm == arm].set_index("seed").loc[c["seeds"]] for arm in (c["peft"], c["reference"]))
        seconds = sum(filter(None, (_cell_seconds(peft), _cell_seconds(full))))
        unused = runs["unused_examples"].dropna() if "unused_examples" in runs else pd.Series(dtype=float)
        method = arm_method(c["peft"])
        for part in c["parts"]:
            if part["p_value"] is None or part["verdict_adjusted"] != "inconclusive":
                continue
            kind = PART_KINDS[part["part"]]
            primary = f"{method}:{kind}" in claim_plan.primaries
            level = ALPHA / 2 / (primaries if primary else max(tests - primaries, 1))
            planned = _plan_part(c, part, kind, peft, full, settings, level, max_seeds, seconds,
                                 int(unused.min()) if len(unused) else None)
            if primaries and not primary:  # serial gatekeeping: no level at all until every primary is decided
                planned.note = f"once every primary is decided: {planned.note}"
            out.append(planned)
    return out


def _plan_part(c, part, kind, peft, full, settings: Settings, level: float, max_seeds: int, seconds: float,
               unused: int | None = None) -> PartPlan:
    seeds = len(c["seeds"])
    if kind == "accuracy":
        per_unit, _ = accuracy_units(peft, full)
        components = Components.of_accuracy(per_unit)
        distance = float(per_unit.mean()) + settings.margin / 100
    else:
        column, factor = RATIO_COLUMNS[kind][0], getattr(settings, RATIO_COLUMNS[kind][1])
        logs = np.log(peft[column].to_numpy(float) / full[column].to_numpy(float))
        components = Components.of_log_ratios(logs[np.isfinite(logs)])
        distance = math.log(factor) - float(np.mean(logs))  # > 0: the ratio is below the factor (supported)
    direction = "supported" if distance > 0 else "refuted"
    now = power(components, distance, seeds, level)
    s80, s90 = (seeds_for(components, distance, level, target, seeds, max_seeds) for target in POWERS)
    examples = units_for(components, distance, level, POWERS[0], max_seeds) if s80 is None else None
    larger = larger_test(components, distance, level, seeds, max_seeds,
                         components.units + unused if unused is not None else None)
    if larger is not None and s80 is not None and larger[1] >= s80:
        larger = None  # no seed saved: the larger test set buys nothing here
    if s80 is not None:
        note = (f"~{s80 - seeds} more seed(s) per arm for 80% power" if s80 > seeds
                else f"the seeds there are give {now:.0%} power at this level")
    elif larger is not None:
        note = "more seeds alone cannot decide it: the shared test set's noise dominates"
    elif examples is not None and unused is not None:
        note = (f"no affordable design decides it: the shared test set's noise dominates, {examples:,} test examples "
                f"at {max_seeds} seeds would, and the task has {components.units + unused:,} for a test set")
    elif examples is not None:
        note = (f"more seeds cannot decide it: the shared test set's noise dominates; {examples:,} test examples "
                f"at {max_seeds} seeds would (if the task has them)")
    else:
        note = f"at the threshold as far as the records show: no number of seeds up to {max_seeds} decides it"
    if larger is not None:
        note += (f"; a larger test set instead: {larger[0]:,} test examples (data.test_size={larger[0]}; the task "
                 f"has {unused:,} examples no split uses) reach 80% at {larger[1]} seeds")
    extra = None if s80 is None else 2 * (s80 - seeds)
    return PartPlan(comparison=_name(c), part=part["part"], seeds=seeds, estimate=part["estimate"], direction=direction,
                    level=level, power_now=now, seeds_80=s80, seeds_90=s90, extra_cells_80=extra,
                    seconds_80=None if s80 is None else (s80 - seeds) * seconds, test_examples_80=examples, note=note,
                    larger_test=larger)


def _name(c: dict) -> str:
    config = f" [{c['configuration']}]" if c.get("configuration") else ""
    return f"{c['task']} / {c['refine']}{config}: {c['peft']} vs {c['reference']}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def to_markdown(plans: list[PartPlan], machine: str | None = None) -> str:
    if not plans:
        return "Every stochastic part is decided: nothing to plan."
    rows = [{"comparison": p.comparison, "part": p.part, "seeds now": p.seeds, "would be": p.direction,
             "level": f"{p.level:.2g}", "power now": f"{p.power_now:.2f}",
             "seeds for 80% / 90%": f"{p.seeds_80 or '-'} / {p.seeds_90 or '-'}",
             "cost for 80%": _duration(p.seconds_80), "note": p.note} for p in plans]
    where = f" (cell times measured on {machine})" if machine else ""
    return (markdown_table(pd.DataFrame(rows), index=False) +
            f"\n\nCosts are wall time per added cell pair{where}, run one at a time; a sequential design "
            f"(`tunebench decide`) stops each comparison as soon as it is decided, usually well before these counts.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    parser.add_argument("--max-seeds", type=int, default=100, help="the most seeds considered affordable (default 100)")
    parser.add_argument("--margin", type=float, default=1.0, help="non-inferiority margin in accuracy points (default 1)")
    parser.add_argument("--memory-factor", type=float, default=0.8)
    parser.add_argument("--time-factor", type=float, default=0.8)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON lines")
    args = parser.parse_args(argv)
    if args.max_seeds < 2:
        parser.error(f"--max-seeds {args.max_seeds}: expected at least 2")
    from tunebench.app.frame import load_frame

    try:
        frame = load_frame(args.sweep_dir)
        plans = plan(frame, Settings(margin=args.margin, memory_factor=args.memory_factor, time_factor=args.time_factor),
                     args.max_seeds)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench plan: {e}")
        return 2
    if args.json:
        import json

        for p in plans:
            print(json.dumps(asdict(p)))
        return 0
    print(plan_report(frame, plans))
    return 0


def plan_report(frame: pd.DataFrame, plans: list[PartPlan]) -> str:
    """The plan as `tunebench plan` prints it and `publish` writes it (plan.md): the table, where its cell times
    were measured, and the `tunebench decide` call that would carry it out."""
    machines = sorted(set(frame["machine"].dropna())) if "machine" in frame else []
    text = to_markdown(plans, ", ".join(machines) or None)
    if not plans:
        return text
    declared = plan_of(frame).design
    if declared and min(p.seeds for p in plans) >= declared.max_seeds:
        return text + (f"\n\nThe sequential design this sweep declared is complete ({declared.max_seeds} seeds): "
                       "deciding what it left undecided is a new sweep (another sweep name), declared before it runs.")
    command = decide_command(plans, frame, declared.max_seeds if declared else None)
    if command:
        verb = "To go on with the design this sweep declared" if declared else "To decide what seeds can decide"
        text += f"\n\n{verb}: {command}"
    return text


def decide_command(plans: list[PartPlan], frame: pd.DataFrame, declared_max: int | None = None) -> str | None:
    """The `tunebench decide` call that gives every part seeds can decide its 80% seeds (None: seeds cannot help); for
    a sweep that declared a sequential design, the call that goes on with it (a design is not changed half-way)."""
    seeds = [p.seeds_80 for p in plans if p.seeds_80 is not None]
    if not seeds and declared_max is None:
        return None
    from importlib.resources import files

    sweeps = sorted(set(frame["sweep"].dropna()))
    preset = len(sweeps) == 1 and (Path(str(files("tunebench.conf"))) / "experiment" / f"{sweeps[0]}.yaml").exists()
    grid = f"experiment={sweeps[0]}" if preset else "<the sweep's overrides>"
    return f"tunebench decide {grid} decide.max_seeds={declared_max or max(seeds)}"
