"""`tunebench claim SWEEP_DIR`: the PEFT claim as checkable parts, one comparison per configuration.

A comparison is everything in a run's semantic config but the arm (method, its knobs, lr, lr_scale)
and the seed: records that differ in model, data size, epochs or refinement knobs are compared
separately and named by what differs. Within one, each PEFT arm is compared with its reference (`full`
unless `method.claim_reference` names another; `none` marks an arm that is not a PEFT arm), each at its
best mean validation lr when an lr grid was swept, paired by seed:
  1. accuracy: PEFT - full in points; t-interval for the crossed design seeds x shared test examples
     (or shared meta-test tasks), see tunebench.app.stats. Non-inferiority: supported if the 95% CI's
     lower end is above -margin (a one-sided test at 2.5%), refuted if its upper end is below -margin.
  2. trainable parameters <= `--params-ratio` (1%) of the reference's (deterministic).
  3. peak memory and 4. train time: geometric-mean ratio PEFT / full over paired seeds, t-interval on
     the log scale; supported if the whole CI is at or below the factor, refuted if it is above.
  5. federated comparisons: bytes sent both ways over all rounds <= `--comm-ratio` (1%) of the
     reference's (deterministic: fixed by the model, the sampled clients and the rounds).
Every test's p-value is adjusted over all the tests in the output (`--adjust`, Holm by default); the
adjusted verdict is the one to quote, the unadjusted one is shown beside it. Runs that do not count
(failed, diverged, awaiting labels, no seed to pair with) are listed under their arm; an arm without
an ok run gets the verdict "no data". `tunebench calibrate` measures the error rates by simulation.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunebench.app.frame import load_frame
from tunebench.app.tables import markdown_cell, markdown_table
from tunebench.app.sequential import Design, SequentialTest, decide, one_sided_pvalues, seed_bound
from tunebench.app.stats import (ADJUSTMENTS, ALPHA, Interval, MeanSquares, accuracy_interval, adjust, log_ratio_interval,
                                 seed_mean_interval)

REFERENCE = "full"
NOT_AN_ARM = "none"
NO_DATA = "no data"
# The stochastic parts by the short names a primary hypothesis uses (`lora:accuracy`).
PART_KINDS = {"accuracy (PEFT - full, pt)": "accuracy", "peak memory (PEFT / full)": "memory",
              "train time (PEFT / full)": "time", "communication (PEFT / full)": "communication"}
RATIO_COLUMNS = {"memory": ("peak_memory_mb", "memory_factor"), "time": ("train_seconds", "time_factor"),
                 "communication": ("comm_bytes_total", "comm_ratio")}


@dataclass
class Part:
    part: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: str
    verdict: str
    note: str = ""
    p_value: float | None = None  # one-sided, for the verdict's direction (supported / refuted); None: no test
    direction: str | None = None  # the verdict this p-value would support
    p_adjusted: float | None = None
    verdict_adjusted: str | None = None


def _tested(part: str, interval: Interval, threshold_value: float, lower_is_claim: bool, scale=lambda v: v,
            threshold: str = "", note: str = "") -> Part:
    """A part from an interval: p-values of both one-sided tests against the threshold, the smaller decides."""
    p_claim = interval.p_below(threshold_value) if lower_is_claim else interval.p_above(threshold_value)
    p_against = interval.p_above(threshold_value) if lower_is_claim else interval.p_below(threshold_value)
    direction, p = ("supported", p_claim) if p_claim <= p_against else ("refuted", p_against)
    verdict = direction if p <= ALPHA / 2 else "inconclusive"
    return Part(part, scale(interval.estimate), scale(interval.low), scale(interval.high), threshold, verdict, note, p, direction)


def best_lr_runs(ok: pd.DataFrame) -> pd.DataFrame:
    """Keep, per (comparison, arm), the lr with the best mean validation accuracy."""
    if ok.empty:
        return ok
    means = ok.groupby(["comparison", "arm", "lr"], dropna=False)["best_val_acc"].mean().reset_index()
    means["best_val_acc"] = means["best_val_acc"].fillna(-math.inf)
    best = means.loc[means.groupby(["comparison", "arm"], dropna=False)["best_val_acc"].idxmax()]
    return ok.merge(best[["comparison", "arm", "lr"]], on=["comparison", "arm", "lr"])


def _correct_matrix(series: pd.Series) -> np.ndarray | None:
    strings = list(series)
    if any(not isinstance(s, str) or not s for s in strings) or len({len(s) for s in strings}) != 1:
        return None
    return np.array([[c == "1" for c in s] for s in strings], dtype=np.float32)


def _resampling_units(per_example: np.ndarray, tasks) -> tuple[np.ndarray, str]:
    """Units the seeds share: test examples, or few-shot tasks (query predictions within a task share
    its support set, so they are not independent). Tasks have equal query sets, so the mean over task
    means is the mean over examples."""
    n = per_example.shape[1]
    tasks = int(tasks) if tasks is not None and np.isfinite(tasks) and tasks > 0 else 0
    if tasks and n % tasks == 0 and n > tasks:
        return per_example.reshape(per_example.shape[0], tasks, n // tasks).mean(axis=2), f"{tasks} shared meta-test tasks"
    return per_example, f"{n} shared test examples"


def _task_counts(runs: pd.DataFrame):
    if "meta_test_tasks" not in runs:
        return None
    counts = set(runs["meta_test_tasks"].dropna())
    return counts.pop() if len(counts) == 1 else None


def accuracy_part(peft: pd.DataFrame, full: pd.DataFrame, margin: float) -> Part:
    name, threshold = "accuracy (PEFT - full, pt)", f"non-inferior: CI low > -{margin:g} pt"
    estimate = 100 * float(peft.test_acc.mean() - full.test_acc.mean()) if len(peft) else None
    if len(peft) < 2:
        return Part(name, estimate, None, None, threshold, "inconclusive", f"{len(peft)} paired seed(s); needs >= 2")
    a, b = _correct_matrix(peft["test_correct"]), _correct_matrix(full["test_correct"])
    tasks = _task_counts(peft)
    if a is None or b is None or a.shape != b.shape or tasks != _task_counts(full):
        return Part(name, estimate, None, None, threshold, "inconclusive",
                    "no per-example test outcomes (metrics.test_correct) shared by both arms: test-set noise cannot be counted")
    baseline = float(full["majority_baseline_test_acc"].mean()) if "majority_baseline_test_acc" in full else float("nan")
    if float(full.test_acc.mean()) <= baseline:  # NaN (no baseline) compares False
        return Part(name, estimate, None, None, threshold, "inconclusive",
                    f"the reference arm ({100 * full.test_acc.mean():.1f}%) is not above the trivial baseline "
                    f"({100 * baseline:.1f}%): it did not learn the task, so agreeing with it says nothing")
    if not (a != b).any():
        return _no_discordance(name, estimate, a.size, margin, threshold)
    per_unit, units = accuracy_units(peft, full)
    interval = accuracy_interval(per_unit)
    note = f"{len(peft)} seeds x {units}; t-interval, {interval.df:.1f} df"
    return _tested(name, interval, -margin / 100, lower_is_claim=False, scale=lambda v: 100 * v, threshold=threshold, note=note)


def accuracy_units(peft: pd.DataFrame, full: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Per-seed, per-unit PEFT - full differences [seeds, units] (rows in the frames' order) and what the units are;
    the frames passed accuracy_part's checks (outcomes shared by both arms)."""
    a, b = _correct_matrix(peft["test_correct"]), _correct_matrix(full["test_correct"])
    return _resampling_units(a - b, _task_counts(peft))


