"""launcher=parallel: several cells of a local multirun at once (Hydra's joblib launcher), each in its own child
process with its own threads, one record per cell, a failing cell named, the sweep summary from the records."""
import json

from .conftest import TINY, run_tunebench


def test_cells_run_at_once_each_with_its_record_and_threads_and_a_failing_one_is_named(tmp_path):
    args = ["run", "-m", "launcher=parallel", "hydra.launcher.n_jobs=2", "method=lora", "seed=0,1,abc", *TINY,
            "sweep=par"]
    out = run_tunebench(args, tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 1, log  # a failed cell
    assert "sweep 'par': 3 cells: 2 ok, 1 failed" in log
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs" / "par").glob("*.json")]
    assert sorted(str(r["config"]["seed"]) for r in records) == ["0", "1", "abc"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "seed" in failed["error"]["message"]
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["started_at"])
    assert len(ok) == 2
    assert ok[1]["started_at"] < ok[0]["finished_at"]  # the two ran at the same time
    for record in ok:  # each in a child process that took the cell's threads, and says it shared the machine
        assert record["env"]["torch_threads"] == 1 and record["env"]["cells_at_once"] == 2
        assert record["cost"]["peak_memory_mb"] > 0


def test_cells_at_once_is_the_cores_this_process_may_use_over_the_threads(monkeypatch):
    import os

    from tunebench.app.run import _cells_at_once

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [_cells_at_once(t) for t in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert _cells_at_once(None) == 1  # threads null: every core for one cell


def test_a_killed_parallel_sweep_resumes_exactly_the_missing_cells(tmp_path):
    """Killed (the whole process group, as a lost session would be) while cells run two at a time; the same command
    runs the cells without an ok record, once each, and leaves the finished ones untouched."""
    import os
    import re
    import signal
    import subprocess
    import time

    from .conftest import TUNEBENCH

    args = ["run", "-m", "launcher=parallel", "hydra.launcher.n_jobs=2", "method=full,lora", "seed=0,1", *TINY,
            "sweep=pkill"]
    env = {**os.environ, "TUNEBENCH_RESULTS": str(tmp_path / "results")}
    runs = tmp_path / "results" / "runs" / "pkill"
    proc = subprocess.Popen([*TUNEBENCH, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not list(runs.glob("*.json")):
            time.sleep(0.2)
        time.sleep(1.5)  # other cells are running now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    assert 1 <= len(done_before) < 4
    resumed = run_tunebench(args, tmp_path)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-3000:]
    records = [json.loads(p.read_text()) for p in runs.glob("*.json")]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert all(runs.joinpath(n).stat().st_mtime_ns == t for n, t in done_before.items())  # finished cells kept
    assert log.count("skip ") == len(done_before)
    started = set(re.findall(r"\] - run ([0-9a-f]{16}): method=", log))
    assert started == {r["run_id"] for r in records} - {n[:-5] for n in done_before}  # each missing cell, once
    assert f"sweep 'pkill': 4 cells: {4 - len(done_before)} ok, {len(done_before)} skipped" in log
