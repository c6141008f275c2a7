"""`tunebench calibrate`: how often the claim's verdicts are wrong, by simulation with a known truth.

Simulated studies look like the real records: S seeds of each arm scored on one shared test set.

* accuracy, test examples: 1,000 test examples drawn from a population of difficulties (an example's
  probability of being right is q ~ 0.12 + 0.76 Beta(3, 1.2), mean 0.66); each arm and seed shifts it
  by its own seed effect (normal, sd `seed_sd`, truncated at 3 sd); outcomes are Bernoulli through a
  Gaussian copula so that arms agree on most examples (they disagree on ~12%, as fine-tuned models do)
  and seeds of one arm flip some predictions. The truth is exact: PEFT - full = `delta`.
* accuracy, few-shot tasks: per-task differences of two arms on 600 shared meta-test tasks,
  d = delta + seed effect + task effect + interaction (normal), as the claim sees them.
* ratios: per-seed PEFT / full = truth x lognormal noise; the truth is the geometric-mean ratio.

Every check uses the same functions as `tunebench claim` (`tunebench.app.stats`).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats as sps

from tunebench.app.sequential import Design, first_crossings, nominal_levels, one_sided_pvalues, seed_bound
from tunebench.app.stats import ALPHA, MeanSquares, crossed_mean_interval, seed_mean_interval

MARGIN = 0.01  # accuracy margin (1 point), as the claim's default
FACTOR = 0.8  # ratio threshold, as the claim's default
CHUNK = 250  # studies simulated at once (bounds memory)
# Weights of the latent parts behind each outcome (they sum to 1): the example (shared by arms and seeds),
# the arm's view of the example (stable across seeds: arms disagree on the same examples every seed),
# the seed (shared by the arms), and the run itself.
W_EXAMPLE, W_ARM, W_SEED, W_OWN = 0.7, 0.1, 0.1, 0.1


@dataclass
class Scenario:
    part: str  # accuracy | ratio
    units: str  # what the seeds share: "1000 test examples", "600 meta-test tasks", "seeds"
    seeds: int
    noise: float  # seed sd (accuracy, as a fraction) or log-ratio sd
    studies: int = 2000


@dataclass
class Calibration:
    part: str
    units: str
    seeds: int
    noise: float
    studies: int
    coverage: float  # truth inside the 95% CI (truth at the threshold)
    supported_at_threshold: float  # false "supported" (nominal 2.5%)
    refuted_at_threshold: float  # false "refuted" (nominal 2.5%)
    power: float  # "supported" when the truth is accuracy +1 pt, or ratio 0.8 / 1.2


def _binary_diffs(rng, studies: int, seeds: int, n: int, delta: float, seed_sd: float) -> np.ndarray:
    q = 0.12 + 0.76 * rng.beta(3, 1.2, (studies, 1, n))  # stays inside (0, 1) after shifts of <= 0.1

    def seed_effect():
        return np.clip(rng.normal(0, seed_sd, (studies, seeds, 1)), -3 * seed_sd, 3 * seed_sd)

    example = rng.standard_normal((studies, 1, n))  # shared by arms and seeds: easy / hard examples
    seed_wide = rng.standard_normal((studies, seeds, n))  # shared by the arms within a seed

    def uniforms():  # each marginally U(0, 1), so E[correct] = p exactly
        arm_view = rng.standard_normal((studies, 1, n))  # the arm's own take on an example, the same in every seed
        own = rng.standard_normal((studies, seeds, n))
        return sps.norm.cdf(np.sqrt(W_EXAMPLE) * example + np.sqrt(W_ARM) * arm_view + np.sqrt(W_SEED) * seed_wide
                            + np.sqrt(W_OWN) * own)

    full = uniforms() < q + seed_effect()
    peft = uniforms() < q + delta + seed_effect()
    return peft.astype(np.float32) - full.astype(np.float32)


def _task_diffs(rng, studies: int, seeds: int, tasks: int, delta: float, seed_sd: float) -> np.ndarray:
    return (delta + rng.normal(0, seed_sd * np.sqrt(2), (studies, seeds, 1))
            + rng.normal(0, 0.06, (studies, 1, tasks)) + rng.normal(0, 0.08, (studies, seeds, tasks)))


def _accuracy_intervals(scenario: Scenario, delta: float, rng) -> tuple[np.ndarray, np.ndarray]:
    lows, highs = [], []
    for start in range(0, scenario.studies, CHUNK):
        k = min(CHUNK, scenario.studies - start)
        if "tasks" in scenario.units:
            d = _task_diffs(rng, k, scenario.seeds, int(scenario.units.split()[0]), delta, scenario.noise)
        else:
            d = _binary_diffs(rng, k, scenario.seeds, int(scenario.units.split()[0]), delta, scenario.noise)
        _, low, high, _, _ = crossed_mean_interval(d)
        lows.append(low)
        highs.append(high)
    return np.concatenate(lows), np.concatenate(highs)


def _ratio_intervals(scenario: Scenario, truth: float, rng) -> tuple[np.ndarray, np.ndarray]:
    log_ratios = np.log(truth) + rng.normal(0, scenario.noise, (scenario.studies, scenario.seeds))
    _, low, high, _, _ = seed_mean_interval(log_ratios)
    return np.exp(low), np.exp(high)


def calibrate(scenario: Scenario, seed: int = 0) -> Calibration:
    rng = np.random.default_rng(seed)
    if scenario.part == "accuracy":
        truth = -MARGIN
        low, high = _accuracy_intervals(scenario, truth, rng)
        supported, refuted = low > -MARGIN, high < -MARGIN
        power_low, _ = _accuracy_intervals(scenario, truth + 2 * MARGIN, rng)
        power = power_low > -MARGIN
    else:
        truth = FACTOR
        low, high = _ratio_intervals(scenario, truth, rng)
        supported, refuted = high <= FACTOR, low > FACTOR
        _, power_high = _ratio_intervals(scenario, FACTOR / 1.2, rng)
        power = power_high <= FACTOR
    coverage = (low <= truth) & (truth <= high)
    return Calibration(**asdict(scenario), coverage=float(coverage.mean()), supported_at_threshold=float(supported.mean()),
                       refuted_at_threshold=float(refuted.mean()), power=float(power.mean()))


@dataclass
class SequentialCalibration:
    part: str
    units: str
    max_seeds: int
    noise: float
    studies: int
    spending: str
    supported_at_threshold: float  # false "supported" of the sequential design over all its looks (nominal 2.5%)
    refuted_at_threshold: float  # false "refuted" (nominal 2.5%)
    naive_supported_at_threshold: float  # the fixed test re-run after every round, stopping at its first decision
    naive_refuted_at_threshold: float
    power: float  # sequential: "supported" when the truth is +1 pt (ratio 0.667)
    expected_seeds: float  # mean seeds used at that truth (a decided comparison stops)
    expected_seeds_at_threshold: float
    fixed_power: float  # the fixed design at max_seeds
    fixed3_power: float  # the fixed design at 3 seeds (today's sweeps)


def _generate(scenario: Scenario, truth: float, rng, studies: int, seeds: int) -> np.ndarray:
    """Per-unit differences [studies, seeds, units] (accuracy) or log ratios [studies, seeds] (ratio)."""
    if scenario.part == "ratio":
        return np.log(truth) + rng.normal(0, scenario.noise, (studies, seeds))
    n = int(scenario.units.split()[0])
    make = _task_diffs if "tasks" in scenario.units else _binary_diffs
    return make(rng, studies, seeds, n, truth, scenario.noise)


def _look_pvalues(scenario: Scenario, truth: float, rng, looks: list[int], level_sets: list) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each list of per-look levels in `level_sets`: (p supported, p refuted) [studies, looks], the claim's tests
    on each study's first S seeds (S in `looks`) at those levels (the crossed interval's df depend on the level)."""
    out = [([], []) for _ in level_sets]
    for start in range(0, scenario.studies, CHUNK):
        k = min(CHUNK, scenario.studies - start)
        data = _generate(scenario, truth, rng, k, max(looks))
        chunk = [([], []) for _ in level_sets]
        prefixes = MeanSquares.of_prefixes(data, looks) if scenario.part != "ratio" else None
        for index, seeds in enumerate(looks):
            if scenario.part == "ratio":
                est, _, _, se, df = seed_mean_interval(data[:, :seeds])
                p = one_sided_pvalues(est, se, df, np.log(FACTOR), claim_is_below=True)
                pairs = [p for _ in level_sets]
            else:
                squares = prefixes[index]
                se = np.sqrt(squares.variance())
                pairs = [one_sided_pvalues(squares.grand, se, squares.df(seed_bound(levels[index])), -MARGIN,
                                           claim_is_below=False) for levels in level_sets]
            for (sup, ref), (p_sup, p_ref) in zip(chunk, pairs):
                sup.append(p_sup)
                ref.append(p_ref)
        for (sup, ref), (chunk_sup, chunk_ref) in zip(out, chunk):
            sup.append(np.stack(chunk_sup, axis=-1))
            ref.append(np.stack(chunk_ref, axis=-1))
    return [(np.concatenate(sup), np.concatenate(ref)) for sup, ref in out]