def _no_discordance(name: str, estimate: float, outcomes: int, margin: float, threshold: str) -> Part:
    """Both arms right and wrong on exactly the same examples in every seed: the t-interval would have no
    spread (a zero-width CI, p = 0), which a finite sample does not justify. The rule of three bounds the
    rate of examples on which the arms differ (95%: below 3 / outcomes), hence the accuracy difference."""
    bound = 100 * 3 / outcomes
    verdict = "supported" if bound < margin else "inconclusive"
    return Part(name, estimate, -bound, bound, threshold, verdict,
                f"the arms agree on all {outcomes:,} test outcomes; rule-of-three 95% bound on the difference +-{bound:.2f} pt")


def ratio_part(name: str, column: str, peft: pd.DataFrame, full: pd.DataFrame, factor: float) -> Part:
    threshold = f"ratio <= {factor:g}"
    p, f = peft[column].to_numpy(dtype=float), full[column].to_numpy(dtype=float)
    usable = np.isfinite(p) & np.isfinite(f) & (p > 0) & (f > 0)
    if usable.sum() < 2:
        est = float(np.exp(np.mean(np.log(p[usable] / f[usable])))) if usable.any() else None
        return Part(name, est, None, None, threshold, "inconclusive", f"{int(usable.sum())} paired seed(s) with measurements; needs >= 2")
    interval = log_ratio_interval(p[usable], f[usable])
    if interval.se == 0:  # the same ratio on every seed: no spread to test, a value to compare (like a count)
        ratio = math.exp(interval.estimate)
        return Part(name, ratio, ratio, ratio, threshold, "supported" if ratio <= factor * (1 + 1e-12) else "refuted",
                    f"{int(usable.sum())} seeds, the same ratio on every seed: judged as a fixed value (no test)")
    note = f"{int(usable.sum())} seeds; geometric mean, t-interval on log ratios ({interval.df:.0f} df)"
    return _tested(name, interval, math.log(factor), lower_is_claim=True, scale=math.exp, threshold=threshold, note=note)


