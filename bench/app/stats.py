"""The claim's statistics: intervals that hold their coverage with 2-5 seeds, and multiplicity control.

The unit structure of a comparison is **seeds x a test set shared by all seeds** (or seeds x shared
meta-test tasks): every seed of both arms is scored on the same test examples, so the per-seed,
per-example differences d[s, i] = correct_peft[s, i] - correct_full[s, i] form a crossed two-way
layout

    d[s, i] = delta + a[s] + b[i] + e[s, i]      seed effect a, test-example effect b, interaction e.

The estimate is the grand mean of d; its variance is sigma_a^2 / S + sigma_b^2 / n + sigma_e^2 / (S n),
estimated without bias from the two-way ANOVA mean squares as (MS_seed + MS_example - MS_residual) / (S n).
The interval is a t-interval whose degrees of freedom come from Satterthwaite's approximation (with
the seed mean square at its 75% upper confidence bound, see below): with seed noise dominating they approach S - 1 (t_1 = 12.7 for two seeds: two seeds rarely decide anything),
with test-set noise dominating they grow with n (the interval then is the paired test-set interval).
Resampling seeds with a percentile bootstrap cannot do this: with 2-5 seeds it covers 50-80%.

Ratios (peak memory, train time) are judged on the log scale: a t-interval with S - 1 degrees of
freedom over the paired seeds' log(PEFT / full), exponentiated (the estimate is the geometric-mean ratio).

Every verdict is a one-sided test at 2.5% (the two-sided 95% interval's ends); `holm` and
`bonferroni` adjust those p-values over all the tests one command reports.
`tests/test_calibration.py` checks the coverage and error rates by simulation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05  # two-sided interval; each verdict is a one-sided test at ALPHA / 2
ADJUSTMENTS = ("holm", "bonferroni", "none")


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    se: float
    df: float

    def p_below(self, value: float) -> float:
        """One-sided p-value of H0: truth >= value (small when the truth is clearly below value)."""
        return _t_cdf((self.estimate - value), self.se, self.df)

    def p_above(self, value: float) -> float:
        """One-sided p-value of H0: truth <= value (small when the truth is clearly above value)."""
        return _t_cdf((value - self.estimate), self.se, self.df)


def _t_cdf(distance: float, se: float, df: float) -> float:
    if se == 0:
        return 0.0 if distance < 0 else 1.0 if distance > 0 else 0.5
    return float(sps.t.cdf(distance / se, df))


@dataclass(frozen=True)
class MeanSquares:
    """The two-way ANOVA of d[..., S, n] (seeds x shared units), vectorised over leading axes."""
    grand: np.ndarray
    ms_seed: np.ndarray
    ms_unit: np.ndarray
    ms_resid: np.ndarray
    seeds: int
    n: int

    @classmethod
    def of(cls, d: np.ndarray) -> "MeanSquares":
        d = np.asarray(d, dtype=np.float64)
        seeds, n = d.shape[-2:]
        grand = d.mean(axis=(-2, -1))
        seed_means, unit_means = d.mean(axis=-1), d.mean(axis=-2)
        ms_seed = n * seed_means.var(axis=-1, ddof=1)
        ms_unit = seeds * unit_means.var(axis=-1, ddof=1) if n > 1 else np.zeros_like(grand)
        resid = d - seed_means[..., None] - unit_means[..., None, :] + grand[..., None, None]
        df_resid = (seeds - 1) * (n - 1)
        ms_resid = (resid**2).sum(axis=(-2, -1)) / df_resid if df_resid else np.zeros_like(grand)
        return cls(grand, ms_seed, ms_unit, ms_resid, seeds, n)

    @classmethod
    def of_prefixes(cls, d: np.ndarray, seed_counts: list[int]) -> list["MeanSquares"]:
        """`of(d[..., :S, :])` for each S in `seed_counts`, from running sums (one pass over d instead of one per
        prefix: the sequential calibration looks at 9 prefixes of thousands of studies). The same quantities as
        `of`, through SS_resid = sum d^2 - n sum_s m_s^2 - S sum_i m_i^2 + S n g^2."""
        d = np.asarray(d, dtype=np.float64)
        n = d.shape[-1]
        seed_sums = d.sum(axis=-1)
        running_units = np.cumsum(d, axis=-2)
        running_squares = np.cumsum((d**2).sum(axis=-1), axis=-1)
        out = []
        for seeds in seed_counts:
            seed_means = seed_sums[..., :seeds] / n
            unit_means = running_units[..., seeds - 1, :] / seeds
            grand = seed_means.mean(axis=-1)
            ms_seed = n * seed_means.var(axis=-1, ddof=1)
            ms_unit = seeds * unit_means.var(axis=-1, ddof=1) if n > 1 else np.zeros_like(grand)
            ss_resid = (running_squares[..., seeds - 1] - n * (seed_means**2).sum(axis=-1)
                        - seeds * (unit_means**2).sum(axis=-1) + seeds * n * grand**2)
            df_resid = (seeds - 1) * (n - 1)
            ms_resid = np.maximum(ss_resid, 0.0) / df_resid if df_resid else np.zeros_like(grand)
            out.append(cls(grand, ms_seed, ms_unit, ms_resid, seeds, n))
        return out

    def variance(self) -> np.ndarray:
        """Of the grand mean: unbiased, but never below the seed term alone (see _crossed_variance)."""
        return _crossed_variance(self.ms_seed, self.ms_unit, self.ms_resid, self.seeds, self.n)

    def df(self, seed_bound: float = 0.75) -> np.ndarray:
        """Satterthwaite's degrees of freedom, computed with the seed mean square at its `seed_bound` upper
        confidence bound. With 2-3 seeds that mean square has 1-2 df and often comes out small by chance; plain
        Satterthwaite then trusts the test-set part too much (coverage 92% with 2 seeds in the calibration
        test); the 75% bound keeps it >= 94% and costs little when test noise dominates."""
        seeds, n = self.seeds, self.n
        ms_seed_upper = self.ms_seed * (seeds - 1) / sps.chi2.ppf(1 - seed_bound, seeds - 1)
        var_upper = _crossed_variance(ms_seed_upper, self.ms_unit, self.ms_resid, seeds, n)
        terms = [(ms_seed_upper, seeds - 1), (self.ms_unit, n - 1), (self.ms_resid, (seeds - 1) * (n - 1))]
        denom = sum((ms / (seeds * n)) ** 2 / max(df, 1) for ms, df in terms)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(denom > 0, var_upper**2 / denom, np.inf)
        return np.maximum(df, seeds - 1)


def crossed_mean_interval(d: np.ndarray, alpha: float = ALPHA, seed_bound: float = 0.75) -> tuple[np.ndarray, ...]:
    """Mean of d[..., S, n] and its t-interval under the crossed seeds x shared-units design.

    Vectorised over leading axes (the calibration test passes thousands of studies at once).
    `seed_bound`: the upper confidence level of the seed mean square used for the degrees of freedom
    (MeanSquares.df; a sequential look testing at a small level uses a higher one).
    Returns (estimate, low, high, se, df), each with d's leading shape.
    """
    squares = MeanSquares.of(d)
    se, df = np.sqrt(squares.variance()), squares.df(seed_bound)
    q = sps.t.ppf(1 - alpha / 2, df)
    return squares.grand, squares.grand - q * se, squares.grand + q * se, se, df


def _crossed_variance(ms_seed, ms_unit, ms_resid, seeds: int, n: int):
    """(MS_seed + MS_unit - MS_resid) / (S n), never below the seeds-only variance MS_seed / (S n):
    when the test-example part estimates negative, the seed means' own spread is the honest floor."""
    return np.maximum((ms_seed + ms_unit - ms_resid) / (seeds * n), ms_seed / (seeds * n))


