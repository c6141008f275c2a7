"""Writes are whole and records never lost or shared: stale temp files of a cell are removed when it starts, a record
its folder refuses goes to a folder private to the user and the results root, and the run says so by failing."""
import os
import stat

import pytest

from tunebench.app.runner import run_cell
from tunebench.core import record as rec

from .test_runner import compose_cfg


def test_a_killed_record_writes_temp_file_is_removed_when_the_cell_runs_again(tmp_path, monkeypatch):
    cfg = compose_cfg(tmp_path, monkeypatch, "count_only=true")
    rid = rec.run_id(__import__("tunebench.app.runner", fromlist=["x"]).semantic_config(cfg))
    sweep = tmp_path / "results" / "runs" / "t"
    sweep.mkdir(parents=True)
    leftover, other = sweep / f".{rid}.k2j4.tmp", sweep / ".someothercell.x1.tmp"
    leftover.write_text("{half a rec")
    other.write_text("{")
    assert run_cell(cfg) == "ok"
    assert not leftover.exists() and other.exists()  # only this cell's leftovers: another may be writing its own


def test_fallback_folders_are_private_to_the_user_and_the_results_root(tmp_path):
    a = rec.fallback_path(tmp_path / "root_a" / "runs" / "quick" / "abc.json")
    b = rec.fallback_path(tmp_path / "root_b" / "runs" / "quick" / "abc.json")
    assert a != b and a.name == b.name == "abc.json" and a.parent.name == "quick"
    top = a.parent.parent.parent
    assert top.name == f"tunebench-unsaved-records-{os.getuid()}" and stat.S_IMODE(top.stat().st_mode) == 0o700


def test_a_fallback_folder_someone_else_owns_is_refused(tmp_path):
    if os.getuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    os.chown(folder, 12345, 12345)
    with pytest.raises(OSError, match="not this user's private folder"):
        rec.private_folder(folder)


def test_a_run_whose_record_went_to_the_fallback_folder_does_not_count_as_ok(tmp_path, monkeypatch, caplog):
    from tunebench.app import run

    cfg = compose_cfg(tmp_path, monkeypatch, "count_only=true")
    sweep = tmp_path / "results" / "runs" / "t"
    real = rec.write_atomic

    def refusing(path, record):  # the sweep folder stops accepting files at the end of the run
        if path.parent == sweep and record.get("status") == "ok":
            raise OSError(28, "No space left on device")
        return real(path, record)

    monkeypatch.setattr(rec, "write_atomic", refusing)
    assert run_cell(cfg) == "unsaved" and "unsaved" in run.FAILED  # a single `tunebench run` exits 1 on it
    assert "kept it at" in caplog.text


def test_a_publish_that_fails_half_way_leaves_the_published_folder_as_it_was(tmp_path, monkeypatch):
    from tunebench.app import publish as pub

    from .test_report_claim import full_runs, write_run

    sweep = tmp_path / "runs" / "s"
    for seed in range(3):
        write_run(sweep, "lora", seed, 0.8)
    full_runs(sweep, [0.81, 0.8, 0.82])
    dest = tmp_path / "published" / "s"
    pub.publish(sweep, dest)
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    write_run(sweep, "lora", 3, 0.9)  # new records, then the publish dies before its page

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pub, "write_page", dies)
    with pytest.raises(KeyboardInterrupt):
        pub.publish(sweep, dest)
    assert {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before
    assert not [p.name for p in dest.parent.iterdir() if p.name.startswith(".")]  # no half-written sibling left
    monkeypatch.undo()
    pub.publish(dest / "records", dest)  # a published folder republished from its own records
    assert len(list((dest / "records").glob("*.json"))) == 6 and (dest / "report.html").exists()
