"""End-to-end sweeps through the real CLI with the packaged MiniLM and real data (small sizes)."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import IN_PROCESS, TINY, TUNEBENCH, run_tunebench

pytestmark = pytest.mark.slow


def run_records(root: Path, sweep: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results" / "runs" / sweep).glob("*.json"))]


DEFAULT_SWEEP = ["run", "-m", "method=full,lora", "seed=0", *TINY, "sweep=e2e"]  # full fine-tuning, then LoRA


@pytest.fixture(scope="module")
def default_sweep(tmp_path_factory):
    """A small sweep through `make run`'s path (each cell in its own child process): its folder and the run's output."""
    root = tmp_path_factory.mktemp("e2e")
    return root, run_tunebench(DEFAULT_SWEEP, root)


def test_sweep_records_skip_report_and_claim(default_sweep):
    tmp_path, first = default_sweep
    args = DEFAULT_SWEEP
    assert first.returncode == 0, first.stderr[-3000:]
    records = run_records(tmp_path, "e2e")
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    assert {(r["cell"]["method"], r["cell"]["seed"]) for r in records} == {("full", 0), ("lora", 0)}
    job_dirs = [p.name for p in (tmp_path / "results" / "hydra" / "e2e").glob("*/*_*")]
    assert sorted(d.split("_", 1)[1] for d in job_dirs) == sorted(r["run_id"] for r in records)
    assert "sweep 'e2e': 2 cells: 2 ok" in first.stdout + first.stderr

    start = time.perf_counter()
    again = run_tunebench(args, tmp_path)
    log = again.stdout + again.stderr
    assert again.returncode == 0 and log.count("skip ") == 2 and "2 skipped" in log
    assert time.perf_counter() - start < 120  # no model is loaded for a skipped cell (generous: CI load)

    report = run_tunebench(["report", "results/runs/e2e"], tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    table = (tmp_path / "results" / "tables" / "e2e" / "results.md").read_text()
    assert table.count("| rotten_tomatoes |") == 2 and "full" in table and "lora" in table
    assert (tmp_path / "results" / "tables" / "e2e" / "results.tex").exists()
    assert list((tmp_path / "results" / "plots" / "e2e").glob("*.png"))
    claim = run_tunebench(["claim", "results/runs/e2e"], tmp_path)
    assert claim.returncode == 0 and "lora vs full" in claim.stdout
    verdicts = json.loads((tmp_path / "results" / "tables" / "e2e" / "claim.json").read_text())[0]["parts"]
    assert verdicts[1]["verdict"] == "supported"  # LoRA trains 0.33% of MiniLM's parameters


def test_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    out = run_tunebench(["run", "-m", "method=lora", "method.impl=peft,nosuch", *TINY, IN_PROCESS, "sweep=fail"], tmp_path)
    assert out.returncode == 1  # the sweep finished, but not every cell is ok
    statuses = sorted(r["status"] for r in run_records(tmp_path, "fail"))
    assert statuses == ["failed", "ok"]
    status = run_tunebench(["status", "results/runs/fail"], tmp_path)
    assert status.returncode == 1
    assert "unknown method 'nosuch'" in status.stdout and "1 failed, 1 ok" in status.stdout


def test_killed_sweep_resumes_with_exactly_one_record_per_cell(tmp_path):
    args = [*TUNEBENCH, "run", "-m", "method=full,lora", "seed=0", *TINY, IN_PROCESS, "sweep=kill"]
    env = {**os.environ, "TUNEBENCH_RESULTS": str(tmp_path / "results")}
    runs = tmp_path / "results" / "runs" / "kill"
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and len(list(runs.glob("*.json"))) < 1:
            time.sleep(0.2)
        time.sleep(1.5)  # now inside the second cell
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert len(done_before) == 1
    for p in runs.glob("*.json"):
        json.loads(p.read_text())  # nothing partial
    resumed = run_tunebench(args[len(TUNEBENCH):], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = run_records(tmp_path, "kill")
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    # no temp files left (a cell's lock file beside its note stays: it is the lock, not a temp file)
    assert not [p for p in runs.rglob("*") if p.is_file() and not p.name.endswith(".json")
                and not (p.parent.name == ".cells" and p.suffix == ".lock")]
    assert len(list((runs / ".cells").glob("*.lock"))) == 2
    assert len(list((runs / ".cells").glob("*.json"))) == 2  # the sweeper's note of each launched cell
    assert all(runs.joinpath(n).stat().st_mtime_ns == t for n, t in done_before.items())  # finished cells kept
    assert (resumed.stdout + resumed.stderr).count("skip ") == len(done_before)


def test_paper_check_counts_through_the_cli(tmp_path):
    out = run_tunebench(["run", "-m", "experiment=paper_roberta", IN_PROCESS], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    cost = {r["cell"]["method"]: r["cost"] for r in run_records(tmp_path, "paper_roberta")}
    assert 124.5e6 < cost["full"]["params_trainable"] < 125.5e6
    assert cost["lora"]["params_trainable_excl_head"] == 294_912
    assert cost["prefix"]["params_trainable_excl_head"] == 10 * 12 * 2 * 768


def test_methods_learn_on_real_sentences(tmp_path):
    """The default experiment's data (2,000 sentences, batch 16), smaller held-out sets (100 / 300), sentences cut to
    24 tokens (~60% less compute than the default 64; most keep their sentiment): every core method ends clearly
    above the 50% majority baseline. Prefix tuning needs the experiment's 125 steps (its validation accuracy at
    step 84 was 0.61-0.69 in the published sweep); full fine-tuning and LoRA get there in 60. Measured here: full
    0.747, LoRA 0.697, prefix 0.713 (at 32 tokens, 200 / 400 held out: 0.768, 0.733, 0.665)."""
    common = ["logger=none", "data.train_size=2000", "data.validation_size=100", "data.test_size=300", "data.max_length=24",
              "train.batch_size=16", "train.evals=2", IN_PROCESS, "sweep=learn"]
    for cells in (["method=full,lora", "train.max_steps=60"], ["method=prefix"]):
        out = run_tunebench(["run", "-m", *cells, *common], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    records = run_records(tmp_path, "learn")
    accuracy = {r["cell"]["method"]: r["metrics"]["test_acc"] for r in records}
    assert sorted(accuracy) == ["full", "lora", "prefix"]
    assert {r["cell"]["method"]: r["metrics"]["steps"] for r in records} == {"full": 60, "lora": 60, "prefix": 125}
    assert all(acc >= 0.6 for acc in accuracy.values()), accuracy


def test_wandb_logger_runs_offline(tmp_path):
    out = run_tunebench(["run", *[a for a in TINY if not a.startswith("logger")], "logger=wandb", "method=lora", "sweep=wb"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    [record] = run_records(tmp_path, "wb")
    assert record["status"] == "ok"
    offline_runs = list((tmp_path / "results" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and list(offline_runs[0].glob("*.wandb"))


def test_peak_memory_does_not_depend_on_the_cells_before_it(tmp_path, default_sweep):
    """Each cell of a local multirun runs in its own process with a fixed malloc mmap threshold, so a LoRA
    cell measures the same peak alone and after a full fine-tuning cell (in one shared process, without the
    fixed threshold, the first cell of a sweep measured up to 12x the others). Separate fresh processes of
    the same cell still differ a little (kernel peak of the whole resident set, which includes the library
    pages a run maps): 459-476 MB in ten local runs, 455 vs 504 MB once in CI, so the bound is 20%, far
    below the order effect it guards against and below LoRA's gap to full fine-tuning (~465 vs ~750 MB)."""
    alone = run_tunebench(["run", "-m", "method=lora", "seed=0", *TINY, "sweep=alone"], tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    [first] = run_records(tmp_path, "alone")
    sweep_root, sweep_run = default_sweep  # full fine-tuning, then LoRA (seed 0)
    assert sweep_run.returncode == 0, sweep_run.stderr[-3000:]
    after = [r for r in run_records(sweep_root, "e2e") if r["cell"]["seed"] == 0]
    second = next(r for r in after if r["cell"]["method"] == "lora")
    full = next(r for r in after if r["cell"]["method"] == "full")
    assert first["run_id"] == second["run_id"]  # the same cell
    assert second["started_at"] > full["finished_at"]  # which ran after a full fine-tuning cell
    a, b = first["cost"]["peak_memory_mb"], second["cost"]["peak_memory_mb"]
    assert abs(a - b) / a < 0.20, (a, b)
    assert b < 0.8 * full["cost"]["peak_memory_mb"], (b, full["cost"]["peak_memory_mb"])
    assert first["cost"]["malloc_mmap_threshold"] == 4 * 1024 * 1024
    machine = first["env"]["machine"]
    assert machine["cpu_model"] and machine["blas"] and machine["torch_cpu_capability"] and machine["torch_threads"] >= 1
