"""Group-sequential verdicts: seeds added in rounds, a look after each round, the error rate held despite the looks.

Re-running the claim's fixed test after every round and stopping at the first decision would give a
false verdict far more often than 2.5%: every look is another chance for noise to cross. The design here
is a **group-sequential test with Lan-DeMets alpha spending** (Lan & DeMets 1983; Jennison & Turnbull
2000, ch. 7 and 19):

* The looks are planned by seed count: `S_1 < S_2 < ... <= max_seeds`; the information fraction of look
  k is `S_k / max_seeds`. A spending function `alpha(t)` (O'Brien-Fleming-like by default, Pocock-like
  on request) says how much of the one-sided level each look may use.
* From the spent levels, the boundaries `c_k` of the canonical joint distribution of the look statistics
  (correlation sqrt(t_j / t_k)) are found by recursive numerical integration, so that under the null
  P(first crossing at look k) = alpha(t_k) - alpha(t_{k-1}). Each boundary is used as a nominal
  one-sided level `1 - Phi(c_k)` for the claim's own p-values (its crossed seeds x test-example
  t-interval, its log-ratio t-interval): the usual way to carry a z-scale design over to t-tests.
* Each direction (supported, refuted) has its own boundary at the part's level; a part's verdict is the
  direction of its first crossing, and is kept from then on (its comparison may go on for other parts).

Why this and not anytime-valid confidence sequences: the seeds are few and planned (2 to ~20), the
looks are known in advance, and the t-based intervals the claim already calibrates are kept;
confidence sequences pay for unlimited looks with much wider intervals at 3-10 seeds. Where the
shared test set's noise dominates, more seeds add little information, so the true correlation between
looks is higher than sqrt(t_j / t_k) assumes: the boundaries are then conservative, never liberal.

Multiplicity across the tests of one command is a sequentially rejective weighted Bonferroni procedure
(Holm's, carried over to group-sequential tests as in Maurer & Bretz 2013): each test starts with an
equal share of the level; when one is decided its share passes to the others, whose boundaries are
recomputed at every look made so far. Declared primary hypotheses form the first family and get the
whole level; the secondary family receives it only once every primary is decided (serial gatekeeping).
Without a declaration there is one family and the procedure is Holm's.
`tests/test_sequential.py` and `tunebench calibrate` check the error rates by simulation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy import optimize
from scipy import stats as sps

from tunebench.app.stats import ALPHA

SPENDING = ("obrien_fleming", "pocock")
GRID = 801  # points of the sub-density grid in the recursive integration (boundaries to ~1e-4 in z)


def spent(fraction: float, alpha: float, spending: str) -> float:
    """The one-sided level used up to information fraction `fraction` (0 < fraction <= 1)."""
    t = min(max(fraction, 0.0), 1.0)
    if t == 0:
        return 0.0
    if spending == "obrien_fleming":
        return float(2 * sps.norm.sf(sps.norm.isf(alpha / 2) / np.sqrt(t)))
    if spending == "pocock":
        return float(alpha * np.log1p((np.e - 1) * t))
    raise ValueError(f"decide.spending={spending!r}: expected one of {', '.join(SPENDING)}")


@functools.lru_cache(maxsize=4096)
def boundaries(fractions: tuple[float, ...], alpha: float, spending: str = "obrien_fleming") -> tuple[float, ...]:
    """z boundaries c_1..c_K for looks at increasing information `fractions` (the last <= 1), one-sided level
    `alpha` spent by `spending`: under the null, P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) is the level
    spent between look k-1 and look k. A look that may spend nothing has boundary +inf."""
    if any(b <= a for a, b in zip(fractions, fractions[1:])) or not fractions or fractions[0] <= 0:
        raise ValueError(f"information fractions must increase from above 0: {fractions}")
    if alpha <= 0:
        return tuple(np.inf for _ in fractions)
    out: list[float] = []
    grid = density = None  # the sub-density of the score S_{k-1} = Z_{k-1} sqrt(t_{k-1}) on its continuation region
    previous_t, previous_spent = 0.0, 0.0
    for t in fractions:
        target = spent(t, alpha, spending) - previous_spent
        step = t - previous_t
        if grid is None:
            def crossing(c, t=t):
                return float(sps.norm.sf(c))
        else:
            def crossing(c, t=t, grid=grid, density=density, step=step):
                return float(np.trapezoid(density * sps.norm.sf((c * np.sqrt(t) - grid) / np.sqrt(step)), grid))
        if target <= 1e-15:
            c = np.inf
        else:
            c = optimize.brentq(lambda z: crossing(z) - target, -10.0, 40.0, xtol=1e-10)
        out.append(float(c))
        # The next look's sub-density: paths that have not crossed any boundary yet.
        upper = c * np.sqrt(t) if np.isfinite(c) else 10 * np.sqrt(t)
        new_grid = np.linspace(-10 * np.sqrt(t), upper, GRID)
        if grid is None:
            new_density = sps.norm.pdf(new_grid / np.sqrt(t)) / np.sqrt(t)
        else:
            kernel = sps.norm.pdf((new_grid[:, None] - grid[None, :]) / np.sqrt(step)) / np.sqrt(step)
            new_density = np.trapezoid(kernel * density[None, :], grid, axis=1)
        grid, density = new_grid, new_density
        previous_t, previous_spent = t, previous_spent + (target if np.isfinite(c) else 0.0)
    return tuple(out)


def nominal_levels(fractions: tuple[float, ...], alpha: float, spending: str = "obrien_fleming") -> tuple[float, ...]:
    """The one-sided p-value each look's test must reach: 1 - Phi(c_k)."""
    return tuple(float(sps.norm.sf(c)) for c in boundaries(tuple(float(f) for f in fractions), float(alpha), spending))


