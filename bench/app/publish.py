"""`tunebench publish SWEEP_DIR` and `tunebench docs`: published results and the docs that show them.

`publish` writes everything the project stands behind for one sweep into `results/published/<sweep>/`:
the report tables (results.md / .csv / .tex), the claim (claim.md / .json and a one-table summary,
claim_summary.md), each arm against its task's trivial baseline (baseline.md, where records hold per-example test
outcomes), the learning rate each arm's validation chose (lr_choice.md, for lr grids), what the sweep cost to run
(cost.md: seconds per cell, span, machines), what each refinement did (refinements.md, for sweeps over refinements),
the cached-artefact list (artefacts.md, when the sweep used any) and a copy of every record (records/<run_id>.json),
so each published number can be traced to the runs, their configs and the machines that made them (record
`env.machine`).

`docs` regenerates every block of README.md (and docs/*.md) fenced by

    <!-- published: <sweep>/<file> -->
    ...
    <!-- /published -->

from that file under results/published/, so the docs never carry a number typed by hand.
`docs --check` changes nothing and exits 1 when a block differs from its file (the test suite runs it).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from tunebench.app.tables import markdown_table

PUBLISHED = Path("results/published")
MIN_CLAIM_SEEDS = 3  # a published verdict rests on at least this many paired seeds
BLOCK = re.compile(r"(<!-- published: (?P<source>[^ ]+) -->\n)(?P<body>.*?)(<!-- /published -->)", re.S)
VERDICT_PARTS = {"accuracy": "accuracy, pt", "trainable params": "trainable params", "peak memory": "peak memory ratio",
                 "train time": "train time ratio"}
OPTIONAL_PARTS = {"communication": "communication ratio"}  # a column only where some comparison has the part (federated)


def _cell(part: dict) -> str:
    if part["verdict"] == "no data":
        return "no data"
    digits = 2 if part["part"].startswith("accuracy") else 3
    value = "-" if part["estimate"] is None else f"{part['estimate']:+.{digits}f}" if digits == 2 else f"{part['estimate']:.{digits}f}"
    ci = "" if part["ci_low"] is None else f" [{part['ci_low']:.{digits}f}, {part['ci_high']:.{digits}f}]"
    unadjusted = "" if part["verdict"] == part["verdict_adjusted"] else f" (unadjusted: {part['verdict']})"
    return f"{value}{ci}: **{part['verdict_adjusted']}**{unadjusted}"


def claim_summary(comparisons: list[dict]) -> str:
    """One row per comparison, one column per part: estimate [95% CI]: adjusted verdict."""
    def parts_of(c: dict) -> dict:
        return {p["part"].split(" (")[0]: p for p in c["parts"]}

    present = {k for c in comparisons for k in parts_of(c)}
    columns = {**VERDICT_PARTS, **{k: v for k, v in OPTIONAL_PARTS.items() if k in present}}
    header = ["comparison", *columns.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in comparisons:
        parts = parts_of(c)
        setting = f" {c['ways']}-way {c['shots']}-shot" if "ways" in c else ""
        config = f" [{c['configuration']}]" if c.get("configuration") else ""
        name = f"{c['task']}{setting} / {c['refine']}{config}: {c['peft']} vs {c['reference']}"
        seeds = f" ({len(c['seeds'])} seeds)" if c.get("seeds") else ""
        if "all" in parts:
            cells = [_cell(parts["all"])] + ["-"] * (len(columns) - 1)
        else:
            cells = [_cell(parts[k]) if k in parts else "-" for k in columns]
        lines.append("| " + " | ".join([name + seeds, *cells]) + " |")
    return "\n".join(lines)


SKIPPED_REPORT_KEYS = ("cache_key", "cache_built", "cache_path", "path", "seed", "curve", "schema", "model")


def _report_facts(report: dict, limit: int = 10) -> str:
    """A refinement report's scalar facts, `key: value` (cache bookkeeping and long values left out)."""
    from tunebench.app.frame import flatten

    facts = []
    for key, value in flatten(report).items():
        if any(part in key for part in SKIPPED_REPORT_KEYS) or key == "name" or isinstance(value, (list, dict)) or value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, str) and len(value) > 30:
            continue
        facts.append(f"{key}: {value}")
    return "; ".join(facts[:limit]) + ("; ..." if len(facts) > limit else "")


