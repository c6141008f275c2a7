"""`tunebench decide`: rounds of seeds until decided, resumable from the records alone, bad input in one line."""
import json

import pytest

from .conftest import run_tunebench

# Digits on the small CNN, full vs LoRA, in-process cells: a few seconds a cell. Three seeds at most (looks at 2, 3).
SWEEP = ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
         "data.pool_size=360", "train.batch_size=32", "train.evals=3", "method=full,lora", "sweep=dec", "logger=none",
         "cell_process=false", "threads=1", "decide.max_seeds=3", "decide.parts=[accuracy]", "claim.primary=[lora:accuracy]"]


def outcome(root):
    records = {p.stem: json.loads(p.read_text()) for p in (root / "results" / "runs" / "dec").glob("*.json")}
    claim = json.loads((root / "results" / "tables" / "dec" / "claim.json").read_text())
    [accuracy] = [p for p in claim[0]["parts"] if p["part"].startswith("accuracy")]
    return ({rid: (r["cell"]["method"], r["cell"]["seed"], r["metrics"]["test_correct"]) for rid, r in records.items()},
            (accuracy["verdict_adjusted"], accuracy["sequential"]["looks"], accuracy["sequential"]["rule"]))


@pytest.mark.slow
def test_a_sequential_sweep_stopped_between_rounds_resumes_to_the_same_cells_and_verdicts(tmp_path):
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    for folder in (stopped, straight):
        folder.mkdir()
    first = run_tunebench(["decide", "--rounds", "1", *SWEEP], stopped)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "stopped after 1 round(s)" in first.stdout
    assert len(list((stopped / "results" / "runs" / "dec").glob("*.json"))) == 4  # full and LoRA at seeds 0, 1
    resumed = run_tunebench(["decide", *SWEEP], stopped)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "look 1/2: 2 seeds for 2 of 2 grid cells; 0 cell run(s) missing" in resumed.stdout  # nothing re-run
    whole = run_tunebench(["decide", *SWEEP], straight)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]
    cells, verdict = outcome(stopped)
    assert (cells, verdict) == outcome(straight)
    assert sorted((m, s) for m, s, _ in cells.values()) == [("full", 0), ("full", 1), ("full", 2), ("lora", 0), ("lora", 1), ("lora", 2)]
    assert verdict[1] == [2, 3]


@pytest.mark.parametrize("overrides, message", [
    (["decide.max_seeds=1"], "decide.max_seeds=1: expected a number >= 2"),
    ([], "decide.max_seeds is not set"),
    (["decide.max_seeds=4", "seed=0,1"], "seed: tunebench decide chooses the seeds"),
    (["decide.max_seeds=4", "decide.parts=[speed]"], "decide.parts.0='speed': expected one of"),
])
def test_bad_decide_input_is_one_line_and_runs_nothing(tmp_path, monkeypatch, capsys, overrides, message):
    from tunebench.app.decide import main

    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    assert main(["sweep=dec", *overrides]) == 2
    out = capsys.readouterr().out
    assert message in out and out.count("\n") == 1
    assert not (tmp_path / "results").exists()


def test_decide_refuses_a_folder_whose_records_were_run_under_another_plan(tmp_path, monkeypatch, capsys):
    from tunebench.app.decide import main

    from .test_sequential import write_sequential_sweep

    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    write_sequential_sweep(tmp_path / "results" / "runs" / "dec", 2, 0.0, {"claim": {"primary": ["lora:accuracy"]}})
    assert main(["sweep=dec", "decide.max_seeds=4"]) == 2
    out = capsys.readouterr().out
    assert "holds records run under another plan" in out and "sweep=dec_decided" in out


def test_a_round_launches_one_run_per_group_seed_first_and_only_the_cells_it_needs():
    from tunebench.app.decide import Cell, launches

    cells = [Cell(("refine=none", "method=full"), "a", "full"), Cell(("refine=none", "method=lora"), "a", "lora"),
             Cell(("refine=ssl", "method=full"), "b", "full")]
    assert launches(cells, 3) == [["seed=0,1,2", "refine=none", "method=full,lora"], ["seed=0,1,2", "refine=ssl", "method=full"]]