def calibrate_sequential(scenario: Scenario, design: Design, seed: int = 0) -> SequentialCalibration:
    """The sequential design (`scenario.seeds` = max_seeds) against the fixed one, truth at the threshold and
    at the power alternative; `naive`: the fixed 2.5% test at every look."""
    rng = np.random.default_rng(seed)
    looks = design.looks()
    levels = nominal_levels(design.fractions(looks), ALPHA / 2, design.spending)
    null, alternative = (FACTOR, FACTOR / 1.2) if scenario.part == "ratio" else (-MARGIN, MARGIN)
    fixed = [ALPHA / 2] * len(looks)
    # The same studies judged by the design and by the fixed 2.5% test re-run at every look (naive).
    (p_sup, p_ref), naive_p = _look_pvalues(scenario, null, rng, looks, [levels, fixed])
    code, index = first_crossings(p_sup, p_ref, levels)
    naive, _ = first_crossings(*naive_p, fixed)
    seeds_used = np.where(index >= 0, np.asarray(looks)[index], looks[-1])
    (p_sup_alt, p_ref_alt), (p_sup_fixed, _) = _look_pvalues(scenario, alternative, rng, looks, [levels, fixed])
    code_alt, index_alt = first_crossings(p_sup_alt, p_ref_alt, levels)
    seeds_alt = np.where(index_alt >= 0, np.asarray(looks)[index_alt], looks[-1])
    fixed3 = looks.index(3) if 3 in looks else None
    return SequentialCalibration(
        part=scenario.part, units=scenario.units, max_seeds=design.max_seeds, noise=scenario.noise,
        studies=scenario.studies, spending=design.spending,
        supported_at_threshold=float((code == 1).mean()), refuted_at_threshold=float((code == 2).mean()),
        naive_supported_at_threshold=float((naive == 1).mean()), naive_refuted_at_threshold=float((naive == 2).mean()),
        power=float((code_alt == 1).mean()), expected_seeds=float(seeds_alt.mean()),
        expected_seeds_at_threshold=float(seeds_used.mean()),
        fixed_power=float((p_sup_fixed[:, -1] <= ALPHA / 2).mean()),
        fixed3_power=float((p_sup_fixed[:, fixed3] <= ALPHA / 2).mean()) if fixed3 is not None else float("nan"))