def refinement_summary(frame) -> str:
    """What each refinement chain did, from one ok record per chain (the refinements are seeded by their
    own `refine.<name>.seed`, so every method and seed of a chain shares them): training-set size and the
    report's facts."""
    lines = ["| refinement | train size | what it did (the record's report) |", "|---|---|---|"]
    ok = frame[frame.status == "ok"].sort_values(["refine", "seed", "method"])
    for refine, group in ok.groupby("refine", sort=True):
        record = json.loads(Path(group.iloc[0].path).read_text())
        size = (record.get("task") or {}).get("sizes", {}).get("train", "-")
        reports = [r for r in record.get("refinements") or [] if r.get("name") != "none"]
        facts = " / ".join(f"{r.get('name')}: {_report_facts(r)}" for r in reports) or "-"
        lines.append(f"| {refine} | {size} | {facts} |")
    return "\n".join(lines)


def publish(sweep_dir: Path, dest: Path) -> list[Path]:
    """Every published file of the sweep, written into a temporary sibling of `dest` that then replaces it: a publish
    killed half-way leaves the old folder as it was (and a hidden `.<name>.*.tmp` folder), never a mixed one."""
    from tunebench.app.frame import load_frame
    from tunebench.core.record import current_umask

    sweep_dir, dest = Path(sweep_dir), Path(dest)
    frame = load_frame(sweep_dir)  # fails naming a malformed record before anything is written
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes 0700; a published folder is read by anyone
        written = _publish_into(frame, sweep_dir, staging, dest.name)
        _replace_folder(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_pages_index(dest.parent)
    return [dest / path.relative_to(staging) for path in written]


def _replace_folder(new: Path, dest: Path) -> None:
    """`dest` <- `new` by renames in one folder: the old folder is moved aside, the new one takes its name."""
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if dest.exists():
        os.replace(dest, old)
    os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _publish_into(frame, sweep_dir: Path, dest: Path, name: str) -> list[Path]:
    from tunebench.app.artefacts import artefact_frame, summarize
    from tunebench.app.claim import check, write_claim

    written = write_results_tables(frame, dest, sweep_dir.name)
    comparisons = check(frame)
    if comparisons and all(len(c.get("seeds") or []) >= MIN_CLAIM_SEEDS for c in comparisons):
        written += write_claim(comparisons, dest, 1.0, "holm")[1]
        (dest / "claim_summary.md").write_text(claim_summary(comparisons) + "\n")
        written.append(dest / "claim_summary.md")
        written += write_plan(frame, dest)
    else:  # an arm without paired reference runs, or on fewer seeds (an lr grid): no claim to stand behind
        print(f"no claim published for {sweep_dir.name}: a PEFT arm has fewer than {MIN_CLAIM_SEEDS} seeds paired "
              f"with its reference method (tunebench claim still judges it)")
    written += write_arm_tables(frame, dest)
    if frame["refine"].nunique() > 1:
        (dest / "refinements.md").write_text(refinement_summary(frame) + "\n")
        written.append(dest / "refinements.md")
    uses = summarize(artefact_frame(sweep_dir))
    if not uses.empty:
        (dest / "artefacts.md").write_text(markdown_table(uses, index=False) + "\n")
        written.append(dest / "artefacts.md")
    records = dest / "records"
    records.mkdir()
    for path in frame["path"]:
        shutil.copy2(path, records / Path(path).name)
    written.append(records)
    written.append(write_page(dest, name))
    return written


def write_results_tables(frame, dest: Path, name: str | None = None) -> list[Path]:
    """dest/results.{md,csv,tex}: the report's tables (`publish` and `--pages`), captioned with the sweep's name."""
    from tunebench.app.report import write_tables

    return list(write_tables(frame, dest, f"tunebench sweep {name or dest.name}")["paths"].values())


def _write_table(path: Path, table, markdown) -> list[Path]:
    """path <- markdown(table); none, and a stale one removed, when the table is empty."""
    if table.empty:
        path.unlink(missing_ok=True)
        return []
    path.write_text(markdown(table) + "\n")
    return [path]


def write_plan(frame, dest: Path) -> list[Path]:
    """dest/plan.md: what deciding the parts the claim left undecided would take (`tunebench plan`); none when
    every tested part is decided."""
    from tunebench.app.plan import plan, plan_report

    plans = plan(frame)
    if not plans:
        (dest / "plan.md").unlink(missing_ok=True)
        return []
    (dest / "plan.md").write_text(plan_report(frame, plans) + "\n")
    return [dest / "plan.md"]


def write_baseline(frame, dest: Path) -> list[Path]:
    """dest/baseline.md: each arm against its task's trivial baseline (tunebench.app.baseline); none when no record
    has per-example test outcomes and a baseline."""
    from tunebench.app.baseline import baseline_markdown, baseline_rows

    return _write_table(dest / "baseline.md", baseline_rows(frame), baseline_markdown)


def write_lr_choice(frame, dest: Path) -> list[Path]:
    """dest/lr_choice.md: the lr each arm's validation score chose (tunebench.app.lr_choice); none when no arm ran
    at several lrs."""
    from tunebench.app.lr_choice import lr_choice_markdown, lr_table

    return _write_table(dest / "lr_choice.md", lr_table(frame), lr_choice_markdown)


def write_cost(frame, dest: Path) -> list[Path]:
    """dest/cost.md: seconds per cell and the sweep's span and machines (tunebench.app.sweep_cost)."""
    from tunebench.app.sweep_cost import cost_markdown, cost_table

    return _write_table(dest / "cost.md", cost_table(frame), cost_markdown)


ARM_TABLES = {"baseline.md": write_baseline, "lr_choice.md": write_lr_choice, "cost.md": write_cost}


def write_arm_tables(frame, dest: Path) -> list[Path]:
    """The per-arm tables made from the records alone (`publish` and `--pages`)."""
    return [path for write in ARM_TABLES.values() for path in write(frame, dest)]


def write_page(dest: Path, name: str | None = None) -> Path:
    """dest/report.html from the published copies of the records (its links point at them) and dest/claim.json, with
    plotly.js, the style and the table script shared by every published page (results/published/)."""
    from tunebench.app.html_report import write_html

    return write_html(dest / "records", dest / "report.html", shared_dir=dest.parent, name=name or dest.name)


def write_pages_index(published: Path) -> Path:
    """published/pages.md: every published page (shown in docs/results.md); folders being written are hidden."""
    pages = sorted(p for p in published.glob("*/report.html") if not p.parent.name.startswith("."))
    index = published / "pages.md"
    index.write_text("\n".join(f"- [{p.parent.name}](../results/published/{p.parent.name}/report.html)" for p in pages) + "\n")
    return index


def render(text: str, root: Path) -> tuple[str, list[str]]:
    """The text with every published block refilled from its file; and the blocks whose file is missing."""
    missing = []

    def fill(match: re.Match) -> str:
        source = root / match["source"]
        if not source.is_file():
            missing.append(match["source"])
            return match.group(0)
        return match.group(1) + source.read_text().rstrip("\n") + "\n" + match.group(4)

    return BLOCK.sub(fill, text), missing


def doc_files(repo: Path) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def docs(repo: Path, check: bool) -> int:
    root = repo / PUBLISHED
    stale, status = [], 0
    for path in doc_files(repo):
        if not path.exists():
            continue
        text = path.read_text()
        new, missing = render(text, root)
        for source in missing:
            print(f"{path}: published block names {source}, which is not under {root}")
            status = 1
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new)
    for path in stale:
        print(f"{path}: {'differs from results/published (run: tunebench docs)' if check else 'updated'}")
        status = 1 if check else status
    return status