def params_part(peft: pd.DataFrame, full: pd.DataFrame, max_ratio: float) -> Part:
    p, f = int(peft.params_trainable.iloc[0]), int(full.params_trainable.iloc[0])
    ratio = p / f
    verdict = "supported" if ratio <= max_ratio else "refuted"
    return Part("trainable params (PEFT / full)", ratio, None, None, f"ratio <= {max_ratio:g}", verdict,
                f"{p:,} vs {f:,} (incl. any task head)")


def reference_of(runs: pd.DataFrame) -> str:
    """The method an arm is compared with: its records' method.claim_reference, else `full`."""
    named = runs["claim_reference"].dropna() if "claim_reference" in runs else pd.Series(dtype=object)
    return str(named.iloc[0]) if len(named) else REFERENCE


def _reason(row) -> str:
    if row.status != "ok":
        first = str(row.error or "").strip().splitlines()[:1]
        return f"{row.status}" + (f": {first[0][:160]}" if first else "")
    return "no test score (count_only run)"


def _excluded(runs: pd.DataFrame, counted: set[str], arm: str, unpaired: set, partner: str) -> list[dict]:
    """Runs of an arm that the verdict does not use, each with why."""
    out = []
    for row in runs.itertuples():
        if row.run_id in counted:
            continue
        if row.status == "ok" and pd.notna(row.test_acc):
            if row.seed in unpaired:
                reason = f"seed {row.seed:.0f}: no ok {partner} run to pair with"
            else:
                continue  # an ok run at a non-best lr: the lr selection, noted on the comparison
        else:
            reason = _reason(row)
        out.append({"arm": arm, "run_id": row.run_id, "seed": None if pd.isna(row.seed) else int(row.seed),
                    "status": row.status, "reason": reason, "path": row.path})
    return out


def _no_data(reason: str) -> list[Part]:
    return [Part("all", None, None, None, "-", NO_DATA, reason)]


def communication_part(peft: pd.DataFrame, full: pd.DataFrame, max_ratio: float) -> Part | None:
    """Federated comparisons: bytes sent both ways over all rounds, PEFT / full. Fixed by the model, the
    clients sampled and the rounds, so the same for every seed: a deterministic check (like trainable params)."""
    if "comm_bytes_total" not in peft or peft.comm_bytes_total.isna().all() or full.comm_bytes_total.isna().all():
        return None
    name, threshold = "communication (PEFT / full)", f"ratio <= {max_ratio:g}"
    p, f = peft.comm_bytes_total.to_numpy(dtype=float), full.comm_bytes_total.to_numpy(dtype=float)
    ratios = p / f
    if not np.all(np.isfinite(ratios)) or not np.allclose(ratios, ratios[0], rtol=1e-9):
        return ratio_part(name, "comm_bytes_total", peft, full, max_ratio)  # e.g. rounds that lost clients
    ratio = float(ratios[0])
    return Part(name, ratio, None, None, threshold, "supported" if ratio <= max_ratio else "refuted",
                f"{p[0]:,.0f} vs {f[0]:,.0f} bytes sent both ways over all rounds (every seed)")


def _setting(config: dict) -> dict:
    return {k: int(config[f"method.{k}"]) for k in ("ways", "shots") if config.get(f"method.{k}") is not None}


