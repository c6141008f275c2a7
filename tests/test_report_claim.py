"""Reports and the claim check on records whose right answer is known by construction."""
import json

import numpy as np
import pandas as pd
import pytest

from tunebench.core import record as rec
from tunebench.app.claim import check
from tunebench.app.claim import main as claim_main
from tunebench.app.frame import load_frame
from tunebench.app.report import pareto_front, write_report

N_TEST = 2000


def correct_string(acc: float, rng) -> str:
    hits = np.zeros(N_TEST, dtype=bool)
    hits[rng.choice(N_TEST, int(round(acc * N_TEST)), replace=False)] = True
    return "".join("1" if h else "0" for h in hits)


def write_run(sweep, method, seed, acc, *, lr=1e-3, val=None, trainable=100_000, memory=500.0, seconds=50.0,
              status="ok", refine="none", task="rt", correct=None, rng=None, model="m", train_size=None,
              refine_cfg=None, comm=None):
    rng = rng or np.random.default_rng(seed)
    config = {"method": {"name": method, "lr": lr}, "seed": seed, "refine": refine_cfg or refine, "task": task,
              "model": {"name": model}, "data": {"train_size": train_size}}
    rid = rec.run_id(config)
    record = {**rec.new_record(config, rid, sweep.name), "status": status}
    record["cell"] = {"task": task, "refine": refine, "method": method, "lr": lr, "seed": seed, "model": model}
    if status == "ok":
        record["metrics"] = {"test_acc": acc, "test_macro_f1": acc - 0.01, "best_val_acc": acc if val is None else val,
                             "test_correct": correct if correct is not None else correct_string(acc, rng)}
        record["cost"] = {"params_trainable": trainable, "params_total": 22_000_000, "trainable_pct": 100 * trainable / 22e6,
                          "peak_memory_mb": memory, "train_seconds": seconds}
        if comm is not None:  # a federated run: bytes sent both ways
            record["cost"].update(comm_bytes_total=comm, comm_bytes_per_client_round=comm // 8, peak_memory_server_mb=2 * memory)
    else:
        record["error"] = {"type": "RuntimeError", "message": f"boom ({status})", "traceback": "..."}
    rec.write_atomic(rec.record_path(sweep, rid), record)
    return rid


def full_runs(sweep, accs, memory=1000.0, seconds=60.0, **kw):
    for seed, acc in enumerate(accs):
        write_run(sweep, "full", seed, acc, lr=1e-4, trainable=22_000_000, memory=memory, seconds=seconds, **kw)


def parts_of(comparisons, peft):
    [entry] = [c for c in comparisons if c["peft"] == peft]
    return {p["part"].split(" (")[0]: p for p in entry["parts"]}


def run_check(sweep, **kw):
    return check(load_frame(sweep), **kw)


def test_report_tables_hold_mean_and_std_over_seeds(tmp_path):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.82, 0.84])
    for seed, acc in enumerate([0.70, 0.74, 0.78]):
        write_run(sweep, "lora", seed, acc)
    write_run(sweep, "lora", 3, 0.0, status="failed")
    result = write_report(sweep)
    table = pd.read_csv(result["paths"]["csv"]).set_index("method")
    assert table.loc["full", "acc_mean"] == pytest.approx(0.82)
    assert table.loc["full", "acc_std"] == pytest.approx(0.02)
    assert table.loc["lora", "acc_mean"] == pytest.approx(0.74) and table.loc["lora", "acc_std"] == pytest.approx(0.04)
    assert table.loc["lora", "seeds_ok"] == 3 and table.loc["lora", "not_ok"] == 1
    markdown = result["paths"]["md"].read_text()
    assert "0.8200 ± 0.0200" in markdown and "0.7400 ± 0.0400" in markdown
    tex = result["paths"]["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"0.8200 $\pm$ 0.0200" in tex
    [plot] = result["paths"]["plots"]
    assert plot.read_bytes()[:4] == b"\x89PNG" and plot.parent == tmp_path / "plots" / "s"


def test_pareto_front_marks_the_undominated_points():
    cost = np.array([1.0, 2.0, 3.0, 2.5])
    acc = np.array([0.5, 0.7, 0.8, 0.6])
    assert pareto_front(cost, acc).tolist() == [True, True, True, False]


def test_claim_supported_when_peft_matches_full(tmp_path):
    sweep = tmp_path / "runs" / "s"
    rng = np.random.default_rng(0)
    base = [correct_string(0.80, rng) for _ in range(3)]
    for seed, c in enumerate(base):
        write_run(sweep, "full", seed, 0.80, lr=1e-4, trainable=22_000_000, memory=1000, seconds=60, correct=c)
        write_run(sweep, "lora", seed, 0.80, trainable=100_000, memory=500, seconds=30, correct=c)  # same answers
    parts = parts_of(run_check(sweep), "lora")
    assert parts["accuracy"]["verdict"] == "supported" and parts["accuracy"]["estimate"] == pytest.approx(0.0)
    assert parts["trainable params"]["verdict"] == "supported"
    assert parts["trainable params"]["estimate"] == pytest.approx(100_000 / 22_000_000)
    assert parts["peak memory"]["verdict"] == "supported" and parts["peak memory"]["estimate"] == pytest.approx(0.5)
    assert parts["train time"]["verdict"] == "supported"


def test_claim_refuted_when_peft_is_clearly_worse(tmp_path):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.81, 0.80], memory=1000, seconds=60)
    for seed, acc in enumerate([0.65, 0.66, 0.64]):
        write_run(sweep, "prefix", seed, acc, trainable=400_000, memory=950, seconds=58)
    parts = parts_of(run_check(sweep), "prefix")
    acc = parts["accuracy"]
    assert acc["verdict"] == "refuted" and acc["ci_high"] < -1.0
    assert acc["estimate"] == pytest.approx(-15.33, abs=0.01)
    assert "3 seeds x 2000 shared test examples" in acc["note"]
    assert parts["trainable params"]["verdict"] == "refuted"  # 400k / 22M = 1.8% > 1%
    assert parts["peak memory"]["verdict"] == "refuted" and parts["train time"]["verdict"] == "refuted"


