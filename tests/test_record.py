import json

import pytest

from tunebench.core import record as rec


def test_run_id_depends_on_semantics_only():
    base = {"seed": 0, "method": {"name": "lora", "lr": 1e-3}, "data": {"name": "rt"}}
    same = {**base, "logger": {"name": "wandb"}, "paths": {"root": "/elsewhere"}, "force": True, "sweep": "x", "threads": 2}
    assert rec.run_id(base) == rec.run_id(same)
    assert rec.run_id(base) != rec.run_id({**base, "seed": 1})
    assert rec.run_id(base) != rec.run_id({**base, "method": {"name": "lora", "lr": 2e-3}})
    assert rec.run_id(dict(reversed(list(base.items())))) == rec.run_id(base)  # key order does not matter


def test_write_atomic_leaves_one_valid_file_and_no_temp(tmp_path):
    record = rec.new_record({"seed": 0}, "abc", "s")
    record.update(status="ok", metrics={"loss": float("nan"), "acc": 0.5})
    path = rec.record_path(tmp_path / "sweep", "abc")
    rec.write_atomic(path, record)
    assert [p.name for p in path.parent.iterdir()] == ["abc.json"]
    loaded = json.loads(path.read_text())
    assert loaded["metrics"] == {"loss": "nan", "acc": 0.5}  # NaN kept readable, file stays valid JSON
    assert rec.existing_status(path.parent, "abc") == "ok"


def test_failed_write_keeps_the_previous_record(tmp_path):
    path = tmp_path / "r.json"
    good = {**rec.new_record({}, "r", "s"), "status": "ok"}
    rec.write_atomic(path, good)
    with pytest.raises(TypeError):
        rec.write_atomic(path, {**good, "metrics": {"bad": object()}})
    assert json.loads(path.read_text())["status"] == "ok"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_iter_records_skips_temp_files_and_names_a_corrupt_record(tmp_path):
    rec.write_atomic(tmp_path / "a.json", {**rec.new_record({}, "a", "s"), "status": "failed"})
    (tmp_path / ".a.123.tmp").write_text("{half")
    assert [r["run_id"] for r in rec.iter_records(tmp_path)] == ["a"]
    (tmp_path / "b.json").write_text("{half")
    with pytest.raises(ValueError, match=r"b.json: not a valid JSON record"):
        list(rec.iter_records(tmp_path))
    assert rec.existing_status(tmp_path, "b") is None  # corrupt: redone, not trusted
