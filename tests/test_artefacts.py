"""`tunebench artefacts`: cache entries found in the records' refinement reports, builds counted per key."""
from tunebench.core import record as rec
from tunebench.app.artefacts import artefact_frame, cache_uses, main, summarize


def write(sweep, rid, refinements):
    record = rec.new_record({"seed": 0}, rid, "s")
    record.update(status="ok", refinements=refinements)
    rec.write_atomic(rec.record_path(sweep, rid), record)


def synthetic_report(built: bool, generator_built: bool) -> dict:
    return {"name": "synthetic", "cache_key": "k-samples", "cache_built": built, "cache_path": "/c/synthetic-k",
            "generator_cache_key": "k-gen", "generator_cache_built": generator_built,
            "features": {"pool": {"cache_key": "k-pool", "cache_built": built}}}


def test_every_cache_key_in_a_report_is_found_with_what_it_is():
    uses = {(u["what"], u["key"], u["built"]) for u in cache_uses(synthetic_report(True, False))}
    assert uses == {("artefact", "k-samples", True), ("generator", "k-gen", False), ("pool", "k-pool", True)}


def test_builds_and_reuses_are_counted_per_key_and_a_rebuild_fails(tmp_path, capsys):
    sweep = tmp_path / "runs" / "s"
    write(sweep, "run-a", [synthetic_report(True, True)])
    write(sweep, "run-b", [synthetic_report(False, False)])
    write(sweep, "run-c", [{"name": "none", "changed": False}])
    table = summarize(artefact_frame(sweep)).set_index("key")
    assert table.loc["k-samples", "built"] == 1 and table.loc["k-samples", "runs"] == 2
    assert table.loc["k-gen", "built_by"] == "run-a"
    assert main([str(sweep)]) == 0
    assert "3 artefacts, 3 builds" in capsys.readouterr().out
    write(sweep, "run-d", [synthetic_report(True, False)])  # the samples were built again: the cache failed
    assert main([str(sweep)]) == 1
    out = capsys.readouterr().out
    assert set(out.split("REBUILT: ")[1].strip().split(", ")) == {"k-pool", "k-samples"}