def test_claim_inconclusive_with_one_seed_or_noisy_seeds(tmp_path):
    one = tmp_path / "runs" / "one"
    full_runs(one, [0.80])
    write_run(one, "lora", 0, 0.95)
    parts = parts_of(run_check(one), "lora")
    assert parts["accuracy"]["verdict"] == "inconclusive" and "needs >= 2" in parts["accuracy"]["note"]
    assert parts["peak memory"]["verdict"] == "inconclusive"
    noisy = tmp_path / "runs" / "noisy"
    full_runs(noisy, [0.80, 0.80, 0.80])
    for seed, acc in enumerate([0.85, 0.72, 0.82]):
        write_run(noisy, "lora", seed, acc)
    acc = parts_of(run_check(noisy), "lora")["accuracy"]
    assert acc["verdict"] == "inconclusive" and acc["ci_low"] < -1.0 < acc["ci_high"]


def test_claim_compares_best_lr_against_best_lr(tmp_path):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.80])
    for seed in range(2):
        write_run(sweep, "lora", seed, 0.70, lr=1e-4, val=0.71)  # worse on validation
        write_run(sweep, "lora", seed, 0.79, lr=1e-3, val=0.78)  # chosen by validation
    [entry] = run_check(sweep)
    assert entry["peft_lr"] == pytest.approx(1e-3)
    assert parts_of([entry], "lora")["accuracy"]["estimate"] == pytest.approx(-1.0)


def test_claim_cli_writes_markdown_and_json(tmp_path, capsys):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.8, 0.8])
    write_run(sweep, "lora", 0, 0.8)
    write_run(sweep, "lora", 1, 0.8)
    assert claim_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "rt / refinement none: lora vs full" in out
    saved = json.loads((tmp_path / "tables" / "s" / "claim.json").read_text())
    assert saved[0]["peft"] == "lora" and len(saved[0]["parts"]) == 4


