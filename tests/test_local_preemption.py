"""SIGUSR1 in a run no launcher requeues (a local `tunebench run`): the run checkpoints at the next step boundary
and stops with a failed record that says so, and the same command resumes it to the uninterrupted result."""
import pytest

from tunebench.app.runner import run_cell

from .test_checkpoint import _preempt_at
from .test_runner import compose_cfg, records


def test_sigusr1_outside_a_launcher_checkpoints_stops_and_resumes(tmp_path, monkeypatch, tiny_bert_dir):
    overrides = [f"model.name={tiny_bert_dir}", "method=full", "train.batch_size=8", "train.evals=4"]
    assert run_cell(compose_cfg(tmp_path / "ref", monkeypatch, *overrides)) == "ok"
    [uninterrupted] = records(tmp_path / "ref")

    cfg = compose_cfg(tmp_path, monkeypatch, *overrides)
    _preempt_at(monkeypatch, 3)  # no launcher handler installed: the signal's default action would kill the process
    assert run_cell(cfg) == "failed"
    [stopped] = records(tmp_path)
    assert stopped["error"]["type"] == "Preempted" and stopped["error"]["checkpoint_kept"] is True
    assert "run the same cell again to resume" in stopped["error"]["message"]
    assert (tmp_path / "results" / "checkpoints" / "t" / uninterrupted["run_id"] / "train.pt").exists()

    monkeypatch.undo()
    monkeypatch.setenv("TUNEBENCH_RESULTS", str(tmp_path / "results"))
    assert run_cell(cfg) == "ok"
    [resumed] = records(tmp_path)
    assert resumed["resumed_from_step"] == 3
    assert resumed["metrics"]["test_correct"] == uninterrupted["metrics"]["test_correct"]
    assert resumed["curve"][-1]["train_loss"] == pytest.approx(uninterrupted["curve"][-1]["train_loss"], rel=1e-5)