def compare_arm(group: pd.DataFrame, best: pd.DataFrame, arm: str, reference: str, args) -> dict:
    """One PEFT arm against its reference arm within one comparison."""
    first = group.iloc[0]
    entry = {"comparison": first.comparison, "configuration": first.configuration, "task": first.task,
             "refine": first.refine, **_setting(first.comparison_config), "peft": arm, "reference": reference}
    arm_all, ref_all = group[group.arm == arm], group[group.arm == reference]
    arm_ok, ref_ok = best[best.arm == arm].set_index("seed", drop=False), best[best.arm == reference].set_index("seed", drop=False)
    seeds = sorted(set(arm_ok.index) & set(ref_ok.index))
    counted = set(arm_ok.loc[seeds].run_id) | set(ref_ok.loc[seeds].run_id)
    entry["excluded"] = (_excluded(arm_all, counted, arm, set(arm_ok.index) - set(seeds), reference)
                         + _excluded(ref_all, counted, reference, set(ref_ok.index) - set(seeds), arm))
    other_lrs = (arm_all.status == "ok").sum() + (ref_all.status == "ok").sum() - len(arm_ok) - len(ref_ok)
    entry["runs_at_other_lrs"] = int(other_lrs)
    if ref_ok.empty or arm_ok.empty:
        missing = [a for a, runs in ((arm, arm_ok), (reference, ref_ok)) if runs.empty]
        entry["parts"] = [asdict(p) for p in _no_data(" and ".join(missing) + ": no ok run with a test score")]
        return entry
    p, f = arm_ok.loc[seeds], ref_ok.loc[seeds]
    entry.update(peft_lr=float(arm_ok.lr.iloc[0]), full_lr=float(ref_ok.lr.iloc[0]), seeds=[int(s) for s in seeds])
    parts = [
        accuracy_part(p, f, args.margin),
        params_part(arm_ok, ref_ok, args.params_ratio),
        ratio_part("peak memory (PEFT / full)", "peak_memory_mb", p, f, args.memory_factor),
        ratio_part("train time (PEFT / full)", "train_seconds", p, f, args.time_factor),
        communication_part(p, f, args.comm_ratio),
    ]
    entry["parts"] = [asdict(x) for x in parts if x is not None]
    entry["_pvalues"] = _look_pvalues(entry["parts"], p, f, args)  # for a sequential or gatekept claim; not written
    return entry


def _look_pvalues(parts: list[dict], peft: pd.DataFrame, full: pd.DataFrame, args) -> dict:
    """For each tested stochastic part: `pvalues(seeds, level) -> (p supported, p refuted)` on the first `seeds`
    paired seeds (in seed order), the test the claim makes at that one-sided level."""
    out = {}
    for part in parts:
        if part["p_value"] is None:
            continue
        kind = PART_KINDS.get(part["part"])
        if kind == "accuracy":
            out[part["part"]] = _accuracy_pvalues(*accuracy_units(peft, full), -args.margin / 100)
        elif kind in RATIO_COLUMNS:
            column, factor = RATIO_COLUMNS[kind][0], getattr(args, RATIO_COLUMNS[kind][1])
            ratios = peft[column].to_numpy(dtype=float) / full[column].to_numpy(dtype=float)
            out[part["part"]] = _ratio_pvalues(ratios, math.log(factor))
    return out


def _accuracy_pvalues(per_unit: np.ndarray, units: str, threshold: float):
    def pvalues(seeds: int, level: float) -> tuple[float, float]:
        d = per_unit[:seeds]
        if seeds < 2 or not d.any():  # too few seeds, or no discordance yet: no t-test (the rule of three is not sequential)
            return 1.0, 1.0
        squares = MeanSquares.of(d)
        sup, ref = one_sided_pvalues(squares.grand, np.sqrt(squares.variance()), squares.df(seed_bound(level)),
                                     threshold, claim_is_below=False)
        return float(sup), float(ref)
    return pvalues


def _ratio_pvalues(ratios: np.ndarray, log_threshold: float):
    def pvalues(seeds: int, level: float) -> tuple[float, float]:
        r = ratios[:seeds]
        r = np.log(r[np.isfinite(r) & (r > 0)])
        if len(r) < 2:
            return 1.0, 1.0
        est, _, _, se, df = seed_mean_interval(r)
        sup, ref = one_sided_pvalues(est, se, df, log_threshold, claim_is_below=True)
        return float(sup), float(ref)
    return pvalues