def test_report_and_claim_name_an_empty_or_missing_sweep(tmp_path, capsys):
    assert claim_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    from tunebench.app.report import main as report_main

    assert report_main([str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().out


def paired_strings(n_both_right: int, peft_only: int, full_only: int, n: int = 1000) -> tuple[str, str]:
    """Per-example outcomes of two arms on n shared test examples with the given (dis)agreement counts."""
    full = "1" * n_both_right + "0" * peft_only + "1" * full_only
    peft = "1" * n_both_right + "1" * peft_only + "0" * full_only
    rest = n - len(full)
    return peft + "0" * rest, full + "0" * rest


def test_identical_seeds_do_not_count_as_independent_test_sets(tmp_path):
    """Three seeds with identical predictions: only the 1,000 shared test examples vary. PEFT is right on 100
    examples full gets wrong and wrong on 133 it gets right: -3.3 pt, with a test-set standard error of ~1.5 pt,
    so the test set cannot tell -3.3 from -1. (Resampling test examples afresh per seed gave [-5.0, -1.6]: refuted.)"""
    sweep = tmp_path / "runs" / "s"
    peft, full = paired_strings(600, 100, 133)
    for seed in range(3):
        write_run(sweep, "full", seed, full.count("1") / 1000, lr=1e-4, trainable=22_000_000, correct=full)
        write_run(sweep, "lora", seed, peft.count("1") / 1000, correct=peft)
    acc = parts_of(run_check(sweep), "lora")["accuracy"]
    assert acc["estimate"] == pytest.approx(-3.3)
    se = np.sqrt((233 / 1000 - 0.033**2) / 999) * 100  # the paired-difference standard error over examples
    assert acc["ci_low"] == pytest.approx(-3.3 - 1.96 * se, abs=0.05) and acc["ci_high"] == pytest.approx(-3.3 + 1.96 * se, abs=0.05)
    assert acc["verdict"] == "inconclusive" and acc["ci_high"] > -1.0


def test_two_models_in_one_sweep_are_two_comparisons_in_claim_and_report(tmp_path):
    sweep = tmp_path / "runs" / "s"
    for model, full_params, lora_params, acc in (("small", 1_000_000, 3_000, 0.80), ("big", 100_000_000, 300_000, 0.90)):
        for seed in range(3):
            write_run(sweep, "full", seed, acc, lr=1e-4, trainable=full_params, model=model)
            write_run(sweep, "lora", seed, acc - 0.05, trainable=lora_params, model=model)
    comparisons = run_check(sweep)
    assert sorted(c["configuration"] for c in comparisons) == ["model.name=big", "model.name=small"]
    for c in comparisons:
        parts = {p["part"].split(" (")[0]: p for p in c["parts"]}
        assert parts["trainable params"]["estimate"] == pytest.approx(0.003)  # each against its own full model
        assert parts["trainable params"]["verdict"] == "supported" and c["seeds"] == [0, 1, 2]
    table = write_report(sweep)["table"].set_index(["configuration", "method"])
    assert table.loc[("model.name=small", "full"), "acc_mean"] == pytest.approx(0.80)
    assert table.loc[("model.name=big", "full"), "acc_mean"] == pytest.approx(0.90)
    assert table.loc[("model.name=big", "lora"), "seeds_ok"] == 3
    assert "model.name=big" in write_report(sweep)["markdown"]


def test_two_train_sizes_are_two_comparisons(tmp_path):
    sweep = tmp_path / "runs" / "s"
    for size in (500, 2000):
        full_runs(sweep, [0.8, 0.8], train_size=size)
        for seed in range(2):
            write_run(sweep, "lora", seed, 0.8, train_size=size)
    assert sorted(c["configuration"] for c in run_check(sweep)) == ["data.train_size=2000", "data.train_size=500"]


def test_configuration_names_only_what_the_task_and_refinement_columns_do_not(tmp_path):
    """A refinement's own keys are absent from the other refinements' cells; they must not fill every
    label. A swept refinement knob still tells two comparisons apart."""
    sweep = tmp_path / "runs" / "s"
    chains = {("none", None): {"none": {"name": "none"}},
              ("synthetic", 0.5): {"synthetic": {"name": "synthetic", "ratio": 0.5, "seed": 0}},
              ("synthetic", 1.0): {"synthetic": {"name": "synthetic", "ratio": 1.0, "seed": 0}}}
    for (name, _), chain in chains.items():
        for seed in range(2):
            write_run(sweep, "full", seed, 0.8, lr=1e-4, refine=name, refine_cfg=chain)
            write_run(sweep, "lora", seed, 0.79, refine=name, refine_cfg=chain)
    labels = {(c["refine"], c["configuration"]) for c in run_check(sweep)}
    assert labels == {("none", ""), ("synthetic", "refine.synthetic.ratio=0.5"), ("synthetic", "refine.synthetic.ratio=1.0")}


def test_failed_and_diverged_runs_are_listed_under_their_arm(tmp_path, capsys):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.80, 0.81, 0.80])
    for seed, acc in enumerate([0.79, 0.80]):
        write_run(sweep, "lora", seed, acc)
    failed = write_run(sweep, "lora", 2, 0.0, status="failed")
    diverged = write_run(sweep, "full", 3, 0.0, status="diverged")
    for seed in range(3):
        write_run(sweep, "prefix", seed, 0.0, status="failed")
    entries = {c["peft"]: c for c in run_check(sweep)}
    excluded = {(e["arm"], e["seed"]): e for e in entries["lora"]["excluded"]}
    assert excluded[("lora", 2)]["run_id"] == failed and excluded[("lora", 2)]["reason"] == "failed: boom (failed)"
    assert excluded[("full", 3)]["run_id"] == diverged and excluded[("full", 3)]["reason"] == "diverged: boom (diverged)"
    assert excluded[("full", 2)]["reason"] == "seed 2: no ok lora run to pair with"
    assert entries["lora"]["seeds"] == [0, 1]
    [part] = entries["prefix"]["parts"]
    assert part["verdict"] == "no data" and "prefix: no ok run" in part["note"]
    reasons = sorted(e["reason"] for e in entries["prefix"]["excluded"])  # 3 failed + full's diverged and unpaired runs
    assert reasons == ["diverged: boom (diverged)"] + ["failed: boom (failed)"] * 3 + ["seed 0: no ok prefix run to pair with",
                       "seed 1: no ok prefix run to pair with", "seed 2: no ok prefix run to pair with"]
    assert claim_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert f"- lora seed 2 ({failed}): failed: boom (failed)" in out and "NO DATA" in out


