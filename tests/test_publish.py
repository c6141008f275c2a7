"""Published results: a sweep's tables, claim and records in one folder; docs blocks refilled from them."""
import json
from pathlib import Path

import pytest

from tunebench.app.publish import docs, publish

from .test_report_claim import paired_strings, write_run

REPO = Path(__file__).resolve().parent.parent


def test_publish_writes_tables_claim_and_every_record(tmp_path):
    sweep = tmp_path / "runs" / "s"
    peft, full = paired_strings(600, 100, 133)
    for seed in range(3):
        write_run(sweep, "full", seed, 0.733, lr=1e-4, trainable=22_000_000, correct=full, memory=1000 + seed)
        write_run(sweep, "lora", seed, 0.700, correct=peft, memory=700 + seed)
    failed = write_run(sweep, "lora", 3, 0.0, status="failed")
    dest = tmp_path / "published" / "s"
    publish(sweep, dest)
    assert sorted(p.name for p in (dest / "records").iterdir()) == sorted(p.name for p in sweep.glob("*.json"))
    assert f"{failed}" in (dest / "claim.md").read_text()
    [row] = [line for line in (dest / "claim_summary.md").read_text().splitlines() if line.startswith("| rt")]
    assert row.startswith("| rt / none: lora vs full (3 seeds) | -3.30 [")
    assert ": **inconclusive** |" in row and "0.700 [" in row  # memory ratio 0.70, its CI, the verdict
    comparisons = json.loads((dest / "claim.json").read_text())
    assert comparisons[0]["parts"][0]["verdict_adjusted"] == "inconclusive"
    assert "| lora " in (dest / "results.md").read_text() and (dest / "results.tex").exists()
    plan = (dest / "plan.md").read_text()  # what deciding the inconclusive parts would take
    assert "| rt / none: lora vs full | accuracy (PEFT - full, pt) |" in plan and "tunebench decide" in plan


def test_a_sweep_without_the_reference_arm_publishes_no_claim(tmp_path):
    sweep = tmp_path / "runs" / "grid"
    for lr in (1e-3, 3e-3):
        write_run(sweep, "lora", 0, 0.700, lr=lr)
    dest = tmp_path / "published" / "grid"
    dest.mkdir(parents=True)
    (dest / "claim.json").write_text("[]")  # a stale claim from an earlier publish goes too
    publish(sweep, dest)
    assert (dest / "results.md").exists() and not list(dest.glob("claim*"))