@dataclass
class Settings:
    margin: float = 1.0
    params_ratio: float = 0.01
    memory_factor: float = 0.8
    time_factor: float = 0.8
    comm_ratio: float = 0.01


@dataclass(frozen=True)
class ClaimPlan:
    """What a sweep declared before it ran (its records' `claim` and `decide` config nodes): the primary hypotheses
    (`method:part`, tested first at the full level) and a sequential design (seeds added in rounds)."""
    primaries: tuple[str, ...] = ()
    design: Design | None = None

    @property
    def declared(self) -> bool:
        return bool(self.primaries) or self.design is not None


def plan_of(frame: pd.DataFrame) -> ClaimPlan:
    """The plan the sweep's records carry; records that disagree are an error naming both plans."""
    values = declared_plans(frame)
    plans = sorted(p for p in values if p is not None)
    if len(values) > 1:  # two declarations, or records with one and records without
        named = [*plans, *(["none (a fixed design)"] if None in values else [])]
        raise ValueError(f"the records declare different claim plans (config claim / decide): {' vs '.join(named)}; "
                         f"a sweep's plan is fixed before it runs: keep one sweep folder per plan (sweep=<another name>)")
    if not plans:
        return ClaimPlan()
    node = json.loads(plans[0])
    decide_node, primary = node.get("decide") or {}, (node.get("claim") or {}).get("primary") or []
    design = None
    if decide_node.get("max_seeds") is not None:
        design = Design(max_seeds=decide_node["max_seeds"], first=decide_node.get("first_seeds", 2),
                        step=decide_node.get("round_seeds", 1), spending=decide_node.get("spending", "obrien_fleming"))
    return ClaimPlan(tuple(str(x) for x in primary), design)


def declared_plans(frame: pd.DataFrame) -> set[str | None]:
    """The distinct plans the records declare (None: a record that declares none)."""
    return {p if isinstance(p, str) else None for p in frame["claim_plan"]} if "claim_plan" in frame else set()


def arm_method(arm: str) -> str:
    """The method of an arm label (`lora[r=16]` -> `lora`)."""
    return str(arm).split("[")[0]


def check_primaries(primaries, frame: pd.DataFrame) -> None:
    """Each primary names a PEFT arm of the sweep and a stochastic part: one line naming what is wrong."""
    arms = sorted({str(m) for m, ref in zip(frame["method"], frame.get("claim_reference", [None] * len(frame)))
                   if m is not None and str(m) != REFERENCE and ref != NOT_AN_ARM})
    parts = sorted(set(PART_KINDS.values()))
    for primary in primaries:
        method, _, part = str(primary).partition(":")
        if method not in arms:
            raise ValueError(f"claim.primary {primary!r}: the sweep has no PEFT arm {method!r} (its PEFT arms: "
                             f"{', '.join(arms) or 'none'}); write method:part, e.g. lora:accuracy")
        if part not in parts:
            raise ValueError(f"claim.primary {primary!r}: unknown part {part!r}; expected one of {', '.join(parts)}")


def check(frame: pd.DataFrame, margin: float = 1.0, params_ratio: float = 0.01, memory_factor: float = 0.8,
          time_factor: float = 0.8, adjust_method: str = "holm", comm_ratio: float = 0.01,
          plan: ClaimPlan | None = None) -> list[dict]:
    """The comparisons with their parts' verdicts. `plan` (default: the records' own) makes the verdicts sequential
    and / or gatekept; without one, `adjust_method` adjusts every test's p-value as a fixed design."""
    plan = plan_of(frame) if plan is None else plan
    check_primaries(plan.primaries, frame)
    args = Settings(margin, params_ratio, memory_factor, time_factor, comm_ratio)
    scored = frame[(frame.status == "ok") & frame.test_acc.notna()]
    best = best_lr_runs(scored)
    comparisons = []
    for _, group in frame.groupby(["comparison", "task", "refine"], dropna=False, sort=True):
        for arm in sorted(set(group.arm)):
            runs = group[group.arm == arm]
            method = str(runs.method.iloc[0])
            reference = reference_of(runs)
            if reference in (method, NOT_AN_ARM):
                continue
            references = sorted(set(group[group.method == reference].arm)) or [reference]
            comparisons += [compare_arm(group, best[best.comparison == group.comparison.iloc[0]], arm, ref, args)
                            for ref in references]
    if plan.declared:
        apply_plan(comparisons, plan)
    else:
        apply_adjustment(comparisons, adjust_method)
    for c in comparisons:
        c.pop("_pvalues", None)
    return comparisons


