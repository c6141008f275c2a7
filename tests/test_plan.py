"""`tunebench plan`: the power it predicts from a pilot's variance estimates against simulated power, and its
advice on published-like records (seeds where seeds help, a larger test set where they cannot)."""
import numpy as np
import pytest

from tunebench.app.calibration import MARGIN, Scenario, _generate
from tunebench.app.plan import Components, larger_test, power, seeds_for, units_for
from tunebench.app.sequential import one_sided_pvalues, seed_bound
from tunebench.app.stats import MeanSquares

LEVEL = 0.025


def simulated_power(scenario: Scenario, truth: float, seeds: int, rng, studies: int = 1000) -> float:
    """How often the claim's accuracy test (at LEVEL) comes out supported at `seeds` seeds."""
    hits = []
    for _ in range(0, studies, 250):
        squares = MeanSquares.of(_generate(scenario, truth, rng, 250, seeds))
        p_sup, _ = one_sided_pvalues(squares.grand, np.sqrt(squares.variance()), squares.df(seed_bound(LEVEL)),
                                     -MARGIN, claim_is_below=False)
        hits.append(p_sup <= LEVEL)
    return float(np.concatenate(hits).mean())


@pytest.mark.parametrize("units, noise", [("1000 test examples", 0.0), ("1000 test examples", 0.01),
                                          ("1000 test examples", 0.03), ("600 meta-test tasks", 0.005)])
@pytest.mark.parametrize("seeds, truth", [(5, 0.005), (8, 0.0)])
def test_predicted_power_from_simulated_pilots_agrees_with_simulated_power(units, noise, seeds, truth):
    """Pilots of 10 seeds (the plan's variance components), 100 of them: the mean predicted power at the true
    difference is within 5 points of the power simulated for the claim's own test."""
    rng = np.random.default_rng(11)
    scenario = Scenario("accuracy", units, seeds, noise, 1000)
    simulated = simulated_power(scenario, truth, seeds, rng)
    pilots = _generate(scenario, truth, rng, 100, 10)
    predicted = [power(Components.of_accuracy(pilot), truth + MARGIN, seeds, LEVEL) for pilot in pilots]
    assert abs(np.mean(predicted) - simulated) <= 0.05, (np.mean(predicted), simulated)


def test_seeds_help_a_seed_noise_dominated_part_and_a_larger_test_set_a_test_noise_dominated_one():
    seed_noisy = Components("accuracy", seed=0.02**2, unit=0.01, residual=0.05, units=1000)
    needed = seeds_for(seed_noisy, 0.02, LEVEL, 0.8, 3, 100)
    assert needed is not None and power(seed_noisy, 0.02, needed, LEVEL) >= 0.8 > power(seed_noisy, 0.02, needed - 1, LEVEL)
    test_noisy = Components("accuracy", seed=0.0, unit=0.12, residual=0.02, units=1000)  # floor: sqrt(0.12 / 1000) ~ 1.1 pt
    assert seeds_for(test_noisy, 0.015, LEVEL, 0.8, 3, 100) is None
    examples = units_for(test_noisy, 0.015, LEVEL, 0.8, 100)
    assert examples is not None and examples > 1000 and power(test_noisy, 0.015, 100, LEVEL, examples) >= 0.8
    assert seeds_for(test_noisy, 0.0, LEVEL, 0.8, 3, 100) is None and units_for(test_noisy, 0.0, LEVEL, 0.8, 100) is None


def test_a_larger_test_set_is_offered_within_the_examples_the_task_has():
    test_noisy = Components("accuracy", seed=0.0, unit=0.12, residual=0.02, units=1000)
    examples, seeds = larger_test(test_noisy, 0.015, LEVEL, 3, 100, available=20000)
    assert 1000 < examples <= 20000
    assert power(test_noisy, 0.015, seeds, LEVEL, examples) >= 0.8 > power(test_noisy, 0.015, seeds, LEVEL, examples - 1)
    assert seeds == 3 or power(test_noisy, 0.015, seeds - 1, LEVEL, 20000) < 0.8  # the fewest seeds first
    assert larger_test(test_noisy, 0.015, LEVEL, 3, 100, available=1500) is None  # not enough examples
    assert larger_test(test_noisy, 0.015, LEVEL, 3, 100, available=None) is None  # not known