@dataclass(frozen=True)
class Design:
    """Looks after every round of seeds: first look at `first` seeds, then every `step` seeds, up to `max_seeds`."""
    max_seeds: int
    first: int = 2
    step: int = 1
    spending: str = "obrien_fleming"

    def __post_init__(self):
        for key, value, low in (("decide.max_seeds", self.max_seeds, 2), ("decide.first_seeds", self.first, 2),
                                ("decide.round_seeds", self.step, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{key}={value}: expected a whole number >= {low}")
        if self.first > self.max_seeds:
            raise ValueError(f"decide.first_seeds={self.first} is above decide.max_seeds={self.max_seeds}")
        spent(1.0, ALPHA / 2, self.spending)  # an unknown spending function fails here, before any work

    def looks(self) -> list[int]:
        """Seed counts at which the claim looks."""
        counts = list(range(self.first, self.max_seeds + 1, self.step))
        return counts if counts[-1] == self.max_seeds else counts + [self.max_seeds]

    def fractions(self, seeds_seen: list[int]) -> tuple[float, ...]:
        return tuple(s / self.max_seeds for s in seeds_seen)


def seed_bound(level: float) -> float:
    """The upper confidence level of the seed mean square behind the crossed interval's degrees of freedom for a
    one-sided test at `level`: the fixed claim's 75% at 2.5%, rising as the level falls (1 - 10 x level).

    With 2-3 seeds that mean square has 1-2 df; a small value by chance makes Satterthwaite's df trust the test-set
    part, which a 2.5% test survives with the 75% bound but a test at an early look's tiny level does not (the
    simulation in docs/statistics.md)."""
    return max(0.75, 1.0 - 10.0 * level)


PValues = Callable[[int, float], tuple[float, float]]


@dataclass
class SequentialTest:
    """One stochastic part of one comparison, seen at each look made so far. `pvalues(k, level)` gives the one-sided
    p-values of its two directions (`supported`: the claim holds; `refuted`: it fails) at look k, from
    seeds[:looks[k]], for a test at `level` (the crossed interval's degrees of freedom depend on it)."""
    key: str
    family: int  # 0: primary, 1: secondary (tested only once every primary is decided)
    looks: list[int]
    pvalues: PValues
    design: "Design"
    alpha: float = 0.0  # the one-sided level this test ended with
    verdict: str = "inconclusive"
    decided_at: int | None = None  # seed count of the deciding look
    p_at_decision: float | None = None
    rule: str = ""
    levels: list[float] = field(default_factory=list)


def first_crossings(p_supported: np.ndarray, p_refuted: np.ndarray, levels) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over leading axes of [..., K] p-values: (verdict code: 0 inconclusive, 1 supported, 2 refuted;
    index of the deciding look, -1 if none).
    At one look, `supported` is checked first (both directions cannot cross at one look unless the level is
    above one half)."""
    levels = np.asarray(levels, dtype=float)
    sup, ref = np.asarray(p_supported) <= levels, np.asarray(p_refuted) <= levels
    crossed = sup | ref
    any_crossing = crossed.any(axis=-1)
    index = np.where(any_crossing, crossed.argmax(axis=-1), -1)
    at = np.take_along_axis(sup, np.maximum(index, 0)[..., None], axis=-1)[..., 0]
    code = np.where(any_crossing, np.where(at, 1, 2), 0)
    return code, index


def first_crossing(test: SequentialTest, alpha: float) -> tuple[str, int | None, float | None, list[float]]:
    """(verdict, index of the deciding look or None, its p-value, the nominal levels) of one test at one-sided level
    `alpha` per direction."""
    if not test.looks or alpha <= 0:
        return "inconclusive", None, None, []
    levels = list(nominal_levels(test.design.fractions(test.looks), alpha, test.design.spending))
    for k, level in enumerate(levels):  # the rule of first_crossings, one look at a time (p-values depend on the level)
        p_supported, p_refuted = test.pvalues(k, level)
        if p_supported <= level:
            return "supported", k, p_supported, levels
        if p_refuted <= level:
            return "refuted", k, p_refuted, levels
    return "inconclusive", None, None, levels


def one_sided_pvalues(estimate, se, df, threshold, claim_is_below: bool):
    """(p supported, p refuted) of t-statistics (estimate - threshold) / se with `df` degrees of freedom,
    vectorised. `claim_is_below`: the claim holds below the threshold (a ratio), else above it (accuracy
    against -margin). A zero standard error gives 0 / 1 by the side the estimate is on (0.5 at the threshold)."""
    estimate, se, df = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (estimate, se, df)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (estimate - threshold) / se, np.sign(estimate - threshold) * np.inf)
    above = np.where(np.isnan(z), 0.5, sps.t.sf(np.nan_to_num(z, nan=0.0), df))  # small when clearly above
    below = np.where(np.isnan(z), 0.5, sps.t.cdf(np.nan_to_num(z, nan=0.0), df))  # small when clearly below
    return (below, above) if claim_is_below else (above, below)


def decide(tests: list[SequentialTest], alpha: float = ALPHA / 2) -> list[SequentialTest]:
    """Verdicts for every test with the family-wise error held at `alpha` per direction across all tests and
    looks: Holm-like reallocation within a family, serial gatekeeping from primaries to secondaries."""
    decided: set[str] = set()
    while True:
        shares = _shares(tests, decided, alpha)
        newly = []
        for test in tests:
            if test.key in decided:
                continue
            verdict, k, p, levels = first_crossing(test, shares[test.key])
            test.alpha, test.levels = shares[test.key], levels
            if k is not None:
                test.verdict, test.decided_at, test.p_at_decision = verdict, test.looks[k], p
                test.rule = (f"{verdict} boundary crossed at look {k + 1} ({test.looks[k]} seeds): p {p:.2g} <= "
                             f"{levels[k]:.2g} ({test.design.spending} spending of {shares[test.key]:.3g})")
                newly.append(test.key)
        if not newly:
            break
        decided.update(newly)
    for test in tests:
        if test.key not in decided:
            test.verdict, test.decided_at = "inconclusive", None
            last = test.looks[-1] if test.looks else 0
            test.rule = ("no boundary crossed; " + ("max_seeds reached" if last >= test.design.max_seeds else
                                                    f"{last} of {test.design.max_seeds} seeds so far")
                         + (f" (level {test.alpha:.3g})" if test.alpha > 0 else " (no level: a primary is undecided)"))
    return tests


def _shares(tests: list[SequentialTest], decided: set[str], alpha: float) -> dict[str, float]:
    """Each undecided test's level: the first family with an undecided test splits `alpha` equally; later
    families get nothing until it is done (a decided test's share has passed on to the rest)."""
    shares = {t.key: 0.0 for t in tests}
    for family in sorted({t.family for t in tests}):
        open_tests = [t for t in tests if t.family == family and t.key not in decided]
        if open_tests:
            for t in open_tests:
                shares[t.key] = alpha / len(open_tests)
            break
    return shares