def test_holm_adjusts_over_every_test_and_keeps_both_verdicts(tmp_path):
    from tunebench.app.stats import adjust

    assert adjust([0.01, 0.04, 0.03], "holm") == pytest.approx([0.03, 0.06, 0.06])
    assert adjust([0.01, 0.04, 0.03], "bonferroni") == pytest.approx([0.03, 0.12, 0.09])
    assert adjust([0.01, 0.04], "none") == [0.01, 0.04]
    sweep = tmp_path / "runs" / "s"
    peft, full = paired_strings(600, 130, 100)  # +3 pt with a test-set se of ~1.5 pt: p ~ 0.004, supported alone
    for seed in range(3):
        write_run(sweep, "full", seed, 0.73, lr=1e-4, trainable=22_000_000, correct=full)
        for arm in ("lora", "ia3", "prompt", "prefix", "vera", "loha"):
            write_run(sweep, arm, seed, 0.76, correct=peft, memory=900 + seed, seconds=55 + seed)
    comparisons = run_check(sweep)
    acc = parts_of(comparisons, "lora")["accuracy"]
    assert acc["verdict"] == "supported" and acc["p_value"] < 0.025
    tests = sum(p["p_value"] is not None for c in comparisons for p in c["parts"])
    assert tests == 18 and acc["p_adjusted"] > 0.025 and acc["verdict_adjusted"] == "inconclusive"
    unadjusted = parts_of(run_check(sweep, adjust_method="none"), "lora")["accuracy"]
    assert unadjusted["verdict_adjusted"] == "supported" and unadjusted["p_adjusted"] == unadjusted["p_value"]


def test_a_record_without_a_field_the_claim_needs_names_the_file_and_field(tmp_path, capsys):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.8, 0.8])
    rid = write_run(sweep, "lora", 0, 0.8)
    path = rec.record_path(sweep, rid)
    record = json.loads(path.read_text())
    del record["cost"]["params_trainable"]
    path.write_text(json.dumps(record))
    assert claim_main([str(sweep)]) == 2
    out = capsys.readouterr().out
    assert f"{path}: ok record has no cost.params_trainable" in out and "Traceback" not in out


def test_ratio_interval_is_a_t_interval_on_log_ratios(tmp_path):
    sweep = tmp_path / "runs" / "s"
    full_runs(sweep, [0.8, 0.8, 0.8], memory=1000.0)
    for seed, memory in enumerate([700.0, 800.0, 750.0]):
        write_run(sweep, "lora", seed, 0.8, memory=memory)
    part = parts_of(run_check(sweep), "lora")["peak memory"]
    logs = np.log([0.7, 0.8, 0.75])
    half = 4.302653 * logs.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert part["estimate"] == pytest.approx(np.exp(logs.mean()))
    assert part["ci_low"] == pytest.approx(np.exp(logs.mean() - half)) and part["ci_high"] == pytest.approx(np.exp(logs.mean() + half))
    assert part["verdict"] == "inconclusive" and part["ci_high"] > 0.8  # 0.75 on average, but 3 seeds cannot place it below 0.8


