"""Keys read before a run starts (its processes, checkpoints, child process, collective timeout) are checked with
the others: one line naming the key in a failed record, no traceback, the sweep goes on."""
import pytest

from tunebench.app.runner import run_cell
from tunebench.core.record import iter_records

from .test_runner import compose_cfg


@pytest.mark.parametrize("override, message", [
    ("train.processes=abc", "train.processes='abc': expected a whole number >= 1"),
    ("train.checkpoint_every=abc", "train.checkpoint_every='abc': expected auto or a whole number >= 0"),
    ("cell_process=maybe", "cell_process='maybe': expected"),
    ("train.dist_timeout_s=abc", "train.dist_timeout_s='abc': expected a positive number"),
])
def test_a_key_read_before_the_run_is_refused_in_a_failed_record_naming_it(tmp_path, monkeypatch, override, message):
    cfg = compose_cfg(tmp_path, monkeypatch, "count_only=true", override)
    assert run_cell(cfg) == "failed"
    [record] = iter_records(tmp_path / "results" / "runs" / "t")
    assert record["error"]["type"] == "ConfigError" and record["error"]["message"].startswith(message), record["error"]


@pytest.mark.parametrize("memory, verdict", [(800.0, "supported"), (810.0, "refuted")])
def test_a_ratio_the_same_on_every_seed_is_judged_as_the_value_it_is(tmp_path, memory, verdict):
    from .test_report_claim import full_runs, parts_of, run_check, write_run

    sweep = tmp_path / "runs" / "s"
    for seed in (0, 1, 2):
        write_run(sweep, "lora", seed, 0.8, memory=memory)
    full_runs(sweep, [0.8, 0.81, 0.79], memory=1000.0)
    part = parts_of(run_check(sweep), "lora")["peak memory"]
    assert (part["verdict"], part["verdict_adjusted"], part["p_value"]) == (verdict, verdict, None)
    assert part["ci_low"] == part["ci_high"] == pytest.approx(memory / 1000) and "the same ratio on every seed" in part["note"]