def sequential_scenarios(studies: int = 2000, max_seeds: int = 10) -> list[Scenario]:
    """The calibration table's noise levels, with seeds added one at a time from 2 up to `max_seeds`."""
    out = [Scenario("accuracy", "1000 test examples", max_seeds, sd, studies) for sd in (0.0, 0.005, 0.01, 0.03)]
    out += [Scenario("accuracy", "600 meta-test tasks", max_seeds, sd, studies) for sd in (0.005, 0.03)]
    out += [Scenario("ratio", "seeds", max_seeds, sd, studies) for sd in (0.02, 0.1, 0.3)]
    return out


def scenarios(studies: int = 2000) -> list[Scenario]:
    """Seed counts 2 / 3 / 5 with seed noise like the real records' (0.5-3 pt; log-ratio sd 2-30%)."""
    out = []
    for seeds in (2, 3, 5):
        out += [Scenario("accuracy", "1000 test examples", seeds, sd, studies) for sd in (0.0, 0.005, 0.01, 0.03)]
        out += [Scenario("accuracy", "600 meta-test tasks", seeds, sd, studies) for sd in (0.005, 0.03)]
        out += [Scenario("ratio", "seeds", seeds, sd, studies) for sd in (0.02, 0.1, 0.3)]
    return out


def to_markdown(results: list[Calibration]) -> str:
    rows = ["| part | shared units | seeds | seed noise | coverage of the 95% CI | false supported | false refuted | power |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        noise = f"{100 * r.noise:g} pt" if r.part == "accuracy" else f"log sd {r.noise:g}"
        rows.append(f"| {r.part} | {r.units} | {r.seeds} | {noise} | {r.coverage:.3f} | {r.supported_at_threshold:.3f} | "
                    f"{r.refuted_at_threshold:.3f} | {r.power:.3f} |")
    return "\n".join(rows)


def sequential_markdown(results: list[SequentialCalibration]) -> str:
    rows = ["| part | shared units | seed noise | false supported | false refuted | naive re-test: false supported / refuted | "
            "power | expected seeds (power / at threshold) | fixed 10 seeds: power | fixed 3 seeds: power |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        noise = f"{100 * r.noise:g} pt" if r.part == "accuracy" else f"log sd {r.noise:g}"
        rows.append(f"| {r.part} | {r.units} | {noise} | {r.supported_at_threshold:.3f} | {r.refuted_at_threshold:.3f} | "
                    f"{r.naive_supported_at_threshold:.3f} / {r.naive_refuted_at_threshold:.3f} | {r.power:.3f} | "
                    f"{r.expected_seeds:.1f} / {r.expected_seeds_at_threshold:.1f} | {r.fixed_power:.3f} | {r.fixed3_power:.3f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tunebench calibrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="False supported / refuted: the truth sits exactly at the threshold (-1 pt; ratio 0.8), nominal 2.5% each. "
               "Power: how often 'supported' comes out when the truth is +1 pt (ratio 0.667).")
    parser.add_argument("--studies", type=int, default=10000, help="simulated studies per scenario (default 10000)")
    parser.add_argument("--out", type=Path, default=Path("results/published/calibration"),
                        help="folder for calibration.{md,json} and sequential.{md,json}")
    parser.add_argument("--max-seeds", type=int, default=10,
                        help="sequential design: seeds 2 .. this, a look after each (default 10)")
    args = parser.parse_args(argv)
    if args.studies < 100:
        parser.error(f"--studies {args.studies}: expected at least 100 (rates from fewer studies are mostly Monte-Carlo noise)")
    if args.max_seeds < 3:
        parser.error(f"--max-seeds {args.max_seeds}: expected at least 3 (looks at 2 .. max seeds)")
    from tqdm import tqdm

    results = [calibrate(s) for s in tqdm(scenarios(args.studies), desc="scenarios")]
    design = Design(max_seeds=args.max_seeds)
    sequential = [calibrate_sequential(s, design) for s in tqdm(sequential_scenarios(args.studies, args.max_seeds),
                                                                 desc="sequential scenarios")]
    args.out.mkdir(parents=True, exist_ok=True)
    text, seq_text = to_markdown(results), sequential_markdown(sequential)
    (args.out / "calibration.md").write_text(text + "\n")
    (args.out / "calibration.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    (args.out / "sequential.md").write_text(seq_text + "\n")
    (args.out / "sequential.json").write_text(json.dumps([asdict(r) for r in sequential], indent=2) + "\n")
    print(text)
    print(seq_text)
    print(f"-> {args.out / 'calibration.md'}, {args.out / 'sequential.md'}")
    return 0