def test_docs_refills_published_blocks_and_check_reports_stale_ones(tmp_path, capsys):
    (tmp_path / "results" / "published" / "s").mkdir(parents=True)
    (tmp_path / "results" / "published" / "s" / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- published: s/results.md -->\n| a |\n|---|\n| 0 |\n<!-- /published -->\nend\n")
    assert docs(tmp_path, check=True) == 1
    assert "differs from results/published" in capsys.readouterr().out
    assert readme.read_text().count("| 0 |") == 1  # --check changes nothing
    assert docs(tmp_path, check=False) == 0
    assert readme.read_text() == "intro\n<!-- published: s/results.md -->\n| a |\n|---|\n| 1 |\n<!-- /published -->\nend\n"
    assert docs(tmp_path, check=True) == 0
    readme.write_text("<!-- published: s/nope.md -->\nx\n<!-- /published -->\n")
    assert docs(tmp_path, check=True) == 1 and "names s/nope.md, which is not under" in capsys.readouterr().out


def test_readme_tables_equal_their_published_files(capsys):
    status = docs(REPO, check=True)
    assert status == 0, capsys.readouterr().out
    assert "<!-- published: " in (REPO / "README.md").read_text()


def test_published_claims_come_with_their_records():
    for claim in sorted((REPO / "results" / "published").glob("*/claim.json")):
        records = claim.parent / "records"
        assert records.is_dir(), f"{claim.parent.name}: published claim without its records"
        run_ids = {p.stem for p in records.glob("*.json")}
        for comparison in json.loads(claim.read_text()):
            assert comparison.get("seeds"), f"{claim}: {comparison['peft']} has no paired seeds"
            assert len(comparison["seeds"]) >= 3, f"{claim}: {comparison['peft']} vs {comparison['reference']} on fewer than 3 seeds"
        assert run_ids, claim


def test_the_summary_has_a_communication_column_only_when_a_comparison_has_that_part():
    from tunebench.app.publish import claim_summary

    def part(name, estimate, verdict="supported"):
        return {"part": name, "estimate": estimate, "ci_low": None, "ci_high": None, "verdict": verdict,
                "verdict_adjusted": verdict}

    central = {"task": "rt", "refine": "none", "peft": "lora", "reference": "full", "seeds": [0, 1, 2],
               "parts": [part("accuracy (PEFT - full, pt)", -1.0, "inconclusive"), part("trainable params (PEFT / full)", 0.003)]}
    federated = {**central, "configuration": "federated.partition=iid",
                 "parts": [*central["parts"], part("communication (PEFT / full)", 0.0033)]}
    header, _, row = claim_summary([central, federated]).splitlines()[:3]
    assert header.endswith("| train time ratio | communication ratio |")
    assert row.endswith("| - | - | - |")  # the central comparison has no communication part
    assert claim_summary([central, federated]).splitlines()[3].endswith("| 0.003: **supported** |")
    assert "communication" not in claim_summary([central])


def test_published_arm_tables_are_current(tmp_path):
    """Every published sweep's baseline.md, lr_choice.md and cost.md are what `tunebench publish results/published
    --pages` writes from its records now."""
    from tunebench.app.frame import load_frame
    from tunebench.app.publish import ARM_TABLES

    published = REPO / "results" / "published"
    sweeps = sorted(p.parent for p in published.glob("*/records") if any(p.glob("*.json")))
    assert (published / "causal_quick" / "baseline.md").is_file() and (published / "causal_lr_grid" / "lr_choice.md").is_file()
    assert (published / "causal_quick" / "cost.md").is_file()
    for sweep_dir in sweeps:
        frame = load_frame(sweep_dir / "records")
        for name, write in ARM_TABLES.items():
            written = write(frame, tmp_path)
            current = sweep_dir / name
            if not written:
                assert not current.exists(), f"{current} is stale: tunebench publish results/published --pages"
                continue
            assert written[0].read_text() == current.read_text(), f"{current} is stale: tunebench publish results/published --pages"


def test_the_method_configs_hold_the_lrs_their_published_grids_chose():
    """conf/method/<name>.yaml's lr (encoders, experiment=lr_grid) and generation_lr (causal LMs,
    experiment=causal_lr_grid) are the published grids' choices on validation: changing either side alone fails."""
    from omegaconf import OmegaConf

    from tunebench.app.frame import load_frame
    from tunebench.app.lr_choice import chosen_lrs

    for sweep, key in (("lr_grid_peft", "lr"), ("causal_lr_grid", "generation_lr")):
        chosen = chosen_lrs(load_frame(REPO / "results" / "published" / sweep / "records"))
        assert len(chosen) >= 6, (sweep, chosen)
        for (_, method), lr in chosen.items():
            configured = float(OmegaConf.load(REPO / "conf" / "method" / f"{method}.yaml")[key])
            assert abs(configured - lr) <= 1e-9 * lr, (sweep, method, key, configured, lr)


def test_lr_choice_takes_the_best_mean_over_tasks_ties_to_the_lower_lr_and_skips_incomplete_lrs():
    import pandas as pd

    from tunebench.app.lr_choice import chosen_lrs, lr_table

    rows = []
    for lr, a, b in ((1e-3, 0.2, 0.8), (3e-3, 0.4, 0.6), (1e-2, 0.3, 0.7)):  # lora: 0.5 at every lr, a tie
        rows += [("lora", lr, "a", a), ("lora", lr, "b", b)]
    rows += [("full", 1e-5, "a", 0.1), ("full", 1e-5, "b", 0.5), ("full", 3e-5, "a", 0.9),  # 3e-5 lacks task b
             ("full", 1e-4, "a", 0.2), ("full", 1e-4, "b", 0.5), ("full", 1e-4, "b", 0.7)]  # task b: two seeds, mean 0.6
    rows += [("ia3", 1e-2, "a", 0.9), ("ia3", 1e-2, "b", 0.9)]  # one lr: not a grid
    frame = pd.DataFrame(rows, columns=["arm", "lr", "task", "best_val_acc"]).assign(status="ok", configuration="")
    frame.loc[len(frame)] = {"arm": "full", "lr": 1e-3, "task": "a", "best_val_acc": 1.0, "status": "failed", "configuration": ""}
    assert chosen_lrs(frame) == {("", "lora"): 1e-3, ("", "full"): 1e-4}
    table = lr_table(frame)
    assert set(table.method) == {"lora", "full"}
    incomplete = table[(table.method == "full") & (table.lr == 3e-5)].iloc[0]
    assert not incomplete.complete and not incomplete.chosen
    assert table[(table.method == "full") & (table.lr == 1e-4)]["mean"].iloc[0] == pytest.approx(0.4)  # (0.2 + 0.6) / 2: tasks weigh equally


def test_cost_md_sums_each_cells_seconds_spans_first_start_to_last_finish_and_names_the_machines():
    import pandas as pd

    from tunebench.app.sweep_cost import cost_markdown, cost_table, sweep_totals

    rows = [("a", "full", 100.0, 10.0, "2026-12-02T10:00:00+00:00", "2026-12-02T10:02:00+00:00", "EPYC, AVX512, 1 thread"),
            ("a", "full", 300.0, 30.0, "2026-12-02T10:01:00+00:00", "2026-12-02T10:07:00+00:00", "EPYC, AVX2, 1 thread"),
            ("a", "lora", 50.0, None, "2026-12-02T10:02:00+00:00", "2026-12-02T11:32:30+00:00", "EPYC, AVX512, 1 thread"),
            ("a", "lora", 9e9, 9e9, "2026-12-02T09:00:00+00:00", "2026-12-02T12:00:00+00:00", "EPYC, AVX512, 1 thread")]
    frame = pd.DataFrame(rows, columns=["task", "arm", "train_seconds", "eval_seconds", "started_at", "finished_at", "machine"])
    frame = frame.assign(refine="none", configuration="", run_id=[f"r{i}" for i in range(4)],
                         status=["ok", "ok", "ok", "failed"], training_state_bytes=[4 * 2**20, 6 * 2**20, 2**20, None],
                         peak_memory_mb=[100.0, 300.0, None, None])
    table = cost_table(frame)
    full = table[table.arm == "full"].iloc[0]
    assert (full.cells, full.train_s, full.eval_s) == (2, 200.0, 20.0)
    totals = sweep_totals(table)
    assert totals["cells"] == 3 and totals["seconds"] == pytest.approx(490.0)  # a failed cell counts nowhere
    assert totals["span_seconds"] == pytest.approx(92.5 * 60)
    assert totals["machines"] == ["EPYC, AVX2, 1 thread", "EPYC, AVX512, 1 thread"]
    text = cost_markdown(table)
    assert "2026-12-02 10:00 -> 11:32 UTC (1 h 32 min)" in text and "| 490 " in text

    def last_four(method):  # train s, eval s, training state MB, peak memory MB
        return [c.strip() for c in next(line for line in text.splitlines() if f"| {method} " in line).split("|")[-5:-1]]

    assert last_four("full") == ["200", "20", "5", "200"]
    assert last_four("lora") == ["50", "0", "1", "-"]  # no eval seconds: 0; no peak memory: -
    assert cost_table(frame.assign(status="failed")).empty
    assert "| 3          | 490 " in cost_markdown(cost_table(frame.assign(started_at=None)))  # no times: no span, still the sums
