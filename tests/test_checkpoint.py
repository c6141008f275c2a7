"""In-run checkpoints (resume after preemption), the artefact cache's lock, and `missing` cells."""
import multiprocessing
import os
import signal

import pytest

import tunebench.methods.classifier as classifier
from tunebench.core.cache import cached
from tunebench.core.checkpoint import AT_EVALS, RunCheckpoint, checkpoint_every
from tunebench.app.runner import run_cell

from .cache_worker import build_in_process
from .conftest import IN_PROCESS, TINY, run_tunebench
from .test_runner import compose_cfg, records


class Requeued(BaseException):
    """What submitit's handler does after requeueing: leave the process (it calls sys.exit)."""


def run_until_requeued(cfg) -> None:
    """Run a cell under a launcher whose preemption handler checkpoints and requeues (leaves the process)."""
    def launcher_handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue
        raise Requeued()

    previous = signal.signal(signal.SIGUSR1, launcher_handler)
    try:
        with pytest.raises(Requeued):
            run_cell(cfg)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def _preempt_at(monkeypatch, step_to_signal: int) -> list:
    """Send SIGUSR1 to ourselves during training step `step_to_signal`, like `scancel --signal=USR1`."""
    calls = []
    real_loss = classifier.ClassifierJob.loss

    def loss_then_maybe_signal(self, micro):
        calls.append(1)
        out = real_loss(self, micro)
        if len(calls) == step_to_signal:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(classifier.ClassifierJob, "loss", loss_then_maybe_signal)
    return calls


def test_preempted_run_resumes_from_its_checkpoint_with_identical_results(tmp_path, monkeypatch, tiny_bert_dir):
    overrides = [f"model.name={tiny_bert_dir}", "method=full", "train.batch_size=8", "train.evals=4"]
    reference = compose_cfg(tmp_path / "ref", monkeypatch, *overrides)
    assert run_cell(reference) == "ok"
    [uninterrupted] = records(tmp_path / "ref")

    cfg = compose_cfg(tmp_path, monkeypatch, *overrides)
    _preempt_at(monkeypatch, 3)
    run_until_requeued(cfg)
    assert not list((tmp_path / "results" / "runs" / "t").glob("*.json"))  # no record yet: the job was requeued
    checkpoint = tmp_path / "results" / "checkpoints" / "t" / uninterrupted["run_id"] / "train.pt"
    assert checkpoint.exists()

    monkeypatch.undo()
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    calls = _preempt_at(monkeypatch, 10**6)  # count the steps the requeued job runs
    assert run_cell(cfg) == "ok"
    [resumed] = records(tmp_path)
    assert resumed["resumed_from_step"] == 3 and uninterrupted["resumed_from_step"] == 0
    assert len(calls) == resumed["metrics"]["steps"] - 3 == 5
    # Same data order, optimizer state and dropout RNG: the same model as the uninterrupted run.
    assert resumed["metrics"]["test_correct"] == uninterrupted["metrics"]["test_correct"]
    assert [p["val_acc"] for p in resumed["curve"]] == [p["val_acc"] for p in uninterrupted["curve"]]
    assert resumed["curve"][-1]["train_loss"] == pytest.approx(uninterrupted["curve"][-1]["train_loss"], rel=1e-5)
    assert resumed["cost"]["train_samples"] == 64
    assert not checkpoint.exists()  # removed once the record is written


def _preempt_engine_at(monkeypatch, step_to_signal: int) -> list:
    """SIGUSR1 during engine step `step_to_signal`, whatever the family."""
    from tunebench.core.engine import Engine

    steps, real_update = [], Engine._update

    def update_then_maybe_signal(self, step):
        steps.append(step)
        out = real_update(self, step)
        if step == step_to_signal:
            os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(Engine, "_update", update_then_maybe_signal)
    return steps