def apply_plan(comparisons: list[dict], plan: ClaimPlan) -> None:
    """Verdicts of a declared plan: every stochastic test at its looks (one look at all paired seeds for a fixed
    design), primaries first at the full level, the rest after (tunebench.app.sequential.decide)."""
    tests = []
    for index, c in enumerate(comparisons):
        seeds = len(c.get("seeds", []))
        method = arm_method(c["peft"])
        for part in c["parts"]:
            pvalues = c.get("_pvalues", {}).get(part["part"])
            if pvalues is None:
                part["verdict_adjusted"] = part["verdict"]
                continue
            design = plan.design or Design(max_seeds=max(seeds, 2), first=max(seeds, 2))
            looks = [n for n in design.looks() if n <= seeds]
            kind = PART_KINDS[part["part"]]
            family = 0 if not plan.primaries or f"{method}:{kind}" in plan.primaries else 1
            test = SequentialTest(key=f"{index}:{part['part']}", family=family, looks=looks, design=design,
                                  pvalues=lambda k, level, looks=looks, pvalues=pvalues: pvalues(looks[k], level))
            tests.append((part, test))
    decide([t for _, t in tests], alpha=ALPHA / 2)
    for part, test in tests:
        part["verdict_adjusted"], part["p_adjusted"] = test.verdict, None
        part["sequential"] = {
            "family": "primary" if plan.primaries and test.family == 0 else "secondary" if plan.primaries else "all",
            "looks": test.looks, "max_seeds": test.design.max_seeds, "spending": test.design.spending,
            "alpha": test.alpha, "levels": test.levels, "decided_at": test.decided_at,
            "p_at_decision": test.p_at_decision, "rule": test.rule}


def apply_adjustment(comparisons: list[dict], method: str) -> None:
    """Adjust every test's p-value over the whole output; set each part's adjusted verdict."""
    tests = [p for c in comparisons for p in c["parts"] if p["p_value"] is not None]
    for part, p_adj in zip(tests, adjust([p["p_value"] for p in tests], method)):
        part["p_adjusted"] = p_adj
        part["verdict_adjusted"] = part["direction"] if p_adj <= ALPHA / 2 else "inconclusive"
    for c in comparisons:
        for part in c["parts"]:
            if part["p_value"] is None:
                part["verdict_adjusted"] = part["verdict"]


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _p(value) -> str:
    return "-" if value is None else f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def _title(c: dict) -> str:
    setting = f" ({c['ways']}-way {c['shots']}-shot)" if "ways" in c and "shots" in c else ""
    config = f" [{c['configuration']}]" if c.get("configuration") else ""
    lrs = f" — lr: {c['peft']} {c['peft_lr']:.1e}, {c['reference']} {c['full_lr']:.1e}" if "peft_lr" in c else ""
    return f"{c['task']}{setting} / refinement {c['refine']}{config}: {c['peft']} vs {c['reference']}{lrs}"


def _plan_header(comparisons: list[dict], tests: int) -> str | None:
    """How a declared plan judged the tests, or None for a fixed design without primaries."""
    planned = [p["sequential"] for c in comparisons for p in c["parts"] if p.get("sequential")]
    if not planned:
        return None
    families = {s["family"] for s in planned}
    order = ("primaries first at the full level, then the secondaries (serial gatekeeping); "
             if "primary" in families else "")
    first = planned[0]
    looks = sorted({n for s in planned for n in s["looks"]})
    design = (f"sequential: looks at {', '.join(map(str, looks))} of up to {first['max_seeds']} seeds, "
              f"{first['spending']} alpha spending" if first["max_seeds"] != max(looks, default=0) or len(looks) > 1
              else "one look at all paired seeds")
    return (f"{design}; 2.5% per direction held over the {tests} tests and every look: {order}"
            f"a decided test passes its level to the rest (Holm-like)")


