"""launcher=parallel: several cells of a local multirun at once (Hydra's joblib launcher), each in its own child
process with its own threads, one record per cell, a failing cell named, a killed sweep resumed exactly."""
import json
import os
import re
import signal
import subprocess
import time

from .conftest import TINY, TUNEBENCH, run_tunebench


def test_a_killed_parallel_sweep_resumes_exactly_the_missing_cells_two_at_a_time(tmp_path):
    """Killed (the whole process group, as a lost session would be) while cells run two at a time; the same command
    runs the cells without a record, once each, two at a time, names the failing one, and leaves finished ones
    untouched."""
    args = ["run", "-m", "launcher=parallel", "hydra.launcher.n_jobs=2", "method=lora", "seed=0,1,2,abc", *TINY,
            "sweep=par"]
    env = {**os.environ, "TUNEBENCH_RESULTS": str(tmp_path / "results")}
    runs = tmp_path / "results" / "runs" / "par"
    proc = subprocess.Popen([*TUNEBENCH, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 900
        while time.time() < deadline and not [r for r in _records(runs) if r["status"] == "ok"]:
            time.sleep(0.2)
        time.sleep(1.5)  # the next cells are running now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.json")}
    ok_before = sum(r["status"] == "ok" for r in _records(runs))
    assert 1 <= ok_before <= 2

    resumed = run_tunebench(args, tmp_path)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 1, log[-3000:]  # the seed=abc cell failed
    records = _records(runs)
    assert sorted(str(r["config"]["seed"]) for r in records) == ["0", "1", "2", "abc"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "seed" in failed["error"]["message"]
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: r["started_at"])
    assert len(ok) == 3
    kept = {n for n, t in done_before.items() if runs.joinpath(n).stat().st_mtime_ns == t}
    assert {f"{r['run_id']}.json" for r in ok[:ok_before]} <= kept  # finished cells untouched
    assert log.count("skip ") == ok_before
    started = set(re.findall(r"\] - run ([0-9a-f]{16}): method=", log))
    assert started == {r["run_id"] for r in ok[ok_before:]}  # each missing cell, once
    assert f"sweep 'par': 4 cells: {3 - ok_before} ok, {ok_before} skipped, 1 failed" in log
    assert any(b["started_at"] < a["finished_at"] for a, b in zip(ok, ok[1:]))  # two at a time
    for record in ok:  # each in a child process that took the cell's threads, and says it shared the machine
        assert record["env"]["torch_threads"] == 1 and record["env"]["cells_at_once"] == 2
        assert record["cost"]["peak_memory_mb"] > 0 and record["cost"]["train_cpu_seconds"] > 0


def _records(runs) -> list[dict]:
    out = []
    for path in runs.glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except ValueError:
            continue
    return out


def test_cells_at_once_is_the_cores_this_process_may_use_over_the_threads(monkeypatch):
    from tunebench.app.run import _cells_at_once

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [_cells_at_once(t) for t in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert _cells_at_once(None) == 1  # threads null: every core for one cell