FAMILIES = {
    "clip": ["data=digits_captions", "model=clip_effnet_minilm", "method=clip_lora", "train.max_steps=4",
             "train.evals=2", "threads=1"],
    "fewshot": ["data=digits", "model=small_cnn", "data.train_size=null", "data.validation_size=180", "data.test_size=360",
                "data.pool_size=360", "method=maml", "method.iterations=4", "method.meta_batch=2", "method.val_tasks=4",
                "method.test_tasks=20", "threads=1"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_that_trains_in_steps_resumes_to_the_same_result(family, tmp_path, monkeypatch):
    overrides = FAMILIES[family]
    assert run_cell(compose_cfg(tmp_path / "ref", monkeypatch, *overrides)) == "ok"
    [uninterrupted] = records(tmp_path / "ref")
    cfg = compose_cfg(tmp_path, monkeypatch, *overrides)
    _preempt_engine_at(monkeypatch, 2)
    run_until_requeued(cfg)
    monkeypatch.undo()
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    steps = _preempt_engine_at(monkeypatch, 10**6)
    assert run_cell(cfg) == "ok"
    [resumed] = records(tmp_path)
    assert resumed["resumed_from_step"] == 2 and steps == [3, 4]
    assert resumed["metrics"]["test_correct"] == uninterrupted["metrics"]["test_correct"]
    assert [p["val_acc"] for p in resumed["curve"]] == [p["val_acc"] for p in uninterrupted["curve"]]


def test_checkpoint_every_auto_is_on_only_under_slurm(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, "train.max_steps=100", "train.evals=4")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert checkpoint_every(cfg) == 0
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    assert checkpoint_every(cfg) == AT_EVALS
    checkpoint = RunCheckpoint(tmp_path / "train.pt", AT_EVALS)
    assert checkpoint.due(25, evaluated=True) and not checkpoint.due(24, evaluated=False)
    cfg.train.checkpoint_every = 10
    assert checkpoint_every(cfg) == 10 and RunCheckpoint(tmp_path / "x.pt", 10).due(30, evaluated=False)
    cfg.train.checkpoint_every = "often"
    with pytest.raises(ValueError, match="train.checkpoint_every='often': expected 'auto' or a number of steps"):
        checkpoint_every(cfg)


def test_unreadable_checkpoint_is_ignored(tmp_path):
    path = tmp_path / "train.pt"
    path.write_bytes(b"not a checkpoint")
    assert RunCheckpoint(path).load() is None


def test_cache_entry_is_built_once_by_concurrent_processes(tmp_path):
    counter = tmp_path / "builds.txt"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(build_in_process, [(tmp_path / "cache", counter)] * 4)
    assert len(counter.read_text().splitlines()) == 1  # one build, three waits
    assert len({path for path, _, _ in results}) == 1
    assert sorted(built for _, built, _ in results) == [False, False, False, True]
    assert {text for _, _, text in results} == {"synthetic data"}
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]
    # A later run finds it without building; a different key builds a new entry.
    assert build_in_process((tmp_path / "cache", counter))[1] is False
    other = cached(tmp_path / "cache", "synthetic", {"ratio": 2.0, "data": "abc", "seed": 0}, lambda f: None)
    assert other.built and other.path != results[0][0]


def test_failed_build_leaves_no_entry(tmp_path):
    def broken(folder):
        (folder / "half.txt").write_text("partial")
        raise RuntimeError("generator diverged")

    with pytest.raises(RuntimeError, match="generator diverged"):
        cached(tmp_path, "gan", {"k": 1}, broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    assert cached(tmp_path, "gan", {"k": 1}, lambda f: (f / "ok.txt").write_text("ok")).built


@pytest.mark.slow
def test_status_lists_launched_cells_without_a_record_as_missing(tmp_path):
    # count_only: the cells only have to launch and write records (status reads the notes and the records)
    out = run_tunebench(["run", "-m", "method=lora", "seed=0,1", "count_only=true", *TINY, IN_PROCESS, "sweep=miss"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep 'miss': 2 cells: 2 ok" in out.stdout
    sweep = tmp_path / "results" / "runs" / "miss"
    assert len(list((sweep / ".cells").glob("*.json"))) == 2
    lost = sorted(sweep.glob("*.json"))[0]
    lost.unlink()  # as if SLURM lost the job before it wrote its record
    status = run_tunebench(["status", "results/runs/miss"], tmp_path)
    assert status.returncode == 1
    assert "1 missing, 1 ok" in status.stdout
    [row] = [line for line in status.stdout.splitlines() if line.startswith("| missing")]
    assert lost.stem in row and "no record; launched as: method=lora seed=" in row
