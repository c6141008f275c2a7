"""`tunebench claim SWEEP_DIR`: the PEFT claim as checkable parts, per task and refinement.

For each PEFT arm against its full-fine-tuning reference (each arm at its best mean validation lr
when an lr grid was swept). The reference is `full` unless the method's config names another one in
`method.claim_reference` (continual LoRA: `cl_lora` against the continual full arm `cl_naive`);
`claim_reference: none` marks an arm that is not a PEFT arm (the continual full-fine-tuning strategies,
MAML and the few-shot baselines; few-shot LoRA `fs_lora` is compared with `fs_full`, per N-way K-shot setting).
  1. accuracy: PEFT - full, paired by seed, bootstrap 95% CI. With per-example test outcomes in the
     records the bootstrap is two-level (seeds, then test examples within a seed, the same examples
     for both arms; few-shot: then meta-test tasks, whose query predictions are resampled together),
     so it counts test-set noise as well as seed noise. Non-inferiority against the
     margin: supported if the CI's lower end is above -margin, refuted if its upper end is below
     -margin, otherwise inconclusive. Fewer than 2 paired seeds: inconclusive.
  2. trainable parameters <= `--params-ratio` (1%) of full.
  3. peak memory and 4. train time: PEFT / full ratio (paired by seed, bootstrap CI) at most the
     stated factor: supported if the whole CI is at or below it, refuted if the whole CI is above it.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tunebench.frame import load_frame, setting_keys

REFERENCE = "full"
NOT_AN_ARM = "none"


@dataclass
class Part:
    part: str
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    threshold: str
    verdict: str
    note: str = ""


def best_lr_runs(ok: pd.DataFrame, settings: list[str] = ()) -> pd.DataFrame:
    """Keep, per (task, refine, method[, few-shot setting]), the lr with the best mean validation accuracy."""
    arm = ["task", "refine", *settings, "method"]
    means = ok.groupby(arm + ["lr"], dropna=False)["best_val_acc"].mean().reset_index()
    best = means.loc[means.groupby(arm, dropna=False)["best_val_acc"].idxmax()]
    return ok.merge(best[arm + ["lr"]], on=arm + ["lr"])


def _correct_matrix(series: pd.Series) -> np.ndarray | None:
    strings = list(series)
    if any(not isinstance(s, str) or not s for s in strings) or len({len(s) for s in strings}) != 1:
        return None
    return np.array([[c == "1" for c in s] for s in strings], dtype=np.float32)


def _resampling_units(per_example: np.ndarray, tasks) -> tuple[np.ndarray, str]:
    """Columns the bootstrap resamples: test examples, or few-shot tasks (query predictions within a task
    share its support set, so they are not independent: resampling them one by one would understate
    the noise). Tasks have equal query sets, so the mean over task means is the mean over examples."""
    n = per_example.shape[1]
    tasks = int(tasks) if tasks is not None and np.isfinite(tasks) and tasks > 0 else 0
    if tasks and n % tasks == 0 and n > tasks:
        return per_example.reshape(per_example.shape[0], tasks, n // tasks).mean(axis=2), f"{tasks} meta-test tasks"
    return per_example, f"{n} test examples"


def _task_counts(runs: pd.DataFrame):
    if "meta_test_tasks" not in runs:
        return None
    counts = set(runs["meta_test_tasks"].dropna())
    return counts.pop() if len(counts) == 1 else None


def bootstrap_accuracy_diff(peft: pd.DataFrame, full: pd.DataFrame, n_boot: int, rng) -> tuple[float, float, float, str]:
    """Mean over paired seeds of acc(PEFT) - acc(full), and its percentile 95% CI."""
    diff = peft["test_acc"].to_numpy() - full["test_acc"].to_numpy()
    a, b = _correct_matrix(peft["test_correct"]), _correct_matrix(full["test_correct"])
    seeds = len(diff)
    tasks = _task_counts(peft)
    if a is None or b is None or a.shape != b.shape or tasks != _task_counts(full):
        idx = rng.integers(0, seeds, (n_boot, seeds))
        stats = diff[idx].mean(axis=1)
        how = "bootstrap over seeds"
    else:
        # [seeds, units], paired by seed and by test example (or few-shot task: the same tasks for both arms)
        per_unit, units = _resampling_units(a - b, tasks)
        n = per_unit.shape[1]
        stats = np.empty(n_boot)
        for start in range(0, n_boot, 250):  # chunks keep the index array small
            k = min(250, n_boot - start)
            seed_idx = rng.integers(0, seeds, (k, seeds))
            unit_idx = rng.integers(0, n, (k, seeds, n))
            stats[start : start + k] = per_unit[seed_idx[..., None], unit_idx].mean(axis=(1, 2))
        how = f"two-level bootstrap (seeds, then {units})"
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high), how


def bootstrap_ratio(peft: np.ndarray, full: np.ndarray, n_boot: int, rng) -> tuple[float, float, float]:
    idx = rng.integers(0, len(peft), (n_boot, len(peft)))
    stats = peft[idx].mean(axis=1) / full[idx].mean(axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(peft.mean() / full.mean()), float(low), float(high)


def accuracy_part(peft, full, margin: float, n_boot: int, rng) -> Part:
    threshold = f"non-inferior: CI low > -{margin:g} pt"
    if len(peft) < 2:
        return Part("accuracy (PEFT - full, pt)", None if peft.empty else 100 * float(peft.test_acc.mean() - full.test_acc.mean()),
                    None, None, threshold, "inconclusive", f"{len(peft)} paired seed(s); needs >= 2")
    est, low, high, how = bootstrap_accuracy_diff(peft, full, n_boot, rng)
    est, low, high = 100 * est, 100 * low, 100 * high
    verdict = "supported" if low > -margin else "refuted" if high < -margin else "inconclusive"
    return Part("accuracy (PEFT - full, pt)", est, low, high, threshold, verdict, f"{len(peft)} seeds, {how}")


def ratio_part(name: str, column: str, peft, full, factor: float, n_boot: int, rng) -> Part:
    threshold = f"ratio <= {factor:g}"
    p, f = peft[column].to_numpy(dtype=float), full[column].to_numpy(dtype=float)
    if len(p) < 2 or np.isnan(p).any() or np.isnan(f).any() or (f <= 0).any():
        est = float(np.nanmean(p) / np.nanmean(f)) if len(p) and np.nanmean(f) > 0 else None
        return Part(name, est, None, None, threshold, "inconclusive", f"{len(p)} paired seed(s) with measurements; needs >= 2")
    est, low, high = bootstrap_ratio(p, f, n_boot, rng)
    verdict = "supported" if high <= factor else "refuted" if low > factor else "inconclusive"
    return Part(name, est, low, high, threshold, verdict, f"{len(p)} seeds")


def params_part(peft, full, max_ratio: float) -> Part:
    ratio = float(peft.params_trainable.iloc[0] / full.params_trainable.iloc[0])
    verdict = "supported" if ratio <= max_ratio else "refuted"
    note = f"{int(peft.params_trainable.iloc[0]):,} vs {int(full.params_trainable.iloc[0]):,} (incl. any task head)"
    return Part("trainable params (PEFT / full)", ratio, None, None, f"ratio <= {max_ratio:g}", verdict, note)


def reference_of(runs: pd.DataFrame) -> str:
    """The arm a method is compared with: its records' method.claim_reference, else `full`."""
    named = runs["claim_reference"].dropna() if "claim_reference" in runs else pd.Series(dtype=object)
    return str(named.iloc[0]) if len(named) else REFERENCE


