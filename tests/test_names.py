"""Names that become paths cannot put a file outside the results folder: an unsafe sweep name is refused before
anything is written, and a task name only ever labels a file inside it."""
import pytest

from tunebench.core.names import UnsafeName, check_component, file_component

from .conftest import run_tunebench


def files_under(folder):
    return {p for p in folder.rglob("*")}


@pytest.mark.parametrize("sweep", ["../../escape", "ABSOLUTE", "..", "", "a/b"])
def test_an_unsafe_sweep_name_is_refused_in_one_line_before_anything_is_written(tmp_path, sweep):
    work = tmp_path / "deep" / "work"
    work.mkdir(parents=True)
    if sweep == "ABSOLUTE":
        sweep = str(tmp_path / "abs" / "dir")
    before = files_under(tmp_path)
    proc = run_tunebench(["run", f"sweep={sweep}", "logger=none", "count_only=true"], work, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"tunebench run: sweep={sweep!r}: expected a plain name (letters, digits and . _ + = , @ -, starting with a "
        f"letter or digit, at most 128 characters): it names a folder under the results root"]
    assert files_under(tmp_path) == before  # nothing at all, inside the results root or out of it


def test_an_unsafe_sweep_set_by_a_config_is_refused_by_the_run_itself(tmp_path, monkeypatch, caplog):
    from tunebench.app.runner import run_cell

    from .test_runner import compose_cfg

    cfg = compose_cfg(tmp_path, monkeypatch, "count_only=true")
    cfg.sweep = "../outside"
    assert run_cell(cfg) == "failed"
    assert "sweep='../outside': expected a plain name" in caplog.text
    assert not (tmp_path / "results").exists() and not (tmp_path / "outside").exists()


def test_a_task_name_with_path_parts_only_labels_a_plot_inside_the_results_folder(tmp_path):
    from tunebench.app.report import main as report_main

    from .test_report_claim import full_runs, write_run

    sweep = tmp_path / "results" / "runs" / "s"
    task = "../../../../outside_task"
    for seed in (0, 1):
        write_run(sweep, "lora", seed, 0.8, task=task)
    full_runs(sweep, [0.81, 0.82], task=task)
    before = files_under(tmp_path)
    assert report_main([str(sweep)]) == 0
    created = files_under(tmp_path) - before
    assert created and all((tmp_path / "results") in p.parents for p in created), sorted(created)
    [plot] = [p for p in created if p.suffix == ".png"]
    assert plot.parent == tmp_path / "results" / "plots" / "s" and "outside_task" in plot.name


def test_names_map_to_distinct_safe_components():
    assert check_component("quick_peft", "sweep") == "quick_peft"
    with pytest.raises(UnsafeName, match="sweep='-rf'"):
        check_component("-rf", "sweep")
    a, b = file_component("../x"), file_component("..\\x")
    assert a != b and "/" not in a and "\\" not in b and not a.startswith(".")
    assert file_component("rotten_tomatoes") == "rotten_tomatoes" and file_component("") .startswith("name-")