def test_identical_outcomes_bound_the_difference_by_the_rule_of_three_instead_of_a_zero_width_interval(tmp_path):
    """Arms that agree on every test example give no spread for a t-interval (it would say p = 0); with
    few outcomes that is no evidence of non-inferiority, with many it is."""
    for n, verdict in ((16, "inconclusive"), (N_TEST, "supported")):
        sweep = tmp_path / "runs" / f"same{n}"
        same = "".join("1" if i % 3 else "0" for i in range(n))
        full_runs(sweep, [0.66, 0.66], correct=same)
        for seed in (0, 1):
            write_run(sweep, "lora", seed, 0.66, correct=same)
        acc = parts_of(run_check(sweep), "lora")["accuracy"]
        assert acc["verdict"] == verdict and acc["ci_high"] == pytest.approx(100 * 3 / (2 * n)), acc
        assert "agree on all" in acc["note"]


def test_a_reference_that_did_not_learn_makes_the_accuracy_part_inconclusive(tmp_path):
    sweep = tmp_path / "runs" / "flat"
    for seed in (0, 1, 2):
        for method, acc in (("full", 0.50), ("lora", 0.52)):
            config_rng = np.random.default_rng(seed)
            rid = write_run(sweep, method, seed, acc, rng=config_rng, trainable=22_000_000 if method == "full" else 100_000)
            path = rec.record_path(sweep, rid)
            record = json.loads(path.read_text())
            record["metrics"]["majority_baseline_test_acc"] = 0.5
            rec.write_atomic(path, record)
    acc = parts_of(run_check(sweep), "lora")["accuracy"]
    assert acc["verdict"] == "inconclusive" and "not above the trivial baseline (50.0%)" in acc["note"]


def test_federated_comparisons_get_a_communication_part_decided_by_the_bytes(tmp_path):
    sweep = tmp_path / "runs" / "fed"
    full_runs(sweep, [0.80, 0.82, 0.84], comm=8 * 91_000_000)
    for seed, acc in enumerate([0.80, 0.82, 0.84]):
        write_run(sweep, "lora", seed, acc, comm=8 * 300_000)
        write_run(sweep, "prefix", seed, acc, trainable=150_000, comm=8 * 1_200_000)
    comparisons = run_check(sweep, comm_ratio=0.01)
    lora, prefix = parts_of(comparisons, "lora")["communication"], parts_of(comparisons, "prefix")["communication"]
    assert lora["estimate"] == pytest.approx(300_000 / 91_000_000) and lora["verdict"] == "supported"
    assert prefix["estimate"] == pytest.approx(1_200_000 / 91_000_000) and prefix["verdict"] == "refuted"
    assert lora["p_value"] is None  # deterministic, not a test: Holm's count does not grow
    central = tmp_path / "runs" / "central"
    full_runs(central, [0.80, 0.82])
    write_run(central, "lora", 0, 0.8)
    write_run(central, "lora", 1, 0.8)
    assert "communication" not in parts_of(run_check(central), "lora")  # no federated runs, no such part
    table = pd.read_csv(write_report(sweep)["paths"]["csv"]).set_index("method")
    assert table.loc["lora", "comm_mb"] == pytest.approx(8 * 300_000 / 2**20)


def test_dp_runs_state_their_epsilon_in_the_table_and_runs_without_dp_say_so(tmp_path):
    sweep = tmp_path / "runs" / "dp"
    for seed, acc in enumerate([0.80, 0.82, 0.84]):
        write_run(sweep, "lora", seed, acc, comm=8 * 300_000)
        rid = write_run(sweep, "full", seed, acc, lr=1e-4, trainable=22_000_000, comm=8 * 91_000_000)
        record = json.loads(rec.record_path(sweep, rid).read_text())
        record["metrics"].update(dp_epsilon=12.301691480042894, dp_delta=1e-5)
        rec.write_atomic(rec.record_path(sweep, rid), record)
    paths = write_report(sweep)["paths"]
    table = pd.read_csv(paths["csv"]).set_index("method")
    assert table.loc["full", "dp_epsilon"] == pytest.approx(12.301691480042894) and pd.isna(table.loc["lora", "dp_epsilon"])
    markdown = [line for line in paths["md"].read_text().splitlines() if "| full " in line or "| lora " in line]
    assert "| 12.3 (1e-05) " in next(line for line in markdown if "| full " in line)
    assert "| no DP " in next(line for line in markdown if "| lora " in line)
