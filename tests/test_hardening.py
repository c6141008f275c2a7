"""Hostile but realistic input (issue 14): every refusal names the key / file / class, happens before any
work, and loses nothing already written; two sweeps over the same cells run each cell once."""
import json
import os
import re
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tunebench.app import artefacts
from tunebench.app.runner import run_cell
from tunebench.core import record as rec
from tunebench.core.checkpoint import RunCheckpoint
from tunebench.core.config_check import ConfigError, check_run_config
from tunebench.datasets import load
from tunebench.datasets.files import DataError

from .conftest import IN_PROCESS, TINY, TUNEBENCH, run_tunebench
from .test_tasks import data_cfg


def compose_cfg(tmp_path, monkeypatch, *overrides):
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    with initialize_config_module("tunebench.conf", version_base="1.3"):
        return compose("config", overrides=[*TINY, "sweep=h", *overrides])


def only_record(tmp_path, sweep="h"):
    [record] = list(rec.iter_records(tmp_path / "results" / "runs" / sweep))
    return record


# -- configs checked before work, the key named ------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0: expected a whole number >= 1"),
    ("method.lr=-1", "method.lr=-1: expected a number > 0"),
    ("method.lr=abc", "method.lr='abc': expected a number"),
    ("seed=abc", "seed='abc': expected a whole number"),
    ("seed=-1", "seed=-1: expected a number >= 0"),
    ("data.train_size=0", "data.train_size=0: expected a number > 0"),
])
def test_a_bad_value_fails_in_one_line_naming_the_key(tmp_path, monkeypatch, override, message):
    cfg = compose_cfg(tmp_path, monkeypatch, override)
    assert run_cell(cfg) == "failed"
    error = only_record(tmp_path)["error"]
    assert message in error["message"]
    if not override.startswith("train."):  # the schema refuses before any work: no traceback to show
        assert error["type"] == "ConfigError" and error["traceback"] == ""


def test_a_mandatory_value_left_out_is_named():
    cfg = OmegaConf.create({"seed": 0, "force": False, "count_only": False, "method": {"name": "m", "lr": "???"}})
    with pytest.raises(ConfigError, match=r"method.lr=\?\?\?: expected a value"):
        check_run_config(cfg)


def test_train_size_larger_than_the_split_is_refused_not_capped():
    with pytest.raises(ValueError) as info:
        load(data_cfg("rotten_tomatoes", train_size=100000))
    assert "data.train_size=100000: only 4398 examples are left for training" in str(info.value)
    assert len(load(data_cfg("rotten_tomatoes", train_size=4398)).train) == 4398  # all of it is allowed