def main(argv: list[str] | None = None) -> int:
    from tunebench.app.frame import load_frame

    parser = argparse.ArgumentParser(prog="tunebench publish", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="folder of run records, e.g. results/runs/quick")
    parser.add_argument("--to", type=Path, default=None, help="destination (default: results/published/<sweep name>)")
    parser.add_argument("--pages", action="store_true",
                        help="instead: rewrite report.html, results.{md,csv,tex}, baseline.md, lr_choice.md and cost.md of every published sweep from its published "
                             "records (SWEEP_DIR: the published root, e.g. results/published)")
    args = parser.parse_args(argv)
    if args.pages:
        for folder in sorted(p.parent for p in args.sweep_dir.glob("*/records")):
            if any(folder.joinpath("records").glob("*.json")) and not folder.name.startswith("."):
                print(f"-> {write_page(folder)}")
                frame = load_frame(folder / "records")
                for path in [*write_results_tables(frame, folder), *write_arm_tables(frame, folder)]:
                    print(f"-> {path}")
        print(f"-> {write_pages_index(args.sweep_dir)}")
        return 0
    try:
        written = publish(args.sweep_dir, args.to or PUBLISHED / args.sweep_dir.name)
    except (FileNotFoundError, ValueError) as e:
        print(f"tunebench publish: {e}")
        return 2
    for path in written:
        print(f"-> {path}")
    return 0


def docs_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tunebench docs", description="Refill the README's (and docs/*.md's) published "
                                     "blocks from results/published/; --check only reports blocks that differ (exit 1).")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its file")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the checkout (default: .)")
    args = parser.parse_args(argv)
    return docs(args.repo, args.check)
