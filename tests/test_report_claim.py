"""Reports and the claim check on records whose right answer is known by construction."""
import json

import numpy as np
import pandas as pd
import pytest

from tunebench import record as rec
from tunebench.claim import check
from tunebench.claim import main as claim_main
from tunebench.frame import load_frame
from tunebench.report import pareto_front, write_report

N_TEST = 2000


def correct_string(acc: float, rng) -> str:
    hits = np.zeros(N_TEST, dtype=bool)
    hits[rng.choice(N_TEST, int(round(acc * N_TEST)), replace=False)] = True
    return "".join("1" if h else "0" for h in hits)


def write_run(sweep, method, seed, acc, *, lr=1e-3, val=None, trainable=100_000, memory=500.0, seconds=50.0,
              status="ok", refine="none", task="rt", correct=None, rng=None):
    rng = rng or np.random.default_rng(seed)
    config = {"method": {"name": method, "lr": lr}, "seed": seed, "refine": refine, "task": task}
    rid = rec.run_id(config)
    record = {**rec.new_record(config, rid, sweep.name), "status": status}
    record["cell"] = {"task": task, "refine": refine, "method": method, "lr": lr, "seed": seed, "model": "m"}
    if status == "ok":
        record["metrics"] = {"test_acc": acc, "test_macro_f1": acc - 0.01, "best_val_acc": acc if val is None else val,
                             "test_correct": correct if correct is not None else correct_string(acc, rng)}
        record["cost"] = {"params_trainable": trainable, "params_total": 22_000_000, "trainable_pct": 100 * trainable / 22e6,
                          "peak_memory_mb": memory, "train_seconds": seconds}
    else:
        record["error"] = {"type": "RuntimeError", "message": "boom", "traceback": "..."}
    rec.write_atomic(rec.record_path(sweep, rid), record)


def full_runs(sweep, accs, memory=1000.0, seconds=60.0):
    for seed, acc in enumerate(accs):
        write_run(sweep, "full", seed, acc, lr=1e-4, trainable=22_000_000, memory=memory, seconds=seconds)


def parts_of(comparisons, peft):
    [entry] = [c for c in comparisons if c["peft"] == peft]
    return {p["part"].split(" (")[0]: p for p in entry["parts"]}


def run_check(sweep, **kw):
    args = dict(margin=1.0, params_ratio=0.01, memory_factor=0.8, time_factor=0.8, n_boot=1000)
    return check(load_frame(sweep), **{**args, **kw})


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
    assert "two-level bootstrap" in acc["note"]
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
    assert claim_main([str(sweep), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "rt / refinement none: lora vs full" in out
    saved = json.loads((tmp_path / "tables" / "s" / "claim.json").read_text())
    assert saved[0]["peft"] == "lora" and len(saved[0]["parts"]) == 4


def test_report_and_claim_name_an_empty_or_missing_sweep(tmp_path, capsys):
    assert claim_main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    from tunebench.report import main as report_main

    assert report_main([str(tmp_path / "empty")]) == 2
    assert "no run records" in capsys.readouterr().out