def accuracy_interval(per_unit_diff: np.ndarray, alpha: float = ALPHA) -> Interval:
    """PEFT - full accuracy over a [seeds, units] matrix of paired per-unit differences."""
    est, low, high, se, df = crossed_mean_interval(per_unit_diff, alpha)
    return Interval(float(est), float(low), float(high), float(se), float(df))


def seed_mean_interval(values: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, ...]:
    """Mean of values[..., S] and its t-interval with S - 1 degrees of freedom (vectorised)."""
    values = np.asarray(values, dtype=np.float64)
    seeds = values.shape[-1]
    est = values.mean(axis=-1)
    se = values.std(axis=-1, ddof=1) / np.sqrt(seeds)
    q = sps.t.ppf(1 - alpha / 2, seeds - 1)
    return est, est - q * se, est + q * se, se, np.full_like(est, seeds - 1.0)


def log_ratio_interval(peft: np.ndarray, full: np.ndarray, alpha: float = ALPHA) -> Interval:
    """Geometric-mean ratio PEFT / full over paired seeds; interval on the log scale, on the ratio scale.

    Its p-values are on the log scale too: compare them with log(threshold)."""
    est, low, high, se, df = seed_mean_interval(np.log(np.asarray(peft, float) / np.asarray(full, float)), alpha)
    return Interval(float(est), float(low), float(high), float(se), float(df))


def adjust(p_values: list[float], method: str) -> list[float]:
    """Family-wise adjusted p-values: Holm's step-down, Bonferroni, or none."""
    if method not in ADJUSTMENTS:
        raise ValueError(f"--adjust {method!r}: expected one of {', '.join(ADJUSTMENTS)}")
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if method == "none" or m == 0:
        return p.tolist()
    if method == "bonferroni":
        return np.minimum(1.0, p * m).tolist()
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out.tolist()