def check(frame: pd.DataFrame, margin: float, params_ratio: float, memory_factor: float, time_factor: float,
          n_boot: int = 2000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    settings = setting_keys(frame)  # few-shot: N-way K-shot settings are compared separately
    ok = best_lr_runs(frame[(frame.status == "ok") & frame.test_acc.notna()], settings)
    comparisons = []
    for key, group in ok.groupby(["task", "refine", *settings], dropna=False):
        task, refine = key[:2]
        for method in sorted(set(group.method)):
            peft_runs = group[group.method == method].set_index("seed")
            reference = reference_of(peft_runs)
            if reference in (method, NOT_AN_ARM):
                continue
            entry = {"task": task, "refine": refine, "peft": method, "reference": reference}
            entry.update({k: int(v) for k, v in zip(settings, key[2:]) if pd.notna(v)})
            full_runs = group[group.method == reference].set_index("seed")
            if full_runs.empty:
                entry["parts"] = [asdict(Part("all", None, None, None, "-", "inconclusive", f"no ok {reference} runs (its full-fine-tuning reference)"))]
                comparisons.append(entry)
                continue
            seeds = sorted(set(peft_runs.index) & set(full_runs.index))
            p, f = peft_runs.loc[seeds], full_runs.loc[seeds]
            entry.update(peft_lr=float(peft_runs.lr.iloc[0]), full_lr=float(full_runs.lr.iloc[0]), seeds=[int(s) for s in seeds])
            parts = [
                accuracy_part(p, f, margin, n_boot, rng),
                params_part(peft_runs, full_runs, params_ratio),
                ratio_part("peak memory (PEFT / full)", "peak_memory_mb", p, f, memory_factor, n_boot, rng),
                ratio_part("train time (PEFT / full)", "train_seconds", p, f, time_factor, n_boot, rng),
            ]
            entry["parts"] = [asdict(x) for x in parts]
            comparisons.append(entry)
    return comparisons


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_markdown(comparisons: list[dict], margin: float) -> str:
    lines = [f"# PEFT claim check (accuracy margin {margin:g} pt; 95% bootstrap CIs)", ""]
    for c in comparisons:
        lrs = f" — lr: {c['peft']} {c.get('peft_lr', float('nan')):.1e}, {c['reference']} {c.get('full_lr', float('nan')):.1e}" if "peft_lr" in c else ""
        setting = f" ({c['ways']}-way {c['shots']}-shot)" if "ways" in c and "shots" in c else ""
        lines += [f"## {c['task']}{setting} / refinement {c['refine']}: {c['peft']} vs {c['reference']}{lrs}", ""]
        rows = [
            {"part": p["part"], "estimate": _fmt(p["estimate"]), "95% CI": "-" if p["ci_low"] is None else f"[{_fmt(p['ci_low'])}, {_fmt(p['ci_high'])}]",
             "threshold": p["threshold"], "verdict": p["verdict"].upper(), "note": p["note"]}
            for p in c["parts"]
        ]
        lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench claim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    parser.add_argument("--margin", type=float, default=1.0, help="equivalence margin in accuracy points (default 1)")
    parser.add_argument("--params-ratio", type=float, default=0.01, help="max trainable-params ratio (default 0.01)")
    parser.add_argument("--memory-factor", type=float, default=0.8, help="max peak-memory ratio PEFT/full (default 0.8)")
    parser.add_argument("--time-factor", type=float, default=0.8, help="max train-time ratio PEFT/full (default 0.8)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--out", type=Path, default=None, help="results root for tables/ (default: two levels above SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        frame = load_frame(args.sweep_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench claim: {e}")
        return 2
    comparisons = check(frame, args.margin, args.params_ratio, args.memory_factor, args.time_factor, args.bootstrap)
    if not comparisons:
        print(f"tunebench claim: no PEFT-vs-reference pair (PEFT vs {REFERENCE}, or vs method.claim_reference) with ok test results in {args.sweep_dir}")
        return 2
    text = to_markdown(comparisons, args.margin)
    out = (args.out or args.sweep_dir.parent.parent) / "tables" / args.sweep_dir.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "claim.md").write_text(text + "\n")
    (out / "claim.json").write_text(json.dumps(comparisons, indent=2) + "\n")
    print(text)
    print(f"-> {out / 'claim.md'}, {out / 'claim.json'}")
    return 0