def _decision(part: dict) -> str:
    plan = part.get("sequential")
    if not plan:
        return f"{_p(part['p_value'])} ({_p(part['p_adjusted'])})"
    if plan["decided_at"] is None:
        return f"{plan['family']}: undecided, {plan['rule'].split('; ', 1)[-1]}"
    return f"{plan['family']}: at {plan['decided_at']} seeds, p {_p(plan['p_at_decision'])} <= {_p(plan['levels'][plan['looks'].index(plan['decided_at'])])}"


def to_markdown(comparisons: list[dict], margin: float, adjust_method: str) -> str:
    tests = sum(p["p_value"] is not None for c in comparisons for p in c["parts"])
    plan = _plan_header(comparisons, tests)
    judged = plan or f"verdicts adjusted for {tests} tests: {adjust_method}"
    lines = [f"# PEFT claim check (accuracy margin {margin:g} pt; 95% t-intervals; {judged})", ""]
    for c in comparisons:
        lines += [f"## {markdown_cell(_title(c))}", ""]
        rows = [
            {"part": p["part"], "estimate": _fmt(p["estimate"]),
             "95% CI": "-" if p["ci_low"] is None else f"[{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}]",
             "threshold": p["threshold"], "verdict": p["verdict_adjusted"].upper(), "unadjusted": p["verdict"],
             ("decision (hypothesis: look, p <= boundary)" if plan else "p (adj.)"): _decision(p), "note": p["note"]}
            for p in c["parts"]
        ]
        lines += [markdown_table(pd.DataFrame(rows), index=False), ""]
        if c.get("runs_at_other_lrs"):
            lines += [f"{c['runs_at_other_lrs']} ok run(s) at other lrs not compared (each arm at its best validation lr).", ""]
        if c["excluded"]:
            lines += ["Runs not counted:", ""]
            lines += [f"- {e['arm']} seed {e['seed']} ({e['run_id']}): {markdown_cell(e['reason'])}" for e in c["excluded"]]
            lines += [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench claim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    parser.add_argument("--margin", type=float, default=1.0, help="non-inferiority margin in accuracy points (default 1)")
    parser.add_argument("--params-ratio", type=float, default=0.01, help="max trainable-params ratio (default 0.01)")
    parser.add_argument("--memory-factor", type=float, default=0.8, help="max peak-memory ratio PEFT/full (default 0.8)")
    parser.add_argument("--time-factor", type=float, default=0.8, help="max train-time ratio PEFT/full (default 0.8)")
    parser.add_argument("--comm-ratio", type=float, default=0.01,
                        help="federated sweeps: max ratio of bytes sent PEFT/full over all rounds (default 0.01)")
    parser.add_argument("--adjust", choices=ADJUSTMENTS, default="holm",
                        help="multiplicity adjustment over every test in the output (default holm)")
    parser.add_argument("--out", type=Path, default=None, help="results root for tables/ (default: two levels above SWEEP_DIR)")
    args = parser.parse_args(argv)
    for flag, value in (("--margin", args.margin), ("--params-ratio", args.params_ratio),
                        ("--memory-factor", args.memory_factor), ("--time-factor", args.time_factor),
                        ("--comm-ratio", args.comm_ratio)):
        if not value > 0:
            parser.error(f"{flag} {value:g}: expected a positive number")
    try:
        frame = load_frame(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench claim: {e}")
        return 2
    comparisons = check(frame, args.margin, args.params_ratio, args.memory_factor, args.time_factor, args.adjust,
                        comm_ratio=args.comm_ratio)
    if not comparisons:
        print(f"tunebench claim: no PEFT arm (a method compared with {REFERENCE} or its method.claim_reference) in {args.sweep_dir}")
        return 2
    out = (args.out or args.sweep_dir.parent.parent) / "tables" / args.sweep_dir.name
    text, paths = write_claim(comparisons, out, args.margin, args.adjust)
    print(text)
    print("-> " + ", ".join(map(str, paths)))
    return 0


def write_claim(comparisons: list[dict], out: Path, margin: float, adjust_method: str) -> tuple[str, list[Path]]:
    """claim.md and claim.json in `out`; returns the Markdown and the paths."""
    out.mkdir(parents=True, exist_ok=True)
    text = to_markdown(comparisons, margin, adjust_method)
    (out / "claim.md").write_text(text + "\n")
    (out / "claim.json").write_text(json.dumps(comparisons, indent=2, default=json_default) + "\n")
    return text, [out / "claim.md", out / "claim.json"]


def json_default(value):
    """numpy scalars in the comparisons as plain JSON numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