def test_plan_offers_the_examples_quick_leaves_unused_when_records_say_how_many_the_source_holds(tmp_path):
    """Rotten Tomatoes holds 8,530 sentences; quick's splits use 6,132 (test 1,066, validation 1,066, pool 2,000,
    train 2,000): 2,398 could join the test set. Published records predate `task.source_examples`: a copy has it."""
    import json

    from tunebench.app.frame import load_frame
    from tunebench.app.plan import plan

    from .conftest import ROOT

    for path in (ROOT / "results" / "published" / "quick" / "records").glob("*.json"):
        record = json.loads(path.read_text())
        record["task"]["source_examples"] = 8530
        (tmp_path / path.name).write_text(json.dumps(record))
    frame = load_frame(tmp_path)
    assert set(frame.unused_examples) == {2398}
    lora = next(p for p in plan(frame) if p.comparison.endswith("lora vs full") and p.part.startswith("accuracy"))
    assert lora.larger_test is not None
    examples, seeds = lora.larger_test
    assert 1066 < examples <= 1066 + 2398
    assert (f"a larger test set instead: {examples:,} test examples (data.test_size={examples}; the task has 2,398 "
            f"examples no split uses) reach 80% at {seeds} seeds") in lora.note


def test_plan_names_what_the_published_quick_sweep_would_need(tmp_path):
    from tunebench.app.frame import load_frame
    from tunebench.app.plan import plan

    from .conftest import ROOT

    plans = plan(load_frame(ROOT / "results" / "published" / "quick" / "records"))
    by_part = {(p.comparison.split(": ")[1], p.part.split(" (")[0]): p for p in plans}
    lora_accuracy = by_part[("lora vs full", "accuracy")]
    # LoRA is 2.6 pt below full with a CI of [-4.2, -1.0]: the direction is refuted, and the shared 1,066 test
    # sentences' noise (~1 pt) alone keeps it from the Holm level over 6 tests: more seeds cannot decide it.
    assert lora_accuracy.direction == "refuted" and lora_accuracy.seeds_80 is None and lora_accuracy.test_examples_80 > 1066
    memory = by_part[("lora vs full", "peak memory")]
    assert memory.direction == "supported" and memory.seeds_80 > 3 and memory.seconds_80 > 0


def test_plan_says_a_secondary_waits_for_the_primaries_and_offers_to_go_on_with_a_declared_design(tmp_path, capsys):
    from tunebench.app.frame import load_frame
    from tunebench.app.plan import main, plan

    from .test_sequential import write_sequential_sweep

    sweep = tmp_path / "runs" / "seq"
    write_sequential_sweep(sweep, 3, -0.012, {"decide": {"max_seeds": 7}, "claim": {"primary": ["lora:accuracy"]}})
    plans = plan(load_frame(sweep))
    secondaries = [p for p in plans if not p.part.startswith("accuracy")]
    assert secondaries and all(p.note.startswith("once every primary is decided: ") for p in secondaries)
    assert main([str(sweep)]) == 0
    assert "To go on with the design this sweep declared: tunebench decide <the sweep's overrides> decide.max_seeds=7" in capsys.readouterr().out


def test_plan_says_a_completed_sequential_design_is_not_gone_on_with(tmp_path, capsys):
    from tunebench.app.plan import main

    from .test_sequential import write_sequential_sweep

    sweep = tmp_path / "runs" / "done"
    write_sequential_sweep(sweep, 3, -0.012, {"decide": {"max_seeds": 3}, "claim": {"primary": ["lora:accuracy"]}})
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "The sequential design this sweep declared is complete (3 seeds)" in out and "To go on with" not in out