def test_an_invalid_cell_of_a_multirun_is_failed_and_the_summary_still_prints(tmp_path, tiny_bert_dir):
    out = run_tunebench(["run", "-m", "seed=abc,0", f"model.name={tiny_bert_dir}", "method=lora", *TINY, IN_PROCESS,
                         "sweep=badseed"], tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in log
    assert "sweep 'badseed': 2 cells: 1 ok, 1 failed" in log
    statuses = {r["config"]["seed"]: r["status"] for r in rec.iter_records(tmp_path / "results" / "runs" / "badseed")}
    assert statuses == {"abc": "failed", 0: "ok"}


# -- folders checked before work; a record is never thrown away ---------------------------------------------
def test_an_unwritable_results_root_stops_before_hydra_in_one_line(tmp_path):
    (tmp_path / "blocker").write_text("a file where the results folder should go")
    assert_refused_in_one_line(tmp_path, tmp_path / "blocker" / "results", "Not a directory")


def assert_refused_in_one_line(cwd, results, reason: str) -> None:
    """`tunebench run` with TUNEBENCH_RESULTS=`results` exits 2 before Hydra, with one line giving `reason`."""
    env = {**os.environ, "TUNEBENCH_RESULTS": str(results)}
    out = subprocess.run([*TUNEBENCH, "run", "logger=none"], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"tunebench run: TUNEBENCH_RESULTS: cannot write to {results} ({reason}); "
        "point TUNEBENCH_RESULTS or paths.root at a writable folder"]


@pytest.fixture
def full_disk(tmp_path):
    """A real file system with no space left: a 256 KiB tmpfs, filled (needs the right to mount, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tunebench-test", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        reason = f"cannot mount a tmpfs here: {done.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        with open(mount / "filler", "wb", buffering=0) as filler:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    filler.write(bytes(4096))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_stops_before_hydra_in_one_line(tmp_path, full_disk):
    """An empty file can still be created on a full disk, so the old probe passed and Hydra failed saving its
    config.yaml with two chained tracebacks."""
    results = full_disk / "results"
    assert_refused_in_one_line(tmp_path, results, "No space left on device")
    assert [p.name for p in results.iterdir()] == []


def test_an_unwritable_record_folder_is_refused_before_training(tmp_path, monkeypatch, caplog):
    (tmp_path / "blocker").write_text("")
    cfg = compose_cfg(tmp_path, monkeypatch, f"paths.runs={tmp_path}/blocker/runs")
    assert run_cell(cfg) == "failed"
    assert "not started: paths.runs: cannot write to" in caplog.text and "run " not in caplog.text.split("not started")[1]
    assert "train lora" not in caplog.text and not (tmp_path / "results" / "checkpoints" / "h").exists()


def test_a_record_its_folder_refuses_at_the_end_is_kept_at_a_named_path(tmp_path, caplog):
    path = tmp_path / "gone" / "sweep" / "abc.json"
    (tmp_path / "gone").write_text("the folder was replaced while the run trained")
    record = {**rec.new_record({"seed": 0}, "abc", "sweep"), "status": "ok"}
    kept = rec.write_record(path, record)
    assert kept == rec.fallback_path(path) and rec.read_record(kept)["run_id"] == "abc"
    assert f"kept it at {kept}" in caplog.text
    kept.unlink()


def test_records_and_notes_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        rec.write_atomic(tmp_path / "r.json", {"run_id": "r", "status": "ok"})
        os.umask(0o027)
        rec.write_atomic(tmp_path / "s.json", {"run_id": "s", "status": "ok"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "s.json").stat().st_mode) == 0o640


def test_a_cleared_checkpoint_leaves_no_temp_file_and_no_empty_folder(tmp_path):
    checkpoint = RunCheckpoint(tmp_path / "checkpoints" / "sweep" / "rid" / "train.pt")
    checkpoint.save({"step": 1})
    (checkpoint.path.parent / ".train.pt.4242.tmp").write_bytes(b"x" * 1024)  # a save a kill interrupted
    checkpoint.clear()
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_artefacts_names_a_truncated_record_in_one_line(tmp_path, capsys):
    sweep = tmp_path / "runs" / "s"
    sweep.mkdir(parents=True)
    (sweep / "cut.json").write_text('{"run_id": "cut", "sta')
    assert artefacts.main([str(sweep)]) == 2
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"tunebench artefacts: {sweep / 'cut.json'}: not a valid JSON record") and "\n" not in out


# -- small data: the file, the column and the class named ---------------------------------------------------
def test_a_header_only_file_is_named(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(DataError, match=r"empty.csv: no data rows \(a header only\?\); expected labelled rows in column 'label'"):
        load(data_cfg("files", train=str(tmp_path / "empty.csv")))


def test_a_one_row_file_names_the_split_it_cannot_carve(tmp_path):
    (tmp_path / "one.csv").write_text("text,label\ngood movie,pos\n")
    with pytest.raises(DataError) as info:
        load(data_cfg("files", train=str(tmp_path / "one.csv")))
    assert str(info.value).startswith(f"{tmp_path / 'one.csv'} (1 rows): the validation split is empty "
                                      "(carved from train by data.validation_size=0.1)")


def test_a_class_with_one_example_is_named_with_its_file_and_column(tmp_path):
    rows = [f"sentence {i},{'pos' if i % 2 else 'neg'}" for i in range(40)] + ["a lonely sentence,neutral"]
    (tmp_path / "t.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError) as info:
        load(data_cfg("files", train=str(tmp_path / "t.csv")))
    assert str(info.value).startswith(f"{tmp_path / 't.csv'}: class 'neutral' in column 'label' has 1 example(s), "
                                      "too few to carve data.test_size=0.2 stratified")


# -- one runner per cell ------------------------------------------------------------------------------------
def test_two_identical_sweeps_started_together_run_each_cell_once(tmp_path, tiny_bert_dir):
    args = ["run", "-m", "method=full,lora", "seed=0", f"model.name={tiny_bert_dir}", *TINY, IN_PROCESS, "sweep=twice"]
    with ThreadPoolExecutor(2) as pool:  # two processes at once (forked with the imports done: run_tunebench)
        sweeps = list(pool.map(lambda _: run_tunebench(args, tmp_path), range(2)))
    logs = [s.stdout + s.stderr for s in sweeps]
    assert [s.returncode for s in sweeps] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    started = [line for log in logs for line in log.splitlines() if "tunebench][INFO] - run " in line]
    records = list(rec.iter_records(tmp_path / "results" / "runs" / "twice"))
    assert len(records) == 2 and {r["status"] for r in records} == {"ok"}
    assert sorted(line.split(" - run ")[1].split(":")[0] for line in started) == sorted(r["run_id"] for r in records)
    hydra_dirs = list((tmp_path / "results" / "hydra" / "twice").iterdir())
    assert len(hydra_dirs) == 2  # one output folder per invocation, even when started in the same second
    summaries = [re.search(r"sweep 'twice': 2 cells: (.*)  \(records", log).group(1) for log in logs]
    ok_counts = [int(m.group(1)) if (m := re.match(r"(\d+) ok", summary)) else 0 for summary in summaries]
    assert sum(ok_counts) == 2 and ok_counts == [sum(1 for line in started if line in log) for log in logs]


def test_a_held_cell_lock_makes_a_second_runner_skip_it(tmp_path, monkeypatch, tiny_bert_dir):
    cfg = compose_cfg(tmp_path, monkeypatch, f"model.name={tiny_bert_dir}", "method=lora")
    rid = rec.run_id({k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
                      for k in cfg if k != "hydra"})
    with rec.cell_lock(tmp_path / "results" / "runs" / "h", rid) as mine:
        assert mine
        assert run_cell(cfg) == "elsewhere"
    assert not (tmp_path / "results" / "runs" / "h" / f"{rid}.json").exists()
    assert run_cell(cfg) == "ok"
